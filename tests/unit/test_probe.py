"""Probe tests: pure logic, raw-socket failure classification, and runs against a real uvicorn stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from handover.probe import Probe, ProbeError, ProbeReport, ProbeSettings, percentile
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


# ---------------------------------------------------------------- runs against a real uvicorn stand-in


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class StandinServer:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def standin() -> Iterator[StandinServer]:
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(TESTS_DIR), "probe_standin:app",
        "--host", LOOPBACK, "--port", str(port), "--log-level", "warning",
    ]
    env = {"PROBE_STANDIN_SERVER_ID": SERVER_ID, "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, env=env)
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/api/info", timeout=1.0).ok:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("stand-in server did not come up")
            time.sleep(READY_POLL_SECONDS)
        yield StandinServer(url=url, process=process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _settings(url: str, **overrides: float) -> ProbeSettings:
    values: dict[str, float] = {
        "rate": RATE, "ws_clients": WS_CLIENTS, "ws_message_interval": FAST_WS_INTERVAL, "settle_timeout": 5.0,
    }
    values.update(overrides)
    return ProbeSettings(
        base_url=url,
        rate=values["rate"],
        ws_clients=int(values["ws_clients"]),
        ws_message_interval=values["ws_message_interval"],
        settle_timeout=values["settle_timeout"],
        request_timeout=values.get("request_timeout", 10.0),
    )


def test_steady_run_loses_nothing(standin: StandinServer) -> None:
    with Probe(_settings(standin.url)) as probe:
        time.sleep(1.0)
        with probe.window("deploy-1"):
            time.sleep(1.0)
        time.sleep(1.0)
    report = probe.report
    assert isinstance(report, ProbeReport)
    http, ws = report.http, report.ws
    assert report.ok, report.format_table()
    assert http.failure_total == 0 and ws.abnormal_total == 0 and ws.lost == 0
    assert abs(http.achieved_rate - RATE) / RATE <= RATE_TOLERANCE
    assert http.sent == http.scheduled == http.completed_ok
    assert http.server_ids == {SERVER_ID: http.scheduled}
    assert [w.name for w in http.windows] == ["deploy-1"]
    assert abs(http.windows[0].count - RATE) <= RATE * RATE_TOLERANCE
    assert http.steady.count + http.all_windows.count == http.overall.count
    assert http.send_lag.count == http.scheduled and http.max_send_lag_ms is not None
    assert ws.connects == WS_CLIENTS and ws.reconnects == 0
    assert ws.messages_sent > 0 and ws.messages_acked == ws.messages_sent
    assert ws.server_ids == {SERVER_ID: WS_CLIENTS}
    assert ws.close_codes == {1000: WS_CLIENTS}
    json.dumps(report.to_dict())
    assert "RESULT OK" in report.format_table()


def test_killed_server_is_reported_as_failure(standin: StandinServer) -> None:
    probe = Probe(_settings(standin.url, settle_timeout=1.0, request_timeout=2.0))
    probe.start()
    time.sleep(1.0)
    standin.process.send_signal(signal.SIGKILL)
    standin.process.wait(STOP_WAIT_SECONDS)
    time.sleep(1.5)
    report = probe.stop()
    failures = report.http.failures
    assert not report.ok
    assert failures["connect_error"] + failures["reset"] + failures["stale_keepalive"] > 0
    assert report.ws.abnormal_total >= WS_CLIENTS
    assert report.ws.abnormal_closes.get("close_1006", 0) >= 1
    assert report.ws.lost > 0
    assert "RESULT FAIL" in report.format_table()


def test_drain_reconnects_without_loss(standin: StandinServer) -> None:
    drains = 2
    with Probe(_settings(standin.url, rate=50.0, ws_message_interval=0.05)) as probe:
        for index in range(drains):
            time.sleep(1.0)
            with probe.window(f"drain-{index + 1}"):
                drained = requests.post(f"{standin.url}/admin/drain", timeout=5.0).json()["drained"]
                assert drained == WS_CLIENTS
                time.sleep(0.5)
        time.sleep(0.5)
    report = probe.report
    assert isinstance(report, ProbeReport)
    ws = report.ws
    assert report.ok, report.format_table()
    assert ws.abnormal_total == 0 and ws.lost == 0
    assert ws.drain_notices == drains * WS_CLIENTS
    assert ws.reconnects == drains * WS_CLIENTS
    assert ws.reconnect_gap.count == drains * WS_CLIENTS
    assert ws.reconnect_gap.max_ms is not None
    assert ws.close_codes.get(1012, 0) > 0
    assert ws.messages_acked == ws.messages_sent
