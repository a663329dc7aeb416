"""The benchmark's ``swarm`` sequence: K updates of a stack on a swarm (``deploy.backend: swarm``) by the
engine, under the same probe as the Compose sequences, reported in the same columns beside them.

The swarm is given by a state file (``lab.json``) that ``scripts/swarm_lab.py up`` writes: the manager
and every node's engine (a ``DOCKER_HOST`` each), the URL where the stack's nginx answers here, and the
images it loaded into the nodes. The sequence runs the engine as ``inv`` does against a swarm: with
``DOCKER_HOST`` naming the manager (:func:`docker_host`), the state directory on this machine.

Each update deploys a new version. Swarm runs ready-made images on every node, so the versions are new
tags of the lab's app image, made on every node *before* the probe starts (``docker tag``: the image is
there, a new name costs nothing). Nothing is built, pulled or loaded inside a deploy's window, as on a
swarm whose nodes get their images before the update (the Compose sequences build a new tag from the
cache inside theirs: about 0.3 s of their wall time). With ``--same-version`` each update is of the
live version again (``--force``: Swarm replaces the tasks with ``docker service update --force``).

"to healthy" is Swarm's own account: from the update's start (``UpdateStatus.StartedAt`` of the app
service) to the first task of the new version reported running (its ``Status.Timestamp``; Swarm calls a
task running only once its health check passed). That is one new task started and healthy, as the
Compose sequences' "to healthy" is one new container; "wall - to healthy" is then everything else: the
tool's steps before the update, and Swarm replacing the other tasks one by one, each watched
``deploy.swarm_monitor`` seconds. Both times come from the swarm's clock (the nodes of the lab share
this machine's); when Swarm does not report them the column says "-".
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .backends.compose import APP_PORT
from .backends.swarm import SwarmBackend, version_of
from .bench import DeployTiming, SequenceResult, run_sequence
from .checks import Check
from .engine import DeployOptions, Engine
from .errors import ConfigError, HandoverError
from .probe import ProbeSettings
from .progress import Progress
from .settings import ALL_ADDRESSES, Settings, check_version
from .shell import Runner, run

SWARM_SEQUENCE = "swarm"
LAB_FILE = "lab.json"
INNER_HTTP_PORT = 8080  # nginx's host-mode port on the manager node (the lab publishes it here)
STATE_PREFIX = ".state-bench-"
LAB_HINT = "`scripts/swarm_lab.py up` makes a swarm to run on and prints its state file's path"
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class Lab:
    """A swarm to benchmark on, as ``scripts/swarm_lab.py up`` made it."""

    prefix: str
    project: str  # the stack's name
    url: str  # where the stack's nginx answers, here
    nodes: dict[str, str] = field(default_factory=dict)  # node name -> its engine's DOCKER_HOST
    manager: str = ""
    app_image: str = ""  # <app_image>:<app_tag> is on every node
    app_tag: str = ""
    proxy_image: str = ""  # on the manager
    base_image: str = ""
    node_image: str = ""  # the nodes' own image (Docker-in-Docker)

    @property
    def docker_host(self) -> str:
        return self.nodes[self.manager]


def lab_json(lab: Lab) -> str:
    return json.dumps(asdict(lab), indent=2, sort_keys=True) + "\n"


def parse_lab(text: str, where: str) -> Lab:
    """A lab from its state file's text; a :class:`ConfigError` naming ``where`` and the key when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a swarm lab's state file (not JSON: {exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a swarm lab's state file (expected a JSON object)")

    def text_of(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key}: expected a non-empty string, got {value!r}")
        return value

    nodes = data.get("nodes")
    if not isinstance(nodes, dict) or not nodes or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith(("unix://", "tcp://", "ssh://"))
            for k, v in nodes.items()):
        raise ConfigError(f"{where}: nodes: expected node names with their DOCKER_HOST (unix://, tcp:// or ssh://)")
    lab = Lab(prefix=text_of("prefix"), project=text_of("project"), url=text_of("url"), nodes=dict(nodes),
              manager=text_of("manager"), app_image=text_of("app_image"), app_tag=text_of("app_tag"),
              proxy_image=text_of("proxy_image"), base_image=text_of("base_image"),
              node_image=str(data.get("node_image", "")))
    if lab.manager not in lab.nodes:
        raise ConfigError(f"{where}: manager: {lab.manager!r} is not one of the nodes ({', '.join(lab.nodes)})")
    if not lab.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url: expected http(s)://host:port, got {lab.url!r}")
    try:
        check_version(lab.app_tag)
    except ConfigError as exc:
        raise ConfigError(f"{where}: app_tag: {exc}") from None
    return lab


def load_lab(path: str | Path) -> Lab:
    if not str(path):
        raise ConfigError(f"the swarm sequence needs a swarm: --swarm-lab <its state file>; {LAB_HINT}")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--swarm-lab {path}: cannot read it ({exc.strerror}); {LAB_HINT}") from None
    return parse_lab(text, f"--swarm-lab {path}")


def swarm_settings(settings: Settings, lab: Lab) -> Settings:
    """The configured settings (timeouts, drain, grace, Swarm's parallelism and monitor) for the lab's stack:
    its project, image and nodes (a task per node), the demo app on TCP port 8000 gated by its image's
    health check, nginx published on the manager; nothing a stack cannot do yet."""
    return replace(settings, project=lab.project, backend="swarm", app_image=lab.app_image, app_build="",
                   app_ship=False, app_port=APP_PORT, app_health="", http_bind=ALL_ADDRESSES,
                   http_port=INNER_HTTP_PORT, replicas=len(lab.nodes), base_image=lab.base_image,
                   proxy_base_image=lab.base_image, state_dir=f"{STATE_PREFIX}{lab.project}", hooks_dir="",
                   env_file="", release_command=(), app_pre_stop=(), extra_compose_file="", extra_services=(),
                   tls_certificate="", tls_key="", hostnames=())


def bench_versions(stamp: str, deploys: int, *, same_version: bool = False) -> tuple[list[str], list[str]]:
    """The versions to tag on every node (the first is ``up``'s) and the version of each update: a new
    tag each, never one that ran before; with ``same_version``, the first one again each time."""
    tagged = [check_version(f"bench-{SWARM_SEQUENCE}-{stamp}-{n}") for n in range(1 if same_version else deploys + 1)]
    return tagged, tagged[:1] * deploys if same_version else tagged[1:]


def tag_argv(lab: Lab, version: str) -> list[str]:
    return ["docker", "tag", f"{lab.app_image}:{lab.app_tag}", f"{lab.app_image}:{version}"]


def untag_argv(lab: Lab, versions: Sequence[str]) -> list[str]:
    return ["docker", "image", "rm", *(f"{lab.app_image}:{v}" for v in versions)]


def tag_versions(runner: Runner, lab: Lab, versions: Sequence[str]) -> None:
    """Every version on every node (before the probe starts)."""
    for host in lab.nodes.values():
        for version in versions:
            run(runner, tag_argv(lab, version), env={"DOCKER_HOST": host})


def untag_versions(runner: Runner, lab: Lab, versions: Sequence[str]) -> None:
    for host in lab.nodes.values():
        run(runner, untag_argv(lab, versions), env={"DOCKER_HOST": host}, check=False)


def parse_timestamp(text: str) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z`` or an offset) as seconds since the epoch; ``None`` for
    Go's zero time or anything else."""
    m = _TIMESTAMP.match(text.strip())
    if not m or m.group(1).startswith("0001-"):
        return None
    fraction = (m.group(2) or "")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}").timestamp()


def first_running(tasks: Sequence[Mapping[str, Any]], version: str) -> float | None:
    """When the first task of ``version`` was reported running (``docker inspect --type task`` objects)."""
    times = []
    for task in tasks:
        image = str(((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", ""))
        status = task.get("Status") or {}
        if version_of(image) == version and status.get("State") == "running":
            stamp = parse_timestamp(str(status.get("Timestamp", "")))
            if stamp is not None:
                times.append(stamp)
    return min(times, default=None)


def update_to_healthy(started: str, tasks: Sequence[Mapping[str, Any]], version: str) -> float | None:
    """Seconds from the update's start to the first new task running; ``None`` when Swarm does not say."""
    t0, first = parse_timestamp(started), first_running(tasks, version)
    return None if t0 is None or first is None or first < t0 else first - t0


def measured_to_healthy(backend: SwarmBackend, version: str) -> float | None:
    started = backend.update_state().started
    ids = [t.id for t in backend.instances()]
    if not ids:
        return None
    result = backend.docker("inspect", "--type", "task", *ids, check=False)
    if result.exited != 0:
        return None
    tasks = json.loads(result.stdout or "[]")
    return update_to_healthy(started, tasks if isinstance(tasks, list) else [], version)


def swarm_deploy(engine: Engine, *, force: bool = False) -> Callable[[str], DeployTiming]:
    """An update by the engine, timed as the Compose sequences are (wall: the engine's run); ``force``: also
    of the version that is live."""
    backend = engine.backend
    assert isinstance(backend, SwarmBackend)

    def deploy(version: str) -> DeployTiming:
        rec = engine.deploy(DeployOptions(version=version, host="bench", force=force))
        steps: dict[str, float] = {}
        for s in rec.steps:
            steps[s.name] = steps.get(s.name, 0.0) + s.seconds
        return DeployTiming(rec.seconds, measured_to_healthy(backend, version), steps)

    return deploy


@contextmanager
def docker_host(host: str) -> Iterator[None]:
    """``DOCKER_HOST`` for this process's docker commands, as ``DOCKER_HOST=... inv`` would set it."""
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before


def manager_problem(checks: Sequence[Check]) -> str:
    """What is wrong with the engine behind ``DOCKER_HOST`` ("" = a manager of an active swarm)."""
    return "; ".join(c.detail for c in checks if not c.ok)


def check_lab(runner: Runner, settings: Settings, lab: Lab, where: str) -> None:
    """The lab's manager answers and manages a swarm; else a :class:`HandoverError` that says so."""
    with docker_host(lab.docker_host):
        problem = manager_problem(SwarmBackend(runner, swarm_settings(settings, lab)).host_checks())
    if problem:
        raise HandoverError(f"--swarm-lab {where}: the swarm manager {lab.manager} ({lab.docker_host}) does not "
                            f"answer as one: {problem}; {LAB_HINT}")


def run_swarm(runner: Runner, settings: Settings, lab: Lab, deploys: int, load: ProbeSettings,
              progress: Progress, *, same_version: bool = False) -> SequenceResult:
    """Tag the versions on every node, ``up`` the first, then ``deploys`` updates under the probe against the
    stack's nginx (``same_version``: each of the first again, forced); the stack and the tags are removed
    afterwards."""
    s = swarm_settings(settings, lab)
    versions, updates = bench_versions(time.strftime("%H%M%S"), deploys, same_version=same_version)
    progress.say(f"==> {deploys} Swarm updates of {s.replicas} tasks on {len(lab.nodes)} nodes ({lab.manager} "
                 f"manages; {s.swarm_parallelism} at a time, start-first, each watched {s.swarm_monitor:g} s)")
    with docker_host(lab.docker_host):
        tag_versions(runner, lab, versions)
        engine = Engine(runner, s, progress)
        try:
            engine.down()
            engine.up(versions[0])
            engine.progress = Progress(quiet=True)
            return run_sequence(SWARM_SEQUENCE, swarm_deploy(engine, force=same_version), deploys,
                                replace(load, base_url=lab.url), progress.say, versions=updates)
        finally:
            engine.progress = progress
            engine.down()
            untag_versions(runner, lab, versions)
