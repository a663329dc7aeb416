"""Real-process tests of the demo app (server/webapp): SIGTERM drain, in-flight requests, fault injection."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests import server_process
from tests.server_process import LOOPBACK, SlowRequest, free_port, running_server, start_server, wait_healthy

DRAIN_TIMEOUT = server_process.DRAIN_TIMEOUT
EXIT_BOUND = DRAIN_TIMEOUT * 2 + 2
STARTUP_TIMEOUT = server_process.STARTUP_TIMEOUT
SOCKET_COUNT = 5
SLOW_SECONDS = 2
WS_CLOSE_SERVICE_RESTART = 1012
EXIT_FAULT_CRASH = 3
EXIT_FAULT_EXIT_AFTER = 4
EXIT_AFTER_SECONDS = 2.0
RECEIVE_TIMEOUT = 10.0


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    with running_server() as running:
        yield running


@dataclass
class SocketOutcome:
    messages: list[dict[str, object]] = field(default_factory=list)
    close_code: int | None = None
    close_frame_received: bool = False


async def open_sockets(url: str) -> list[ClientConnection]:
    sockets = [await connect(url) for _ in range(SOCKET_COUNT)]
    for ws in sockets:
        hello = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
        assert hello["type"] == "hello"
    return sockets


async def read_until_closed(ws: ClientConnection) -> SocketOutcome:
    outcome = SocketOutcome()
    try:
        while True:
            frame = await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT)
            outcome.messages.append(json.loads(frame))
    except ConnectionClosed as closed:
        outcome.close_frame_received = closed.rcvd is not None
        outcome.close_code = closed.rcvd.code if closed.rcvd is not None else None
    return outcome


async def terminate_with_clients(process: subprocess.Popen[str], port: int) -> tuple[list[SocketOutcome], float]:
    sockets = await open_sockets(f"ws://{LOOPBACK}:{port}/ws")
    slow = SlowRequest(port, "/api/slow", SLOW_SECONDS)
    await asyncio.sleep(0.5)  # let the slow request reach the app

    sent_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*(read_until_closed(ws) for ws in sockets))
    exit_code = await asyncio.to_thread(process.wait, EXIT_BOUND)
    elapsed = time.monotonic() - sent_at
    response = await asyncio.to_thread(slow.response)

    assert exit_code == 0
    assert response.status_code == 200
    return outcomes, elapsed


def test_sigterm_drains_sockets_and_finishes_inflight_requests(
    server: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = server
    outcomes, elapsed = asyncio.run(terminate_with_clients(process, port))

    assert elapsed < EXIT_BOUND
    for outcome in outcomes:
        kinds = [message["type"] for message in outcome.messages]
        assert "reconnect" in kinds
        assert kinds[-1] == "reconnect", f"reconnect must be the last message, got {kinds}"
        assert outcome.close_frame_received, "socket dropped without a close frame (1006)"
        assert outcome.close_code == WS_CLOSE_SERVICE_RESTART

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=2)

    assert process.stdout is not None
    output = process.stdout.read()
    assert f"drain begin: {SOCKET_COUNT} open socket(s)" in output
    assert "drain done" in output
    assert "exit:" in output


def open_unresponsive_socket(port: int) -> socket.socket:
    """Complete a WebSocket handshake, then never read again (no reply to the close frame)."""
    raw = socket.create_connection((LOOPBACK, port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert raw.recv(len(b"HTTP/1.1 101")) == b"HTTP/1.1 101"
    return raw


def test_unresponsive_client_cannot_stall_shutdown(server: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server
    with open_unresponsive_socket(port):
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_BOUND) == 0
    assert time.monotonic() - started < EXIT_BOUND
    assert process.stdout is not None
    assert "drain timed out" in process.stdout.read()


def test_fault_crash_exits_with_status_3() -> None:
    process = start_server(free_port(), APP_FAULT="crash")
    output, _ = process.communicate(timeout=STARTUP_TIMEOUT)
    assert process.returncode == EXIT_FAULT_CRASH
    assert "APP_FAULT=crash" in output


def test_fault_exit_after_serves_then_exits_with_status_4() -> None:
    port = free_port()
    started = time.monotonic()
    process = start_server(port, APP_FAULT=f"exit-after:{EXIT_AFTER_SECONDS:g}")
    wait_healthy(f"http://{LOOPBACK}:{port}", process)
    assert time.monotonic() - started < EXIT_AFTER_SECONDS, "healthy before the fault"
    output, _ = process.communicate(timeout=STARTUP_TIMEOUT)
    assert process.returncode == EXIT_FAULT_EXIT_AFTER
    assert time.monotonic() - started >= EXIT_AFTER_SECONDS
    assert "APP_FAULT=exit-after:2: exiting with status 4" in output


def test_invalid_config_refuses_to_start() -> None:
    process = start_server(free_port(), APP_FAULT="sometimes")
    output, _ = process.communicate(timeout=STARTUP_TIMEOUT)
    assert process.returncode != 0
    assert "APP_FAULT 'sometimes' is not supported" in output
