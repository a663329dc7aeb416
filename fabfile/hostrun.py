"""One host's deploy and rollback: the engine's steps, with the release files as steps of their own.

A deploy adds a ``sync`` step right after the engine's lock: the sources go to the host into a new
release directory, the app's secrets file beside it as that release's own copy, and ``current`` is
swapped to it (undone if a later step fails). A rollback adds a ``files`` step instead, pointing
``current`` (and the app's secrets) at the newest kept release of the version it goes back to.
Everything else — the plan, the recovery, the one record per run — is the engine's. A host with
nothing serving yet gets the engine's first start. With ``app_ship`` a deploy gets the app's image by a
``ship`` step (this machine's image streamed to the host, :class:`Ship`) instead of a build or a pull.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from handover import ops
from handover.backends import make_backend
from handover.backends.compose import ComposeBackend
from handover.checks import require
from handover.engine import DeployOptions, Engine
from handover.errors import HandoverError, PreflightError
from handover.progress import Progress
from handover.proxies import front
from handover.record import RunRecord
from handover.settings import Settings, check_version
from handover.shell import run
from handover.steps import Run, Step

from . import hostready, secrets, sync
from .connect import Remote, ssh_command

FRONT_DOOR = "fab"
SHIP_TIMEOUT = 1800.0
SHIP_LOG_LINES = 5


def local_image_id(ref: str) -> str:
    """The ID of ``ref`` in this machine's Docker engine, or "" when it is not there."""
    try:
        done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                              text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def ship_argv(remote: Remote, ref: str) -> tuple[list[str], list[str]]:
    """The two ends of the stream: ``docker save`` here, ``docker load`` on the host over SSH."""
    return ["docker", "save", ref], ssh_command(remote, ["docker", "load", "--quiet"])


def stream_image(remote: Remote, ref: str) -> None:
    """``docker save REF | ssh host docker load``: streamed, never written to a file on either side."""
    save_argv, load_argv = ship_argv(remote, ref)
    save = subprocess.Popen(save_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert save.stdout is not None
    try:
        load = subprocess.run(load_argv, stdin=save.stdout, capture_output=True, text=True, timeout=SHIP_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        save.kill()
        save.wait()
        raise HandoverError(f"sending {ref} to {remote.name} took longer than {SHIP_TIMEOUT:g} s; no container was "
                            "started or stopped") from None
    finally:
        save.stdout.close()
    save_err = (save.stderr.read() if save.stderr else b"").decode(errors="replace")
    save.wait()
    if save.returncode != 0 or load.returncode != 0:
        # The end that failed first speaks: a failed save leaves the load an empty stream, a failed ssh or
        # load leaves the save only a broken pipe to report.
        save_first = save.returncode != 0 and (load.returncode == 0 or "broken pipe" not in save_err.lower())
        words = save_err.strip() if save_first else load.stderr.strip() or load.stdout.strip()
        said = "\n".join(words.splitlines()[-SHIP_LOG_LINES:])
        end = (f"docker save exited {save.returncode}" if save_first
               else f"ssh {remote.name} docker load exited {load.returncode}")
        raise HandoverError(f"sending {ref} to {remote.name} failed ({end}); no container was started or "
                            f"stopped:\n{said}")


class Ship(Step):
    """``app_ship``: the ready-made image goes from this machine's Docker to the host, streamed over
    SSH, and only when the host does not have that image ID already (then nothing is sent)."""

    name = "ship"

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def _ids(self, run: Run) -> tuple[str, str]:
        return local_image_id(run.image), run.engine.backend.image_id(run.version)

    def describe(self, run: Run) -> str:
        here, there = self._ids(run)
        if here and here == there:
            return f"{run.image} is on {self.remote.name} already (image {here[:19]}): nothing to send"
        return f"{run.image} from this machine to {self.remote.name} (docker save | ssh docker load, streamed)"

    def check(self, run: Run) -> None:
        if not local_image_id(run.image):
            raise HandoverError(f"image {run.image} is not in this machine's Docker: app_ship sends it from here; "
                                "build or pull it first (nothing was changed)")

    def run(self, run: Run) -> str:
        here, there = self._ids(run)
        if here and here == there:
            return "on the host already, nothing sent"
        stream_image(self.remote, run.image)
        loaded = run.engine.backend.image_id(run.version)
        if loaded != here:
            raise HandoverError(f"{run.image} on {self.remote.name} has image ID {loaded or '(none)'} after the "
                                f"transfer, not {here}; no container was started or stopped")
        return "sent"


class Sync(Step):
    """The sources into a new release directory with its own copy of the secrets file; ``current``
    swapped to it, and the run's compose commands pointed at that release's secrets."""

    name = "sync"

    def __init__(self, remote: Remote, settings: Settings, secrets_of: secrets.Secrets) -> None:
        self.remote, self.settings, self.secrets = remote, settings, secrets_of
        self.swap: sync.Swap | None = None

    def describe(self, run: Run) -> str:
        dirs = sync.shown(sync.source_dirs(run.engine.proxy.source_dirs, self.settings))
        with_secrets = " with its secrets file" if self.secrets.directory else ""
        return (f"{dirs} -> {self.remote.name}:{sync.releases_path(self.settings)}/{with_secrets}, "
                "then swap current to it")

    def run(self, run: Run) -> str:
        name = sync.upload(self.remote, self.settings, run.version, run.engine.progress,
                           sync.source_dirs(run.engine.proxy.source_dirs, self.settings))
        local = self.remote.target.env_file
        if local is not None:
            try:
                secrets.push(self.secrets, local, name)
            except BaseException:
                # A release without its secrets must never be used (a rollback would find it).
                run_quietly(self.remote, ["rm", "-rf", f"{sync.releases_path(self.settings)}/{name}"])
                raise
        self.swap = sync.activate(self.remote, self.settings, name)
        run.engine.backend.set_env(self.secrets.env(name))
        return f"current -> {sync.RELEASES_DIR}/{name}"

    def undo(self, run: Run) -> None:
        if self.swap is not None:
            sync.undo(self.remote, self.settings, self.swap)
            run.engine.backend.set_env(self.secrets.env(secrets.release_of(self.swap.previous)))
            run.engine.progress.say(f"    current -> {self.swap.previous or '(none)'} again")


class Files(Step):
    """A rollback uses the files and the secrets that went with the version it goes back to, when
    they are kept."""

    name = "files"

    def __init__(self, remote: Remote, settings: Settings, secrets_of: secrets.Secrets) -> None:
        self.remote, self.settings, self.secrets = remote, settings, secrets_of
        self.swap: sync.Swap | None = None

    def _release(self, version: str) -> str | None:
        release = sync.newest_release_of(self.remote, self.settings, version)
        if release is None or sync.current_release(self.remote, self.settings) == f"{sync.RELEASES_DIR}/{release}":
            return None
        return release

    def describe(self, run: Run) -> str | None:
        release = self._release(run.version)
        return f"current -> {sync.RELEASES_DIR}/{release}" if release else None

    def check(self, run: Run) -> None:
        if self.secrets.directory is None:
            return
        release = self._release(run.version) or secrets.release_of(sync.current_release(self.remote, self.settings))
        if release is None or not secrets.exists(self.secrets, release):
            raise HandoverError(
                f"{self.remote.name}: the secrets file of release {release or '(none)'} is not on the host "
                f"({self.secrets.path(release or '<release>')}): it was deployed without deploy.env_file or before "
                f"each release kept its own; deploy version {run.version} instead of rolling back to it")

    def run(self, run: Run) -> None:
        release = self._release(run.version)
        if release:
            self.swap = sync.activate(self.remote, self.settings, release)
            run.engine.backend.set_env(self.secrets.env(release))

    def undo(self, run: Run) -> None:
        if self.swap is not None:
            sync.undo(self.remote, self.settings, self.swap)
            run.engine.backend.set_env(self.secrets.env(secrets.release_of(self.swap.previous)))


def run_quietly(remote: Remote, argv: list[str]) -> None:
    run(remote.conn, argv, check=False)


def _engine(remote: Remote, progress: Progress) -> tuple[Engine, Settings, secrets.Secrets]:
    """The host's engine, its compose commands pointed at the secrets of the release in use (the
    sync or files step points them at another release's)."""
    s = remote.target.settings
    secrets_of = secrets.of(remote, s)
    current = secrets.release_of(sync.current_release(remote, s)) if secrets_of.directory else None
    return Engine(remote.conn, s, progress, extra_env=secrets_of.env(current)), s, secrets_of


def _ready(remote: Remote) -> None:
    """The deploy directory exists and docker + Compose v2 answer, before anything else runs. When the
    host's engine answers through the Engine API (handover.dockerapi) that is the docker check, and the
    Compose check rides on the directories' command: one SSH command for all three."""
    backend = make_backend(remote.conn, remote.target.settings)
    if isinstance(backend, ComposeBackend) and backend.api is not None:
        dirs, compose = hostready.prepare_dirs_and_compose(remote, remote.target.settings)
        if not dirs.ok:
            raise PreflightError(f"{remote.name}: {dirs.detail}")
        require(backend.host_checks(compose), "the host")
        return
    dirs = hostready.prepare_dirs(remote, remote.target.settings)
    if not dirs.ok:
        raise PreflightError(f"{remote.name}: {dirs.detail}")
    require(backend.host_checks(), "the host")


def deploy(remote: Remote, version: str, *, force: bool, progress: Progress, dry_run: bool = False,
           after_switch: Sequence[Step] = ()) -> RunRecord:
    """Sync the sources into a new release, swap ``current`` to it, and deploy ``version`` from it."""
    version = check_version(version)
    if not dry_run:
        _ready(remote)
        front.claim(remote.conn, remote.target.settings, progress)
    engine, s, secrets_of = _engine(remote, progress)
    engine.lock.state_made = not dry_run  # by _ready, a moment ago
    rec = engine.deploy(DeployOptions(version=version, force=force, dry_run=dry_run, host=remote.name,
                                      via=FRONT_DOOR, after_lock=[Sync(remote, s, secrets_of)],
                                      after_switch=after_switch, ship=Ship(remote) if s.app_ship else None))
    if rec.result == "success":
        pruned = sync.prune(remote, s)
        secrets.prune(secrets_of, pruned.kept)
        if pruned.removed:
            progress.say(f"    removed {len(pruned.removed)} old release dir(s) and their secrets; "
                         f"kept {s.releases_kept}")
    return rec


def dry_run(remote: Remote, version: str, *, force: bool, progress: Progress,
            after_switch: Sequence[Step] = ()) -> RunRecord:
    """The plan from the host's real state; nothing is synced, locked or changed."""
    return deploy(remote, version, force=force, progress=progress, dry_run=True, after_switch=after_switch)


def rollback(remote: Remote, to: str | None, progress: Progress, after_switch: Sequence[Step] = ()) -> RunRecord:
    """Swap back to an earlier image with the zero-downtime sequence: no sync, no build."""
    engine, s, secrets_of = _engine(remote, progress)
    version = check_version(to) if to else ops.previous_version(remote.conn, s)
    return engine.deploy(DeployOptions(version=version, build=False, action="rollback", host=remote.name,
                                       via=FRONT_DOOR, after_lock=[Files(remote, s, secrets_of)],
                                       after_switch=after_switch))

