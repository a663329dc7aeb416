"""One host's deploy and rollback: take the lock, sync and swap ``current``, then the engine's sequence.

The host's deploy lock (the engine's ``DeployLock``) is taken before the sync, so a second deploy
cannot swap files under a running one, and it is released on success, failure and Ctrl-C. The
engine is handed a :class:`HeldLock` so that it does not try to take the same lock again.
When the engine fails, ``current`` is pointed back at the release it had before.

A host without a running stack (the first deploy after ``setup``) is started with the engine's
``up`` from the synced release, and that run is recorded like any deploy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from handover import ops, record
from handover.engine import DeployOptions, Engine
from handover.errors import PreflightError
from handover.lock import DeployLock
from handover.progress import Progress
from handover.record import RunRecord, StepRecord
from handover.settings import Settings, check_version
from handover.shell import interruptible

from . import hostready, secrets, sync
from .connect import Remote

FRONT_DOOR = "fab"


class HeldLock(DeployLock):
    """The host's lock, already held by this run: the engine's acquire and release do nothing."""

    def acquire(self, info: dict[str, str]) -> None:
        return None

    def release(self) -> None:
        return None


@contextmanager
def host_lock(remote: Remote, s: Settings, action: str, version: str) -> Iterator[None]:
    lock = DeployLock(remote.conn, s.state_path)
    with interruptible():  # Ctrl-C stops at the next command; the lock is released below
        lock.acquire(ops.lock_info(action, version, via=FRONT_DOOR, host=remote.name))
        try:
            yield
        finally:
            lock.release()


def _engine(remote: Remote, s: Settings, progress: Progress, extra_env: dict[str, str] | None = None) -> Engine:
    engine = Engine(remote.conn, s, progress, extra_env=extra_env)
    engine.lock = HeldLock(remote.conn, s.state_path)
    return engine


def _start_or_deploy(remote: Remote, s: Settings, version: str, force: bool, progress: Progress) -> RunRecord:
    engine = _engine(remote, s, progress, ops.base_images(remote.conn, s, progress))
    facts = engine.facts()
    if facts.proxy is not None and facts.live:
        return engine.deploy(DeployOptions(version=version, force=force, host=remote.name))
    progress.say("==> no stack is serving on this host yet: starting it from the synced release")
    rec = engine.up(version)
    rec.host, rec.action = remote.name, "deploy"
    record.append(remote.conn, s.state_path, rec)
    return rec


def deploy(remote: Remote, version: str, *, force: bool, progress: Progress) -> RunRecord:
    """Sync the sources into a new release, swap ``current`` to it, and deploy ``version`` from it."""
    version = check_version(version)
    base = remote.target.settings
    dirs = hostready.prepare_dirs(remote, base)
    if not dirs.ok:
        raise PreflightError(f"{remote.name}: {dirs.detail}")
    # Before anything is synced: say exactly what is missing (the base image step would otherwise fail first).
    ops.require(ops.host_checks(remote.conn), "the host")
    with host_lock(remote, base, "deploy", version):
        s = secrets.with_secrets(remote, base, upload=True)
        progress.say(f"==> sync: compose/, nginx/, server/ -> {remote.name}:{sync.releases_path(s)}/")
        t0 = time.monotonic()
        name = sync.upload(remote, s, version, progress)
        swap = sync.activate(remote, s, name)
        sync_step = StepRecord("sync", round(time.monotonic() - t0, 3), "ok", name)
        progress.say(f"    ok in {sync_step.seconds:.2f} s (current -> {sync.RELEASES_DIR}/{name})")
        try:
            rec = _start_or_deploy(remote, s, version, force, progress)
        except BaseException:
            sync.undo(remote, s, swap)
            progress.say(f"    current -> {swap.previous or '(none)'} again")
            raise
        rec.steps.insert(0, sync_step)
        removed = sync.prune(remote, s)
        if removed:
            progress.say(f"    removed {len(removed)} old release dir(s); kept {s.releases_kept}")
    return rec


def dry_run(remote: Remote, version: str, *, force: bool, progress: Progress) -> RunRecord:
    """The plan from the host's real state; nothing is synced, locked or changed."""
    version = check_version(version)
    s = remote.target.settings
    engine = _engine(remote, s, progress)
    facts = engine.facts()
    if facts.proxy is None:
        progress.say(f"==> plan (dry run): sync a new release to {sync.releases_path(s)}/, swap current, "
                     f"then start the stack with {version} (nothing is serving yet)")
        rec = RunRecord(action="deploy", version=version, project=s.project, host=remote.name)
        rec.finish("planned")
        return rec
    progress.say(f"==> plan (dry run): sync a new release to {sync.releases_path(s)}/ and swap current")
    return engine.deploy(DeployOptions(version=version, dry_run=True, force=force, host=remote.name))


def rollback(remote: Remote, to: str | None, progress: Progress) -> RunRecord:
    """Swap back to an earlier image with the zero-downtime sequence: no sync, no build.

    ``current`` is pointed at the newest kept release directory of that version, if there is one,
    so compose and nginx use the files that went with it.
    """
    s = secrets.with_secrets(remote, remote.target.settings, upload=False)
    version = check_version(to) if to else ops.previous_version(remote.conn, s)
    with host_lock(remote, s, "rollback", version):
        release = sync.newest_release_of(remote, s, version)
        current = sync.current_release(remote, s)
        swap = None
        if release and current != f"{sync.RELEASES_DIR}/{release}":
            swap = sync.activate(remote, s, release)
            progress.say(f"==> files: current -> {sync.RELEASES_DIR}/{release}")
        try:
            return _engine(remote, s, progress).deploy(
                DeployOptions(version=version, build=False, action="rollback", host=remote.name))
        except BaseException:
            if swap:
                sync.undo(remote, s, swap)
            raise
