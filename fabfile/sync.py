"""Release directories on a host: rsync the sources into a new one, swap ``current`` atomically.

Layout below ``deploy_dir``::

    releases/<stamp>-<version>/{compose,<proxy>,server} one per deploy, the newest N kept
    releases/.staging-<stamp>/                          rsync's target while a sync runs
    current -> releases/<stamp>-<version>               relative symlink, replaced with rename(2)

rsync writes only into a fresh staging directory (so ``--delete`` cannot reach anything else) and
hard-links unchanged files from the release in use (``--link-dest``), so only changes travel. A
failed sync removes the staging directory and leaves ``current`` as it was. The caller holds the
host's deploy lock for all of this.

A tree that has not changed is not sent at all. Each release records the digest of what was synced
(:func:`tree_digest`, in ``releases/<name>/.handover-tree``): every file's relative path, type,
permission bits, owner and group, size and SHA-256 of its content, every symlink's target and every
directory's mode, after the same excludes rsync applies; not the modification times. When the
digest of the local tree equals the one the release in use records, the new release is made on the
host from that release with hard links (``cp -al``, what ``--link-dest`` would have produced) and
rsync does not run: one SSH command instead of an rsync connection. Any changed, added or removed
file changes the digest and the sync runs as before; so does a tree with anything else in it
(a socket, a device), a file that cannot be read, or a host whose ``cp`` cannot hard-link. A file
changed by hand inside the host's release directory is not looked at: the digest says what was
sent, not what is there now.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from handover.errors import HandoverError
from handover.progress import Progress
from handover.settings import PROJECT_ROOT, Settings
from handover.shell import run

from .connect import Remote, rsync_destination, rsync_shell
from .hostconfig import RELEASE_LINK

RELEASES_DIR = "releases"
STAGING_PREFIX = ".staging-"
COMPOSE_DIR = "compose"  # plus the proxy's own directory (Proxy.source_dirs), the build directory and the
# user's compose file (deploy.app_build, deploy.extra_compose_file), each under its own name
RSYNC_EXCLUDES = ("__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/")
EXCLUDED_DIRS = frozenset(p.rstrip("/") for p in RSYNC_EXCLUDES if p.endswith("/"))
EXCLUDED_SUFFIXES = tuple(p[1:] for p in RSYNC_EXCLUDES if p.startswith("*"))
TREE_FILE = ".handover-tree"  # in each release: the digest of what was synced into it
TREE_DIGEST_VERSION = b"handover-tree 1"
RSYNC_TIMEOUT = 600.0
SPACE_MARGIN_KIB = 1024  # room left over after a sync, for the engine's state files
_RELEASE_NAME = re.compile(r"^\d{8}T\d{9}Z-[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class SyncFailed(HandoverError):
    """rsync failed; the host's files in use are unchanged."""


@dataclass(frozen=True)
class Swap:
    """What ``current`` pointed at before a swap (None: there was no ``current``), to undo it."""

    previous: str | None
    release: str


def releases_path(s: Settings) -> str:
    return f"{s.deploy_dir.rstrip('/')}/{RELEASES_DIR}"


def current_path(s: Settings) -> str:
    return f"{s.deploy_dir.rstrip('/')}/{RELEASE_LINK}"


def release_name(version: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{version}"


def current_release(remote: Remote, s: Settings) -> str | None:
    """The release ``current`` points at (``releases/<name>``), or None."""
    result = run(remote.conn, ["readlink", current_path(s)], check=False)
    target = result.stdout.strip()
    return target if result.exited == 0 and target else None


def list_releases(remote: Remote, s: Settings) -> list[str]:
    """Release directory names, oldest first."""
    result = run(remote.conn, ["ls", "-1A", releases_path(s)], check=False)
    return sorted(name for name in result.stdout.split() if _RELEASE_NAME.match(name))


def source_dirs(proxy_dirs: Sequence[str], s: Settings | None = None) -> tuple[str, ...]:
    """What a release holds, as local absolute paths: compose/ and the proxy's directories of the checkout,
    the app's build directory (anywhere on disk; none for a ready-made image) and the user's compose file.
    Each lands in the release under its own name (see :attr:`Settings.build_dir`)."""
    build = (s.app_build,) if s is not None and s.app_build else ()
    extra = (s.extra_compose_file,) if s is not None and s.extra_compose_file else ()
    return (*(str(PROJECT_ROOT / d) for d in (COMPOSE_DIR, *proxy_dirs)), *build, *extra)


def shown(paths: Sequence[str]) -> str:
    """The release's entries as a person reads them: ``compose/, nginx/, server/``."""
    return ", ".join(Path(p).name + ("/" if Path(p).is_dir() else "") for p in paths)


def _source_kib(dirs: Sequence[str]) -> int:
    """What the sync sends at most (every file, as if none could be linked from the last release)."""
    total = 0
    for part in dirs:
        top = PROJECT_ROOT / part
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.is_file() and not path.is_symlink() and not {"__pycache__", ".pytest_cache", ".mypy_cache"} & set(
                path.parts
            ):
                total += path.stat().st_size
    return total // 1024 + 1


# One command before rsync: the releases directory, no staging left over, the release in use, and
# either the new release hard-linked from it (its digest is the local tree's) or the free space.
PREPARE = (
    'base=$1 link=$2 staging=$3 release=$4 digest=$5; '
    'mkdir -p -- "$base" && find "$base" -mindepth 1 -maxdepth 1 -name ".staging-*" -exec rm -rf {} + || exit 1; '
    'previous=$(readlink -- "$link" 2>/dev/null); printf "previous %s\\n" "$previous"; '
    'if [ -n "$previous" ] && [ -n "$digest" ] && [ "$(cat -- "$link/$6" 2>/dev/null)" = "$digest" ]; then '
    'if (cd -- "${link%/*}" && cp -al -- "$previous" "$staging") 2>/dev/null && mv -T -- "$staging" "$release"; '
    'then echo linked; exit 0; fi; rm -rf -- "$staging"; fi; '
    'df -Pk -- "$base" 2>/dev/null || :'
)
FINISH = 'if [ -n "$3" ]; then printf "%s\\n" "$3" > "$1/$4" || exit 1; fi; mv -T -- "$1" "$2"'
SWAP = 'readlink -- "$1" 2>/dev/null || :; ln -sfn -- "$2" "$1.next" && mv -T -- "$1.next" "$1"'


def _excluded(name: str, is_dir: bool) -> bool:
    return (is_dir and name in EXCLUDED_DIRS) or name.endswith(EXCLUDED_SUFFIXES)


def tree_digest(paths: Sequence[str]) -> str | None:
    """The digest of what a sync of ``paths`` sends (see the module docstring), or None when it cannot
    be told (an entry that is neither a file, a directory nor a symlink, or one that cannot be read):
    then the sync runs."""
    digest = hashlib.sha256(TREE_DIGEST_VERSION)

    def add(path: str, rel: str) -> bool:
        info = os.lstat(path)
        is_dir = stat.S_ISDIR(info.st_mode)
        if _excluded(rel.rpartition("/")[2], is_dir):
            return True
        head = f"{rel}\0{stat.S_IMODE(info.st_mode):o}\0{info.st_uid}\0{info.st_gid}\0"
        if stat.S_ISLNK(info.st_mode):
            digest.update(f"l\0{head}{os.readlink(path)}\n".encode(errors="surrogateescape"))
        elif stat.S_ISREG(info.st_mode):
            content = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    content.update(block)
            digest.update(f"f\0{head}{info.st_size}\0{content.hexdigest()}\n".encode(errors="surrogateescape"))
        elif is_dir:
            digest.update(f"d\0{head}\n".encode(errors="surrogateescape"))
            return all(add(f"{path}/{name}", f"{rel}/{name}") for name in sorted(os.listdir(path)))
        else:
            return False
        return True

    try:
        for top in paths:
            if not add(top.rstrip("/") or "/", Path(top).name):
                return None
    except OSError:
        return None
    return digest.hexdigest()


def upload(remote: Remote, s: Settings, version: str, progress: Progress, dirs: Sequence[str]) -> str:
    """rsync ``dirs`` (compose/, the proxy's, the build directory, see :func:`source_dirs`) into a new
    release directory; return its name. An unchanged tree is hard-linked on the host instead (see the
    module docstring)."""
    base = releases_path(s)
    name = release_name(version)
    staging = f"{base}/{STAGING_PREFIX}{name}"
    digest = tree_digest([str(PROJECT_ROOT / d) for d in dirs])
    # Staging left by an interrupted sync is removed (the lock is held: no other sync runs).
    lines = run(remote.conn, ["sh", "-c", PREPARE, "sh", base, current_path(s), staging, f"{base}/{name}",
                              digest or "", TREE_FILE]).stdout.splitlines()
    previous = lines[0].removeprefix("previous ").strip() if lines and lines[0].startswith("previous ") else ""
    if lines and lines[-1].strip() == "linked":
        progress.say(f"    unchanged since {previous} (digest {(digest or '')[:12]}): hard-linked on the host, "
                     "nothing sent")
        return name
    # A full disk is found before sending anything: rsync's own message about it comes from the far
    # side and is sometimes lost when the connection closes.
    fields = lines[-1].split() if len(lines) > 2 else []
    need, free = _source_kib(dirs), int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None
    if free is not None and free < need + SPACE_MARGIN_KIB:
        raise SyncFailed(f"rsync to {remote.name} not started: No space left on device at {base} "
                         f"({free} KiB free, the sync may need {need} KiB); the files in use are unchanged")
    args = ["rsync", "--archive", "--delete", "--compress", "--protect-args", "--stats",
            *(f"--exclude={pattern}" for pattern in RSYNC_EXCLUDES),
            "-e", rsync_shell(remote)]
    if previous:
        args.append(f"--link-dest={s.deploy_dir.rstrip('/')}/{previous}")
    args += [str(PROJECT_ROOT / d) for d in dirs]
    args.append(rsync_destination(remote, f"{staging}/"))
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=RSYNC_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(args, 124, "", f"rsync took longer than {RSYNC_TIMEOUT:g} s")
    if done.returncode != 0:
        run(remote.conn, ["rm", "-rf", staging], check=False)
        said = (done.stderr or done.stdout).strip() or "(rsync printed nothing)"
        raise SyncFailed(f"rsync to {remote.name} failed (exit {done.returncode}); the files in use are "
                         f"unchanged:\n{said}")
    run(remote.conn, ["sh", "-c", FINISH, "sh", staging, f"{base}/{name}", digest or "", TREE_FILE])
    progress.say(f"    {_transfer_summary(done.stdout)}")
    return name


def _transfer_summary(stats: str) -> str:
    wanted = ("Number of regular files transferred", "Total transferred file size")
    parts = [line.strip() for line in stats.splitlines() if line.strip().startswith(wanted)]
    return "; ".join(parts) or "synced"


def point_current(remote: Remote, s: Settings, target: str | None) -> str | None:
    """Make ``current`` point at ``target`` (``releases/<name>``) with one rename; None removes it.
    Returns what it pointed at before (one command: read, link, rename)."""
    link = current_path(s)
    if target is None:
        run(remote.conn, ["rm", "-f", link])
        return None
    return run(remote.conn, ["sh", "-c", SWAP, "sh", link, target]).stdout.strip() or None


def activate(remote: Remote, s: Settings, name: str) -> Swap:
    return Swap(point_current(remote, s, f"{RELEASES_DIR}/{name}"), name)


def undo(remote: Remote, s: Settings, swap: Swap) -> None:
    point_current(remote, s, swap.previous)


def newest_release_of(remote: Remote, s: Settings, version: str) -> str | None:
    names = [n for n in list_releases(remote, s) if n.endswith(f"Z-{version}")]
    return names[-1] if names else None


@dataclass(frozen=True)
class Pruned:
    removed: list[str]  # release directories removed
    kept: list[str]  # release directories left, oldest first


# The release in use (the first line, empty without ``current``) and the release directories, in one command.
LOOK = 'printf "%s\\n" "$(readlink -- "$1" 2>/dev/null)"; ls -1A -- "$2" 2>/dev/null || :'


def prune(remote: Remote, s: Settings) -> Pruned:
    """Remove release directories beyond the newest ``releases_kept`` (never the one in use)."""
    out = run(remote.conn, ["sh", "-c", LOOK, "sh", current_path(s), releases_path(s)]).stdout
    in_use_line, _, listing = out.partition("\n")
    names = sorted(name for name in listing.split() if _RELEASE_NAME.match(name))
    in_use = in_use_line.strip().rpartition("/")[2]
    stale = [n for n in names[:-s.releases_kept] if n != in_use]
    if stale:
        run(remote.conn, ["rm", "-rf", *(f"{releases_path(s)}/{n}" for n in stale)])
    return Pruned(stale, [n for n in names if n not in stale])
