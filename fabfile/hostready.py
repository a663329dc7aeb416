"""Whether a host is ready for deploys, and its deploy directory: what `fab setup` checks and makes.

The Docker engine and Compose v2 are checked by the backend's ``host_checks`` (the engine's
preflight uses the same checks); rsync and the deploy directory are this front door's own needs.
The deploy directory is created (with its ``releases/`` and state directories) mode 0750 and must
belong to the SSH user. Every problem found is reported at once, each with what to do about it.
"""

from __future__ import annotations

from handover.backends import make_backend
from handover.checks import Check, first_line
from handover.errors import CommandError
from handover.settings import Settings
from handover.shell import run

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


def prepare_dirs(remote: Remote, s: Settings) -> Check:
    """Create the deploy, releases and state directories (0750, owned by the SSH user); idempotent."""
    user = str(remote.conn.user)
    root = s.deploy_dir
    done = run(remote.conn, ["sh", "-c", _PREPARE, "prepare", root, DIR_MODE, user,
                             root, releases_path(s), s.state_path], check=False)
    if done.exited == 3:
        return Check("deploy_dir", False, f"cannot create {root} as {user} ({first_line(done.stderr)}): create it "
                                          f"once as root: install -d -m {DIR_MODE} -o {user} {root}")
    if done.exited == 4:
        owner = done.stdout.strip()
        return Check("deploy_dir", False, f"{root} belongs to {owner or 'someone else'}, not {user}: "
                                          f"chown {user} {root}")
    if done.exited != 0:
        raise CommandError(f"mkdir -p -m {DIR_MODE} {releases_path(s)} {s.state_path}", done.exited,
                           done.stderr or done.stdout)
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
