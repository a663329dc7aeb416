"""The steps of a deploy, each one class: what it will do (from the real state), do it, undo it.

A run is a list of steps (:mod:`handover.plans` has the lists). For each step the engine asks
:meth:`Step.describe` for the plan line (``None``: not needed this time), then :meth:`Step.check`
for everything it can verify before anything changes, then :meth:`Step.run`. When a step fails or
Ctrl-C arrives, the engine calls :meth:`Step.undo` of that step and of every step before it, newest
first, until it reaches a *forward* step: from the drain on the new version serves, and an
interrupted forward step is finished instead (:meth:`Step.complete`). :meth:`Step.release` runs at
the end of every run that got past the step (the lock's release). Progress output, ``--dry-run``,
the release record and the recovery all come from the same list.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backends import STOPPED_STATES, Instance
from .errors import HandoverError, HealthCheckFailed, ReleaseFailed
from .lock import lock_info
from .settings import DEFAULT_STOP_SIGNAL, DEMO_APP_DIR
from .version import is_source_version

# After an interrupted start, how many looks (one health poll interval apart) for what it created.
START_SETTLE_POLLS = 8

if TYPE_CHECKING:
    from .backends import StackService
    from .backends.swarm import SwarmBackend
    from .engine import DeployOptions, Engine, Facts
    from .record import RunRecord


@dataclass
class Run:
    """What one run knows and has done so far; the steps read and fill it."""

    engine: Engine
    options: DeployOptions
    facts: Facts
    record: RunRecord
    old: list[Instance] = field(default_factory=list)  # serving when the run started
    new: list[Instance] = field(default_factory=list)  # started by this run
    switched: bool = False
    proxy_pending: bool = False  # a new proxy configuration is validated, to be loaded at the switch
    proxy_changed: bool = False  # the proxy's configuration was changed in this run
    rolled_back: bool = False  # Swarm rolled this run's update back by itself (deploy.backend swarm)

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def image(self) -> str:
        return self.record.image


def names(instances: Sequence[Instance]) -> str:
    return ", ".join(c.name for c in instances) or "nothing"


def keeps_serving(run: Run) -> bool:
    """A first start that finds healthy containers routed to (``up`` again) starts only what is missing."""
    return run.options.action == "up" and bool(run.facts.healthy_live)


def plural(n: int, word: str = "new container") -> str:
    return f"{n} {word}" + ("s" if n != 1 else "")


class Step:
    """One step of a run. Subclasses set ``name`` and override what they need."""

    name = ""
    forward = False  # from this step on, the run finishes rather than undoes

    def describe(self, run: Run) -> str | None:
        """The plan line, from the real state; ``None`` when this run does not need the step."""
        raise NotImplementedError

    def check(self, run: Run) -> None:
        """Verify, before anything changes, what this step will need (raise to stop the run)."""

    def run(self, run: Run) -> str | None:
        """Do it; may return a short detail for the progress line and the record."""
        raise NotImplementedError

    def undo(self, run: Run) -> None:
        """Put back what :meth:`run` changed (also after a partial run of it)."""

    def complete(self, run: Run) -> None:
        """A forward step interrupted part-way: finish it."""
        self.run(run)

    def release(self, run: Run) -> None:
        """At the end of the run, whatever happened, once this step has started."""


class Lock(Step):
    name = "lock"

    def __init__(self) -> None:
        self.taken = False

    def describe(self, run: Run) -> str:
        return f"take the deploy lock at {run.engine.lock.path}"

    def run(self, run: Run) -> None:
        rec = run.record
        host = rec.host if rec.host != "local" else ""
        # acquire() undoes its own partial work when it fails or is interrupted, and a refused lock
        # is someone else's: only a lock this run holds is released at its end.
        run.engine.lock.acquire(lock_info(rec.action, rec.version, via=run.options.via, host=host))
        self.taken = True

    def release(self, run: Run) -> None:
        if self.taken:
            run.engine.lock.release()
            run.engine.progress.say("    lock released")


class Preflight(Step):
    name = "preflight"

    def describe(self, run: Run) -> str:
        if run.engine.settings.swarm:
            return "docker, a manager of an active swarm, no service of the stack on a virtual IP"
        return "docker, compose v2, the compose file"

    def run(self, run: Run) -> None:
        run.engine.backend.check()


class Converge(Step):
    """Finish what an interrupted run left: drain every app container the proxy does not route to."""

    name = "converge"

    def describe(self, run: Run) -> str | None:
        left = run.facts.leftovers
        if not left:
            return None
        return f"drain {len(left)} container(s) left by an earlier run: {names(left)}"

    def run(self, run: Run) -> str:
        left = run.engine.facts().leftovers
        warnings = run.engine.drain(left)
        return "; ".join(["removed " + names(left), *warnings])


class Build(Step):
    """Build the app's image from ``app_build`` (and, for a first start, the proxy's image).

    A version named after the build directory's sources (``src-<hash>``, the default) whose image is
    on the host already is not built again: the same sources made it. That saves a ``compose build``
    (a Go client, BuildKit walking the context) on every deploy that changed nothing in the app.
    """

    name = "build"

    def __init__(self, *, with_proxy: bool = False, app: bool = True) -> None:
        self.with_proxy, self.app = with_proxy, app

    def describe(self, run: Run) -> str | None:
        if not self.app:
            return "the proxy's image" if self.with_proxy else None
        build_dir = run.engine.settings.app_build
        where = "" if build_dir == str(DEMO_APP_DIR) else f" from {build_dir}"
        args = run.engine.settings.app_build_args
        if args:  # not secrets (Docker keeps them in the image's history): said as they are
            where += " with " + " ".join(f"{name}={value}" for name, value in args)
        built = " (on the host already from the same sources: not rebuilt)" if self._built(run) else ""
        return f"image {run.image}{where}{built}" + (" and the proxy's image" if self.with_proxy else "")

    @staticmethod
    def _built(run: Run) -> bool:
        return is_source_version(run.version) and run.engine.backend.has_image(run.version)

    def run(self, run: Run) -> str | None:
        app = self.app and not self._built(run)
        if app or self.with_proxy:
            run.engine.use_base_images(with_proxy=self.with_proxy, app=app)
            run.engine.backend.build(run.version, proxy=run.engine.proxy.service if self.with_proxy else "", app=app)
        return None if app or not self.app else f"{run.image} is on the host already (same sources): not rebuilt"


class Pull(Step):
    """No build (``app_build`` is empty): the ready-made image comes from its registry, pulled on the
    host before anything is started; an image that cannot be pulled stops the run with nothing changed."""

    name = "pull"

    def describe(self, run: Run) -> str:
        if run.engine.backend.has_image(run.version):
            return f"{run.image} from its registry (on the host already: only what changed)"
        return f"{run.image} from its registry"

    def run(self, run: Run) -> None:
        run.engine.backend.pull(run.version)


class Services(Step):
    """The first start: the user's other services (``extra_compose_file``) that are not running yet,
    before the app that may need them. Running ones are never recreated or restarted."""

    name = "services"

    def describe(self, run: Run) -> str | None:
        services = run.engine.settings.extra_services
        if not services:
            return None
        return f"start {', '.join(services)} if not running (never recreated)"

    def run(self, run: Run) -> None:
        run.engine.backend.start_services(run.engine.settings.extra_services)


class UseImage(Step):
    """A rollback builds nothing: the image must be on the host already (checked before the lock)."""

    name = "image"

    def describe(self, run: Run) -> str:
        return f"{run.image} is on the host already"

    def check(self, run: Run) -> None:
        if not run.engine.backend.has_image(run.version):
            source = run.engine.image_source()
            how = {"build": "it cannot be deployed without a build",
                   "pull": f"deploy version {run.version} instead (it is pulled from its registry again)",
                   "local": "build or pull it on this machine first"}[source]
            raise HandoverError(f"image {run.image} is not on the host; {how}")

    def run(self, run: Run) -> None:
        self.check(run)


class ProxyConfig(Step):
    """Validate a changed proxy configuration before anything is built or started.

    It is loaded at the switch, as late as possible: a reload retires the proxy's old workers,
    which may only cut what is left of their connections well after the old version's drain.
    """

    name = "proxy config"

    def describe(self, run: Run) -> str:
        return "validate the proxy's configuration if it changed (loaded at the switch)"

    def check(self, run: Run) -> None:
        run.engine.proxy.check()

    def run(self, run: Run) -> str:
        run.proxy_pending = run.engine.proxy.configure(run.engine.settings.replicas, load=False)
        run.proxy_changed = run.proxy_changed or run.proxy_pending
        return "changed, valid" if run.proxy_pending else "unchanged"

    def undo(self, run: Run) -> None:
        if run.engine.proxy.restore():
            run.proxy_changed = True


class Start(Step):
    """Start the new containers beside the serving ones (or, for a first start, from nothing)."""

    name = "start"

    def __init__(self, *, fresh: bool = False) -> None:
        self.fresh = fresh

    def describe(self, run: Run) -> str | None:
        n = plural(run.engine.settings.replicas)
        if self.fresh:
            return None if keeps_serving(run) else f"{n} of {run.version}"
        return f"{n} of {run.version} beside {len(run.old)} live"

    def run(self, run: Run) -> str:
        engine = run.engine
        if self.fresh:
            engine.proxy.prepare()
            # Nothing healthy serves: clear every app container (stopped or failing ones too),
            # or compose would restart them instead of starting this version.
            engine.discard(run.facts.instances)
        run.new = engine.backend.start(run.version, engine.settings.replicas, run.options.app_env)
        run.record.new_containers = [c.name for c in run.new]
        if not run.new:
            raise HandoverError("compose started no new app container")
        return names(run.new)

    def undo(self, run: Run) -> None:
        engine = run.engine
        if not run.new:  # interrupted inside the start: find what it started so far
            run.new = self._started_so_far(run)
        if run.new:
            with engine.progress.step(run.record, "rollback", "remove the new containers; the old version "
                                      "keeps serving" if run.old else "remove the new containers"):
                engine.discard(run.new)

    @staticmethod
    def _started_so_far(run: Run) -> list[Instance]:
        """A compose call cut short (Ctrl-C reaches it too) may leave the engine creating a container
        after compose has exited: look again for a short while, or that container would be left over."""
        engine, known = run.engine, [c.id for c in run.facts.instances]
        found: dict[str, Instance] = {}
        for _ in range(START_SETTLE_POLLS):
            found.update((c.id, c) for c in engine.backend.started_since(known))
            time.sleep(engine.settings.health_poll_interval)
        return list(found.values())


class Health(Step):
    name = "health"

    def __init__(self, *, fresh: bool = False) -> None:
        self.fresh = fresh

    def describe(self, run: Run) -> str | None:
        if self.fresh and keeps_serving(run):
            return None
        return (f"wait until the new containers are healthy (up to {run.engine.settings.health_timeout:g} s), "
                "else remove them")

    def run(self, run: Run) -> None:
        engine = run.engine
        try:
            run.new = engine.wait_healthy(run.new)
        except HealthCheckFailed as exc:
            raise HealthCheckFailed(f"{exc}\n{engine.failure_logs(run.new)}") from None


class Switch(Step):
    name = "switch"

    def __init__(self, *, fresh: bool = False) -> None:
        self.fresh = fresh

    def describe(self, run: Run) -> str | None:
        if self.fresh:
            return None if keeps_serving(run) else "route the proxy to them"
        return f"route the proxy to them ({run.engine.proxy.switch_words})"

    def run(self, run: Run) -> str | None:
        # Health was read a moment ago; a container frozen or dead since then must get no traffic.
        now = {c.id: c for c in run.engine.health_of(run.new)}
        stale = [now.get(c.id, c) for c in run.new if c.id not in now or not now[c.id].is_healthy]
        if stale:
            raise HealthCheckFailed("right before the switch: " + ", ".join(run.engine.describe(c) for c in stale))
        run.engine.proxy.point(run.new, fallback=run.old)
        run.switched = True
        if run.proxy_pending:
            run.engine.proxy.reload()
            run.proxy_pending = False
            return "configuration reloaded"
        return None

    def undo(self, run: Run) -> None:
        engine = run.engine
        if not run.old or not run.new:
            return
        live = engine.proxy.live_ids()
        if run.switched or any(c.short_id in live for c in run.new):
            with engine.progress.step(run.record, "switch back", "route the proxy to the old containers again"):
                engine.proxy.point(run.old)


class Verify(Step):
    name = "verify"

    def describe(self, run: Run) -> str | None:
        seconds = run.engine.settings.post_switch_check
        if seconds <= 0:
            return None
        return f"the new containers keep serving for {seconds:g} s, the old ones still up, else switch back"

    def run(self, run: Run) -> None:
        run.engine.verify_after_switch(run.new)


class Drain(Step):
    name = "drain"
    forward = True

    def describe(self, run: Run) -> str:
        s = run.engine.settings
        pre_stop = (f"run pre_stop in each (up to {s.app_pre_stop_timeout:g} s; a failure is reported, the stop "
                    "goes on), " if s.app_pre_stop else "")
        signal = "" if s.app_stop_signal == DEFAULT_STOP_SIGNAL else f"{s.app_stop_signal}, "
        return f"{pre_stop}stop {names(run.old)} ({signal}grace {s.stop_grace_period:g} s), remove by ID"

    def run(self, run: Run) -> str | None:
        warnings = run.engine.drain(run.old)
        # The verify passed before the drain; a new container stopped since then (killed, crashed for
        # good) leaves nothing serving, and the run must not be recorded as a success.
        current = {c.id: c for c in run.engine.backend.refresh(run.new)}
        gone = [current.get(c.id, c) for c in run.new if c.id not in current or current[c.id].status in STOPPED_STATES]
        if gone:
            raise HealthCheckFailed(f"the new containers stopped during the drain: {names(gone)}; the old "
                                    "version is drained already, nothing may be serving. Deploy again.")
        return "; ".join(warnings) or None

    def complete(self, run: Run) -> None:
        run.engine.progress.warn("interrupted during the drain; the new version serves, finishing the drain of "
                                 + names(run.old))
        self.run(run)  # the pre_stop commands run again only in containers still running


class Prune(Step):
    name = "prune"
    forward = True

    def describe(self, run: Run) -> str:
        return f"keep the last {run.engine.settings.releases_kept} release images"

    def run(self, run: Run) -> str | None:
        removed = run.engine.prune_images(keep={run.version})
        return f"removed {len(removed)}" if removed else None

    def complete(self, run: Run) -> None:
        return None  # pruning can wait for the next run


class StartProxy(Step):
    name = "proxy"

    def describe(self, run: Run) -> str | None:
        if run.facts.proxy is not None:
            return None
        s = run.engine.settings
        https = f" and https://{s.http_bind}:{s.https_port}" if s.tls else ""
        return f"start the proxy on http://{s.http_bind}:{s.http_port}{https}"

    def check(self, run: Run) -> None:
        if run.facts.proxy is None:
            run.engine.proxy.check()

    def run(self, run: Run) -> None:
        run.engine.proxy.start()


class Release(Step):
    """The release command (e.g. database migrations), once, in a one-off container of the new image
    with the app's environment and secrets, after the build and before any new container starts.

    A failure stops the run before anything serving is touched (recorded ``failed`` here). There is
    nothing to undo: what the command changed (a migrated schema) stays, which is why it must suit
    the version still serving (expand/contract). A rollback does not run it. Only the one-off
    container is cleaned up, also after a timeout, an interruption or a killed run.
    """

    name = "release"

    def __init__(self, *, fresh: bool = False) -> None:
        self.fresh = fresh

    def describe(self, run: Run) -> str | None:
        s = run.engine.settings
        if not s.release_command or (self.fresh and keeps_serving(run)):
            return None
        return (f"run `{shlex.join(s.release_command)}` once in a one-off container of {run.image} with the app's "
                f"env file (up to {s.release_timeout:g} s); not undone: it must suit the running version too")

    def run(self, run: Run) -> str:
        s = run.engine.settings
        command = shlex.join(s.release_command)
        if self.fresh:
            # The one-off container mounts the app's volumes: their directories are made here, by this
            # user and with their modes, not by the Docker engine as root.
            run.engine.proxy.prepare()
        done = run.engine.backend.run_once(run.version, s.release_command, s.release_timeout)
        output = done.output.strip()
        if done.ok:
            for line in output.splitlines():
                run.engine.progress.say(f"    | {line}")
            return "exit 0"
        what = (f"did not finish within {s.release_timeout:g} s (deploy.release_timeout); its container was removed"
                if done.exited is None else f"exited {done.exited}")
        serving = "the old version keeps serving" if run.old else "nothing serves yet"
        raise ReleaseFailed(f"the release command `{command}` {what}; no new container was started, {serving}. "
                            f"Its last lines (secrets hidden):\n{output or '(no output)'}")


# -- a stack on a swarm (deploy.backend: swarm): Swarm rolls the tasks itself -----------------------
def _swarm(run: Run) -> SwarmBackend:
    from .backends.swarm import SwarmBackend

    backend = run.engine.backend
    assert isinstance(backend, SwarmBackend)
    return backend


def _stack_proxy(run: Run) -> StackService:
    """The proxy's part of the stack (a proxy made for a stack has one)."""
    from .proxies import StackProxy

    proxy = run.engine.proxy
    assert isinstance(proxy, StackProxy)
    return proxy.stack_service()


class SwarmImages(Step):
    """The app's image by reference (on the manager, or pulled there from its registry; every node needs it
    too: from the same registry, or loaded), and the proxy's image on the manager (built there when absent)."""

    name = "images"

    def describe(self, run: Run) -> str:
        backend = _swarm(run)
        app = (f"{run.image} is on the manager" if backend.has_image(run.version)
               else f"pull {run.image} on the manager")
        proxy = "" if backend.has_proxy_image(_stack_proxy(run)) else "; build the proxy's image on the manager"
        return f"{app} (each node runs it from its own engine: a registry or docker load){proxy}"

    def run(self, run: Run) -> None:
        backend = _swarm(run)
        if not backend.has_image(run.version):
            backend.pull(run.version)
        proxy = _stack_proxy(run)
        if not backend.has_proxy_image(proxy):
            run.engine.use_base_images(with_proxy=True, app=False)
            backend.build_proxy(proxy)


class Rollout(Step):
    """``docker stack deploy`` and Swarm's rolling update: start-first, health-gated, watched, rolled back by
    Swarm on failure. Once submitted Swarm carries it out whatever this run does, so it is a forward step:
    an interrupted one is waited for, not undone."""

    name = "rollout"
    forward = True

    def describe(self, run: Run) -> str:
        s = run.engine.settings
        if not run.facts.live:
            return (f"docker stack deploy {s.project}: Swarm starts {plural(s.replicas, 'task')} of {run.version} "
                    f"and {run.engine.proxy.service}, which follows Swarm's DNS")
        return (f"docker stack deploy {s.project}: Swarm replaces {plural(s.replicas, 'task')} of "
                f"{run.facts.live_version} with {run.version}, {s.swarm_parallelism} at a time, start-first, each "
                f"healthy before the next, watched {s.swarm_monitor:g} s, rolled back by Swarm on failure; "
                f"{run.engine.proxy.service} follows Swarm's DNS")

    def run(self, run: Run) -> str:
        backend = _swarm(run)
        self.before, self.changed = backend.deploy_stack(run.version, _stack_proxy(run), force=run.options.force)
        return self._wait(run)

    def _wait(self, run: Run) -> str:
        backend, s = _swarm(run), run.engine.settings
        rounds = -(-s.replicas // s.swarm_parallelism)
        timeout = rounds * (s.health_timeout + s.swarm_monitor + s.stop_grace_period) + 60
        outcome = backend.wait_rollout(run.version, self.before, self.changed, timeout, run.engine.progress.waiting,
                                       run.engine.progress.warn)
        tasks = backend.instances()
        run.new = [t for t in tasks if t.version == run.version]
        run.record.new_containers = [t.name for t in run.new]
        if outcome.startswith("rollback"):
            run.rolled_back = outcome.startswith("rollback_completed")
            raise HealthCheckFailed(f"Swarm rolled the update back ({outcome}); "
                                    f"{names([t for t in tasks if t.status == 'running'])} serve")
        if outcome != "completed":
            raise HandoverError(f"Swarm stopped the update ({outcome}): `docker service ps {backend.app}` tells why")
        return names(run.new)

    def complete(self, run: Run) -> None:
        if hasattr(self, "before"):
            self._wait(run)
