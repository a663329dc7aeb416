"""The real stack for integration tests: `inv local.up` on the real Docker engine, in its own
compose project and port so a developer's own stack is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
INV = [sys.executable, "-m", "invoke"]
# Overridable so two test sessions on one machine keep to stacks of their own.
TEST_PROJECT = os.environ.get("HANDOVER_TEST_PROJECT", "handover-it")
TEST_PORT = int(os.environ.get("HANDOVER_TEST_PORT", "18080"))
TEST_STATE = f".state-{TEST_PROJECT}"


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
