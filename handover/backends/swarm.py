"""The Swarm backend: the app and its proxy are one stack on a Docker swarm, rolled by Swarm itself.

Run against a swarm manager (``DOCKER_HOST`` for ``inv``, ``fab -H manager``). The stack file is not
written by hand: :func:`stack_definition` derives it from the settings, purely, so what the Compose
backend's file says about the app (its image and version, its environment, its stop signal and grace
period) is said here the same way, and what Swarm needs besides is fixed in one place:

* the app service has ``endpoint_mode: dnsrr``: Swarm's DNS answers ``tasks.app`` with the address of
  every running, healthy task. A virtual IP (``vip``, Swarm's default) needs IPVS in the kernel of each
  node; without it (as on some kernels and in some containers) connections to the VIP time out, so a
  stack service of this project found in ``vip`` mode is named at preflight (:func:`vip_services`);
* ``update_config``: ``order: start-first`` (the new task runs beside the old), ``parallelism``
  tasks at a time, a ``monitor`` window after each, ``failure_action: rollback`` (an update whose new
  tasks never get healthy, or fail within the window, is rolled back by Swarm, the old tasks serving
  throughout); a task counts as running only once its Docker health check passed;
* the proxy's service (:class:`handover.backends.StackService`, from the proxy: see
  :mod:`handover.proxies.swarm`) joins the app's overlay network and follows Swarm's DNS.

What happens between a task's removal from DNS and its stop signal is measured in the README
("Docker Swarm"): Swarm removes it from DNS first and waits about 2 s before the signal, longer than
the proxy keeps an answer; the app's drain then moves its WebSockets and finishes its requests. Not
always, though: the manager (where nginx asks) learns of a worker's task leaving by gossip, which a
loaded node delays (measured: once 0.9 s *after* the signal). So the app's environment carries
``DRAIN_REFUSE_NEW_SOCKETS=1``: a task that drains answers a new WebSocket with 503 before the
handshake (the drain helper, :mod:`handover.asgi`), and nginx tries the next address on it, so a
client reconnecting from one draining task never lands on another, nor back on it.

Instances are the app service's tasks (``docker service ps``): their ``id`` is the task ID, their
name ``<service>.<slot>@<node>``. Swarm reports a task as running only after its health check
passed, so a running task is a healthy one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml

from ..checks import Check, first_line, require
from ..errors import CommandError, HandoverError, HealthCheckFailed, PreflightError
from ..settings import Settings
from ..shell import Result, Runner, run, write_file
from . import HEALTHY, Instance, OneOff, StackService
from .compose import check_docker

APP_SERVICE = "app"
STACK_FILE = "stack.yml"
STACK_DIR = "swarm"  # below the state directory: the rendered stack file and the proxy's configuration
STACK_VERSION = "3.8"
NETWORK = "app"  # the overlay network the app's tasks and the proxy share
DEPLOY_TIMEOUT = 300.0
BUILD_TIMEOUT = 1800.0
PULL_TIMEOUT = 900.0
POLL = 0.5
REMOVE_TIMEOUT = 60.0
STALL_MINIMUM = 15.0  # seconds without any change of the tasks, a node down, before the update is restarted
# Swarm's UpdateStatus.State values that end an update, and what each means for the run.
UPDATE_DONE = "completed"
ROLLED_BACK = "rollback_completed"
UPDATE_ENDS = (UPDATE_DONE, ROLLED_BACK, "paused", "rollback_paused")
NOT_A_MANAGER_HINT = ("make it one: `docker swarm init --advertise-addr <its address>` on the first node, "
                      "`docker swarm join --token <token> <manager>:2377` on the others (the token from "
                      "`docker swarm join-token worker` on a manager), or run against a manager instead")


# -- pure parts ------------------------------------------------------------------------------------
def service_name(settings: Settings, service: str) -> str:
    """The name Swarm gives a service of the stack: ``<stack>_<service>``."""
    return f"{settings.project}_{service}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def stack_definition(settings: Settings, version: str, proxy: StackService,
                     config_files: Mapping[str, str]) -> dict[str, Any]:
    """The stack file for ``version``, with the ``proxy``'s service (its configs at ``config_files``,
    by key; see the module docstring for why each part is there)."""
    s = settings
    rollout = {"parallelism": s.swarm_parallelism, "delay": "0s", "order": "start-first",
               "monitor": _seconds(s.swarm_monitor), "max_failure_ratio": 0}
    app = {
        "image": f"{s.app_image}:{version}",
        "environment": {"APP_VERSION": version, "DRAIN_TIMEOUT": f"{s.drain_timeout:g}", "PORT": str(s.app_port),
                        "UNIX_SOCKET_DIR": "", "DRAIN_REFUSE_NEW_SOCKETS": "1"},
        "labels": {"io.handover.role": "app", "io.handover.version": version},
        "stop_grace_period": _seconds(s.stop_grace_period),
        "stop_signal": s.app_stop_signal,
        "networks": [NETWORK],
        "deploy": {
            "endpoint_mode": "dnsrr",
            "replicas": s.replicas,
            "labels": {"io.handover.role": "app"},
            "update_config": {**rollout, "failure_action": "rollback"},
            "rollback_config": {**rollout, "failure_action": "pause"},
            "restart_policy": {"condition": "any", "delay": "1s"},
        },
    }
    return {
        "version": STACK_VERSION,
        "services": {APP_SERVICE: app, proxy.name: {**proxy.definition, "networks": [NETWORK]}},
        "networks": {NETWORK: {"driver": "overlay", "attachable": True}},
        "configs": {key: {"name": proxy.config_names[key], "file": config_files[key]} for key in proxy.configs},
    }


def stack_yaml(definition: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(definition), sort_keys=False, default_flow_style=False)


def deploy_argv(settings: Settings, stack_file: str) -> list[str]:
    """``docker stack deploy``: the image's digest pinned when its tag moved (every node then runs the same
    image), the manager's registry login handed to the nodes that pull it, services gone from the file
    removed."""
    return ["docker", "stack", "deploy", "--prune", "--resolve-image", "changed", "--with-registry-auth",
            "--compose-file", stack_file, settings.project]


def task_rows(text: str) -> list[dict[str, str]]:
    """``docker service ps --format '{{json .}}'``, one object per line."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            item = json.loads(line)
            if isinstance(item, dict):
                rows.append({str(k): str(v) for k, v in item.items()})
    return rows


def version_of(image: str) -> str:
    """The tag of an image reference, without a digest: ``shop-app:v2@sha256:...`` -> ``v2``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def task_instance(row: Mapping[str, str], service: str) -> Instance:
    """One task as an :class:`Instance`. Swarm's ``CurrentState`` is e.g. ``Running 5 seconds ago``."""
    state = row.get("CurrentState", "").split(" ", 1)[0].lower()
    running = state == "running"
    status = "running" if running else "exited" if state in ("failed", "rejected", "shutdown", "complete",
                                                             "orphaned", "remove") else state
    node = row.get("Node", "")
    return Instance(id=row.get("ID", ""), name=f"{row.get('Name', '')}@{node}" if node else row.get("Name", ""),
                    service=service, version=version_of(row.get("Image", "")), image=row.get("Image", ""),
                    status=status, health=HEALTHY if running else "starting" if state in (
                        "new", "pending", "assigned", "accepted", "preparing", "ready", "starting") else "",
                    restarts=0, created="")


def current_tasks(rows: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The tasks Swarm means to run (desired state Running), not the history of replaced ones."""
    return [r for r in rows if r.get("DesiredState", "").lower() == "running"]


def vip_services(inspected: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of services (``docker service inspect`` output) reached through a virtual IP."""
    found = []
    for service in inspected:
        spec = service.get("Spec", {}) or {}
        mode = ((spec.get("EndpointSpec") or {}).get("Mode")) or "vip"
        if mode == "vip":
            found.append(str(spec.get("Name", "?")))
    return found


@dataclass(frozen=True)
class UpdateState:
    """What ``docker service inspect`` says of the app service's last update."""

    state: str  # "" when the service was never updated (just created)
    started: str
    message: str

    @classmethod
    def parse(cls, text: str) -> UpdateState:
        data = json.loads(text.strip() or "null") or {}
        return cls(str(data.get("State", "")), str(data.get("StartedAt", "")), str(data.get("Message", "")))


def rollout_outcome(before: UpdateState, now: UpdateState, changed: bool) -> str | None:
    """``None`` while Swarm is still at it; else how the update ended: ``completed``, ``rollback_completed``,
    ``paused``, ``rollback_paused`` (or ``completed`` when nothing changed in the app's spec)."""
    if not changed:
        return UPDATE_DONE
    if now.started == before.started or now.state not in UPDATE_ENDS:
        return None
    return now.state


def down_nodes(text: str) -> list[str]:
    """``docker node ls --format '{{.Hostname}} {{.Status}}'`` -> the hostnames of nodes that are down."""
    return [parts[0] for parts in (line.split() for line in text.splitlines()) if len(parts) > 1
            and parts[1].lower() == "down"]


def stall_seconds(settings: Settings) -> float:
    """How long an update may stand still, with a node down, before it is started again: longer than one
    task's health check start and its monitor window take."""
    return max(STALL_MINIMUM, 2 * settings.swarm_monitor)


def swarm_state(text: str) -> tuple[str, bool]:
    """``docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}'`` -> (state, manager)."""
    parts = text.split()
    return (parts[0] if parts else "unknown", len(parts) > 1 and parts[1] == "true")


def check_manager(runner: Runner) -> Check:
    result = run(runner, ["docker", "info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"],
                 check=False)
    if result.exited != 0:
        return Check("swarm", False, f"cannot ask the engine ({first_line(result.stderr or result.stdout)})")
    state, manager = swarm_state(result.stdout)
    if state != "active":
        return Check("swarm", False, f"this engine is not part of a swarm (swarm: {state}): {NOT_A_MANAGER_HINT}")
    if not manager:
        return Check("swarm", False, "this engine is a swarm worker, not a manager: run against a manager (`docker "
                                     "node ls` there), or `docker node promote <this node>` on one")
    return Check("swarm", True, "a manager of an active swarm")


# -- the backend -----------------------------------------------------------------------------------
class SwarmBackend:
    """See the module docstring; each call is one or a few ``docker`` commands on a swarm manager."""

    def __init__(self, runner: Runner, settings: Settings) -> None:
        self.runner = runner
        self.settings = settings
        self.env: dict[str, str] = {}
        self._look: dict[str, list[Instance]] | None = None

    @property
    def app(self) -> str:
        return service_name(self.settings, APP_SERVICE)

    @property
    def stack_dir(self) -> str:
        return f"{self.settings.state_path}/{STACK_DIR}"

    def set_env(self, env: Mapping[str, str]) -> None:
        self.env.update(env)

    def docker(self, *args: str, check: bool = True, timeout: float | None = None) -> Result:
        return run(self.runner, ["docker", *args], check=check, timeout=timeout)

    # -- checks ------------------------------------------------------------------------------------
    def host_checks(self) -> list[Check]:
        docker = check_docker(self.runner)
        if not docker.ok:
            return [docker]
        return [docker, check_manager(self.runner)]

    def diagnose(self) -> None:
        problems = [c for c in self.host_checks() if not c.ok]
        if problems:
            raise PreflightError("; ".join(f"{c.name}: {c.detail}" for c in problems))

    def check(self) -> None:
        require(self.host_checks(), "the swarm manager")
        found = self.docker("service", "ls", "--quiet", "--filter", f"label=com.docker.stack.namespace="
                            f"{self.settings.project}").stdout.split()
        if not found:
            return
        inspected = json.loads(self.docker("service", "inspect", *found).stdout or "[]")
        vip = vip_services(inspected)
        if vip:
            raise PreflightError(
                f"{', '.join(vip)} is reached through a virtual IP (endpoint_mode vip, Swarm's default), which needs "
                "IPVS in every node's kernel and the routing mesh; this stack routes by Swarm DNS instead "
                "(endpoint_mode dnsrr). Remove the stack (`docker stack rm "
                f"{self.settings.project}`) and deploy again")

    # -- what runs ---------------------------------------------------------------------------------
    def _tasks(self, service: str) -> list[Instance]:
        if self._look is not None and service in self._look:
            return self._look[service]
        name = service_name(self.settings, service)
        result = self.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", name, check=False)
        if result.exited != 0:
            if "no such service" in (result.stderr + result.stdout).lower():
                return []
            raise CommandError(f"docker service ps {name}", result.exited, result.stderr or result.stdout)
        tasks = [task_instance(r, service) for r in current_tasks(task_rows(result.stdout))]
        if self._look is not None:
            self._look[service] = tasks
        return tasks

    @contextmanager
    def one_look(self) -> Iterator[None]:
        self._look = {}
        try:
            yield
        finally:
            self._look = None

    def instances(self) -> list[Instance]:
        return self._tasks(APP_SERVICE)

    def proxy_instance(self, service: str) -> Instance | None:
        return next((t for t in self._tasks(service) if t.status == "running"), None)

    def refresh(self, instances: Sequence[Instance]) -> list[Instance]:
        now = {t.id: t for t in self._tasks(APP_SERVICE)}
        return [now[i.id] for i in instances if i.id in now]

    def mark(self) -> float:
        return time.monotonic()

    def wait_change(self, instances: Sequence[Instance], since: float, seconds: float) -> None:
        """Swarm's task changes are not watched here: a plain wait (the Compose health wait's fallback)."""
        time.sleep(seconds)

    def started_since(self, known: Iterable[str]) -> list[Instance]:
        seen = set(known)
        return [t for t in self.instances() if t.id not in seen]

    def update_state(self) -> UpdateState:
        result = self.docker("service", "inspect", "--format", "{{json .UpdateStatus}}", self.app, check=False)
        return UpdateState.parse(result.stdout) if result.exited == 0 else UpdateState("", "", "")

    def app_spec(self) -> str:
        """The app service's spec as JSON, "" when there is no such service (to tell whether a deploy changed it)."""
        result = self.docker("service", "inspect", "--format", "{{json .Spec.TaskTemplate}}", self.app, check=False)
        return result.stdout.strip() if result.exited == 0 else ""

    # -- images ------------------------------------------------------------------------------------
    def image_versions(self) -> set[str]:
        result = self.docker("image", "ls", self.settings.app_image, "--format", "{{.Tag}}", check=False)
        return {t for t in result.stdout.split() if t and t != "<none>"}

    def has_image(self, version: str) -> bool:
        return version in self.image_versions()

    def image_id(self, version: str) -> str:
        result = self.docker("image", "inspect", "--format", "{{.Id}}", f"{self.settings.app_image}:{version}",
                             check=False)
        return result.stdout.strip() if result.exited == 0 else ""

    def pull(self, version: str) -> None:
        ref = f"{self.settings.app_image}:{version}"
        result = self.docker("pull", ref, check=False, timeout=PULL_TIMEOUT)
        if result.exited != 0:
            raise HandoverError(f"cannot pull {ref} on the manager: {first_line(result.stderr or result.stdout)}")

    def has_proxy_image(self, proxy: StackService) -> bool:
        return self.docker("image", "inspect", proxy.image, check=False).exited == 0

    def build(self, version: str, *, proxy: str = "", app: bool = True) -> None:
        """No image is built for a stack by this call: the app's is ready-made (see :meth:`build_proxy`)."""
        if app:
            raise HandoverError("backend swarm builds no app image: give every node <app_image>:<version>")

    def build_proxy(self, proxy: StackService) -> None:
        """The proxy's image, on the manager (where the proxy runs), unless it is there."""
        if not self.has_proxy_image(proxy):
            base = self.env.get("PROXY_BASE_IMAGE", self.settings.proxy_base_image)
            self.docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={base}", "--tag", proxy.image,
                        f"{self.settings.source_path}/{proxy.build_dir}", timeout=BUILD_TIMEOUT)

    def remove_images(self, versions: Sequence[str]) -> None:
        for version in versions:
            self.docker("image", "rm", f"{self.settings.app_image}:{version}", check=False)

    # -- the rollout -------------------------------------------------------------------------------
    def write_stack(self, version: str, proxy: StackService) -> str:
        """Render the stack file and the proxy's configuration files into the state directory; the stack
        file's path."""
        run(self.runner, ["mkdir", "-p", self.stack_dir])
        files = {key: f"{self.stack_dir}/{key}.conf" for key in proxy.configs}
        for key, text in proxy.configs.items():
            write_file(self.runner, files[key], text)
        stack = f"{self.stack_dir}/{STACK_FILE}"
        write_file(self.runner, stack, stack_yaml(stack_definition(self.settings, version, proxy, files)))
        return stack

    def deploy_stack(self, version: str, proxy: StackService, *, force: bool = False) -> tuple[UpdateState, bool]:
        """``docker stack deploy`` of ``version`` with ``proxy``'s service; returns the update state before and
        whether the app changed."""
        stack = self.write_stack(version, proxy)
        before, spec = self.update_state(), self.app_spec()
        result = self.docker("stack", *deploy_argv(self.settings, stack)[2:], check=False, timeout=DEPLOY_TIMEOUT)
        if result.exited != 0:
            raise HandoverError(f"docker stack deploy failed: {(result.stderr or result.stdout).strip()}")
        changed = self.app_spec() != spec
        if force and not changed:
            self.docker("service", "update", "--detach", "--force", self.app, timeout=DEPLOY_TIMEOUT)
            changed = True
        return before, changed or not spec

    def down_nodes(self) -> list[str]:
        """The swarm's nodes that the managers see as down (their tasks cannot report any more)."""
        result = self.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}", check=False)
        return down_nodes(result.stdout) if result.exited == 0 else []

    def restart_update(self) -> UpdateState:
        """Start Swarm's update of the app again (``service update --force``); the state just before it."""
        before = self.update_state()
        self.docker("service", "update", "--detach", "--force", self.app, timeout=DEPLOY_TIMEOUT)
        return before

    def wait_rollout(self, version: str, before: UpdateState, changed: bool, timeout: float,
                     waiting: Any = None, warn: Any = None) -> str:
        """Wait until Swarm has finished: every wanted task of ``version`` running (or the update rolled
        back); returns the outcome (``completed``, ``rollback_completed``, ``paused``, ...).

        A node lost mid-update can leave Swarm's updater waiting for ever for a task on it that will never
        report (measured: still "updating" two minutes after the kill, its slots half replaced). When a node
        is down and nothing has moved for :func:`stall_seconds`, the update is started again, once per lost
        node (``docker service update --force``: start-first like the first, it converges on the nodes left).
        """
        t0 = moved = time.monotonic()
        last: tuple[tuple[str, str, str], ...] = ()
        restarted: set[str] = set()
        while True:
            now = self.update_state()
            outcome = rollout_outcome(before, now, changed and bool(before.started or now.started))
            tasks = self.instances()
            running = [t for t in tasks if t.status == "running"]
            if outcome == UPDATE_DONE:
                if len(running) >= self.settings.replicas and all(t.version == version for t in tasks):
                    return outcome
            elif outcome is not None:
                return outcome if not now.message else f"{outcome}: {now.message}"
            seen = tuple(sorted((t.id, t.status, now.state) for t in tasks))
            if seen != last:
                last, moved = seen, time.monotonic()
            elif now.state == "updating" and time.monotonic() - moved > stall_seconds(self.settings):
                lost = [n for n in self.down_nodes() if n not in restarted]
                if lost:
                    if warn is not None:
                        warn(f"node {', '.join(lost)} is down and Swarm's update has not moved for "
                             f"{time.monotonic() - moved:.0f} s: starting it again (docker service update --force)")
                    restarted.update(lost)
                    before, changed, moved = self.restart_update(), True, time.monotonic()
            if time.monotonic() - t0 > timeout:
                raise HealthCheckFailed(
                    f"Swarm did not finish within {timeout:g} s ({now.state or 'creating'}"
                    f"{': ' + now.message if now.message else ''}); tasks: "
                    + ", ".join(f"{t.name} {t.version} {t.status}" for t in tasks))
            if waiting is not None:
                waiting(f"{sum(t.version == version for t in running)}/{self.settings.replicas} of {version} "
                        f"running, {time.monotonic() - t0:.1f} s")
            time.sleep(POLL)

    # -- logs, removal -----------------------------------------------------------------------------
    def logs(self, instance: Instance, tail: int) -> str:
        result = self.docker("service", "logs", "--no-trunc", "--tail", str(tail), instance.id, check=False)
        return (result.stdout + result.stderr).strip()

    def logs_command(self, tail: int, follow: bool) -> tuple[list[str], dict[str, str]]:
        return (["docker", "service", "logs", "--timestamps", "--tail", str(tail), *(["--follow"] if follow else []),
                 self.app], {})

    def down(self, grace: float) -> None:
        self.docker("stack", "rm", self.settings.project, check=False)
        deadline = time.monotonic() + grace + REMOVE_TIMEOUT
        label = f"label=com.docker.stack.namespace={self.settings.project}"
        while time.monotonic() < deadline:
            left = self.docker("ps", "--all", "--quiet", "--filter", label).stdout.split()
            networks = self.docker("network", "ls", "--quiet", "--filter", label).stdout.split()
            if not left and not networks:
                return
            time.sleep(POLL)
        raise HandoverError(f"stack {self.settings.project} is not gone within {grace + REMOVE_TIMEOUT:g} s")

    # -- what the Compose sequence needs and a stack does not --------------------------------------
    def _not_here(self, what: str) -> HandoverError:
        return HandoverError(f"{what} is not part of a Swarm deploy (Swarm replaces the tasks itself)")

    def start(self, version: str, count: int, env: Mapping[str, str]) -> list[Instance]:
        raise self._not_here("starting instances one by one")

    def stop(self, instances: Sequence[Instance], grace: float) -> None:
        raise self._not_here("stopping chosen instances")

    def remove(self, instances: Sequence[Instance]) -> None:
        raise self._not_here("removing chosen instances")

    def pre_stop(self, instance: Instance, argv: Sequence[str], timeout: float) -> str:
        raise self._not_here("a pre_stop command")

    def start_services(self, services: Sequence[str]) -> None:
        raise self._not_here("the user's other services")

    def start_proxy(self, service: str) -> None:
        raise self._not_here("starting the proxy alone")

    def exec(self, instance: Instance, argv: Sequence[str], *, check: bool = True) -> Result:
        raise self._not_here("running a command in a task")

    def run_once(self, version: str, argv: Sequence[str], timeout: float) -> OneOff:
        raise self._not_here("the release command")

