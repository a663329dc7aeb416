"""Where the CPU goes during one deploy: every command the tool runs, per step, with its CPU seconds.

Runs an ``inv`` task (``local.deploy`` by default) in this process with Invoke's runner wrapped, so
each command the tool starts (a ``docker``/``docker compose`` client, a ``sh -c``) is counted with
its wall time and the CPU seconds it and its children used (``RUSAGE_CHILDREN`` deltas: commands run
one at a time). Besides the commands it reads, at every step boundary, the CPU of Docker's own
processes (``dockerd``, ``containerd``, the ``containerd-shim`` of each container, with the health
check processes they reap) and of every container of the project (its cgroup's ``cpuacct.usage``),
and at the end this process's own CPU and its start-up time. CPU seconds do not grow when the
machine is busy with other work, so the table holds up under background load; wall times do not.

    INVOKE_DEPLOY_PROJECT=lat-dev INVOKE_DEPLOY_HTTP_PORT=19101 \\
        python scripts/deploy_cpu.py -- local.deploy --force
    python scripts/deploy_cpu.py --json out.json -- local.deploy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = time.monotonic()
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOCKER_DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy")
CGROUP = Path("/sys/fs/cgroup/cpuacct/docker")
OUTSIDE = "(outside the engine's steps)"


def process_started_ago() -> float:
    """Seconds since this process was started by the kernel (interpreter start-up included)."""
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / CLK_TCK


def daemon_cpu() -> dict[str, float]:
    """CPU seconds so far of Docker's processes, with the children they reaped (runc, health check
    commands): ``dockerd``/``containerd`` by name, each container's shim as ``shim:<container id>``."""
    found: dict[str, float] = defaultdict(float)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name = text[text.index("(") + 1:text.rindex(")")]
            if not name.startswith(DOCKER_DAEMONS):
                continue
            fields = text.rsplit(")", 1)[1].split()
            cpu = sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
            key = name
            if name.startswith("containerd-shim"):
                argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
                key = "shim:" + (argv[argv.index(b"-id") + 1].decode() if b"-id" in argv else stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
        found[key] += cpu
    return dict(found)


def daemon_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each of Docker's processes used in between (one that exited meanwhile is left out)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def ours(delta: dict[str, float]) -> float:
    """dockerd + containerd (shared with anything else on the machine) and the shims of the project."""
    return sum(v for k, v in delta.items() if not k.startswith("shim:") or k[5:] in WATCHED)


def project_containers(project: str) -> set[str]:
    """Full IDs of the compose project's containers (running or not)."""
    import subprocess

    out = subprocess.run(["docker", "ps", "--all", "--no-trunc", "--quiet", "--filter",
                          f"label=com.docker.compose.project={project}"], capture_output=True, text=True, check=False)
    return set(out.stdout.split())


WATCHED: set[str] = set()  # the project's containers, seen at the start or the end



def container_cpu() -> dict[str, float]:
    """CPU seconds of each container so far (cgroup v1 cpuacct), by full ID (filtered by :data:`WATCHED` later)."""
    found = {}
    for usage in CGROUP.glob("*/cpuacct.usage"):
        try:
            found[usage.parent.name] = int(usage.read_text()) / 1e9
        except (OSError, ValueError):
            continue
    return found


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Command:
    step: str
    what: str
    wall: float
    cpu: float


@dataclass
class StepSample:
    name: str
    wall: float = 0.0
    daemons: dict[str, float] = field(default_factory=dict)
    containers: dict[str, float] = field(default_factory=dict)


class Recorder:
    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.api_calls: list[tuple[str, str, float]] = []  # step, what, wall
        self.steps: list[StepSample] = []
        self.current = OUTSIDE

    @contextmanager
    def in_step(self, name: str) -> Iterator[None]:
        before_d, before_c, t0 = daemon_cpu(), container_cpu(), time.monotonic()
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous
            after_c = container_cpu()
            self.steps.append(StepSample(name, time.monotonic() - t0, daemon_delta(before_d, daemon_cpu()),
                                         {k: v - before_c.get(k, 0.0) for k, v in after_c.items()}))


def what(command: str) -> str:
    """A short name for a command line: ``docker compose up``, ``docker inspect``, ``sh -c``."""
    words = shlex.split(command)
    while words and "=" in words[0] and words[0] != "env":
        words.pop(0)
    if words and words[0] == "env":
        words = [w for w in words[1:] if "=" not in w or w.startswith("-")]
    if words[:2] == ["docker", "compose"]:
        verbs = [w for w in words[2:] if not w.startswith("-") and "/" not in w and not w.endswith(".yml")]
        # skip the values of --project-name/--file
        rest, skip = [], False
        for w in words[2:]:
            if skip:
                skip = False
                continue
            if w in ("--project-name", "--file"):
                skip = True
                continue
            rest.append(w)
        verbs = [w for w in rest if not w.startswith("-")]
        return "docker compose " + (verbs[0] if verbs else "")
    if words[:1] == ["docker"]:
        sub = [w for w in words[1:3] if not w.startswith("-")]
        return "docker " + " ".join(sub[:2] if sub[:1] in (["image"], ["container"]) else sub[:1])
    return " ".join(words[:2])[:40]


def install(recorder: Recorder) -> None:
    from invoke.runners import Runner

    from handover import dockerapi, progress, shell

    original_run = Runner.run

    def run(self: Any, command: str, **kwargs: Any) -> Any:
        cpu0, t0 = children_cpu(), time.monotonic()
        try:
            return original_run(self, command, **kwargs)
        finally:
            recorder.commands.append(Command(recorder.current, what(command), time.monotonic() - t0,
                                             children_cpu() - cpu0))

    Runner.run = run  # type: ignore[method-assign]
    original_here = shell.run_here

    def run_here(args: Any, env: Any, timeout: Any) -> Any:  # commands started without Invoke's runner
        cpu0, t0 = children_cpu(), time.monotonic()
        try:
            return original_here(args, env, timeout)
        finally:
            recorder.commands.append(Command(recorder.current, what(shlex.join(args)), time.monotonic() - t0,
                                             children_cpu() - cpu0))

    shell.run_here = run_here  # type: ignore[assignment]
    original_request = dockerapi.DockerAPI.request

    def request(self: Any, method: str, target: str, **kwargs: Any) -> Any:  # Engine API calls: no process
        t0 = time.monotonic()
        try:
            return original_request(self, method, target, **kwargs)
        finally:
            recorder.api_calls.append((recorder.current, f"{method} {target.split('?')[0].split('/')[1]}",
                                       time.monotonic() - t0))

    dockerapi.DockerAPI.request = request  # type: ignore[method-assign]
    original_step = progress.Progress.step

    @contextmanager
    def step(self: Any, record: Any, name: str, doing: str) -> Iterator[Any]:
        with recorder.in_step(name), original_step(self, record, name, doing) as line:
            yield line

    progress.Progress.step = step  # type: ignore[method-assign]


def report(recorder: Recorder, started_ago: float, total_wall: float, total_daemons: dict[str, float],
           containers: dict[str, float]) -> dict[str, Any]:
    by_step: dict[str, dict[str, Any]] = defaultdict(lambda: {"commands": 0, "cpu": 0.0, "wall": 0.0,
                                                             "kinds": defaultdict(int)})
    for c in recorder.commands:
        s = by_step[c.step]
        s["commands"] += 1
        s["cpu"] += c.cpu
        s["wall"] += c.wall
        s["kinds"][c.what] += 1
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "cpu": 0.0, "wall": 0.0})
    for c in recorder.commands:
        kinds[c.what]["count"] += 1
        kinds[c.what]["cpu"] += c.cpu
        kinds[c.what]["wall"] += c.wall
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "startup_s": started_ago,
        "own_cpu_s": own.ru_utime + own.ru_stime,
        "wall_s": total_wall,
        "commands": len(recorder.commands),
        "commands_cpu_s": sum(c.cpu for c in recorder.commands),
        "api_calls": len(recorder.api_calls),
        "api_wall_s": sum(wall for _, _, wall in recorder.api_calls),
        "daemons_cpu_s": ours(total_daemons),
        "daemons_by_process_s": {k: round(v, 3) for k, v in total_daemons.items()
                                 if not k.startswith("shim:") or k[5:] in WATCHED},
        "containers_cpu_s": containers,
        "steps": [{"name": s.name, "wall": s.wall, "daemons_cpu": ours(s.daemons),
                   "containers_cpu": sum(v for k, v in s.containers.items() if v > 0 and k in WATCHED),
                   "commands": by_step[s.name]["commands"] if s.name in by_step else 0,
                   "commands_cpu": by_step[s.name]["cpu"] if s.name in by_step else 0.0,
                   "kinds": dict(by_step[s.name]["kinds"]) if s.name in by_step else {}}
                  for s in recorder.steps],
        "outside": {k: (dict(v) if k == "kinds" else v) for k, v in by_step[OUTSIDE].items()},
        "by_command": {k: v for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]["cpu"])},
    }


def print_report(data: dict[str, Any]) -> None:
    print(f"interpreter + imports before the task: {data['startup_s']:.3f} s wall")
    print(f"whole run: {data['wall_s']:.2f} s wall; tool's own CPU {data['own_cpu_s']:.2f} s; "
          f"{data['commands']} commands, {data['commands_cpu_s']:.2f} s CPU; Docker daemons "
          f"{data['daemons_cpu_s']:.2f} s CPU; {data['api_calls']} Engine API requests, "
          f"{data['api_wall_s']:.2f} s wall")
    print(f"Docker's processes: {data['daemons_by_process_s']}")
    print(f"containers: {data['containers_cpu_s']}")
    print(f"{'step':<16} {'wall s':>7} {'cmds':>5} {'cmd CPU s':>9} {'dockerd+shim CPU s':>19} "
          f"{'containers CPU s':>17}")
    for s in data["steps"]:
        print(f"{s['name']:<16} {s['wall']:>7.2f} {s['commands']:>5} {s['commands_cpu']:>9.2f} "
              f"{s['daemons_cpu']:>19.2f} {s['containers_cpu']:>17.2f}   {dict(s['kinds'])}")
    o = data["outside"]
    print(f"{'outside steps':<16} {'':>7} {o.get('commands', 0):>5} {o.get('cpu', 0.0):>9.2f}   "
          f"{dict(o.get('kinds', {}))}")
    print(f"{'command':<28} {'count':>5} {'CPU s':>7} {'CPU ms each':>11} {'wall s':>7}")
    for k, v in data["by_command"].items():
        print(f"{k:<28} {int(v['count']):>5} {v['cpu']:>7.2f} {1000 * v['cpu'] / v['count']:>11.0f} {v['wall']:>7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--project", default=os.environ.get("INVOKE_DEPLOY_PROJECT", "handover"),
                        help="compose project whose containers' CPU is read (default: INVOKE_DEPLOY_PROJECT)")
    parser.add_argument("task", nargs="*", default=["local.deploy"], help="the inv task and its options")
    args = parser.parse_args()
    started_ago = process_started_ago()
    WATCHED.update(project_containers(args.project))
    recorder = Recorder()
    install(recorder)
    from invoke.main import program

    d0, c0, t0 = daemon_cpu(), container_cpu(), time.monotonic()
    code = 0
    try:
        program.run(["inv", *args.task])
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    WATCHED.update(project_containers(args.project))
    c1 = container_cpu()
    data = report(recorder, started_ago, time.monotonic() - t0, daemon_delta(d0, daemon_cpu()),
                  {k[:12]: v - c0.get(k, 0.0) for k, v in c1.items() if k in WATCHED})
    print_report(data)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
