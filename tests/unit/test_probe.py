"""Probe tests: pure logic and raw-socket failure classification (runs against a real server: integration)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from handover.probe import ProbeError, ProbeSettings, percentile
from handover.probe.backoff import BACKOFF_CAP_SECONDS, backoff_delay
from handover.probe.cli import build_parser
from handover.probe.http_client import ConnectionPool, HttpFailure, HttpFailureKind, HttpTarget
from handover.probe.http_load import RequestRecord
from handover.probe.stats import LatencySummary
from handover.probe.summarize import split_by_window
from handover.probe.windows import Window, WindowTimeline, window_at

TESTS_DIR = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
SERVER_ID = "standin-test"
READY_TIMEOUT_SECONDS = 10.0
READY_POLL_SECONDS = 0.1
STOP_WAIT_SECONDS = 5.0
RATE = 100.0
RATE_TOLERANCE = 0.10
WS_CLIENTS = 10
FAST_WS_INTERVAL = 0.2


# ---------------------------------------------------------------- pure logic


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_latency_summary_in_ms() -> None:
    summary = LatencySummary.from_seconds([0.001 * v for v in range(1, 201)])
    assert (summary.count, summary.p50_ms, summary.p99_ms, summary.max_ms) == (200, 100.0, 198.0, 200.0)
    assert LatencySummary.from_seconds([]) == LatencySummary(0, None, None, None)


def test_window_attribution_boundaries_and_overlap() -> None:
    windows = [Window("a", 10.0, 20.0), Window("b", 15.0, 17.0), Window("c", 30.0, None)]
    assert window_at(9.99, windows) is None
    assert window_at(10.0, windows) == "a"  # start inclusive
    assert window_at(16.0, windows) == "b"  # latest-started overlapping window wins
    assert window_at(17.0, windows) == "a"
    assert window_at(20.0, windows) is None  # end exclusive
    assert window_at(1e9, windows) == "c"  # still open


def test_timeline_uses_its_clock() -> None:
    now = [0.0]
    timeline = WindowTimeline(clock=lambda: now[0])
    now[0] = 5.0
    with timeline.window("deploy-1"):
        now[0] = 8.0
    assert timeline.window_at(4.9) is None
    assert timeline.window_at(5.0) == "deploy-1"
    assert timeline.window_at(8.0) is None
    assert timeline.names() == ["deploy-1"]


def _record(index: int, window: str | None, latency: float, error: HttpFailureKind | None = None) -> RequestRecord:
    return RequestRecord(
        index=index, scheduled=float(index), window=window, spawned=float(index), sent=float(index),
        completed=index + latency, status=200 if error is None else None, error=error,
    )


def test_split_by_window_counts_latency_and_failures() -> None:
    records = [_record(i, None, 0.010) for i in range(8)]
    records += [_record(8, "deploy-1", 0.500), _record(9, "deploy-1", 0.020, HttpFailureKind.RESET)]
    records += [_record(10, "deploy-2", 0.030, HttpFailureKind.STALE_KEEPALIVE)]
    steady, per_window, combined = split_by_window(records, ["deploy-1", "deploy-2"])
    assert steady.count == 8 and steady.failure_total == 0 and steady.latency.max_ms == 10.0
    assert [w.name for w in per_window] == ["deploy-1", "deploy-2"]
    assert per_window[0].count == 2 and per_window[0].failures["reset"] == 1
    assert per_window[0].latency.max_ms == 500.0
    assert per_window[1].failures["stale_keepalive"] == 1
    assert combined.count == 3 and combined.failure_total == 2


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(1)
    first = [backoff_delay(0, rng) for _ in range(50)]
    assert all(0.125 <= d <= 0.25 for d in first) and len(set(first)) > 1
    assert all(0.25 <= backoff_delay(1, rng) <= 0.5 for _ in range(50))
    assert all(BACKOFF_CAP_SECONDS / 2 <= backoff_delay(30, rng) <= BACKOFF_CAP_SECONDS for _ in range(50))


def test_cli_refuses_long_durations() -> None:
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(["--duration", "3601"])
    assert excinfo.value.code == 2
    assert build_parser().parse_args(["--duration", "3600"]).duration == 3600.0


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ProbeError):
        ProbeSettings(base_url="ftp://x")
    with pytest.raises(ProbeError):
        ProbeSettings(max_connections=0)


# ---------------------------------------------------------------- HTTP failure classification over real sockets

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Server-Id: raw\r\n\r\nok"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _with_raw_server(handler: Handler, requests_to_send: int) -> list[object]:
    server = await asyncio.start_server(handler, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(HttpTarget.from_url(f"http://{LOOPBACK}:{port}"), max_connections=1)
    outcomes: list[object] = []
    try:
        for _ in range(requests_to_send):
            try:
                response = await asyncio.wait_for(pool.get("/", lambda _t: None), 5.0)
                outcomes.append((response.status, response.server_id))
            except HttpFailure as failure:
                outcomes.append(failure.kind)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
    return outcomes


def test_reused_connection_closed_before_response_is_stale_keepalive() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK_RESPONSE)
        await writer.drain()
        await _read_request(reader)  # the next request arrives on the kept-alive connection ...
        writer.close()  # ... and the server closes without answering (the reload race)

    assert asyncio.run(_with_raw_server(handler, 2)) == [(200, "raw"), HttpFailureKind.STALE_KEEPALIVE]


def test_fresh_connection_closed_and_truncated_response_are_resets() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK_RESPONSE[:-1])
        await writer.drain()
        writer.close()

    assert asyncio.run(_with_raw_server(close_at_once, 1)) == [HttpFailureKind.RESET]
    assert asyncio.run(_with_raw_server(truncate, 1)) == [HttpFailureKind.RESET]


def test_garbage_is_protocol_error_and_refused_is_connect_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    assert asyncio.run(_with_raw_server(garbage, 1)) == [HttpFailureKind.PROTOCOL_ERROR]

    async def refused() -> HttpFailureKind:
        pool = ConnectionPool(HttpTarget.from_url(f"http://{LOOPBACK}:{_free_port()}"), max_connections=1)
        with pytest.raises(HttpFailure) as excinfo:
            await pool.get("/", lambda _t: None)
        return excinfo.value.kind

    assert asyncio.run(refused()) == HttpFailureKind.CONNECT_ERROR


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port
