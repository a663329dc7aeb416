"""The deploy engine on the real stack, with the probe running: nothing lost, rollbacks, convergence."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .conftest import INV, ROOT, StackHandle, probe_for

pytestmark = pytest.mark.integration

PROBE_WS_CLIENTS = 20
SETTLE_SECONDS = 1.0


def unique(tag: str) -> str:
    return f"it-{tag}-{time.strftime('%H%M%S')}-{time.monotonic_ns() % 100000}"


def app_containers(stack: StackHandle) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(stack.inv("local.status", "--json").stdout)["app"]
    return rows


def assert_one_live_container(stack: StackHandle, version: str | None = None) -> None:
    rows = app_containers(stack)
    assert len(rows) == 1, rows
    assert rows[0]["live"] and rows[0]["health"] == "healthy", rows
    if version is not None:
        assert rows[0]["version"] == version


def assert_unlocked(state_dir: Path) -> None:
    assert not (state_dir / "lock").exists()


def test_deploys_under_load_lose_nothing(stack: StackHandle) -> None:
    probe = probe_for(stack.url, PROBE_WS_CLIENTS)
    probe.start()
    ids = [stack.info()["server_id"]]
    versions = []
    try:
        for n in range(3):
            versions.append(unique(f"load{n}"))
            with probe.window(f"deploy-{n}"):
                stack.inv("local.deploy", "--version", versions[-1])
            ids.append(stack.info()["server_id"])
            time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    assert len(set(ids)) == 4, f"every deploy must bring a new server: {ids}"
    assert stack.info()["version"] == versions[-1]
    data = report.to_dict()
    assert data["ws"]["reconnects"] >= 3 * PROBE_WS_CLIENTS, report.format_table()  # type: ignore[index]
    assert_one_live_container(stack, versions[-1])
    assert_unlocked(stack.state_dir)
    # Every run left a record with per-step timings.
    last = json.loads(stack.inv("local.releases", "--count", "1", "--json").stdout)
    assert last["version"] == versions[-1] and last["result"] == "success"
    assert {step["name"] for step in last["steps"]} >= {"preflight", "build", "start", "health", "switch", "drain"}


@pytest.mark.parametrize("fault", ["unhealthy", "crash"])
def test_failed_health_check_rolls_back(stack: StackHandle, fault: str) -> None:
    before = stack.info()
    probe = probe_for(stack.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        result = stack.inv("local.deploy", "--version", unique(fault), "--fault", fault, check=False)
    finally:
        report = probe.stop()
    assert result.returncode != 0
    assert "error:" in result.stderr and ("unhealthy" in result.stderr or "exited" in result.stderr), result.stderr
    assert "log lines of" in result.stderr  # the new container's logs are shown
    assert "rollback" in result.stdout
    assert report.ok, report.format_table()
    assert stack.info()["server_id"] == before["server_id"]
    assert_one_live_container(stack, str(before["version"]))
    assert_unlocked(stack.state_dir)


def test_dry_run_changes_nothing(stack: StackHandle) -> None:
    before = app_containers(stack)
    result = stack.inv("local.deploy", "--version", unique("dry"), "--dry-run")
    assert "plan (dry run" in result.stdout and "start: 1 new container" in result.stdout
    assert app_containers(stack) == before
    assert_unlocked(stack.state_dir)


def test_same_version_is_left_alone(stack: StackHandle) -> None:
    live = str(stack.info()["version"])
    before = app_containers(stack)
    result = stack.inv("local.deploy", "--version", live)
    assert "already live" in result.stdout
    assert app_containers(stack) == before


def test_broken_nginx_config_aborts_before_any_change(scratch: StackHandle) -> None:
    before = scratch.info()
    upstream_before = (scratch.state_dir / "nginx" / "upstream.conf").read_text()
    conf = scratch.state_dir.parent / "nginx" / "nginx.conf"
    conf.write_text(conf.read_text().replace("server_tokens off;", "server_tokens off;\n    this_is_not_nginx;"))
    probe = probe_for(scratch.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        result = scratch.inv("local.deploy", "--version", unique("badconf"), check=False)
    finally:
        report = probe.stop()
    assert result.returncode != 0
    assert "nginx -t failed" in result.stderr and "this_is_not_nginx" in result.stderr, result.stderr
    assert report.ok, report.format_table()
    assert scratch.info()["server_id"] == before["server_id"]
    assert (scratch.state_dir / "nginx" / "upstream.conf").read_text() == upstream_before
    assert_one_live_container(scratch, str(before["version"]))  # no container was started
    assert_unlocked(scratch.state_dir)


@pytest.mark.parametrize("kill_at", ["==> health", "==> drain"])
def test_rerun_after_a_killed_deploy_converges(stack: StackHandle, kill_at: str) -> None:
    """SIGKILL the deploy at a step; the rerun takes the dead run's lock over (and says so) and converges."""
    version = unique("killed")
    process = subprocess.Popen([*INV, "local.deploy", "--version", version], cwd=ROOT, env=stack.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(kill_at):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert requests.get(f"{stack.url}/api/info", timeout=5).status_code == 200  # still serving

    rerun = stack.inv("local.deploy", "--version", version)
    assert "took over the deploy lock" in rerun.stderr and f"deploy {version}" in rerun.stderr, rerun.stderr
    assert "converge" in rerun.stdout or "already live" in rerun.stdout
    assert_one_live_container(stack, version)
    assert stack.info()["version"] == version
    assert_unlocked(stack.state_dir)
