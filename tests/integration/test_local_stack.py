"""`inv local.up` brings up nginx + app on the real Docker engine; traffic goes through nginx."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
import requests
from websockets.asyncio.client import connect

from .conftest import StackHandle, stack_env

pytestmark = pytest.mark.integration


def test_http_through_nginx(stack: StackHandle) -> None:
    response = requests.get(f"{stack.url}/api/info", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert response.headers["X-Server-Id"] == body["server_id"]
    assert response.headers["Server"] == "nginx"  # server_tokens off: no version
    assert body["draining"] is False
    page = requests.get(f"{stack.url}/", timeout=5)
    assert page.status_code == 200 and "<html" in page.text.lower() and "/ws" in page.text
    assert requests.get(f"{stack.url}/healthz", timeout=5).json() == {"status": "ok"}


def test_websocket_through_nginx(stack: StackHandle) -> None:
    async def talk() -> tuple[dict[str, object], dict[str, object]]:
        async with connect(f"ws://127.0.0.1:{stack.port}/ws") as ws:
            hello = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "msg", "id": "it-1", "body": "hi"}))
            while True:
                reply = json.loads(await ws.recv())
                if reply["type"] == "ack":
                    return hello, reply

    hello, ack = asyncio.run(asyncio.wait_for(talk(), 10))
    assert hello["type"] == "hello" and hello["server_id"] == stack.info()["server_id"]
    assert ack == {"type": "ack", "id": "it-1", "server_id": hello["server_id"]}


def test_up_again_converges_without_changes(stack: StackHandle) -> None:
    before = stack.containers()
    result = stack.inv("local.up")
    assert "already up" in result.stdout
    assert stack.containers() == before


def test_status_lists_the_live_container(stack: StackHandle) -> None:
    data = json.loads(stack.inv("local.status", "--json").stdout)
    assert data["proxy"] and len([row for row in data["app"] if row["live"]]) == 1


def test_down_leaves_no_containers() -> None:
    """A separate project: up, then down, then nothing of it is left."""
    from .conftest import INV, ROOT

    env = stack_env("handover-downtest", 18081, ".state-downtest")
    run = lambda *a: subprocess.run([*INV, *a], cwd=ROOT, env=env, capture_output=True, text=True,  # noqa: E731
                                    timeout=600, stdin=subprocess.DEVNULL)
    up = run("local.up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert requests.get("http://127.0.0.1:18081/healthz", timeout=5).status_code == 200
    down = run("local.down")
    assert down.returncode == 0, down.stdout + down.stderr
    left = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter",
                           "label=com.docker.compose.project=handover-downtest"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []
