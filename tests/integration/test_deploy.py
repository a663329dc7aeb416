"""The deploy engine on the real stack, with the probe running: nothing lost, rollbacks, convergence."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .conftest import INV, ROOT, ContainerCreations, StackHandle, lost_nothing, probe_for

pytestmark = pytest.mark.integration

PROBE_WS_CLIENTS = 20
SETTLE_SECONDS = 1.0
BROKEN_CONFIG_REPLICAS = 2  # another count than the stack's: the upstream file is rewritten


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


def file_identity(path: Path) -> tuple[int, int]:
    """Inode and mtime: a file rewritten (temp file and rename) has another, even with the same bytes."""
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


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
    containers = stack.containers()  # stopped ones too
    version = unique(fault)
    probe = probe_for(stack.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        result = stack.inv("local.deploy", "--version", version, "--fault", fault, check=False)
    finally:
        report = probe.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error:" in result.stderr and ("unhealthy" in result.stderr or "exited" in result.stderr), result.stderr
    # The new container's own logs are shown: its start line, or the line it dies with.
    own_line = f"version={version}" if fault == "unhealthy" else "APP_FAULT=crash: exiting"
    assert "log lines of" in result.stderr and own_line in result.stderr, result.stderr
    assert "rollback" in result.stdout
    assert report.ok, report.format_table()
    assert stack.info()["server_id"] == before["server_id"]
    assert stack.info()["version"] == before["version"]
    assert stack.containers() == containers  # the new container is gone, nothing else changed
    assert_one_live_container(stack, str(before["version"]))
    assert_unlocked(stack.state_dir)
    record = json.loads(stack.inv("local.releases", "--count", "1", "--json").stdout)
    assert (record["version"], record["result"], record["failed_step"]) == (version, "rolled-back", "health")


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


@pytest.mark.parametrize("replicas", [None, BROKEN_CONFIG_REPLICAS])
def test_broken_nginx_config_aborts_before_any_change(scratch: StackHandle, replicas: int | None) -> None:
    """nginx -t fails: nothing started or reloaded. With a new replica count the upstream file was
    rewritten before the test: the previous one must be back, byte for byte."""
    before = scratch.info()
    upstream = scratch.state_dir / "nginx" / "upstream.conf"
    upstream_before, written_before = upstream.read_bytes(), file_identity(upstream)
    containers = scratch.containers()  # stopped ones too
    conf = scratch.state_dir.parent / "nginx" / "nginx.conf"
    conf.write_text(conf.read_text().replace("server_tokens off;", "server_tokens off;\n    this_is_not_nginx;"))
    deployer = scratch if replicas is None else dataclasses.replace(
        scratch, env={**scratch.env, "INVOKE_DEPLOY_REPLICAS": str(replicas)})
    probe = probe_for(scratch.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        with ContainerCreations(scratch.project) as created:
            result = deployer.inv("local.deploy", "--version", unique("badconf"), check=False)
    finally:
        report = probe.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nginx -t failed" in result.stderr and "this_is_not_nginx" in result.stderr, result.stderr
    assert report.ok, report.format_table()
    assert scratch.info()["server_id"] == before["server_id"]
    assert upstream.read_bytes() == upstream_before
    if replicas is None:  # nothing to rewrite: the file was not touched
        assert file_identity(upstream) == written_before
    else:  # rewritten for the new count, then put back
        assert file_identity(upstream) != written_before
    assert created.ids == []  # no container was ever created
    assert scratch.containers() == containers
    assert_one_live_container(scratch, str(before["version"]))
    assert_unlocked(scratch.state_dir)
    record = json.loads(scratch.inv("local.releases", "--count", "1", "--json").stdout)
    assert (record["result"], record["failed_step"]) == ("failed", "proxy config")


@pytest.mark.parametrize("kill_at", ["==> health", "==> drain"])
def test_rerun_after_a_killed_deploy_converges(stack: StackHandle, kill_at: str) -> None:
    """SIGKILL the deploy at a step; the rerun takes the dead run's lock over (and says so) and
    converges. The probe runs throughout: nothing fails, nothing is lost."""
    version = unique("killed")
    probe = probe_for(stack.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
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
        process.stdout.close()
        assert process.returncode == -signal.SIGKILL, "".join(seen)
        assert requests.get(f"{stack.url}/api/info", timeout=5).status_code == 200  # still serving

        rerun = stack.inv("local.deploy", "--version", version)
        time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    assert "took over the deploy lock" in rerun.stderr and f"deploy {version}" in rerun.stderr, rerun.stderr
    assert "converge" in rerun.stdout or "already live" in rerun.stdout
    lost_nothing(report)
    assert report.ok, report.format_table()
    assert_one_live_container(stack, version)
    assert stack.info()["version"] == version
    assert_unlocked(stack.state_dir)
