"""The deploy engine: reads the real state, picks the steps, runs them, recovers, records.

Every run (a deploy, a rollback, the first start) goes the same way:

1. **facts** — the app's instances by ID with version and health, and which of them the proxy
   routes to. A rerun after an interruption therefore converges instead of stacking containers.
2. **plan** — the steps of the run (:mod:`handover.plans`), each with its plan line from those
   facts; ``--dry-run`` prints exactly this and stops.
3. **checks** — what each step can verify before anything changes (e.g. a rollback's image).
4. **steps** — run in order, each timed into the record. A failure or Ctrl-C undoes the steps
   done so far, newest first (the old version keeps serving), unless the drain had begun: then the
   new version serves and the run is finished instead.
5. **record** — one line per run in the release log: ``success``, ``failed`` (nothing had
   started) or ``rolled-back`` (the new version was started and removed again), with the step
   that failed and its error.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import images, plans, record
from .backends import HEALTHY, UNHEALTHY, Backend, Instance, make_backend
from .errors import CommandError, HandoverError, HealthCheckFailed, LockHeld, PreflightError
from .lock import DeployLock, lock_info
from .progress import Progress
from .proxies import Proxy, make_proxy
from .record import RunRecord, StepRecord
from .settings import Settings, check_version
from .shell import Runner, interruptible
from .steps import Run, Step

STARTING = "starting"  # Docker's word for a container whose health is not known yet

LOG_LINES_ON_FAILURE = 40
MAX_ERROR_CHARS = 4000
INTERRUPTED = "interrupted by the user"


@dataclass
class DeployOptions:
    version: str
    action: str = "deploy"  # deploy, rollback, up
    dry_run: bool = False
    force: bool = False
    build: bool = True
    app_env: dict[str, str] = field(default_factory=dict)
    host: str = "local"
    via: str = ""  # the front door, for the lock's holder file
    # Steps of the front door, run right after the lock (e.g. the sync of a new release).
    after_lock: Sequence[Step] = ()
    # The step that sends a ready-made image to the host (``app_ship``; the Fabric front door has one).
    ship: Step | None = None
    # Steps run right after traffic reaches the new version (the post-switch hook).
    after_switch: Sequence[Step] = ()
    # Called with the finished record just before it is stored (e.g. to add the probe's numbers).
    before_record: Callable[[RunRecord], None] | None = None


@dataclass
class Facts:
    """What is true on the host before a run changes anything."""

    instances: list[Instance]
    live_ids: set[str]  # short IDs of the instances the proxy routes to
    proxy: Instance | None

    @property
    def live(self) -> list[Instance]:
        return [c for c in self.instances if c.short_id in self.live_ids]

    @property
    def healthy_live(self) -> list[Instance]:
        return [c for c in self.live if c.is_healthy]

    @property
    def leftovers(self) -> list[Instance]:
        """App instances the proxy does not route to: left by an interrupted or failed run."""
        return [c for c in self.instances if c.short_id not in self.live_ids]

    @property
    def live_version(self) -> str:
        return ",".join(sorted({c.version for c in self.live}))

    @property
    def serving(self) -> bool:
        return self.proxy is not None and any(c.status == "running" for c in self.live)


class Engine:
    def __init__(self, runner: Runner, settings: Settings, progress: Progress | None = None, *,
                 extra_env: Mapping[str, str] | None = None, backend: Backend | None = None,
                 proxy: Proxy | None = None) -> None:
        self.runner = runner
        self.settings = settings
        self.progress = progress or Progress()
        self.backend = backend or make_backend(runner, settings)
        self.proxy = proxy or make_proxy(runner, settings, self.backend)
        self.backend.set_env({**self.proxy.build_env(), **(extra_env or {})})
        self.lock = DeployLock(runner, settings.state_path, notify=self.progress.warn)
        self._health_why: dict[str, str] = {}  # instance ID -> what its health path answered last

    # -- facts -------------------------------------------------------------------------------------
    def facts(self) -> Facts:
        try:
            with self.backend.one_look():
                instances = self.backend.instances()
                proxy = self.proxy.running()
        except CommandError:
            self.backend.diagnose()  # names a missing engine or Compose v2; else the error stands
            raise
        return Facts(instances, self.proxy.live_ids(), proxy)

    # -- runs --------------------------------------------------------------------------------------
    def up(self, version: str) -> RunRecord:
        """Build and start the stack, or converge a partly running one; idempotent."""
        return self.deploy(DeployOptions(version=version, action="up"))

    def deploy(self, options: DeployOptions) -> RunRecord:
        with interruptible():
            return self._deploy(options)

    def image_source(self) -> str:
        """Where the app's image comes from: built (``app_build``), this engine's own (``app_ship``), or pulled."""
        s = self.settings
        return "build" if s.app_build else "local" if s.app_ship else "pull"

    def plan(self, options: DeployOptions, facts: Facts) -> list[Step]:
        """The steps of this run; empty when there is nothing to do."""
        source = self.image_source()
        if self.settings.swarm:
            return self._swarm_plan(options, facts)
        if options.action == "up":
            if facts.proxy is not None and facts.healthy_live:
                return []
            return plans.first_start(after_lock=options.after_lock, after_switch=options.after_switch,
                                     source=source, ship=options.ship, proxy_first=self.settings.tcp)
        if not facts.serving:
            if options.action == "rollback":
                raise HandoverError(f"nothing of {self.settings.project!r} is serving; there is nothing to roll back")
            return plans.first_start(after_lock=options.after_lock, after_switch=options.after_switch,
                                     source=source, ship=options.ship, proxy_first=self.settings.tcp)
        if not options.force and all(c.version == options.version for c in facts.live):
            # Nothing to deploy; but what an interrupted run left (containers, its lock) is cleared.
            return plans.converge() if facts.leftovers or self.lock.holder() is not None else []
        return plans.deploy(build=options.build, after_lock=options.after_lock, after_switch=options.after_switch,
                            source=source, ship=options.ship)

    def _swarm_plan(self, options: DeployOptions, facts: Facts) -> list[Step]:
        """A stack on a swarm: Swarm rolls it; nothing to do when the version asked for is what runs."""
        if options.action == "rollback" and not facts.serving:
            raise HandoverError(f"nothing of {self.settings.project!r} is serving; there is nothing to roll back")
        live = facts.live
        if facts.serving and live and all(c.version == options.version for c in live) and (
                options.action == "up" or not options.force) and len(live) >= self.settings.replicas:
            return []
        return plans.swarm(after_lock=options.after_lock, after_switch=options.after_switch)

    def planned(self, run: Run, steps: Iterable[Step]) -> list[tuple[Step, str]]:
        """Each step this run takes, with its plan line."""
        lines = ((step, step.describe(run)) for step in steps)
        return [(step, line) for step, line in lines if line is not None]

    def _deploy(self, options: DeployOptions) -> RunRecord:
        version = check_version(options.version)
        s = self.settings
        rec = RunRecord(action=options.action, version=version, project=s.project, host=options.host,
                        image=f"{s.app_image}:{version}")
        try:
            facts = self.facts()
            rec.previous_version = facts.live_version
            run = Run(self, options, facts, rec, old=facts.live if facts.serving else [])
            rec.old_containers = [c.name for c in run.old]
            steps = self.planned(run, self.plan(options, facts))
        except HandoverError as exc:
            rec.fail("preflight", _error_text(exc))
            if not options.dry_run:
                self._store(options, rec)
            exc.record = rec
            raise
        if options.dry_run:
            self.progress.say("==> plan (dry run: nothing changes)")
            for step, line in steps:
                self.progress.say(f"    {step.name}: {line}")
                rec.steps.append(StepRecord(step.name, 0.0, "planned", line))
            if not steps:
                self.progress.say(f"    {self._nothing_to_do(options, facts)}")
            rec.finish("planned")
            return rec
        if not steps:
            self.progress.say(f"==> {self._nothing_to_do(options, facts)}")
            rec.finish("unchanged")
            if options.action != "up":
                self._store(options, rec)
            return rec
        return self._execute(run, steps)

    def _nothing_to_do(self, options: DeployOptions, facts: Facts) -> str:
        if options.action == "up":
            return f"already up: {', '.join(c.name for c in facts.healthy_live)} ({facts.live_version})"
        return f"version {options.version} is already live; nothing to do (use --force to redeploy)"

    def _execute(self, run: Run, steps: list[tuple[Step, str]]) -> RunRecord:
        rec = run.record
        for step, _ in steps:
            try:
                step.check(run)
            except (HandoverError, KeyboardInterrupt) as exc:
                rec.fail(step.name, INTERRUPTED if isinstance(exc, KeyboardInterrupt) else _error_text(exc))
                self._store(run.options, rec)
                if isinstance(exc, HandoverError):
                    exc.record = rec
                raise
        started: list[Step] = []
        try:
            for step, line in steps:
                started.append(step)
                with self.progress.step(rec, step.name, line) as progress_line:
                    detail = step.run(run)
                    if detail:
                        progress_line.detail = detail
            rec.finish("success")
            return rec
        except BaseException as exc:
            self._recover(run, started, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            error = exc if isinstance(exc, HandoverError) else HandoverError(
                f"{started[-1].name} failed: {type(exc).__name__}: {exc}")
            error.record = rec
            if error is exc:
                raise
            raise error from exc
        finally:
            for step in reversed(started):
                self._guarded(f"release of {step.name}", lambda step=step: step.release(run))  # type: ignore[misc]
            if self._store(run.options, rec):
                self.progress.say(f"    record appended to {self.settings.state_path}/{record.RELEASE_LOG}")

    def _recover(self, run: Run, started: list[Step], exc: BaseException) -> None:
        rec, failed = run.record, started[-1]
        interrupted = isinstance(exc, KeyboardInterrupt)
        error = INTERRUPTED if interrupted else _error_text(exc)
        if interrupted:
            self.progress.warn(f"interrupted at {failed.name}")
        if any(step.forward for step in started):
            # The drain had begun: the new version serves. Finish an interrupted step, undo nothing.
            if interrupted:
                self._guarded(f"finishing {failed.name}", lambda: failed.complete(run))
                if run.rolled_back:
                    rec.fail(failed.name, f"{INTERRUPTED} during {failed.name}; Swarm rolled the update back",
                             rolled_back=True)
                else:
                    rec.finish("success", f"{INTERRUPTED} during {failed.name}, which was finished")
            else:  # (a Swarm rollout that Swarm rolled back counts as rolled back, the old version serving)
                rec.fail(failed.name, error, rolled_back=run.rolled_back)
            return
        for step in reversed(started):
            self._guarded(f"undo of {step.name}", lambda step=step: step.undo(run))  # type: ignore[misc]
        if run.proxy_changed:
            self._guarded("reloading the proxy's previous configuration", lambda: self.proxy.configure())
        rec.fail(failed.name, error, rolled_back=bool(run.new))

    def _guarded(self, what: str, action: Callable[[], object]) -> None:
        """Recovery goes on whatever one part of it meets; each problem is said, none is hidden."""
        try:
            action()
        except BaseException as exc:  # a second Ctrl-C or a lost connection must not stop the recovery
            self.progress.warn(f"{what} failed: {_first_line(exc) or type(exc).__name__}")

    def _store(self, options: DeployOptions, rec: RunRecord) -> bool:
        """Append the run's record; say so and go on when it cannot be written (e.g. a full disk)."""
        if options.before_record is not None:
            options.before_record(rec)
        try:
            record.append(self.runner, self.settings.state_path, rec)
        except HandoverError as exc:
            self.progress.warn(f"could not write the run record: {exc}")
            return False
        return True

    # -- what the steps share ----------------------------------------------------------------------
    def use_base_images(self, *, with_proxy: bool = False, app: bool = True) -> None:
        """Build from base images that exist here: pulled, or made locally when they cannot be pulled."""
        env = {}
        if app:
            env["BASE_IMAGE"] = images.ensure_base_image(self.runner, self.settings.base_image, self.progress)
        if with_proxy:
            env.update(self.proxy.build_env(images.ensure_base_image(self.runner, self.proxy.base_image,
                                                                     self.progress)))
        self.backend.set_env(env)

    def health_of(self, instances: Sequence[Instance]) -> list[Instance]:
        """The current state of ``instances``. With ``deploy.app_health`` (a TCP app), an instance is
        healthy when it runs, has not restarted, is not unhealthy by its own Docker check, and
        answers the health path with 2xx; until then it counts as starting, and why is kept for the
        error message (see :meth:`describe`)."""
        current = self.backend.refresh(instances)
        path = self.settings.app_health
        if not path:
            return current
        seen = []
        for c in current:
            if c.status == "running" and not c.restarts and c.health != UNHEALTHY:
                why = self.proxy.check_http(c, path)
                self._health_why[c.id] = why
                c = dataclasses.replace(c, health=STARTING if why else HEALTHY)
            seen.append(c)
        return seen

    def describe(self, instance: Instance) -> str:
        """How ``instance`` is doing, with what its health path answered last, if that failed."""
        why = self._health_why.get(instance.id, "") if not instance.is_healthy else ""
        return f"{instance.describe()}: {why}" if why else instance.describe()

    def wait_healthy(self, new: Sequence[Instance]) -> list[Instance]:
        timeout = self.settings.health_timeout
        t0 = time.monotonic()
        while True:
            mark = self.backend.mark()
            current = self.health_of(new)
            healthy = [c for c in current if c.is_healthy]
            if len(healthy) == len(new):
                return current
            dead = [c for c in current if c.has_failed]
            missing = {c.id for c in new} - {c.id for c in current}
            unchecked = [c for c in current if c.status == "running" and not c.health and not self.settings.app_health]
            if unchecked:  # Docker reports no health at all: waiting would only run into the timeout
                raise HealthCheckFailed(
                    f"{', '.join(c.name for c in unchecked)} has no health check: its image has no HEALTHCHECK and "
                    "deploy.app_health is \"\"; set deploy.app_health to a path the app answers with 200 (such as "
                    "/healthz, with deploy.app_port), or give its Dockerfile a HEALTHCHECK")
            if dead or missing:
                what = ", ".join(self.describe(c) for c in dead)
                raise HealthCheckFailed(what or f"containers vanished: {sorted(missing)}")
            if time.monotonic() - t0 > timeout:
                raise HealthCheckFailed(
                    f"not healthy within {timeout:g} s: "
                    + ", ".join(self.describe(c) for c in current if not c.is_healthy)
                )
            self.progress.waiting(f"{len(healthy)}/{len(new)} healthy, {time.monotonic() - t0:.1f} s")
            # The next look comes after the poll interval, or as soon as the engine reports a change.
            self.backend.wait_change(new, mark, self.settings.health_poll_interval)

    def verify_after_switch(self, new: Sequence[Instance]) -> None:
        """The new instances must stay running and healthy for a short while after the switch,
        while the old ones are still there to switch back to."""
        deadline = time.monotonic() + self.settings.post_switch_check
        while True:
            mark = self.backend.mark()
            current = {c.id: c for c in self.health_of(new)}
            bad = [current.get(c.id, c) for c in new
                   if c.id not in current or not current[c.id].is_healthy or current[c.id].restarts > c.restarts]
            if bad:
                raise HealthCheckFailed(
                    "after the switch: " + ", ".join(self.describe(c) for c in bad) + f"\n{self.failure_logs(bad)}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # A crash or a failing health check ends the wait at once (with the engine's API).
            self.backend.wait_change(new, mark, min(self.settings.health_poll_interval, left))

    def drain(self, old: Sequence[Instance]) -> list[str]:
        """Run ``app_pre_stop`` in each of ``old``, stop them with their grace period (the app moves its
        clients), then remove them by ID. A pre_stop that fails or hangs is reported (returned and said)
        and the stop goes on: the new version serves already, and the old one must not stay behind."""
        self.proxy.drop_fallback()
        warnings = self.pre_stop(old)
        self.backend.stop(old, self.settings.stop_grace_period)
        self.backend.remove(old)
        self.proxy.forget(old)
        return warnings

    def pre_stop(self, old: Sequence[Instance]) -> list[str]:
        s = self.settings
        if not s.app_pre_stop:
            return []
        warnings = []
        for c in self.backend.refresh(old):  # only those still running (a finished drain's rerun skips the rest)
            if c.status != "running":
                continue
            wrong = self.backend.pre_stop(c, s.app_pre_stop, s.app_pre_stop_timeout)
            if wrong:
                warning = f"pre_stop in {c.name} {wrong}; stopped it anyway"
                self.progress.warn(warning)
                warnings.append(warning)
        return warnings

    def discard(self, instances: Sequence[Instance]) -> None:
        """Remove instances that never received traffic (a failed or rolled-back start)."""
        self.backend.remove(instances)
        self.proxy.forget(instances)

    def failure_logs(self, instances: Sequence[Instance]) -> str:
        parts = []
        for c in instances:
            parts.append(f"--- last {LOG_LINES_ON_FAILURE} log lines of {c.name} ({c.short_id}) ---")
            parts.append(self.backend.logs(c, LOG_LINES_ON_FAILURE) or "(no output)")
        return "\n".join(parts)

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove this project's release images beyond the last ``releases_kept`` (and the live ones).

        Only versions this project's release log knows are candidates: images other projects on the
        same engine built are never touched, and the engine refuses to remove an image still in use.
        """
        s = self.settings
        kept = set(keep) | {c.version for c in self.backend.instances()}
        known: list[str] = []
        for item in reversed(record.history(self.runner, s.state_path)):
            version = str(item.get("version", ""))
            if version and version not in known:
                known.append(version)
            if item.get("result") == "success" and len(kept) < s.releases_kept:
                kept.add(version)
        present = self.backend.image_versions()
        stale = [v for v in known if v not in kept and v in present]
        self.backend.remove_images(stale)
        return stale

    # -- the stack as a whole ----------------------------------------------------------------------
    def refresh_proxy(self) -> bool:
        """Load the proxy's configuration as the settings now make it (a renewed TLS certificate),
        under the lock: validated (the proxy's own check) first, reloaded only when it changed. On a failed
        validation the previous files are put back and the proxy keeps what it runs."""
        try:
            return self._refresh_proxy()
        except CommandError:
            self.backend.diagnose()  # names an unreachable engine; else the error stands
            raise

    def _refresh_proxy(self) -> bool:
        self.proxy.check()
        self.lock.acquire(lock_info("certs"))
        try:
            if self.proxy.running() is None:
                raise PreflightError(f"the proxy of project {self.settings.project!r} is not running: start the "
                                     "stack first (its first start installs the certificate)")
            return self.proxy.configure(self.settings.replicas)
        finally:
            self.lock.release()

    def down(self) -> None:
        """Remove the whole stack; refused while a deploy holds the lock."""
        self.lock.acquire(lock_info("down"))
        try:
            try:
                self.backend.down(self.settings.stop_grace_period)
            except CommandError:
                self.backend.diagnose()  # names an unreachable engine; else the error stands
                raise
            self.proxy.remove_state()
        finally:
            self.lock.release()


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _error_text(exc: BaseException) -> str:
    """The error as the record keeps it: the whole message (e.g. the proxy's or pip's own words), bounded."""
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " …"


__all__ = ["DeployOptions", "Engine", "Facts", "LockHeld"]
