"""The deploy sequence: health-gated start beside the old version, switch nginx, drain, record.

Every step reads the real state first (containers by ID and label, health, the live upstream
file), so a rerun after an interruption converges instead of stacking containers, and a dry run
is the same reading with the changes left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import ops, proxy, record, upstream
from .errors import (
    BuildFailed,
    CommandError,
    HandoverError,
    HealthCheckFailed,
    NginxConfigInvalid,
    PreflightError,
)
from .lock import DeployLock
from .progress import Progress
from .record import RunRecord
from .settings import Settings, check_version
from .shell import Runner, interruptible, run
from .stack import APP_SERVICE, PROXY_SERVICE, UNHEALTHY, Container, Stack

LOG_LINES_ON_FAILURE = 40
BUILD_LOG_LINES = 30
PROXY_START_TIMEOUT = 30.0


@dataclass
class DeployOptions:
    version: str
    dry_run: bool = False
    force: bool = False
    build: bool = True
    action: str = "deploy"
    app_env: dict[str, str] = field(default_factory=dict)
    host: str = "local"
    # Called with the finished record just before it is stored (e.g. to add the probe's numbers).
    before_record: Callable[[RunRecord], None] | None = None


@dataclass
class Facts:
    """What is true on the host before a step changes anything."""

    containers: list[Container]
    links: dict[int, str]  # live slot -> short container ID
    proxy: Container | None

    def _linked(self, c: Container) -> bool:
        return c.id[: upstream.SHORT_ID_LENGTH] in self.links.values()

    @property
    def live(self) -> list[Container]:
        return [c for c in self.containers if self._linked(c)]

    @property
    def leftovers(self) -> list[Container]:
        """App containers no live slot points to: left by an interrupted or failed run."""
        return [c for c in self.containers if not self._linked(c)]

    @property
    def live_version(self) -> str:
        return ",".join(sorted({c.version for c in self.live}))


class Engine:
    def __init__(self, runner: Runner, settings: Settings, progress: Progress | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.stack = Stack(runner, settings, dict(extra_env or {}))
        self.progress = progress or Progress()
        self.lock = DeployLock(runner, settings.state_path)

    @property
    def runner(self) -> Runner:
        return self.stack.runner

    # -- facts -------------------------------------------------------------------------------------
    def facts(self) -> Facts:
        containers = self.stack.project_containers()
        running_proxies = [c for c in containers if c.service == PROXY_SERVICE and c.status == "running"]
        return Facts([c for c in containers if c.service == APP_SERVICE], proxy.live_links(self.stack),
                     running_proxies[-1] if running_proxies else None)

    # -- steps -------------------------------------------------------------------------------------
    def preflight(self, *, need_proxy: bool = True) -> Facts:
        """Docker engine and compose v2 reachable, compose file valid, nginx config valid."""
        try:
            # One call proves the engine, the compose v2 plugin and the file; diagnose only on failure.
            self.stack.compose("config", "--quiet")
        except CommandError as exc:
            self._diagnose()
            raise PreflightError(f"the compose file {self.settings.compose_path} is invalid:\n{exc.output}") from exc
        facts = self.facts()
        if need_proxy:
            if facts.proxy is None:
                raise PreflightError(
                    f"the stack {self.settings.project!r} is not up (no running nginx container); start it first"
                )
            if not [c for c in facts.live if c.status == "running"]:
                raise PreflightError(
                    f"nginx of {self.settings.project!r} routes to no running app container; start the stack first"
                )
            # nginx -t runs in the "proxy config" step whenever nginx's files differ from what it
            # loaded (and validated) last; unchanged files need no second check.
        return facts

    def _diagnose(self) -> None:
        ops.require(ops.host_checks(self.runner), "the host")

    def build(self, version: str) -> None:
        try:
            self.stack.compose("build", APP_SERVICE, version=version, timeout=1800)
        except CommandError as exc:
            # The builder's own words (e.g. pip's) may be on stdout (classic builder) or stderr (BuildKit).
            log = "\n".join(f"{exc.stdout}\n{exc.output}".strip().splitlines()[-BUILD_LOG_LINES:])
            raise BuildFailed(f"the build of {self.settings.app_image}:{version} failed (exit {exc.exited}); "
                              f"no container was started or stopped. Last lines of the build:\n{log}") from None

    def start_new(self, old: Sequence[Container], version: str, app_env: dict[str, str]) -> list[Container]:
        before = {c.id for c in self.stack.app_containers()}
        target = len(old) + self.settings.replicas
        self.stack.extra_env.update(app_env)
        try:
            self.stack.compose("up", "--detach", "--no-build", "--no-recreate", "--no-deps",
                               "--scale", f"{APP_SERVICE}={target}", APP_SERVICE, version=version, timeout=300)
        finally:
            for key in app_env:
                self.stack.extra_env.pop(key, None)
        new = [c for c in self.stack.app_containers() if c.id not in before]
        if not new:
            raise HandoverError("compose started no new app container")
        return new

    def wait_healthy(self, new: Sequence[Container]) -> list[Container]:
        ids = [c.id for c in new]
        deadline = time.monotonic() + self.settings.health_timeout
        t0 = time.monotonic()
        while True:
            current = self.stack.inspect(ids)
            healthy = [c for c in current if c.is_healthy]
            if len(healthy) == len(ids):
                return current
            dead = [c for c in current if c.status in ("exited", "dead") or c.health == UNHEALTHY or c.restarts > 0]
            missing = set(ids) - {c.id for c in current}
            if dead or missing:
                what = ", ".join(c.describe() for c in dead)
                raise HealthCheckFailed(what or f"containers vanished: {sorted(missing)}")
            if time.monotonic() > deadline:
                raise HealthCheckFailed(
                    f"not healthy within {self.settings.health_timeout:g} s: "
                    + ", ".join(c.describe() for c in current if not c.is_healthy)
                )
            self.progress.waiting(f"{len(healthy)}/{len(ids)} healthy, {time.monotonic() - t0:.1f} s")
            time.sleep(self.settings.health_poll_interval)

    def verify_after_switch(self, new: Sequence[Container]) -> None:
        """The new containers must stay running and healthy for a short while after the switch,
        while the old ones are still there to switch back to."""
        deadline = time.monotonic() + self.settings.post_switch_check
        while True:
            current = {c.id: c for c in self.stack.inspect([c.id for c in new])}
            now = [current.get(c.id, c) for c in new]
            bad = [c for c, before in zip(now, new, strict=True)
                   if c.id not in current or not c.is_healthy or c.restarts > before.restarts]
            if bad:
                raise HealthCheckFailed(
                    "after the switch: " + ", ".join(c.describe() for c in bad) + f"\n{self.failure_logs(bad)}"
                )
            if time.monotonic() >= deadline:
                return
            time.sleep(self.settings.health_poll_interval)

    def switch_to(self, containers: Sequence[Container], fallback: Sequence[Container] = ()) -> None:
        """Point nginx at ``containers``; until the drain, nginx may retry on ``fallback`` (see upstream)."""
        proxy.point(self.stack, containers, fallback)

    def drain(self, old: Sequence[Container]) -> None:
        ids = [c.id for c in old]
        proxy.forget_fallback(self.stack)
        self.stack.stop(ids, self.settings.stop_grace_period)
        self.stack.remove(ids)
        proxy.forget_sockets(self.stack, old)

    def discard(self, containers: Sequence[Container]) -> None:
        """Remove containers that never received traffic (a failed or rolled-back start)."""
        self.stack.remove([c.id for c in containers])
        proxy.forget_sockets(self.stack, containers)

    def failure_logs(self, containers: Sequence[Container]) -> str:
        parts = []
        for c in containers:
            parts.append(f"--- last {LOG_LINES_ON_FAILURE} log lines of {c.name} ({c.short_id}) ---")
            parts.append(self.stack.logs(c.id, LOG_LINES_ON_FAILURE) or "(no output)")
        return "\n".join(parts)

    def converge(self, facts: Facts, rec: RunRecord) -> Facts:
        """Finish what an interrupted run left: drain every app container no live slot points to.
        (The links are the truth: nginx follows them on every new upstream connection.)"""
        leftovers = facts.leftovers
        if not leftovers:
            return facts
        with self.progress.step(rec, "converge", f"{len(leftovers)} container(s) left by an earlier run") as step:
            self.drain(leftovers)
            step.detail = "removed " + ", ".join(c.name for c in leftovers)
        return self.facts()

    # -- the sequence ------------------------------------------------------------------------------
    def deploy(self, options: DeployOptions) -> RunRecord:
        with interruptible():
            return self._deploy(options)

    def _deploy(self, options: DeployOptions) -> RunRecord:
        version = check_version(options.version)
        s = self.settings
        rec = RunRecord(action=options.action, version=version, project=s.project, host=options.host,
                        image=f"{s.app_image}:{version}")
        say = self.progress.say
        with self.progress.step(rec, "preflight", "docker, compose v2, compose file, the stack is up"):
            facts = self.preflight()
        rec.previous_version = facts.live_version
        if options.dry_run:
            self._plan(facts, options, rec)
            return rec
        lock_info = {"holder": rec.by, "since": rec.started_at, "version": version, "action": options.action}
        with self.progress.step(rec, "lock", f"take the deploy lock at {self.lock.path}"):
            self.lock.acquire(lock_info)
        try:
            return self._locked_deploy(facts, options, rec)
        except KeyboardInterrupt:
            rec.finish("interrupted", "interrupted by the user")
            self.progress.warn("interrupted: " + rec.error)
            raise
        finally:
            self.lock.release()
            if options.before_record is not None:
                options.before_record(rec)
            self.record_run(rec)
            say(f"    lock released; record appended to {s.state_path}/{record.RELEASE_LOG}")

    def _locked_deploy(self, facts: Facts, options: DeployOptions, rec: RunRecord) -> RunRecord:
        version = rec.version
        facts = self.converge(facts, rec)
        old = facts.live
        rec.old_containers = [c.name for c in old]
        if not options.force and old and all(c.version == version for c in old):
            rec.finish("unchanged")
            self.progress.say(f"==> version {version} is already live; nothing to do (use --force to redeploy)")
            return rec
        with self.progress.step(rec, "proxy config", "nginx -t and reload only if nginx's config changed") as step:
            reloaded = proxy.apply_config(self.stack, upstream.render(self.settings.replicas))
            step.detail = "reloaded" if reloaded else "unchanged"
        if options.build:
            with self.progress.step(rec, "build", f"image {rec.image}"):
                self.build(version)
        elif not self.stack.image_exists(rec.image):
            raise HandoverError(f"image {rec.image} is not on the host; it cannot be deployed without a build")
        new: list[Container] = []
        switched = False
        try:
            with self.progress.step(rec, "start", f"{s_rep(self.settings.replicas)} beside {len(old)} live"):
                new = self.start_new(old, version, options.app_env)
                rec.new_containers = [c.name for c in new]
            with self.progress.step(rec, "health", f"wait for {', '.join(c.name for c in new)} "
                                    f"(up to {self.settings.health_timeout:g} s)") as step:
                try:
                    new = self.wait_healthy(new)
                except HealthCheckFailed as exc:
                    step.detail = str(exc)
                    raise HealthCheckFailed(f"{exc}\n{self.failure_logs(new)}") from None
            with self.progress.step(rec, "switch", "swap nginx's live socket links to the new containers"):
                self.switch_to(new, fallback=old)
                switched = True
            if self.settings.post_switch_check > 0:
                with self.progress.step(rec, "verify", f"the new containers keep serving for "
                                        f"{self.settings.post_switch_check:g} s, the old ones still up"):
                    self.verify_after_switch(new)
        except (HandoverError, KeyboardInterrupt) as exc:
            if not new:  # interrupted inside `compose up`: find what it started so far
                known = {c.id for c in facts.containers}
                new = [c for c in self.stack.app_containers() if c.id not in known]
            if old and new and not switched:  # interrupted around the swap: the links tell whether it happened
                linked = set(proxy.live_links(self.stack).values())
                switched = any(c.id[: upstream.SHORT_ID_LENGTH] in linked for c in new)
            if switched and old:
                with self.progress.step(rec, "switch back", "point nginx at the old containers again"):
                    self.switch_to(old)
            if new:
                with self.progress.step(rec, "rollback", "remove the new containers; the old version keeps serving"):
                    self.discard(new)
            rec.finish("rolled_back" if isinstance(exc, HealthCheckFailed | NginxConfigInvalid) else "failed",
                       str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        try:
            with self.progress.step(rec, "drain", f"stop {', '.join(c.name for c in old) or 'nothing'} "
                                    f"(grace {self.settings.stop_grace_period:g} s), remove by ID"):
                self.drain(old)
        except KeyboardInterrupt:
            # The new version already serves: finish the drain rather than leave the old ones half-stopped.
            self.progress.warn("interrupted during the drain; the new version serves, finishing the drain of "
                               + (", ".join(c.name for c in old) or "nothing"))
            self.drain(old)
            raise
        with self.progress.step(rec, "prune", f"keep the last {self.settings.releases_kept} release images"):
            self.prune_images(keep={version})
        rec.finish("success")
        return rec

    def _plan(self, facts: Facts, options: DeployOptions, rec: RunRecord) -> None:
        say = self.progress.say
        say("==> plan (dry run: nothing changes)")
        for c in facts.leftovers:
            say(f"    converge: drain {c.name} ({c.short_id}, {c.version}), left by an earlier run")
        old = facts.live
        if not options.force and old and all(c.version == options.version for c in old):
            say(f"    version {options.version} is already live: nothing to do")
        else:
            if options.build:
                say(f"    build {rec.image}")
            say(f"    start {s_rep(self.settings.replicas)} of {options.version} beside "
                + (", ".join(f"{c.name} ({c.version})" for c in old) or "nothing"))
            say(f"    wait until healthy (up to {self.settings.health_timeout:g} s), else remove them and stop")
            say("    switch nginx to them (atomic swap of the live socket links; no reload)")
            if self.settings.post_switch_check > 0:
                say(f"    check they keep serving for {self.settings.post_switch_check:g} s, else switch back")
            say(f"    drain and remove {', '.join(c.name for c in old) or 'nothing'} by ID")
        rec.finish("planned")

    def prune_images(self, keep: set[str]) -> None:
        """Remove this project's release images beyond the last ``releases_kept`` (and the live ones).

        Only versions this project's release log knows are candidates: images other projects on the
        same engine built are never touched, and Docker refuses to remove an image still in use.
        """
        s = self.settings
        kept = set(keep) | {c.version for c in self.stack.app_containers()}
        known: list[str] = []
        for item in reversed(record.history(self.runner, s.state_path)):
            version = str(item.get("version", ""))
            if version and version not in known:
                known.append(version)
            if item.get("result") == "success" and len(kept) < s.releases_kept:
                kept.add(version)
        present = set(run(self.runner, ["docker", "image", "ls", s.app_image, "--format", "{{.Tag}}"]).stdout.split())
        stale = [f"{s.app_image}:{v}" for v in known if v not in kept and v in present]
        if stale:
            run(self.runner, ["docker", "image", "rm", *stale], check=False)

    # -- the stack as a whole ----------------------------------------------------------------------
    def up(self, version: str) -> RunRecord:
        """Build and start the stack, or converge a partly running one; idempotent."""
        version = check_version(version)
        s = self.settings
        rec = RunRecord(action="up", version=version, project=s.project, host="local",
                        image=f"{s.app_image}:{version}")
        try:
            return self._up(rec)
        except (HandoverError, KeyboardInterrupt) as exc:
            rec.finish("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        finally:
            if rec.result != "unchanged":
                self.record_run(rec)

    def _up(self, rec: RunRecord) -> RunRecord:
        s, version = self.settings, rec.version
        with self.progress.step(rec, "preflight", "docker, compose v2, compose file"):
            facts = self.preflight(need_proxy=False)
        live = [c for c in facts.live if c.is_healthy]
        if live and facts.proxy is not None:
            self.progress.say(f"==> already up: {', '.join(c.name for c in live)} ({facts.live_version})")
            rec.finish("unchanged")
            return rec
        with self.progress.step(rec, "build", f"images {rec.image} and the nginx image"):
            self.stack.compose("build", version=version, timeout=1800)
        if not live:
            with self.progress.step(rec, "start", f"{s_rep(s.replicas)} of {version}"):
                proxy.ensure_dirs(self.stack)
                # Nothing healthy serves: clear every app container (stopped or failing ones too),
                # or compose would restart them instead of starting this version.
                self.discard(facts.containers)
                new = self.start_new([], version, {})
            with self.progress.step(rec, "health", "wait for the app"):
                try:
                    live = self.wait_healthy(new)
                except HealthCheckFailed as exc:
                    logs = self.failure_logs(new)
                    self.discard(new)
                    raise HealthCheckFailed(f"{exc}\n{logs}") from None
            proxy.point(self.stack, live)
        with self.progress.step(rec, "proxy", f"start nginx on http://{s.http_bind}:{s.http_port}"):
            proxy.write_upstream(self.stack, upstream.render(s.replicas))
            self.stack.compose("up", "--detach", "--no-build", "--no-deps", PROXY_SERVICE, timeout=300)
            deadline = time.monotonic() + PROXY_START_TIMEOUT
            while self.stack.proxy_container() is None:
                if time.monotonic() > deadline:
                    raise PreflightError("nginx did not start:\n" + self.stack.compose("logs", "--tail", "30",
                                                                                     PROXY_SERVICE))
                time.sleep(0.2)
            proxy.apply_config(self.stack)
        rec.finish("success")
        return rec

    def record_run(self, rec: RunRecord) -> None:
        try:
            record.append(self.runner, self.settings.state_path, rec)
        except HandoverError as exc:
            self.progress.warn(f"could not write the run record: {exc}")

    def down(self) -> None:
        self.stack.compose("down", "--remove-orphans", "--timeout", str(int(self.settings.stop_grace_period)),
                           timeout=self.settings.stop_grace_period + 120)
        proxy.remove_state(self.stack)
        self.lock.release()


def s_rep(n: int) -> str:
    return f"{n} new container" + ("s" if n != 1 else "")
