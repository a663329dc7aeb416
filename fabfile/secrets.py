"""The app's secrets file (``deploy.env_file``) on a host: one copy per release, written over SFTP.

A release's secrets go with its files: the sync writes ``~/.config/handover/<project>/<release>.env``
of the SSH user, and the run's ``docker compose`` reads that file, so a rollback to a release runs
with the secrets it was deployed with, not the newest ones. The files are mode 0600 in a 0700
directory, outside the deploy directory (which the proxy container mounts), and are pruned with
their release directories. The content goes through the SFTP channel only: never on a command line,
in a log or in output. The local file was checked line by line before any connection
(:func:`handover.envfile.read`).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from paramiko import SFTPClient

from handover.backends.compose import ENV_FILE_VARIABLE
from handover.errors import HandoverError
from handover.settings import Settings
from handover.shell import run

from .connect import Remote

SECRETS_DIR = ".config/handover"
SECRETS_SUFFIX = ".env"
TMP_SUFFIX = ".tmp"
SECRETS_MODE = 0o600
SECRETS_DIR_MODE = 0o700


@dataclass(frozen=True)
class Secrets:
    """Where one project's secrets live on one host (``None`` directory: no env_file configured)."""

    remote: Remote
    directory: str | None

    def path(self, release: str) -> str:
        assert self.directory is not None
        return f"{self.directory}/{release}{SECRETS_SUFFIX}"

    def env(self, release: str | None) -> dict[str, str]:
        """The compose variable that points the app at ``release``'s secrets ('' : none)."""
        if self.directory is None:
            return {}
        return {ENV_FILE_VARIABLE: self.path(release) if release else ""}


def home(remote: Remote) -> str:
    path = run(remote.conn, ["sh", "-c", 'printf "%s" "$HOME"']).stdout.strip()
    if not path.startswith("/"):
        raise HandoverError(f"{remote.name}: the SSH user has no home directory for the secrets file")
    return path.rstrip("/")


def of(remote: Remote, s: Settings) -> Secrets:
    """The host's secrets of ``s.project``: a directory only when an env_file is configured."""
    if remote.target.env_file is None:
        return Secrets(remote, None)
    return Secrets(remote, f"{home(remote)}/{SECRETS_DIR}/{s.project}")


def _ensure_dir(sftp: SFTPClient, path: str, mode: int, enforce: bool) -> None:
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        sftp.mkdir(path, mode)
        attrs = sftp.stat(path)
    if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
        raise NotADirectoryError(path)
    if enforce:
        sftp.chmod(path, mode)


def push(secrets: Secrets, local: Path, release: str) -> str:
    """Write ``local`` to the host as ``release``'s secrets (0600, atomically); return its path."""
    assert secrets.directory is not None
    sftp = secrets.remote.conn.sftp()
    project_dir = secrets.directory
    handover_dir = project_dir.rpartition("/")[0]
    _ensure_dir(sftp, handover_dir.rpartition("/")[0], SECRETS_DIR_MODE, enforce=False)  # ~/.config
    _ensure_dir(sftp, handover_dir, SECRETS_DIR_MODE, enforce=True)
    _ensure_dir(sftp, project_dir, SECRETS_DIR_MODE, enforce=True)
    path = secrets.path(release)
    tmp = f"{path}{TMP_SUFFIX}"
    with sftp.open(tmp, "w") as out:
        out.chmod(SECRETS_MODE)  # before any byte is written
        out.write(local.read_bytes())
    sftp.posix_rename(tmp, path)
    sftp.chmod(path, SECRETS_MODE)
    return path


def exists(secrets: Secrets, release: str) -> bool:
    try:
        attrs = secrets.remote.conn.sftp().stat(secrets.path(release))
    except FileNotFoundError:
        return False
    return attrs.st_mode is not None and stat.S_ISREG(attrs.st_mode)


def prune(secrets: Secrets, releases: Iterable[str]) -> list[str]:
    """Remove the secrets of every release that is not among ``releases`` (the kept directories),
    and the single shared copy older versions of this tool wrote (``<project>.env``)."""
    if secrets.directory is None:
        return []
    sftp = secrets.remote.conn.sftp()
    try:
        names = sftp.listdir(secrets.directory)
    except FileNotFoundError:
        return []
    keep = {f"{name}{SECRETS_SUFFIX}" for name in releases}
    stale = sorted(n for n in names if n not in keep and n.endswith((SECRETS_SUFFIX, f"{SECRETS_SUFFIX}{TMP_SUFFIX}")))
    for name in stale:
        sftp.remove(f"{secrets.directory}/{name}")
    # The one copy for every release that earlier versions of this tool kept beside the directory.
    for legacy in (f"{secrets.directory}{SECRETS_SUFFIX}", f"{secrets.directory}{SECRETS_SUFFIX}{TMP_SUFFIX}"):
        try:
            sftp.remove(legacy)
        except FileNotFoundError:
            continue
        stale.append(legacy.rpartition("/")[2])
    return stale


def release_of(current: str | None) -> str | None:
    """``releases/<name>`` (what ``current`` points at) -> ``<name>``."""
    return current.rpartition("/")[2] if current else None
