"""Real ``uvicorn app:app`` processes of the two examples: SIGTERM with and without the drain helper.

Run the way a user runs them (the uvicorn CLI, no handover in between), so they show both what the
helper adds and what an app that does nothing gets from uvicorn alone: the README's "The drain
contract" quotes these measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.test_server_process import open_unresponsive_socket
from tests.server_process import LOOPBACK, Reply, SlowRequest, free_port, healthy

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
PLAIN = EXAMPLES / "starlette-plain"
DRAINING = EXAMPLES / "starlette-drain"
DRAIN_TIMEOUT = 3.0
DRAIN_SPREAD = 0.5
# The helper's bound: spread + timeout for the WebSockets, timeout again for HTTP, plus start-up slack.
EXIT_BOUND = DRAIN_SPREAD + 2 * DRAIN_TIMEOUT + 2.0
SOCKET_COUNT = 5
# Notices spread over 1.5 s across 10 sockets: a client connecting 0.2 s in finds the drain running.
LONG_DRAIN_SOCKETS = 10
LONG_DRAIN_SPREAD = 1.5
SLOW_SECONDS = 2.0
RECEIVE_TIMEOUT = 10.0
WS_CLOSE_SERVICE_RESTART = 1012
# uvicorn re-raises the SIGTERM it handled once it has shut down: outside a container the process
# ends by that signal (in a container, as PID 1, the re-raised signal is ignored and it exits 0).
EXIT_BY_SIGTERM = -signal.SIGTERM


def start_uvicorn(app_dir: Path, port: int, **extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "APP_VERSION": "proc-test",
        "DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "DRAIN_SPREAD": str(DRAIN_SPREAD),
        "PYTHONUNBUFFERED": "1",
        # handover_asgi.py sits beside the app, as in the example's image; nothing else of handover.
        "PYTHONPATH": str(app_dir),
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", LOOPBACK, "--port", str(port)],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextlib.contextmanager
def running(app_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A healthy ``uvicorn app:app`` of ``app_dir`` on a free loopback port; killed afterwards if still up."""
    port = free_port()
    with healthy(start_uvicorn(app_dir, port, **env), port) as started:
        yield started


@dataclass
class SocketOutcome:
    messages: list[dict[str, object]] = field(default_factory=list)
    close_code: int | None = None  # None: dropped without a close frame (1006 to a browser)
    closed_after: float = 0.0  # seconds from the signal


async def open_sockets(port: int, count: int = SOCKET_COUNT) -> list[ClientConnection]:
    sockets = [await connect(f"ws://{LOOPBACK}:{port}/ws") for _ in range(count)]
    for ws in sockets:
        hello = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
        assert hello["type"] == "hello"
    return sockets


async def read_until_closed(ws: ClientConnection, since: float) -> SocketOutcome:
    outcome = SocketOutcome()
    try:
        while True:
            outcome.messages.append(json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT)))
    except ConnectionClosed as closed:
        outcome.close_code = closed.rcvd.code if closed.rcvd is not None else None
    outcome.closed_after = time.monotonic() - since
    return outcome


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@dataclass
class Shutdown:
    outcomes: list[SocketOutcome]
    slow: Reply
    refused_while_in_flight: bool
    exit_code: int
    elapsed: float
    output: str


async def terminate_under_load(process: subprocess.Popen[str], port: int) -> Shutdown:
    """Open sockets and a slow request, SIGTERM, and record what each client saw."""
    sockets = await open_sockets(port)
    slow = SlowRequest(port, "/slow", SLOW_SECONDS)
    await asyncio.sleep(0.5)  # let the slow request reach the app
    sent_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*(read_until_closed(ws, sent_at) for ws in sockets))
    await asyncio.sleep(0.3)  # uvicorn closes its listening socket right after the WebSockets
    refused = await asyncio.to_thread(refuses_connections, port)
    refused_while_in_flight = refused and process.poll() is None and slow.result is None
    exit_code = await asyncio.to_thread(process.wait, EXIT_BOUND + SLOW_SECONDS)
    elapsed = time.monotonic() - sent_at
    assert process.stdout is not None
    return Shutdown(outcomes, slow.response(), refused_while_in_flight, exit_code, elapsed, process.stdout.read())


def test_with_the_helper_sigterm_sends_notice_then_1012_and_finishes_requests() -> None:
    with running(DRAINING) as (process, port):
        shutdown = asyncio.run(terminate_under_load(process, port))
    for outcome in shutdown.outcomes:
        assert outcome.messages == [{"type": "reconnect", "reason": "draining"}], "the notice, then nothing"
        assert outcome.close_code == WS_CLOSE_SERVICE_RESTART
        assert outcome.closed_after < DRAIN_SPREAD + 1.0
    assert shutdown.slow.status_code == 200
    assert shutdown.slow.body["slept"] == SLOW_SECONDS
    assert shutdown.refused_while_in_flight, "the listening socket must close once the WebSockets are drained"
    assert shutdown.exit_code == EXIT_BY_SIGTERM
    assert shutdown.elapsed < EXIT_BOUND + SLOW_SECONDS
    assert f"drain begin: {SOCKET_COUNT} open socket(s)" in shutdown.output
    assert "drain done" in shutdown.output


def test_without_the_helper_uvicorn_closes_websockets_with_1012_and_no_notice() -> None:
    """What an app that does nothing gets from uvicorn: 1012 at once, requests finished, port closed."""
    with running(PLAIN) as (process, port):
        shutdown = asyncio.run(terminate_under_load(process, port))
    for outcome in shutdown.outcomes:
        assert outcome.messages == [], "uvicorn gives the app no chance to say goodbye"
        assert outcome.close_code == WS_CLOSE_SERVICE_RESTART
        assert outcome.closed_after < 0.5
    assert shutdown.slow.status_code == 200
    assert shutdown.refused_while_in_flight
    assert shutdown.exit_code == EXIT_BY_SIGTERM
    assert shutdown.elapsed < SLOW_SECONDS + 1.5


async def connect_during_drain(process: subprocess.Popen[str], port: int) -> tuple[SocketOutcome, httpx.Response]:
    """SIGTERM with many sockets open (their notices take the whole spread), then connect anew."""
    sockets = await open_sockets(port, LONG_DRAIN_SOCKETS)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with connect(f"ws://{LOOPBACK}:{port}/ws") as ws:
        late = await read_until_closed(ws, started)
    async with httpx.AsyncClient() as client:
        health = await client.get(f"http://{LOOPBACK}:{port}/healthz", timeout=2)
    assert time.monotonic() - started < LONG_DRAIN_SPREAD, "the drain must still be running"
    await asyncio.gather(*(read_until_closed(ws, started) for ws in sockets))
    return late, health


def test_a_websocket_that_connects_during_the_drain_is_told_to_reconnect() -> None:
    with running(DRAINING, DRAIN_SPREAD=str(LONG_DRAIN_SPREAD)) as (process, port):
        late, health = asyncio.run(connect_during_drain(process, port))
        assert process.wait(EXIT_BOUND) == EXIT_BY_SIGTERM
    assert late.messages == [{"type": "reconnect", "reason": "draining"}], "no hello: straight to the notice"
    assert late.close_code == WS_CLOSE_SERVICE_RESTART
    assert health.status_code == 503
    assert health.json() == {"status": "draining"}


async def refused_during_drain(process: subprocess.Popen[str], port: int) -> tuple[int, bytes, httpx.Response]:
    """SIGTERM with many sockets open, then a new WebSocket handshake and a plain request."""
    sockets = await open_sockets(port, LONG_DRAIN_SOCKETS)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    try:
        async with connect(f"ws://{LOOPBACK}:{port}/ws"):
            raise AssertionError("the handshake must be refused while draining")
    except InvalidStatus as refused:
        status, body = refused.response.status_code, refused.response.body or b""
    async with httpx.AsyncClient() as client:
        plain = await client.get(f"http://{LOOPBACK}:{port}/api/info", timeout=2)
    assert time.monotonic() - started < LONG_DRAIN_SPREAD, "the drain must still be running"
    await asyncio.gather(*(read_until_closed(ws, started) for ws in sockets))
    return status, body, plain


def test_refusing_new_sockets_a_websocket_that_connects_during_the_drain_gets_503_and_a_request_is_served() -> None:
    """``DRAIN_REFUSE_NEW_SOCKETS=1`` (what a Swarm stack sets): uvicorn answers the handshake with the 503,
    which nginx retries on another task; a plain request that arrives is still served."""
    with running(DRAINING, DRAIN_SPREAD=str(LONG_DRAIN_SPREAD), DRAIN_REFUSE_NEW_SOCKETS="1") as (process, port):
        status, body, plain = asyncio.run(refused_during_drain(process, port))
        assert process.wait(EXIT_BOUND) == EXIT_BY_SIGTERM
        assert process.stdout is not None
        output = process.stdout.read()
    assert (status, json.loads(body)) == (503, {"status": "draining"})
    assert plain.status_code == 200
    assert "draining: refused a new WebSocket with 503" in output


def test_an_unresponsive_client_cannot_stall_the_exit() -> None:
    with running(DRAINING) as (process, port), open_unresponsive_socket(port):
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_BOUND) == EXIT_BY_SIGTERM
    assert time.monotonic() - started < EXIT_BOUND


def test_a_request_that_outlives_the_bound_is_cancelled_and_the_process_exits() -> None:
    with running(DRAINING) as (process, port):
        stuck = SlowRequest(port, "/slow", 30.0)
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(EXIT_BOUND)
        elapsed = time.monotonic() - started
        assert process.stdout is not None
        output = process.stdout.read()
    assert exit_code == EXIT_BY_SIGTERM
    assert elapsed < EXIT_BOUND
    assert elapsed >= DRAIN_TIMEOUT, "the request had its full timeout to finish"
    assert "cancelling 1 request(s) still running" in output
    cut = stuck.wait()
    assert not isinstance(cut, Reply) or cut.status_code == 500, f"a cancelled request cannot succeed: {cut!r}"


def test_run_wraps_a_plain_app_and_exits_0_after_the_drain() -> None:
    """``handover.asgi.run(app)``: the plain example, unchanged, drained; status 0 instead of the signal."""
    port = free_port()
    code = f"from app import app; from handover.asgi import run; run(app, host={LOOPBACK!r}, port={port})"
    env = {**os.environ, "DRAIN_TIMEOUT": str(DRAIN_TIMEOUT), "PYTHONPATH": f"{PLAIN}{os.pathsep}{ROOT}"}
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=PLAIN, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with healthy(process, port):
        shutdown = asyncio.run(terminate_under_load(process, port))
    for outcome in shutdown.outcomes:
        assert outcome.messages == [{"type": "reconnect", "reason": "draining"}]
        assert outcome.close_code == WS_CLOSE_SERVICE_RESTART
    assert shutdown.slow.status_code == 200
    assert shutdown.exit_code == 0
