"""The real stack for integration tests: `inv local.up` on the real Docker engine, in its own
compose project and port so a developer's own stack is left alone."""

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

from handover.probe import Probe, ProbeReport, ProbeSettings

ROOT = Path(__file__).resolve().parents[2]
INV = [sys.executable, "-m", "invoke"]
# Overridable so two test sessions on one machine keep to stacks of their own.
TEST_PROJECT = os.environ.get("HANDOVER_TEST_PROJECT", "handover-it")
TEST_PORT = int(os.environ.get("HANDOVER_TEST_PORT", "18080"))
TEST_STATE = f".state-{TEST_PROJECT}"
# The sshd labs' loopback network (127.0.0.x) and a tag for their compose projects and ports:
# overridable too, so a second test run's labs keep off the first's addresses, names and ports.
SSH_NET = os.environ.get("HANDOVER_TEST_SSH_NET", "127.0.0")
LAB_TAG = os.environ.get("HANDOVER_TEST_LAB_TAG", "")
LAB_PORT_SHIFT = int(os.environ.get("HANDOVER_TEST_LAB_PORT_SHIFT", "0"))
# A second stack for tests that break their own copy of the sources.
SCRATCH_PROJECT = f"{TEST_PROJECT}-scratch"
SCRATCH_PORT = TEST_PORT + 1
SCRATCH_SOURCES = ("compose", "nginx", "server")
# The load the deploy tests run under: modest, so a 2-core machine still has room for the deploy.
PROBE_RATE = 50.0
PROBE_WS_CLIENTS = 10
EVENTS_SETTLE_SECONDS = 1.0


@dataclass
class StackHandle:
    project: str
    port: int
    state_dir: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inv(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*INV, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def info(self) -> dict[str, object]:
        response = requests.get(f"{self.url}/api/info", timeout=5)
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def containers(self, service: str = "app") -> list[str]:
        out = subprocess.run(
            ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, check=True).stdout
        return out.split()


def loopback(last: int) -> str:
    """An sshd lab's address: ``last`` on the test network (127.0.0.<last> by default)."""
    return f"{SSH_NET}.{last}"


class ContainerCreations:
    """The IDs of the containers Docker creates for ``project`` while this is open.

    A live `docker events` subscription: the engine keeps only a short buffer of past events,
    which health checks on a busy machine overrun within seconds, so asking afterwards with
    --since/--until may miss what happened."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.ids: list[str] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ContainerCreations:
        self._process = subprocess.Popen(
            ["docker", "events", "--since", f"{time.time():.3f}", "--format", "{{.Actor.ID}}",
             "--filter", "type=container", "--filter", "event=create",
             "--filter", f"label=com.docker.compose.project={self.project}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        time.sleep(EVENTS_SETTLE_SECONDS)  # the last events reach the subscription
        self._process.terminate()
        out, _ = self._process.communicate(timeout=10)
        self.ids = out.split()


def stack_env(project: str, port: int, state_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "INVOKE_DEPLOY_PROJECT": project,
        "INVOKE_DEPLOY_HTTP_PORT": str(port),
        "INVOKE_DEPLOY_STATE_DIR": state_dir,
        # Tests move fast: short drain so stopped containers go quickly.
        "INVOKE_DEPLOY_DRAIN_TIMEOUT": "5",
        "INVOKE_DEPLOY_STOP_GRACE_PERIOD": "15",
    })
    return env


def docker_ready() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("the Docker engine is not running: run scripts/bootstrap.sh (CI does, in .ci/run)")


@pytest.fixture(scope="session")
def stack() -> Iterator[StackHandle]:
    docker_ready()
    handle = StackHandle(TEST_PROJECT, TEST_PORT, ROOT / TEST_STATE, stack_env(TEST_PROJECT, TEST_PORT, TEST_STATE))
    handle.inv("local.down", check=False)
    handle.inv("local.up")
    yield handle
    handle.inv("local.down")


def probe_for(url: str, ws_clients: int = PROBE_WS_CLIENTS) -> Probe:
    """The load probe against ``url``: PROBE_RATE HTTP requests a second and ``ws_clients`` WebSockets."""
    return Probe(ProbeSettings(base_url=url, rate=PROBE_RATE, ws_clients=ws_clients))


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[StackHandle]:
    """A stack of its own from a copy of the sources (compose/, nginx/, server/), to break them."""
    docker_ready()
    for part in SCRATCH_SOURCES:
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    env = stack_env(SCRATCH_PROJECT, SCRATCH_PORT, ".state")
    env["INVOKE_DEPLOY_DEPLOY_DIR"] = str(tmp_path)
    env["INVOKE_DEPLOY_APP_IMAGE"] = f"{SCRATCH_PROJECT}-app"
    env["INVOKE_DEPLOY_APP_BUILD"] = str(tmp_path / "server")
    handle = StackHandle(SCRATCH_PROJECT, SCRATCH_PORT, tmp_path / ".state", env)
    handle.inv("local.down", check=False)
    handle.inv("local.up")
    yield handle
    handle.inv("local.down", check=False)
    assert handle.containers() == [] and handle.containers("nginx") == []
    images = subprocess.run(["docker", "image", "ls", f"{SCRATCH_PROJECT}-app", "--format",
                             "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=False).stdout.split()
    if images:
        subprocess.run(["docker", "image", "rm", *images], capture_output=True, check=False)


def lost_nothing(report: ProbeReport) -> tuple[dict[str, Any], dict[str, Any]]:
    """Assert the probe's bar (0 failed requests, 0 abnormal WebSocket closes, 0 lost messages), the
    whole table in the message when it fails; the report's HTTP and WebSocket numbers, for more."""
    data = report.to_dict()
    http, ws = data["http"], data["ws"]
    assert (http["failure_total"], ws["abnormal_total"], ws["lost"]) == (0, 0, 0), report.format_table()
    return http, ws
