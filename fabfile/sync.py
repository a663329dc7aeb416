"""Release directories on a host: rsync the sources into a new one, swap ``current`` atomically.

Layout below ``deploy_dir``::

    releases/<stamp>-<version>/{compose,<proxy>,server} one per deploy, the newest N kept
    releases/.staging-<stamp>/                          rsync's target while a sync runs
    current -> releases/<stamp>-<version>               relative symlink, replaced with rename(2)

rsync writes only into a fresh staging directory (so ``--delete`` cannot reach anything else) and
hard-links unchanged files from the release in use (``--link-dest``), so only changes travel. A
failed sync removes the staging directory and leaves ``current`` as it was. The caller holds the
host's deploy lock for all of this.
"""

from __future__ import annotations

import re
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


def _free_kib(remote: Remote, directory: str) -> int | None:
    """Free space where ``directory`` is on the host (``df -Pk``), or None if it cannot be read."""
    out = run(remote.conn, ["df", "-Pk", directory], check=False).stdout.splitlines()
    fields = out[-1].split() if len(out) > 1 else []
    return int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None


def upload(remote: Remote, s: Settings, version: str, progress: Progress, dirs: Sequence[str]) -> str:
    """rsync ``dirs`` (compose/, the proxy's, the build directory, see :func:`source_dirs`) into a new
    release directory; return its name."""
    base = releases_path(s)
    name = release_name(version)
    staging = f"{base}/{STAGING_PREFIX}{name}"
    run(remote.conn, ["mkdir", "-p", base])
    # Staging left by an interrupted sync (the lock is held: no other sync runs).
    run(remote.conn, ["find", base, "-mindepth", "1", "-maxdepth", "1", "-name", f"{STAGING_PREFIX}*",
                      "-exec", "rm", "-rf", "{}", "+"])
    # A full disk is found before sending anything: rsync's own message about it comes from the far
    # side and is sometimes lost when the connection closes.
    need, free = _source_kib(dirs), _free_kib(remote, base)
    if free is not None and free < need + SPACE_MARGIN_KIB:
        raise SyncFailed(f"rsync to {remote.name} not started: No space left on device at {base} "
                         f"({free} KiB free, the sync may need {need} KiB); the files in use are unchanged")
    previous = current_release(remote, s)
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
    run(remote.conn, ["mv", "-T", staging, f"{base}/{name}"])
    progress.say(f"    {_transfer_summary(done.stdout)}")
    return name


def _transfer_summary(stats: str) -> str:
    wanted = ("Number of regular files transferred", "Total transferred file size")
    parts = [line.strip() for line in stats.splitlines() if line.strip().startswith(wanted)]
    return "; ".join(parts) or "synced"


def point_current(remote: Remote, s: Settings, target: str | None) -> None:
    """Make ``current`` point at ``target`` (``releases/<name>``) with one rename; None removes it."""
    link = current_path(s)
    if target is None:
        run(remote.conn, ["rm", "-f", link])
        return
    tmp = f"{link}.next"
    run(remote.conn, ["ln", "-sfn", target, tmp])
    run(remote.conn, ["mv", "-T", tmp, link])


def activate(remote: Remote, s: Settings, name: str) -> Swap:
    previous = current_release(remote, s)
    point_current(remote, s, f"{RELEASES_DIR}/{name}")
    return Swap(previous, name)


def undo(remote: Remote, s: Settings, swap: Swap) -> None:
    point_current(remote, s, swap.previous)


def newest_release_of(remote: Remote, s: Settings, version: str) -> str | None:
    names = [n for n in list_releases(remote, s) if n.endswith(f"Z-{version}")]
    return names[-1] if names else None


def prune(remote: Remote, s: Settings) -> list[str]:
    """Remove release directories beyond the newest ``releases_kept`` (never the one in use)."""
    names = list_releases(remote, s)
    in_use = (current_release(remote, s) or "").rpartition("/")[2]
    stale = [n for n in names[:-s.releases_kept] if n != in_use]
    if stale:
        run(remote.conn, ["rm", "-rf", *(f"{releases_path(s)}/{n}" for n in stale)])
    return stale
