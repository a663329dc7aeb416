"""The examples deployed as a user deploys them: each with its own ``handover.yaml`` given to ``inv -f`` /
``fab -f``, under the probe, on the real Docker engine, nginx and (for ``fab``) a real sshd with rsync.

The one thing this machine lacks is Docker Hub (``FROM python:3.11-slim``) and a package index inside
containers, so the module does what the examples' README tells such a user to do: build the stand-in
base from ``examples/python-base`` (on the debootstrap minbase, ``handover.images``), fill each
example's ``wheels/`` with ``pip download`` on this machine, and name the base in the config with
``app_build_args: {PYTHON_IMAGE: ...}``. The config file is the example's own, with only the project,
the port, the state directory and that build argument changed (so that parallel test runs keep apart);
the test checks that nothing else differs.

(a) starlette-plain (imports nothing from handover): 3 deploys locally, 3 with ``fab`` over SSH; its
WebSocket clients get uvicorn's 1012 close and no notice. (b) starlette-drain: one deploy locally; its
clients get the drain helper's reconnect notice, then 1012. Both: 0 failed, 0 abnormal (1006), 0 lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from invoke.context import Context

from handover import images
from handover.progress import Progress

from .conftest import INV, LAB_TAG, ROOT, TEST_PORT, TEST_PROJECT, docker_ready, loopback, lost_nothing, probe_for
from .sshd import SshLab
from .test_remote import FAB, fab_env, remove_project

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples"
BASE_IMAGE = f"{TEST_PROJECT}-python:3.11-bookworm"  # the stand-in for python:3.11-slim, this run's own
PLAIN_PORT, DRAIN_PORT, REMOTE_PORT = TEST_PORT + 10, TEST_PORT + 11, TEST_PORT + 12
SSH_ADDRESS = loopback(21)
PROBE_WS_CLIENTS = 10
WARMUP_SECONDS = 1.5
SETTLE_SECONDS = 1.5
CHANGED_KEYS = {"project", "http_port", "state_dir", "app_build_args"}
RUN_TIMEOUT = 900


def docker(*args: str, check: bool = True, timeout: float = 900) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}: {done.stdout}\n{done.stderr}")
    return done.stdout.strip()


def fill_wheels(example: Path) -> None:
    """The examples README's step 2: the example's wheels, downloaded on this machine into ``wheels/``."""
    platform_tag = images.WHEEL_PLATFORM[os.uname().machine]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--platform",
                    platform_tag, "--python-version", images.CONTAINER_PYTHON, "--implementation", "cp",
                    "-d", str(example / "wheels"), "-r", str(example / "requirements.txt")],
                   check=True, capture_output=True, text=True, timeout=600)
    assert list((example / "wheels").glob("starlette-*.whl")), "pip put no starlette wheel into wheels/"


@pytest.fixture(scope="module")
def python_base() -> Iterator[str]:
    """The examples README's step 1 (a local Python base), then each example's wheels."""
    docker_ready()
    minbase = images.ensure_base_image(Context(), "debian:bookworm-slim", Progress())
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", BASE_IMAGE,
           str(EXAMPLES / "python-base"))
    for name in ("starlette-plain", "starlette-drain"):
        fill_wheels(EXAMPLES / name)
    yield BASE_IMAGE
    docker("image", "rm", BASE_IMAGE, check=False)


def example_config(name: str, path: Path, base: str, **changed: Any) -> Path:
    """The example's own handover.yaml with only ``changed`` (and the base image) set differently."""
    own = yaml.safe_load((EXAMPLES / name / "handover.yaml").read_text())
    deploy = {**own["deploy"], **changed, "app_build_args": {"PYTHON_IMAGE": base}}
    kept = {k: v for k, v in deploy.items() if k not in CHANGED_KEYS and k in own["deploy"]}
    assert kept == {k: v for k, v in own["deploy"].items() if k not in CHANGED_KEYS}
    assert own["deploy"]["app_build"] == f"examples/{name}" and own["deploy"]["app_port"] == 8000
    path.write_text(yaml.safe_dump({"deploy": deploy}))
    return path


@dataclass
class Example:
    name: str
    project: str
    port: int
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_dir(self) -> Path:
        return ROOT / f".state-{self.project}"

    def inv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FABRIC_"))}
        result = subprocess.run([*INV, "-f", str(self.config), *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def info(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/info", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


def cleanup(project: str, state_dir: Path | None = None) -> None:
    remove_project(project)
    tags = docker("image", "ls", f"{project}-nginx", "--format", "{{.Repository}}:{{.Tag}}", check=False).split()
    if tags:
        docker("image", "rm", *tags, check=False)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def example(request: pytest.FixtureRequest, python_base: str, tmp_path: Path) -> Iterator[Example]:
    name, port = request.param
    project = f"{TEST_PROJECT}-{name}"
    config = example_config(name, tmp_path / "handover.yaml", python_base, project=project, http_port=port,
                            state_dir=f".state-{project}")
    ex = Example(name, project, port, config)
    ex.inv("local.down", check=False)
    try:
        yield ex
    finally:
        down = ex.inv("local.down", check=False)
        left = docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}")
        cleanup(project, ex.state_dir)
        assert down.returncode == 0 and left == "", (down.stdout + down.stderr, left)


@pytest.mark.parametrize("example", [("starlette-plain", PLAIN_PORT)], indirect=True)
def test_the_plain_example_deploys_three_times_locally_losing_nothing(example: Example) -> None:
    up = example.inv("local.up", "--version", "p1")
    assert f"with PYTHON_IMAGE={BASE_IMAGE}" in up.stdout, up.stdout  # the build argument reached the build
    assert example.info()["version"] == "p1"
    assert "no health check" not in up.stdout
    probe = probe_for(example.url, PROBE_WS_CLIENTS)
    probe.start()
    servers = {example.info()["server_id"]}
    try:
        time.sleep(WARMUP_SECONDS)
        for version in ("p2", "p3", "p4"):
            with probe.window(version):
                done = example.inv("local.deploy", "--version", version)
            assert "deploy success: " in done.stdout and f"-> {version}" in done.stdout, done.stdout
            info = example.info()
            assert info["version"] == version and info["server_id"] not in servers
            servers.add(info["server_id"])
            time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    _, ws = lost_nothing(report)
    assert report.ok, report.format_table()
    # uvicorn without the helper: every client closed with 1012 once per deploy, and never a notice.
    assert ws["drain_notices"] == 0, report.format_table()
    assert ws["close_codes"].get("1012") == 3 * PROBE_WS_CLIENTS, report.format_table()
    assert "1006" not in ws["close_codes"], report.format_table()
    status = example.inv("local.status").stdout
    assert "p4" in status and "unhealthy" not in status, status


@pytest.mark.parametrize("example", [("starlette-drain", DRAIN_PORT)], indirect=True)
def test_the_drain_example_moves_its_clients_with_a_notice(example: Example) -> None:
    example.inv("local.up", "--version", "d1")
    assert example.info()["version"] == "d1"
    probe = probe_for(example.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        time.sleep(WARMUP_SECONDS)
        with probe.window("d2"):
            example.inv("local.deploy", "--version", "d2")
        assert example.info()["version"] == "d2"
        time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    _, ws = lost_nothing(report)
    assert report.ok, report.format_table()
    # The drain helper: each client told to reconnect (once), then closed with 1012.
    assert ws["drain_notices"] == PROBE_WS_CLIENTS, report.format_table()
    assert ws["close_codes"].get("1012") == PROBE_WS_CLIENTS, report.format_table()
    assert "1006" not in ws["close_codes"], report.format_table()


@pytest.fixture
def ssh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    lab = SshLab(tmp_path_factory.mktemp("examples-ssh") / "ssh")
    try:
        lab.start([SSH_ADDRESS])
        yield lab
    finally:
        lab.stop()


def test_the_plain_example_deploys_three_times_over_ssh_losing_nothing(python_base: str, ssh_lab: SshLab,
                                                                       tmp_path: Path) -> None:
    project = f"{TEST_PROJECT}-plain-r{LAB_TAG}"
    deploy_dir = tmp_path / "srv" / project
    config = example_config("starlette-plain", tmp_path / "handover.yaml", python_base, project=project,
                            http_port=REMOTE_PORT)
    data = yaml.safe_load(config.read_text())
    # The host, as the README's "Deploy your own app" writes it: address, user, key file via -i, known_hosts.
    data["deploy"]["known_hosts"] = str(ssh_lab.known_hosts)
    data["deploy"]["hosts"] = {"prod": {"hostname": SSH_ADDRESS, "port": ssh_lab.servers[0].port, "user": "root",
                                        "deploy_dir": str(deploy_dir)}}
    config.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{REMOTE_PORT}"

    def fab(*args: str) -> subprocess.CompletedProcess[str]:
        command = [FAB, "-f", str(config), "-i", str(ssh_lab.client_key), "-H", "prod", *args]
        result = subprocess.run(command, cwd=ROOT, env=fab_env(), capture_output=True, text=True,
                                timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n" \
                                       f"{result.stderr}"
        return result

    def version() -> str:
        return str(requests.get(f"{url}/api/info", timeout=5).json()["version"])

    try:
        assert "is ready for deploys" in fab("setup").stdout
        first = fab("deploy", "--version", "r1")
        assert "starlette-plain/" in first.stdout and f"with PYTHON_IMAGE={BASE_IMAGE}" in first.stdout, first.stdout
        assert (deploy_dir / "current" / "starlette-plain" / "wheels").is_dir()  # synced with the build directory
        assert version() == "r1"
        probe = probe_for(url, PROBE_WS_CLIENTS)
        probe.start()
        try:
            time.sleep(WARMUP_SECONDS)
            for v in ("r2", "r3", "r4"):
                with probe.window(v):
                    done = fab("deploy", "--version", v)
                assert f"-> {v}" in done.stdout, done.stdout
                assert version() == v
                time.sleep(SETTLE_SECONDS)
        finally:
            report = probe.stop()
        _, ws = lost_nothing(report)
        assert report.ok, report.format_table()
        assert ws["drain_notices"] == 0 and ws["close_codes"].get("1012") == 3 * PROBE_WS_CLIENTS, \
            report.format_table()
        assert "stack removed" in fab("down").stdout
        assert docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}") == ""
    finally:
        cleanup(project)
        tags = docker("image", "ls", f"{project}-app", "--format", "{{.Repository}}:{{.Tag}}", check=False).split()
        if tags:
            docker("image", "rm", *tags, check=False)
