"""The demo app deployed as a TCP app (``app_port: 8000``, ``app_health: /healthz``) on the real
stack under the probe: nothing lost across deploys, and bad input (a port the app never opens, a
health path answering 404 or 503, a new container that dies right after the switch) named, with the
old version serving and nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, SCRATCH_SOURCES, TEST_PORT, TEST_PROJECT, StackHandle, docker_ready, probe_for, stack_env

pytestmark = pytest.mark.integration

TCP_PROJECT = f"{TEST_PROJECT}-tcp"
TCP_PORT = TEST_PORT + 2  # the stack is +0, the scratch stack +1
APP_PORT = 8000
HEALTH = "/healthz"
PROBE_WS_CLIENTS = 20
SETTLE_SECONDS = 1.0
WRONG_PORT = 9000
EXIT_AFTER_SECONDS = 4  # the new container serves this long after its start, then exits
POST_SWITCH_CHECK = 10  # longer, so it dies while the old one is still the fallback


def unique(tag: str) -> str:
    return f"it-tcp-{tag}-{time.strftime('%H%M%S')}-{time.monotonic_ns() % 100000}"


@pytest.fixture(scope="module")
def tcp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """A TCP-app stack of its own from a copy of the sources (a test edits its compose file)."""
    docker_ready()
    root = tmp_path_factory.mktemp("tcp")
    for part in SCRATCH_SOURCES:
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    env = stack_env(TCP_PROJECT, TCP_PORT, ".state")
    env.update({
        "INVOKE_DEPLOY_DEPLOY_DIR": str(root),
        "INVOKE_DEPLOY_APP_IMAGE": f"{TCP_PROJECT}-app",
        "INVOKE_DEPLOY_APP_PORT": str(APP_PORT),
        "INVOKE_DEPLOY_APP_HEALTH": HEALTH,
        "INVOKE_DEPLOY_HEALTH_TIMEOUT": "15",
    })
    handle = StackHandle(TCP_PROJECT, TCP_PORT, root / ".state", env)
    handle.inv("local.down", check=False)
    handle.inv("local.up")
    yield handle
    handle.inv("local.down", check=False)
    assert handle.containers() == [] and handle.containers("nginx") == []
    images = subprocess.run(["docker", "image", "ls", f"{TCP_PROJECT}-app", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, check=False).stdout.split()
    if images:
        subprocess.run(["docker", "image", "rm", *images], capture_output=True, check=False)


def targets(stack: StackHandle) -> dict[str, list[str]]:
    """nginx's targets.json, read where the deploy writes it: the state directory, or with
    ``INVOKE_DEPLOY_PROXY_FILES=volume`` its volume, through the files container (at the same path)."""
    path = stack.state_dir / "nginx" / "targets.json"
    if stack.env.get("INVOKE_DEPLOY_PROXY_FILES") == "volume":
        text = subprocess.run(["docker", "exec", f"{stack.project}-proxy-files-1", "cat", str(path)],
                              capture_output=True, text=True, check=True, timeout=30).stdout
    else:
        text = path.read_text()
    data: dict[str, list[str]] = json.loads(text)
    return data


def assert_one_live_container(stack: StackHandle, version: str | None = None) -> None:
    rows = json.loads(stack.inv("local.status", "--json").stdout)["app"]
    assert len(rows) == 1 and rows[0]["live"], rows
    if version is not None:
        assert rows[0]["version"] == version
    assert len(targets(stack)["live"]) == 1 and targets(stack)["fallback"] == []
    assert not (stack.state_dir / "lock").exists()


def test_a_tcp_app_deploys_three_times_under_load_losing_nothing(tcp_stack: StackHandle) -> None:
    stack = tcp_stack
    assert targets(stack)["live"][0].endswith(f":{APP_PORT}")
    assert not list((stack.state_dir / "sockets").glob("app-*.sock"))  # no unix socket: TCP only
    probe = probe_for(stack.url, PROBE_WS_CLIENTS)
    probe.start()
    ids = [stack.info()["server_id"]]
    versions = []
    try:
        for n in range(3):
            versions.append(unique(f"load{n}"))
            with probe.window(f"deploy-{n}"):
                result = stack.inv("local.deploy", "--version", versions[-1])
            assert "atomic rename of nginx's targets file" in result.stdout
            ids.append(stack.info()["server_id"])
            time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    data = report.to_dict()
    assert data["http"]["failure_total"] == 0 and data["ws"]["abnormal_total"] == 0, report.format_table()  # type: ignore[index]
    assert data["ws"]["lost"] == 0, report.format_table()  # type: ignore[index]
    assert data["ws"]["reconnects"] >= 3 * PROBE_WS_CLIENTS, report.format_table()  # type: ignore[index]
    assert len(set(ids)) == 4, f"every deploy must bring a new server: {ids}"
    assert stack.info()["version"] == versions[-1]
    assert_one_live_container(stack, versions[-1])


def bad_deploy(stack: StackHandle, version: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Deploy ``version`` expecting a refusal; the probe must see nothing fail meanwhile."""
    before = stack.info()
    containers = stack.containers()
    probe = probe_for(stack.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        result = stack.inv("local.deploy", "--version", version, *extra, check=False)
    finally:
        report = probe.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert report.ok, report.format_table()
    assert stack.info()["server_id"] == before["server_id"]  # the old version serves
    assert stack.containers() == containers  # nothing left behind
    assert_one_live_container(stack, str(before["version"]))
    return result, result.stderr


@pytest.mark.parametrize(("path", "says"), [("/no-such-path", "answered 404"), (HEALTH, "503")])
def test_a_health_path_that_fails_is_named_and_the_old_version_serves(tcp_stack: StackHandle, path: str,
                                                                      says: str) -> None:
    stack = tcp_stack
    env = dict(stack.env, INVOKE_DEPLOY_APP_HEALTH=path, INVOKE_DEPLOY_HEALTH_TIMEOUT="4")
    handle = StackHandle(stack.project, stack.port, stack.state_dir, env)
    extra = ("--fault", "unhealthy") if path == HEALTH else ()
    _, stderr = bad_deploy(handle, unique("health"), *extra)
    assert "GET http://" in stderr and f":{APP_PORT}{path}" in stderr and says in stderr, stderr


def test_a_port_the_app_never_opens_is_named_and_the_old_version_serves(tcp_stack: StackHandle) -> None:
    stack = tcp_stack
    compose_file = Path(stack.env["INVOKE_DEPLOY_DEPLOY_DIR"]) / "compose" / "docker-compose.yml"
    original = compose_file.read_text()
    assert "PORT: ${APP_PORT:-8000}" in original
    compose_file.write_text(original.replace("PORT: ${APP_PORT:-8000}", f'PORT: "{WRONG_PORT}"'))
    try:
        env = dict(stack.env, INVOKE_DEPLOY_HEALTH_TIMEOUT="4")
        _, stderr = bad_deploy(StackHandle(stack.project, stack.port, stack.state_dir, env), unique("port"))
    finally:
        compose_file.write_text(original)
    assert f":{APP_PORT}{HEALTH}: connection refused (does the app listen on deploy.app_port?)" in stderr, stderr


def test_death_right_after_the_switch_falls_back_and_switches_back(tcp_stack: StackHandle) -> None:
    """The new container dies during the post-switch check: nginx sends what it cannot answer to the
    old container (the targets file's fallback) until the engine switches back."""
    stack = tcp_stack
    env = dict(stack.env, INVOKE_DEPLOY_POST_SWITCH_CHECK=str(POST_SWITCH_CHECK))
    _, stderr = bad_deploy(StackHandle(stack.project, stack.port, stack.state_dir, env), unique("exitafter"),
                           "--fault", f"exit-after:{EXIT_AFTER_SECONDS}")
    assert "error: after the switch:" in stderr, stderr
    assert f"APP_FAULT=exit-after:{EXIT_AFTER_SECONDS}: exiting with status 4" in stderr  # its logs
