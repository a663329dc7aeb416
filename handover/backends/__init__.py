"""Where the app's instances run: the seam between the deploy sequence and a container engine.

The sequence (:mod:`handover.steps`) needs six things from wherever the app runs, and nothing else:
start N new instances of a version beside the running ones, see each instance's version and health,
stop and remove instances by identity (never "scale down", which picks its own victims), read an
instance's logs, build, pull or find the version's image, and run the proxy's own container; besides,
run a command once in a one-off instance of a version (the release command). Around the stop, it runs
the app's ``pre_stop`` command in an instance; for the first start, it starts the user's other services
(never touched again by a deploy). Compose on one host
(:mod:`handover.backends.compose`) is one implementation; a stack on a Docker swarm
(:mod:`handover.backends.swarm`, ``deploy.backend: swarm``) the other.

Swarm rolls a service itself (start-first, health-gated, rolled back on failure), so a Swarm run has
a sequence of its own (:func:`handover.plans.swarm`): the lock, the preflight, the images, then one
rollout that Swarm carries out; the lock, the record, ``status`` (an instance is a task, its ``id``
the task's), ``logs`` and ``down`` are the same calls. What only the Compose sequence needs (start,
stop and remove chosen instances, a pre-stop command, a one-off run) the Swarm backend refuses,
saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ..checks import Check
from ..settings import Settings
from ..shell import Result, Runner

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
STOPPED_STATES = ("exited", "dead")


@dataclass(frozen=True)
class Instance:
    """One running (or failed) copy of a service, as the backend last saw it."""

    id: str
    name: str
    service: str
    version: str
    image: str
    status: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, or "" without a health check
    restarts: int
    created: str
    exit_code: int = 0
    address: str = ""  # its IP address on the app's network (what a TCP app is reached at), if any
    mounts: tuple[str, ...] = ()  # "<type>:<destination>" of each mount ("volume:/etc/nginx/upstream.d")

    def describe(self) -> str:
        """How the instance is doing, in words (for error messages)."""
        again = f", restarted {self.restarts} time(s)" if self.restarts else ""
        if self.status in (*STOPPED_STATES, "restarting"):
            return f"{self.name} crashed: exited with status {self.exit_code}{again}"
        if self.restarts:  # running again: Docker no longer reports the exit status of the crash
            return (f"{self.name} crashed: it exited and was restarted {self.restarts} time(s), now "
                    f"{self.health or self.status} (its logs tell why)")
        if self.status != "running":  # e.g. paused: its last health report no longer holds
            return f"{self.name} is {self.status}"
        return f"{self.name} is {self.health or self.status}"

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def is_healthy(self) -> bool:
        return self.status == "running" and self.health == HEALTHY

    @property
    def has_failed(self) -> bool:
        """Crashed, unhealthy, or restarted since it was started: it will not become healthy by waiting."""
        return self.status in STOPPED_STATES or self.health == UNHEALTHY or self.restarts > 0


@dataclass(frozen=True)
class OneOff:
    """How a one-off run (the release command) ended: its exit status (``None`` when it timed out)
    and the last lines of its output, the secrets file's values already scrubbed."""

    exited: int | None
    output: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


@dataclass(frozen=True)
class StackService:
    """What a proxy adds to a stack that a backend rolls as a whole (Swarm): its service's name and
    definition, its image and where that image is built from, and its configuration files (the
    definition's config keys, each with the file's text). The backend writes and deploys them without
    knowing which proxy it is."""

    name: str
    definition: Mapping[str, object]
    image: str
    build_dir: str
    configs: Mapping[str, str]  # config key -> content
    config_names: Mapping[str, str]  # config key -> its name in the swarm (new content, new name)


class Backend(Protocol):
    """Where app instances run (see the module docstring for what each call means)."""

    def set_env(self, env: Mapping[str, str]) -> None:
        """Variables the app's definition reads besides the backend's own (image names, base images)."""

    def check(self) -> None:
        """The engine is reachable and the app's definition (e.g. the compose file) is valid."""

    def host_checks(self) -> list[Check]:
        """What the host needs for this backend (engine, plugins), each with what to do when missing."""

    def diagnose(self) -> None:
        """Raise :class:`handover.errors.PreflightError` naming what is missing (engine, plugin), if anything."""

    def instances(self) -> list[Instance]:
        """The app's instances in every state, oldest first."""

    def one_look(self) -> AbstractContextManager[None]:
        """Inside, :meth:`instances` and :meth:`proxy_instance` answer from one look at the host."""

    def proxy_instance(self, service: str) -> Instance | None:
        """The running instance of the proxy's service, if any."""

    def refresh(self, instances: Sequence[Instance]) -> list[Instance]:
        """The current state of ``instances``; those that no longer exist are left out."""

    def build(self, version: str, *, proxy: str = "", app: bool = True) -> None:
        """Build the app image of ``version`` (unless not ``app``) and the image of the ``proxy`` service, if named."""

    def pull(self, version: str) -> None:
        """Fetch the ready-made app image of ``version`` from its registry (raise naming the reference)."""

    def has_image(self, version: str) -> bool: ...

    def image_id(self, version: str) -> str:
        """The ID of the app image of ``version`` where it runs, or "" when it is not there."""

    def image_versions(self) -> set[str]:
        """Versions of the app image present where it runs."""

    def remove_images(self, versions: Sequence[str]) -> None: ...

    def start(self, version: str, count: int, env: Mapping[str, str]) -> list[Instance]:
        """Start ``count`` new instances of ``version`` beside the running ones; return the new ones."""

    def started_since(self, known: Iterable[str]) -> list[Instance]:
        """The app's instances whose IDs are not in ``known`` (what an interrupted start created)."""

    def pre_stop(self, instance: Instance, argv: Sequence[str], timeout: float) -> str:
        """Run ``argv`` in ``instance`` before it is stopped, at most ``timeout`` seconds; return what went
        wrong in words ("" when it exited 0). Never raises for the command's own failure or hang."""

    def start_services(self, services: Sequence[str]) -> None:
        """Start the user's other services that are not running; never recreate or restart a running one."""

    def stop(self, instances: Sequence[Instance], grace: float) -> None:
        """Stop ``instances`` (each with ``grace`` seconds to finish) in parallel."""

    def remove(self, instances: Sequence[Instance]) -> None: ...

    def mark(self) -> float:
        """A point in time for :meth:`wait_change`, taken before looking at the instances."""

    def wait_change(self, instances: Sequence[Instance], since: float, seconds: float) -> None:
        """Wait up to ``seconds``; return earlier when the engine reports a change of ``instances``
        (health, exit, restart) since ``since``."""

    def logs(self, instance: Instance, tail: int) -> str: ...

    def logs_command(self, tail: int, follow: bool) -> tuple[list[str], dict[str, str]]:
        """argv and environment that print (and with ``follow``, keep printing) every service's logs."""

    def start_proxy(self, service: str) -> None: ...

    def exec(self, instance: Instance, argv: Sequence[str], *, check: bool = True) -> Result:
        """Run ``argv`` inside ``instance`` (the proxy's checks and reloads)."""

    def down(self, grace: float) -> None:
        """Remove everything the app's definition started (instances, proxy, network)."""

    def run_once(self, version: str, argv: Sequence[str], timeout: float) -> OneOff:
        """Run ``argv`` to its end in a one-off instance of ``version`` with the app's environment
        (its secrets file included), outside the serving set; remove that instance afterwards, also
        after a timeout or an interruption. The output comes back with the secrets scrubbed."""


def make_backend(runner: Runner, settings: Settings) -> Backend:
    """The backend this project uses: Compose on one host (:mod:`handover.backends.compose`), or a Swarm
    stack (:mod:`handover.backends.swarm`) with ``deploy.backend: swarm``."""
    if settings.swarm:
        from .swarm import SwarmBackend

        return SwarmBackend(runner, settings)
    from ..dockerapi import DockerAPI
    from ..shell import runs_here
    from .compose import ComposeBackend

    return ComposeBackend(runner, settings, api=DockerAPI.for_runner(runner), local=runs_here(runner))
