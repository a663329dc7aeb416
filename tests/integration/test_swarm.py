"""``deploy.backend: swarm`` on a real three-node swarm: one manager and two workers, each a Docker-in-Docker
container (see :mod:`tests.integration.dind`), joined over a network of their own, with cross-node
overlay networking. ``inv`` runs here against the manager's engine (``DOCKER_HOST`` names the manager's
socket, which its container shares with this machine through a directory); nothing touches this
machine's own engine's swarm state.

The app's images are the demo app's, built here, one tag per version, and loaded into every node as an
operator would provision a swarm without a registry (``docker save | docker exec -i NODE docker load``);
the proxy's image into the manager. One update takes its image from a registry instead: a registry of
the lab's own (this machine's ``docker-registry`` program in a container on the nodes' network), which
every node pulls from by itself. nginx publishes in host mode on the manager's port 8080, which the
manager's container maps to 127.0.0.1 here: the probe's traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from invoke import Context

from handover import images
from handover.probe import Probe, ProbeSettings
from handover.progress import Progress

from .conftest import PROBE_RATE, PROBE_WS_CLIENTS, TEST_PORT, TEST_PROJECT, docker_ready, lost_nothing
from .dind import BUILD_TIMEOUT, SshKeys, docker, form_swarm, host_image, load_images, run_node

pytestmark = [pytest.mark.integration, pytest.mark.swarm]

ROOT = Path(__file__).resolve().parents[2]
INV = str(Path(sys.executable).parent / "inv")
PREFIX = f"{TEST_PROJECT}-swarm"
NODES = (f"{PREFIX}-m", f"{PREFIX}-w1", f"{PREFIX}-w2")
MANAGER = NODES[0]
NETWORK = f"{PREFIX}-net"
HTTP_PORT = TEST_PORT + 40  # here, on 127.0.0.1
INNER_HTTP_PORT = 8080  # nginx's host-mode port on the manager node
SSH_PORTS = {NODES[0]: TEST_PORT + 41, NODES[1]: TEST_PORT + 42}  # sshd of the manager and of one worker
REGISTRY = f"{PREFIX}-reg"  # the lab's registry, by its name on the nodes' network
REGISTRY_PORT = TEST_PORT + 43  # the same registry here, on 127.0.0.1 (this engine pushes to it)
REGISTRY_PROGRAM = "/usr/bin/docker-registry"  # Debian's docker-registry: a static-enough Go binary (libc only)
REGISTRY_CONFIG = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: ":5000"
"""
REMOTE_DIR = "/srv/swarm-shop"
FAB = str(Path(sys.executable).parent / "fab")
PROJECT = f"{TEST_PROJECT}-sw"
APP_IMAGE = f"{PROJECT}-app"
PROXY_IMAGE = f"{PROJECT}-nginx:1"
STATE_DIR = f".state-{PROJECT}"
BASE = "debian:bookworm"
VERSIONS = ("v1", "v2", "v3", "v4", "v5", "v6")
BAD = "bad"  # never healthy: the app answers 503 on its health path
START_TIMEOUT = 90.0
INV_TIMEOUT = 600


def node_docker(node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return docker("exec", node, "docker", *args, check=check)


@dataclass
class Swarm:
    config: Path
    socket: Path
    fab_config: Path
    client_key: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_", "DOCKER_"))}
        env["PYTHONPATH"] = str(ROOT)
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        return env

    def inv(self, *args: str, ok: bool = True, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([INV, "-f", str(config or self.config), *args], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=INV_TIMEOUT)
        if ok:
            assert done.returncode == 0, f"inv {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def fab(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``fab`` over SSH to ``node`` (the manager, or a worker), its host key checked."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_", "DOCKER_"))}
        env["PYTHONPATH"] = str(ROOT)
        argv = [FAB, "-f", str(self.fab_config), "-i", str(self.client_key), "-H",
                f"root@127.0.0.1:{SSH_PORTS[node]}", *args]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=INV_TIMEOUT)

    def tasks(self) -> list[dict[str, str]]:
        """The app service's current tasks (desired state running), as Swarm tells them."""
        out = node_docker(MANAGER, "service", "ps", "--no-trunc", "--format", "{{json .}}", f"{PROJECT}_app").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [r for r in rows if r["DesiredState"] == "Running"]

    @staticmethod
    def evidence() -> str:
        """What to read when the probe saw a failure: nginx's error log (why it answered 502, where a WebSocket
        went), the app's tasks with Swarm's errors, and what each node's engine said about its peers and
        health checks."""
        nginx = node_docker(MANAGER, "service", "logs", "--raw", "--tail", "60", f"{PROJECT}_nginx", check=False)
        parts = [nginx.stdout + nginx.stderr,  # nginx logs to its stderr, which the CLI passes on as its own
                 node_docker(MANAGER, "service", "ps", "--no-trunc", "--format",
                             "{{.Name}} {{.Node}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
                             f"{PROJECT}_app", check=False).stdout]
        for node in NODES:
            said = docker("exec", node, "grep", "-aiE", "memberlist|networkdb|unhealthy|health check",
                          "/var/log/dockerd.log", check=False).stdout.splitlines()
            parts.append(f"{node} dockerd: " + "\n".join(said[-15:]))
        return "\n".join(parts)

    @staticmethod
    def version() -> str:
        return str(requests.get(f"http://127.0.0.1:{HTTP_PORT}/api/info", timeout=5).json()["version"])


@pytest.fixture(scope="module")
def minbase() -> str:
    docker_ready()
    return images.ensure_base_image(Context(), BASE, Progress(quiet=True))


@pytest.fixture(scope="module")
def app_images(minbase: str) -> Iterator[list[str]]:
    """The demo app as one image per version (and one never healthy), and the proxy's image: their refs."""
    images.build_wheelhouse(ROOT / "server", Progress(quiet=True))
    built = f"{APP_IMAGE}:built"
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", built, str(ROOT / "server"),
           timeout=BUILD_TIMEOUT)
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", PROXY_IMAGE, str(ROOT / "nginx"),
           timeout=BUILD_TIMEOUT)
    refs = []
    try:
        for version in (*VERSIONS, BAD):
            ref = f"{APP_IMAGE}:{version}"
            # Never healthy: its health path answers 503. A start period of 5 s instead of the image's 30 s
            # makes Swarm give up on it sooner; the rollback is the same.
            fault = ("ENV APP_FAULT=unhealthy\nHEALTHCHECK --interval=1s --timeout=2s --start-period=5s --retries=2 "
                     'CMD ["/bin/bash", "/app/healthcheck.sh"]\n') if version == BAD else ""
            subprocess.run(["docker", "build", "--quiet", "--tag", ref, "-"], input=f"FROM {built}\n{fault}LABEL "
                           f"demo.release={version}\n", text=True, capture_output=True, check=True, timeout=120)
            refs.append(ref)
        yield refs
    finally:
        tags = docker("image", "ls", APP_IMAGE, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        docker("image", "rm", *tags, PROXY_IMAGE, check=False)


def remove_nodes() -> None:
    for node in (*NODES, REGISTRY):
        docker("rm", "--force", "--volumes", node, check=False)
        docker("volume", "rm", f"{node}-lib", check=False)
    docker("network", "rm", NETWORK, check=False)


def start_registry(tmp: Path, base: str) -> None:
    """The lab's registry: this machine's ``docker-registry`` program in a container of the base image, on the
    nodes' network (the nodes reach it as ``REGISTRY:5000``, plain HTTP, which their engines are told to
    accept) and on 127.0.0.1 here."""
    config = tmp / "registry.yml"
    config.write_text(REGISTRY_CONFIG)
    docker("run", "--detach", "--name", REGISTRY, "--network", NETWORK,
           "--publish", f"127.0.0.1:{REGISTRY_PORT}:5000",
           "-v", f"{REGISTRY_PROGRAM}:/usr/local/bin/docker-registry:ro", "-v", f"{config}:/etc/registry.yml:ro",
           base, "docker-registry", "serve", "/etc/registry.yml")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{REGISTRY_PORT}/v2/", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, docker("logs", REGISTRY, check=False).stderr
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory, minbase: str, app_images: list[str]) -> Iterator[Swarm]:
    tmp = tmp_path_factory.mktemp("swarm")
    image = host_image(tmp, minbase, f"{TEST_PROJECT}-dind-host")
    run_dir = tmp / "run"
    run_dir.mkdir()
    keys = SshKeys.make(tmp, SSH_PORTS.values())
    remove_nodes()
    docker("network", "create", NETWORK)
    try:
        start_registry(tmp, minbase)
        for node in NODES:
            extra = []
            if node == MANAGER:  # nginx's port on loopback here
                extra = ["--publish", f"127.0.0.1:{HTTP_PORT}:{INNER_HTTP_PORT}"]
            if node in SSH_PORTS:  # sshd for fab, on loopback here
                extra += ["--publish", f"127.0.0.1:{SSH_PORTS[node]}:22", *keys.mounts()]
            run_node(node, NETWORK, image, ["-v", f"{run_dir}:/run/outer", *extra],
                     dockerd_flags=["--insecure-registry", f"{REGISTRY}:5000"],
                     outer_socket="/run/outer/docker.sock" if node == MANAGER else "",  # the engine for inv here
                     sshd=node in SSH_PORTS)
        form_swarm(NODES, NETWORK)
        for node in NODES:
            load_images(node, *app_images, *([PROXY_IMAGE] if node == MANAGER else []))
        config = tmp / "swarm.yaml"
        config.write_text(yaml.safe_dump({"deploy": {
            "project": PROJECT, "state_dir": STATE_DIR, "backend": "swarm", "replicas": 3,
            "app_build": "", "app_image": APP_IMAGE, "app_port": 8000,
            "http_bind": "0.0.0.0", "http_port": INNER_HTTP_PORT,  # noqa: S104 - the manager node's; mapped to loopback
            "base_image": minbase, "proxy_base_image": minbase, "hooks_dir": "",
            "drain_timeout": 2, "stop_grace_period": 6, "swarm_monitor": 3}}))
        fab_config = tmp / "fabric.yaml"
        fab_config.write_text(yaml.safe_dump({"deploy": {
            **yaml.safe_load(config.read_text())["deploy"], "known_hosts": str(keys.known_hosts),
            "deploy_dir": REMOTE_DIR, "state_dir": ".state"}}))
        yield Swarm(config, run_dir / "docker.sock", fab_config, keys.client_key)
    finally:
        remove_nodes()
        subprocess.run(["rm", "-rf", str(ROOT / STATE_DIR)], check=False)


def test_five_swarm_updates_of_three_replicas_on_three_nodes_lose_nothing(swarm: Swarm) -> None:
    first = swarm.inv("local.up", "--version", VERSIONS[0]).stdout
    assert "rollout" in first, first
    assert swarm.version() == VERSIONS[0]
    tasks = swarm.tasks()
    assert len(tasks) == 3 and {t["CurrentState"].split()[0] for t in tasks} == {"Running"}, tasks
    assert len({t["Node"] for t in tasks}) == 3, f"Swarm spread the tasks over every node: {tasks}"

    plan = swarm.inv("local.deploy", "--version", VERSIONS[1], "--dry-run").stdout
    assert "Swarm replaces 3 tasks" in plan and "start-first" in plan, plan
    assert swarm.version() == VERSIONS[0]

    probe = Probe(ProbeSettings(base_url=f"http://127.0.0.1:{HTTP_PORT}", rate=PROBE_RATE,
                                ws_clients=PROBE_WS_CLIENTS))
    probe.start()
    try:
        for n, version in enumerate(VERSIONS[1:]):
            with probe.window(f"update-{n}"):
                t0 = time.monotonic()
                swarm.inv("local.deploy", "--version", version)
                print(f"swarm update to {version}: {time.monotonic() - t0:.1f} s")
            tasks = swarm.tasks()
            assert [t["Image"].split("@")[0] for t in tasks] == [f"{APP_IMAGE}:{version}"] * 3, tasks
            assert swarm.version() == version
            time.sleep(1.0)
        with probe.window("rollback"):  # back to the previous release, the same way
            back = swarm.inv("local.rollback").stdout
        assert f"rollback success: {VERSIONS[-1]} -> {VERSIONS[-2]}" in back, back
        assert swarm.version() == VERSIONS[-2]
        time.sleep(1.0)
    finally:
        report = probe.stop()
    print(report.format_table())
    if not report.ok:
        print(swarm.evidence())
    _, ws = lost_nothing(report)
    assert ws["close_codes"].get("1012", 0) > 0, ws  # type: ignore[index]  # the old tasks moved their clients
    assert report.ok, report.format_table()

    status = swarm.inv("local.status").stdout
    assert f"live version: {VERSIONS[-2]}" in status and status.count(f"{PROJECT}_app.") == 3, status
    rows = [line for line in status.splitlines() if f"{PROJECT}_app." in line]
    assert all(any(f"@{node} " in row for node in NODES) for row in rows), status  # each task with its node
    records = [json.loads(line) for line in swarm.inv("local.releases", "--json", "--count", "10").stdout.splitlines()]
    assert [(r["action"], r["result"]) for r in records[-6:]] == [("deploy", "success")] * 5 + [
        ("rollback", "success")], records
    assert "webapp INFO" in swarm.inv("local.logs", "--tail", "20").stdout


def test_an_update_that_never_gets_healthy_is_rolled_back_by_swarm_with_the_old_tasks_serving(swarm: Swarm) -> None:
    swarm.inv("local.up", "--version", VERSIONS[-2])  # serving already after the test above: nothing to do
    serving = swarm.version()
    assert len(swarm.tasks()) == 3

    probe = Probe(ProbeSettings(base_url=f"http://127.0.0.1:{HTTP_PORT}", rate=PROBE_RATE,
                                ws_clients=PROBE_WS_CLIENTS))
    probe.start()
    try:
        with probe.window("never-healthy"):
            t0 = time.monotonic()
            done = swarm.inv("local.deploy", "--version", BAD, ok=False)
            print(f"update to a version never healthy, rolled back by Swarm: {time.monotonic() - t0:.1f} s")
        time.sleep(1.0)
    finally:
        report = probe.stop()
    print(report.format_table())
    if not report.ok:
        print(swarm.evidence())
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Swarm rolled the update back (rollback_completed" in output, output
    # The old version serves on: start-first, the new task never got healthy, so no old one was stopped for it.
    tasks = swarm.tasks()
    assert len(tasks) == 3 and {t["Image"].split("@")[0] for t in tasks} == {f"{APP_IMAGE}:{serving}"}, tasks
    assert swarm.version() == serving
    record = json.loads(swarm.inv("local.releases", "--json", "--count", "1").stdout.splitlines()[-1])
    assert (record["result"], record["failed_step"], record["version"]) == ("rolled-back", "rollout", BAD), record

    swarm.inv("local.down")  # the whole stack: its services, their tasks on every node, its network
    assert node_docker(MANAGER, "service", "ls", "--quiet").stdout.strip() == ""
    assert "proxy: not running   live version: -" in swarm.inv("local.status").stdout
    lost_nothing(report)


def test_fab_setup_refuses_a_worker_and_fab_deploys_through_the_manager(swarm: Swarm) -> None:
    worker = swarm.fab(NODES[1], "setup")
    said = worker.stdout + worker.stderr
    assert worker.returncode == 1 and "this engine is a swarm worker, not a manager" in said, said
    manager = swarm.fab(MANAGER, "setup")
    assert manager.returncode == 0 and "a manager of an active swarm" in manager.stdout, manager.stdout + manager.stderr
    swarm.inv("local.up", "--version", VERSIONS[-1])
    deployed = swarm.fab(MANAGER, "deploy", "--version", VERSIONS[2])
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "Swarm replaces 3 tasks" in deployed.stdout, deployed.stdout
    assert swarm.version() == VERSIONS[2]
    status = swarm.fab(MANAGER, "status")
    assert status.returncode == 0 and status.stdout.count(f"{PROJECT}_app.") == 3, status.stdout + status.stderr

    # The deploy lock, the rollback and the logs, over SSH as for Compose.
    assert swarm.fab(MANAGER, "lock", "--reason", "db migration").returncode == 0
    refused = swarm.fab(MANAGER, "deploy", "--version", VERSIONS[3])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert re.search(r"held by \S+ since \S+ \(\d+ s\): db migration", refused.stderr), refused.stderr
    assert swarm.version() == VERSIONS[2]
    freed = swarm.fab(MANAGER, "unlock")
    assert freed.returncode == 0 and "lock released" in freed.stdout, freed.stdout + freed.stderr
    again = swarm.fab(MANAGER, "deploy", "--version", VERSIONS[3])
    assert again.returncode == 0 and swarm.version() == VERSIONS[3], again.stdout + again.stderr
    back = swarm.fab(MANAGER, "rollback")  # to the release before, from the manager's own records
    assert back.returncode == 0, back.stdout + back.stderr
    assert swarm.version() == VERSIONS[2]
    logs = swarm.fab(MANAGER, "logs", "--tail", "5")
    assert logs.returncode == 0 and "webapp INFO" in logs.stdout, logs.stdout + logs.stderr


def test_an_update_from_a_registry_is_pulled_by_every_node_itself(swarm: Swarm) -> None:
    swarm.inv("local.up", "--version", VERSIONS[2])  # serving already after the test above: nothing to do
    pushed = f"127.0.0.1:{REGISTRY_PORT}/{PROJECT}-app:r1"
    docker("tag", f"{APP_IMAGE}:{VERSIONS[0]}", pushed)
    try:
        docker("push", pushed, timeout=300)
    finally:
        docker("image", "rm", pushed, check=False)
    image = f"{REGISTRY}:5000/{PROJECT}-app"  # as the nodes name the same registry
    config = swarm.config.with_name("from-registry.yaml")
    settings = yaml.safe_load(swarm.config.read_text())
    config.write_text(yaml.safe_dump({"deploy": {**settings["deploy"], "app_image": image}}))
    assert all(node_docker(n, "image", "ls", "--quiet", image).stdout.strip() == "" for n in NODES)

    probe = Probe(ProbeSettings(base_url=f"http://127.0.0.1:{HTTP_PORT}", rate=PROBE_RATE,
                                ws_clients=PROBE_WS_CLIENTS))
    probe.start()
    try:
        with probe.window("from-registry"):
            swarm.inv("local.deploy", "--version", "r1", config=config)
        time.sleep(1.0)
    finally:
        report = probe.stop()
    print(report.format_table())
    tasks = swarm.tasks()
    # Pinned to the registry's digest (--resolve-image): every node runs the very same image.
    assert len(tasks) == 3 and all(t["Image"].startswith(f"{image}:r1@sha256:") for t in tasks), tasks
    running_on = {t["Node"] for t in tasks}
    assert len({t["Image"] for t in tasks}) == 1 and running_on - {MANAGER}, tasks  # workers among them
    assert swarm.version() == "r1"
    pulled = {n for n in NODES if node_docker(n, "image", "ls", "--quiet", image).stdout.strip()}
    assert running_on <= pulled, f"each node that runs it pulled the image itself: {pulled}"
    lost_nothing(report)


def test_a_worker_killed_mid_update_leaves_the_service_converged(swarm: Swarm) -> None:
    swarm.inv("local.up", "--version", VERSIONS[2])  # back from the registry's image of the test above
    target = VERSIONS[0]
    probe = Probe(ProbeSettings(base_url=f"http://127.0.0.1:{HTTP_PORT}", rate=PROBE_RATE,
                                ws_clients=PROBE_WS_CLIENTS))
    probe.start()
    try:
        with probe.window("worker-killed"):
            deploy = subprocess.Popen([INV, "-f", str(swarm.config), "local.deploy", "--version", target], cwd=ROOT,
                                      env=swarm.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      stdin=subprocess.DEVNULL)
            # The worker on which Swarm is starting a new task: the updater waits for that task.
            deadline = time.monotonic() + START_TIMEOUT
            victim = ""
            while not victim:
                assert time.monotonic() < deadline and deploy.poll() is None, "no new task started on a worker"
                victim = next((t["Node"] for t in swarm.tasks() if t["Image"].startswith(f"{APP_IMAGE}:{target}")
                               and t["Node"] != MANAGER and not t["CurrentState"].startswith("Running")), "")
                time.sleep(0.1)
            docker("kill", victim)  # the whole node: its dockerd, its tasks, its end of the overlay
            t0 = time.monotonic()
            output, _ = deploy.communicate(timeout=INV_TIMEOUT)
            print(f"update with {victim} killed mid-way: finished {time.monotonic() - t0:.1f} s after the kill, "
                  f"exit {deploy.returncode}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # Swarm puts the lost node's tasks on the others
            tasks = swarm.tasks()
            running = [t for t in tasks if t["CurrentState"].startswith("Running") and t["Node"] != victim]
            if len(running) == 3 and all(t["Image"].startswith(f"{APP_IMAGE}:{target}") for t in running):
                break
            assert time.monotonic() < deadline, f"not converged:\n{output}\n{tasks}"
            time.sleep(0.5)
        print(f"converged {time.monotonic() - t0:.1f} s after the kill")
        assert swarm.version() == target
        time.sleep(2.0)
    finally:
        report = probe.stop()
    print(report.format_table())
    if not report.ok:
        print(swarm.evidence())
    assert {t["Node"] for t in running} <= set(NODES) - {victim}
    assert deploy.returncode == 0, output
    print("restarted the update" if f"node {victim} is down and Swarm's update has not moved" in output
          else "Swarm finished the update by itself")
    # The tasks on the lost node could not drain: their WebSockets ended without a close frame (1006, the
    # clients reconnect), and connects to their addresses timed out until Swarm's DNS dropped them (nginx
    # went to the next address). No HTTP request failed and no WebSocket message was lost.
    data = report.to_dict()
    http, ws = data["http"], data["ws"]
    assert (http["failure_total"], ws["lost"]) == (0, 0), report.format_table()  # type: ignore[index]
    assert set(ws["abnormal_closes"]) <= {"close_1006"}, report.format_table()  # type: ignore[index]
