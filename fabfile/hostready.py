"""Whether a host is ready for deploys, and its deploy directory: what `fab setup` checks and makes.

The Docker engine and Compose v2 are checked by the backend's ``host_checks`` (the engine's
preflight uses the same checks); rsync and the deploy directory are this front door's own needs.
The deploy directory is created (with its ``releases/`` and state directories) mode 0750 and must
belong to the SSH user. Every problem found is reported at once, each with what to do about it.
Before a deploy, the directories and the Compose check are one SSH command
(:func:`prepare_dirs_and_compose`); the engine then answers through its API when it can.
"""

from __future__ import annotations

from handover.backends import make_backend
from handover.backends.compose import COMPOSE_VERSION_ARGV, compose_check
from handover.checks import Check, first_line
from handover.errors import CommandError
from handover.settings import Settings
from handover.shell import command_line, run

from .connect import Remote
from .sync import releases_path

DIR_MODE = "0750"


def check_rsync(remote: Remote) -> Check:
    result = run(remote.conn, ["sh", "-c", "command -v rsync"], check=False)
    if result.exited != 0:
        return Check("rsync", False, "rsync is not installed (e.g. apt-get install rsync)")
    return Check("rsync", True, result.stdout.strip())


# One command: the deploy directory made (exit 3: it cannot be), its owner printed and required to be
# the SSH user (exit 4), then each directory made and set to the mode.
_PREPARE = ('root=$1 mode=$2 user=$3; shift 3; mkdir -p -m "$mode" -- "$root" || exit 3; '
            'owner=$(stat -c %U -- "$root"); printf "%s\\n" "$owner"; [ "$owner" = "$user" ] || exit 4; '
            'for d; do mkdir -p -m "$mode" -- "$d" && chmod "$mode" -- "$d" || exit 1; done')


# The same, then `docker compose version --short` (its output, then a line "compose-exit N"), all in
# one SSH command: a deploy's first look at the host (the directories first: a failure there stops it).
COMPOSE_EXIT = "compose-exit"
_PREPARE_AND_COMPOSE = (_PREPARE + "; " + command_line(COMPOSE_VERSION_ARGV)
                        + ' 2>/dev/null; printf "\\n' + COMPOSE_EXIT + ' %s\\n" "$?"')


def split_compose(stdout: str) -> tuple[str, int, str]:
    """The owner line, then the Compose check's exit status and output, from the combined script's
    ``stdout`` (exit status 1 and no output when its last line is missing)."""
    owner, _, rest = stdout.partition("\n")
    body, sep, last = rest.rstrip("\n").rpartition("\n" + COMPOSE_EXIT + " ")
    code = last.strip()
    return owner, int(code) if sep and code.isdigit() else 1, body.strip("\n") if sep else ""


def prepare_dirs(remote: Remote, s: Settings) -> Check:
    """Create the deploy, releases and state directories (0750, owned by the SSH user); idempotent."""
    return _prepare(remote, s, with_compose=False)[0]


def prepare_dirs_and_compose(remote: Remote, s: Settings) -> tuple[Check, Check | None]:
    """:func:`prepare_dirs`, and the Compose check in the same command (None when the directories
    failed: it did not run)."""
    return _prepare(remote, s, with_compose=True)


def _prepare(remote: Remote, s: Settings, *, with_compose: bool) -> tuple[Check, Check | None]:
    user = str(remote.conn.user)
    root = s.deploy_dir
    done = run(remote.conn, ["sh", "-c", _PREPARE_AND_COMPOSE if with_compose else _PREPARE, "prepare", root,
                             DIR_MODE, user, root, releases_path(s), s.state_path], check=False)
    owner, compose_exit, compose_out = split_compose(done.stdout) if with_compose else (done.stdout, 0, "")
    compose = compose_check(compose_exit, compose_out) if with_compose and done.exited == 0 else None
    return _dirs_check(done.exited, owner, done.stderr or done.stdout, user, root, s), compose


def _dirs_check(exited: int, owner: str, said: str, user: str, root: str, s: Settings) -> Check:
    if exited == 3:
        return Check("deploy_dir", False, f"cannot create {root} as {user} ({first_line(said)}): create it "
                                          f"once as root: install -d -m {DIR_MODE} -o {user} {root}")
    if exited == 4:
        owner = owner.strip()
        return Check("deploy_dir", False, f"{root} belongs to {owner or 'someone else'}, not {user}: "
                                          f"chown {user} {root}")
    if exited != 0:
        raise CommandError(f"mkdir -p -m {DIR_MODE} {releases_path(s)} {s.state_path}", exited, said)
    return Check("deploy_dir", True, f"{root} (mode {DIR_MODE}, owner {user})")


def prepare_front_dir(remote: Remote, s: Settings) -> Check:
    """The host's front directory (its registry of apps), for an app behind the front: one for all
    the host's apps, so it is made when missing but never chmod-ed or taken over."""
    user = str(remote.conn.user)
    made = run(remote.conn, ["mkdir", "-p", "-m", DIR_MODE, s.front_path], check=False)
    writable = made.exited == 0 and run(remote.conn, ["test", "-w", s.front_path], check=False).exited == 0
    if not writable:
        why = first_line(made.stderr) if made.exited != 0 else "not writable"
        return Check("front_dir", False, f"cannot use {s.front_path} as {user} ({why}): create it once as root: "
                                         f"install -d -m {DIR_MODE} -o {user} {s.front_path}")
    return Check("front_dir", True, f"{s.front_path} (the front's registry; this app: {' '.join(s.hostnames)})")


def check_host(remote: Remote, s: Settings) -> list[Check]:
    """Docker engine, Compose v2, rsync, the deploy directory (created when missing), and the
    front's directory when the app is behind the front."""
    checks = [*make_backend(remote.conn, s).host_checks(), check_rsync(remote), prepare_dirs(remote, s)]
    return [*checks, prepare_front_dir(remote, s)] if s.hostnames else checks
