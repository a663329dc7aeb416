"""Two apps on one host behind one front, on the real Docker engine, with a probe on each host name.

Each app is its own project (own stack, port, state directory, lock and records) from this checkout;
the front (its own compose project) routes by Host. The apps are deployed alternately under both
probes: each probe must see nothing lost, and its WebSocket clients must move exactly once per
deploy of its own app (a deploy of the other app must not touch them). Then a third project that
claims a host name or a port of the first two is refused, naming both, and nothing changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from handover.probe import Probe, ProbeSettings

from .conftest import (
    ROOT,
    TEST_PORT,
    TEST_PROJECT,
    ContainerCreations,
    StackHandle,
    docker_ready,
    lost_nothing,
    stack_env,
)

pytestmark = pytest.mark.integration

FRONT_PROJECT = f"{TEST_PROJECT}-front"
FRONT_DIR = f".state-{TEST_PROJECT}-front"
FRONT_PORT = TEST_PORT + 5  # +0 is the session stack (still up), +1 the scratch stack, +2..+4 the apps
APP_PORTS = {"a": TEST_PORT + 2, "b": TEST_PORT + 3}  # TEST_PORT + 1 is the scratch stack's
SPARE_PORT = TEST_PORT + 4
PROBE_RATE = 50.0
PROBE_WS_CLIENTS = 10
DEPLOYS_EACH = 3
SETTLE_SECONDS = 1.0
# A front reload closes idle keep-alive client connections; at most a few requests race that close.
STALE_KEEPALIVE_BOUND = 10


@dataclass
class App:
    name: str
    hostname: str
    stack: StackHandle

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{FRONT_PORT}"

    def via_front(self) -> dict[str, object]:
        response = requests.get(f"{self.front_url}/api/info", headers={"Host": self.hostname}, timeout=5)
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data


def app_env(project: str, port: int, state_dir: str, hostnames: str) -> dict[str, str]:
    env = stack_env(project, port, state_dir)
    env.update({
        "INVOKE_DEPLOY_HOSTNAMES": hostnames,
        "INVOKE_DEPLOY_FRONT_PROJECT": FRONT_PROJECT,
        "INVOKE_DEPLOY_FRONT_DIR": FRONT_DIR,
        "INVOKE_DEPLOY_FRONT_PORT": str(FRONT_PORT),
    })
    return env


def make_app(name: str, hostnames: str, port: int | None = None) -> App:
    project = f"{TEST_PROJECT}-{name}"
    port = port or APP_PORTS[name]
    state = f".state-{project}"
    env = app_env(project, port, state, hostnames)
    return App(name, hostnames.split()[0], StackHandle(project, port, ROOT / state, env))


def remove_images(*repositories: str) -> None:
    for repository in repositories:
        tags = subprocess.run(["docker", "image", "ls", repository, "--format", "{{.Repository}}:{{.Tag}}"],
                              capture_output=True, text=True, check=False).stdout.split()
        if tags:
            subprocess.run(["docker", "image", "rm", *tags], capture_output=True, check=False)


@pytest.fixture(scope="module")
def two_apps() -> Iterator[tuple[App, App]]:
    docker_ready()
    a, b = make_app("a", "a.test"), make_app("b", "b.test www.b.test")
    for app in (a, b):
        app.stack.inv("local.down", check=False)
    a.stack.inv("local.front", "--stop", check=False)
    for app in (a, b):
        app.stack.inv("local.up")
    started = a.stack.inv("local.front")
    assert "started" in started.stdout or "up to date" in started.stdout, started.stdout
    yield a, b
    for app in (a, b):
        app.stack.inv("local.down", check=False)
    a.stack.inv("local.front", "--stop", check=False)
    projects = (a.stack.project, b.stack.project)
    remove_images(*(f"{project}-{kind}" for project in projects for kind in ("app", "nginx")), f"{FRONT_PROJECT}-nginx")


def probe_via_front(app: App) -> Probe:
    return Probe(ProbeSettings(base_url=app.front_url, host_header=app.hostname, rate=PROBE_RATE,
                               ws_clients=PROBE_WS_CLIENTS))


def version(tag: str) -> str:
    return f"it-{tag}-{time.strftime('%H%M%S')}-{time.monotonic_ns() % 100000}"


def test_the_front_routes_each_host_name_to_its_own_app(two_apps: tuple[App, App]) -> None:
    a, b = two_apps
    assert a.via_front()["server_id"] == a.stack.info()["server_id"]
    assert b.via_front()["server_id"] == b.stack.info()["server_id"]
    www = requests.get(f"{b.front_url}/api/info", headers={"Host": "www.b.test"}, timeout=5).json()
    assert www["server_id"] == b.stack.info()["server_id"]
    unknown = requests.get(f"{a.front_url}/api/info", headers={"Host": "nobody.test"}, timeout=5)
    assert unknown.status_code == 404


def test_two_apps_deployed_alternately_under_their_probes_lose_nothing(two_apps: tuple[App, App]) -> None:
    """3 deploys each, alternately, with a probe on each host name through the front the whole time:
    0 failed, 0 abnormal closes, 0 lost on both; each probe's WebSocket clients moved exactly once
    per deploy of their own app, and never by the other app's."""
    a, b = two_apps
    front_conf = ROOT / FRONT_DIR / "nginx" / "nginx.conf"
    conf_before = front_conf.stat().st_mtime_ns
    servers: dict[str, list[object]] = {"a": [a.stack.info()["server_id"]], "b": [b.stack.info()["server_id"]]}
    probes = {"a": probe_via_front(a), "b": probe_via_front(b)}
    for probe in probes.values():
        probe.start()
    try:
        for n in range(DEPLOYS_EACH):
            for app in (a, b):
                with probes["a"].window(f"{app.name}-{n}"), probes["b"].window(f"{app.name}-{n}"):
                    app.stack.inv("local.deploy", "--version", version(f"{app.name}{n}"))
                servers[app.name].append(app.stack.info()["server_id"])
                time.sleep(SETTLE_SECONDS)
    finally:
        reports = {name: probe.stop() for name, probe in probes.items()}
    for name, report in reports.items():
        assert report.ok, f"probe of app {name}:\n{report.format_table()}"
        http, ws = lost_nothing(report)
        # Exactly one move per deploy of its own app: the other app's three deploys moved none.
        assert ws["reconnects"] == DEPLOYS_EACH * PROBE_WS_CLIENTS, report.format_table()  # type: ignore[index]
        assert ws["drain_notices"] == DEPLOYS_EACH * PROBE_WS_CLIENTS, report.format_table()  # type: ignore[index]
        assert set(ws["server_ids"]) == set(servers[name]), (ws["server_ids"], servers)  # type: ignore[index]
        # Every HTTP answer came from this app's own servers.
        assert set(http["server_ids"]) <= set(servers[name]), (http["server_ids"], servers)  # type: ignore[index]
    assert len(set(servers["a"])) == len(set(servers["b"])) == DEPLOYS_EACH + 1
    assert front_conf.stat().st_mtime_ns == conf_before  # no deploy touched the front
    for app in (a, b):  # each app's own records and lock
        last = json.loads(app.stack.inv("local.releases", "--count", "1", "--json").stdout)
        assert last["project"] == app.stack.project and last["result"] == "success"
        assert not (app.stack.state_dir / "lock").exists()


def test_adding_and_removing_an_app_reloads_the_front_without_disturbing_the_others(
        two_apps: tuple[App, App]) -> None:
    """A third app's `up` registers it (the running front is checked and reloaded) and its `down`
    removes it, while a probe runs on each of the first two: their WebSocket clients stay where they
    were (the old workers keep them), nothing is lost. Like any nginx reload, the front's closes its
    idle keep-alive client connections: a request sent on one at that moment sees it closed before
    any answer (``stale_keepalive``, which HTTP clients retry for idempotent requests); nothing else
    may fail, and nothing at all outside the reloads."""
    a, b = two_apps
    third = make_app("c", "c.test", port=SPARE_PORT)
    conf = ROOT / FRONT_DIR / "nginx" / "nginx.conf"
    probes = {"a": probe_via_front(a), "b": probe_via_front(b)}
    for probe in probes.values():
        probe.start()
    try:
        with probes["a"].window("add"), probes["b"].window("add"):
            third.stack.inv("local.up")
        assert "server_name c.test;" in conf.read_text()
        assert third.via_front()["server_id"] == third.stack.info()["server_id"]
        time.sleep(SETTLE_SECONDS)
        with probes["a"].window("remove"), probes["b"].window("remove"):
            third.stack.inv("local.down")
        assert "c.test" not in conf.read_text()
        time.sleep(SETTLE_SECONDS)
    finally:
        reports = {name: probe.stop() for name, probe in probes.items()}
        third.stack.inv("local.down", check=False)
        remove_images(f"{third.stack.project}-app", f"{third.stack.project}-nginx")
        shutil.rmtree(third.stack.state_dir, ignore_errors=True)
    for report in reports.values():
        data = report.to_dict()
        http, ws = data["http"], data["ws"]
        assert (ws["reconnects"], ws["abnormal_total"], ws["lost"]) == (0, 0, 0), report.format_table()  # type: ignore[index]
        failures = {kind: n for kind, n in http["failures"].items() if n}  # type: ignore[index]
        assert set(failures) <= {"stale_keepalive"}, report.format_table()
        assert http["steady"]["failure_total"] == 0, report.format_table()  # type: ignore[index]
        assert failures.get("stale_keepalive", 0) <= STALE_KEEPALIVE_BOUND, report.format_table()
    unknown = requests.get(f"{a.front_url}/api/info", headers={"Host": "c.test"}, timeout=5)
    assert unknown.status_code == 404


def registry_bytes() -> dict[str, bytes]:
    root = ROOT / FRONT_DIR
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".conf")}


@pytest.mark.parametrize("claim", ["hostname", "port"])
def test_a_host_name_or_port_another_app_claims_is_refused_and_changes_nothing(two_apps: tuple[App, App],
                                                                               claim: str) -> None:
    a, b = two_apps
    intruder = make_app("d", "www.b.test d.test", port=SPARE_PORT) if claim == "hostname" else \
        make_app("d", "d.test", port=a.stack.port)
    before = registry_bytes()
    serving = (a.via_front()["server_id"], b.via_front()["server_id"])
    with ContainerCreations(intruder.stack.project) as created:
        result = intruder.stack.inv("local.up", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    owner = b if claim == "hostname" else a
    said = result.stderr
    assert f"'{owner.stack.project}'" in said and f"'{intruder.stack.project}'" in said, said
    assert ("host name www.b.test" if claim == "hostname" else f"port 127.0.0.1:{a.stack.port}") in said, said
    assert "nothing was changed" in said and "Traceback" not in said, said
    assert created.ids == []
    assert registry_bytes() == before
    assert not (ROOT / f".state-{intruder.stack.project}").exists()
    assert (a.via_front()["server_id"], b.via_front()["server_id"]) == serving


def test_an_app_taking_a_claimed_name_on_deploy_is_refused(two_apps: tuple[App, App]) -> None:
    """The same check on a deploy: the app's own stack and the front stay as they were."""
    a, b = two_apps
    before, served = registry_bytes(), a.stack.info()["server_id"]
    taker = StackHandle(a.stack.project, a.stack.port, a.stack.state_dir,
                        {**a.stack.env, "INVOKE_DEPLOY_HOSTNAMES": "a.test b.test"})
    result = taker.inv("local.deploy", "--version", version("taker"), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "host name b.test" in result.stderr and f"'{b.stack.project}'" in result.stderr, result.stderr
    assert registry_bytes() == before
    assert a.stack.info()["server_id"] == served

