"""The probe's verdict: every failure kind alone fails the run and is named; a clean run and a drain pass.

Three parts. The first builds report sections from raw request records and WebSocket counters (the
same path the probe takes at stop) and checks ``ProbeReport.ok`` and ``failure_reasons`` for every
kind the probe knows. The second drives the real HTTP scheduler and WebSocket client against
in-process servers that misbehave in exactly one way, so the classification that feeds the
verdict (status codes, timeouts, close codes, lost messages) is covered too. The last pins the
JSON form of the report (``--json``), which carries the verdict and the counts behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from handover.probe import HttpSummary, HttpWindowStats, LatencySummary, ProbeReport, ProbeSettings, WsSummary, backoff
from handover.probe.http_client import HttpFailureKind
from handover.probe.http_load import HttpLoad, RequestRecord
from handover.probe.report import FAILURE_KINDS
from handover.probe.summarize import summarize_http, summarize_ws
from handover.probe.windows import WindowTimeline
from handover.probe.ws_client import (
    KIND_CONNECT_FAILED,
    KIND_HANDSHAKE_FAILED,
    KIND_HELLO_TIMEOUT,
    KIND_PROTOCOL_ERROR,
    WsClient,
    close_kind,
)
from handover.probe.ws_stats import SERVICE_RESTART, WsStats

LOOPBACK = "127.0.0.1"
SERVER_ID = "verdict-test"
CLEAN_REQUESTS = 5
CLEAN_MESSAGES = 3
WAIT_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.01
HTTP_RATE = 100.0
HTTP_RUN_SECONDS = 0.06
SHORT_REQUEST_TIMEOUT = 0.1
RECONNECT_BACKOFF_SECONDS = 0.01  # the first reconnect waits 5-10 ms here instead of 125-250 ms
WS_MESSAGE_INTERVAL = 0.02
MESSAGES_BEFORE_STOP = 3


@pytest.fixture(autouse=True)
def _quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff, "BACKOFF_BASE_SECONDS", RECONNECT_BACKOFF_SECONDS)


# ---------------------------------------------------------------- verdict from raw records and counters


@dataclass
class FixedClient:
    """Stands in for a WebSocket client at stop time: only its unacknowledged ids matter."""

    unacked: list[str] = field(default_factory=list)

    def unacked_ids(self) -> list[str]:
        return list(self.unacked)


def _ok_record(index: int, window: str | None = None) -> RequestRecord:
    at = float(index)
    return RequestRecord(index=index, scheduled=at, window=window, spawned=at, sent=at, completed=at + 0.01,
                         status=200, server_id=SERVER_ID)


def _failed_record(index: int, kind: HttpFailureKind, window: str | None) -> RequestRecord:
    record = _ok_record(index, window)
    record.error = kind
    if kind is HttpFailureKind.HTTP_STATUS:
        record.status = HTTPStatus.SERVICE_UNAVAILABLE
    else:
        record.status = None
        record.server_id = None
    return record


def _http_summary(records: Sequence[RequestRecord], windows: Sequence[str] = ()) -> HttpSummary:
    load = HttpLoad(ProbeSettings(), WindowTimeline())
    load.records = list(records)
    load.started_at, load.stopped_at = 0.0, float(len(records))
    return summarize_http(load, ProbeSettings().rate, windows)


def _clean_http() -> HttpSummary:
    return _http_summary([_ok_record(i) for i in range(CLEAN_REQUESTS)])


def _clean_ws_stats() -> WsStats:
    stats = WsStats(connects=1, messages_sent=CLEAN_MESSAGES, messages_acked=CLEAN_MESSAGES)
    stats.close_codes[1000] += 1
    stats.server_ids[SERVER_ID] += 1
    return stats


def _ws_summary(stats: WsStats, clients: Sequence[FixedClient] = (FixedClient(),)) -> WsSummary:
    return summarize_ws(stats, clients)  # type: ignore[arg-type]  # only unacked_ids() is read


def _assert_fails_with(report: ProbeReport, reason: str) -> None:
    assert report.ok is False
    assert report.failure_reasons() == [reason]
    as_dict = report.to_dict()
    assert as_dict["ok"] is False and as_dict["failure_reasons"] == [reason]
    assert report.format_table().endswith(f"RESULT FAIL: {reason}")


def test_clean_run_passes() -> None:
    report = ProbeReport(http=_clean_http(), ws=_ws_summary(_clean_ws_stats()))
    assert report.ok is True
    assert report.failure_reasons() == []
    assert report.to_dict()["ok"] is True and report.to_dict()["failure_reasons"] == []
    assert report.format_table().endswith("RESULT OK: nothing lost")


def test_failure_kinds_are_exactly_the_http_failure_kinds() -> None:
    assert set(FAILURE_KINDS) == {kind.value for kind in HttpFailureKind}
    assert _clean_http().failures == dict.fromkeys(FAILURE_KINDS, 0)


@pytest.mark.parametrize("window", [None, "deploy-1"], ids=["steady", "in-window"])
@pytest.mark.parametrize("kind", list(HttpFailureKind), ids=[kind.value for kind in HttpFailureKind])
def test_each_http_failure_kind_alone_fails_the_run(kind: HttpFailureKind, window: str | None) -> None:
    records = [_ok_record(i) for i in range(CLEAN_REQUESTS)]
    records.append(_failed_record(CLEAN_REQUESTS, kind, window))
    http = _http_summary(records, ["deploy-1"])
    assert http.failures[kind.value] == 1 and http.failure_total == 1
    report = ProbeReport(http=http, ws=_ws_summary(_clean_ws_stats()))
    _assert_fails_with(report, f"http {kind.value}: 1")


def test_failures_are_counted_not_just_flagged() -> None:
    records = [_failed_record(i, HttpFailureKind.RESET, None) for i in range(3)]
    records += [_failed_record(3, HttpFailureKind.TIMEOUT, None)]
    report = ProbeReport(http=_http_summary(records), ws=_ws_summary(_clean_ws_stats()))
    assert report.failure_reasons() == ["http reset: 3", "http timeout: 1"]
    assert report.http.completed_ok == 0


def test_non_2xx_status_is_reported_by_code() -> None:
    records = [_ok_record(0), _failed_record(1, HttpFailureKind.HTTP_STATUS, None)]
    http = _http_summary(records)
    assert http.status_codes == {200: 1, 503: 1}
    assert http.failed_status_codes == {503: 1}
    assert http.to_dict()["failed_status_codes"] == {"503": 1}


WS_ABNORMAL_KINDS = [
    close_kind(1006), close_kind(1011), close_kind(1000), close_kind(1002), close_kind(1008),
    KIND_CONNECT_FAILED, KIND_HANDSHAKE_FAILED, KIND_HELLO_TIMEOUT, KIND_PROTOCOL_ERROR,
]


@pytest.mark.parametrize("kind", WS_ABNORMAL_KINDS)
def test_each_ws_abnormal_kind_alone_fails_the_run(kind: str) -> None:
    stats = _clean_ws_stats()
    stats.abnormal_closes[kind] += 1
    report = ProbeReport(http=_clean_http(), ws=_ws_summary(stats))
    assert report.ws.abnormal_total == 1
    _assert_fails_with(report, f"ws abnormal {kind}: 1")


def test_lost_ws_message_alone_fails_the_run() -> None:
    stats = _clean_ws_stats()
    stats.messages_sent += 2
    report = ProbeReport(http=_clean_http(), ws=_ws_summary(stats, [FixedClient(), FixedClient(["c1-7", "c1-8"])]))
    assert report.ws.lost == 2 and report.ws.lost_sample == ("c1-7", "c1-8")
    _assert_fails_with(report, "ws lost messages: 2")


def test_lost_sample_is_bounded_but_lost_counts_all() -> None:
    ids = [f"c0-{n}" for n in range(50)]
    ws = _ws_summary(_clean_ws_stats(), [FixedClient(ids)])
    assert ws.lost == 50 and ws.lost_sample == tuple(ids[:20])


def test_every_failure_kind_at_once_names_each() -> None:
    records = [_failed_record(i, kind, None) for i, kind in enumerate(HttpFailureKind)]
    stats = _clean_ws_stats()
    stats.abnormal_closes[close_kind(1006)] += 2
    report = ProbeReport(http=_http_summary(records), ws=_ws_summary(stats, [FixedClient(["c0-1"])]))
    expected = [f"http {kind.value}: 1" for kind in HttpFailureKind]
    expected += ["ws abnormal close_1006: 2", "ws lost messages: 1"]
    assert report.failure_reasons() == expected
    assert report.ok is False


def test_reconnect_after_service_restart_is_not_a_failure() -> None:
    stats = _clean_ws_stats()
    stats.connects, stats.reconnects, stats.drain_notices = 2, 1, 1
    stats.close_codes[SERVICE_RESTART] += 1
    stats.reconnect_gaps.append(0.005)
    stats.messages_resent = 1
    stats.duplicate_acks = 1  # a resent message acked by both servers is not a loss
    report = ProbeReport(http=_clean_http(), ws=_ws_summary(stats))
    assert report.ok is True, report.failure_reasons()


def test_probe_lag_is_a_warning_not_a_failure() -> None:
    record = _ok_record(0)
    record.spawned = record.scheduled + 1.0  # the probe's own scheduler ran a second late
    report = ProbeReport(http=_http_summary([record]), ws=_ws_summary(_clean_ws_stats()))
    assert report.http.probe_lagged is True
    assert report.ok is True
    assert "the probe itself stalled" in report.format_table()


# ---------------------------------------------------------------- HTTP load against a misbehaving server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _answer(status: int) -> Handler:
    no_content = status == HTTPStatus.NO_CONTENT
    body = b"" if no_content else b"ok"
    length = "" if no_content else f"Content-Length: {len(body)}\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                head = f"HTTP/1.1 {status} X\r\n{length}X-Server-Id: {SERVER_ID}\r\n\r\n"
                writer.write(head.encode() + body)
                await writer.drain()
        writer.close()

    return handler


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.read()
    writer.close()


async def _run_http_load(handler: Handler | None, request_timeout: float, settle_timeout: float) -> HttpSummary:
    """Constant-rate load for a moment against handler (None: nothing listens), then settle and summarize."""
    server = await asyncio.start_server(handler, LOOPBACK, 0) if handler is not None else None
    port = server.sockets[0].getsockname()[1] if server is not None else _free_port()
    settings = ProbeSettings(base_url=f"http://{LOOPBACK}:{port}", rate=HTTP_RATE, ws_clients=0,
                             request_timeout=request_timeout, max_connections=4)
    load = HttpLoad(settings, WindowTimeline())
    try:
        runner = asyncio.get_running_loop().create_task(load.run())
        await asyncio.sleep(HTTP_RUN_SECONDS)
        load.request_stop()
        await runner
        await load.settle(settle_timeout)
    finally:
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
    return summarize_http(load, HTTP_RATE, [])


def _report_with_clean_ws(http: HttpSummary) -> ProbeReport:
    return ProbeReport(http=http, ws=_ws_summary(_clean_ws_stats()))


@pytest.mark.parametrize("status", [200, 204, 299])
def test_2xx_responses_pass(status: int) -> None:
    http = asyncio.run(_run_http_load(_answer(status), request_timeout=2.0, settle_timeout=2.0))
    assert http.scheduled >= 2
    assert http.status_codes == {status: http.scheduled}
    assert http.completed_ok == http.scheduled
    assert _report_with_clean_ws(http).ok is True


@pytest.mark.parametrize("status", [300, 404, 500, 503])
def test_non_2xx_response_alone_fails_the_run(status: int) -> None:
    http = asyncio.run(_run_http_load(_answer(status), request_timeout=2.0, settle_timeout=2.0))
    n = http.scheduled
    assert n >= 2 and http.status_codes == {status: n} and http.failed_status_codes == {status: n}
    assert http.completed_ok == 0
    _assert_fails_with(_report_with_clean_ws(http), f"http http_status: {n}")


def test_unanswered_request_times_out_and_fails_the_run() -> None:
    http = asyncio.run(_run_http_load(_never_answer, request_timeout=SHORT_REQUEST_TIMEOUT, settle_timeout=2.0))
    n = http.scheduled
    assert n >= 2 and http.failures["timeout"] == n
    assert any(f"no response within {SHORT_REQUEST_TIMEOUT} s" in s for s in http.error_samples)
    _assert_fails_with(_report_with_clean_ws(http), f"http timeout: {n}")


def test_request_still_outstanding_at_settle_counts_as_timeout() -> None:
    http = asyncio.run(_run_http_load(_never_answer, request_timeout=30.0, settle_timeout=0.05))
    n = http.scheduled
    assert n >= 2 and http.failures["timeout"] == n
    assert any("still outstanding" in s for s in http.error_samples)
    _assert_fails_with(_report_with_clean_ws(http), f"http timeout: {n}")


def test_refused_connection_fails_the_run() -> None:
    http = asyncio.run(_run_http_load(None, request_timeout=2.0, settle_timeout=2.0))
    n = http.scheduled
    assert n >= 2
    _assert_fails_with(_report_with_clean_ws(http), f"http connect_error: {n}")


# ---------------------------------------------------------------- WebSocket client against a misbehaving server


@dataclass
class WsBehaviour:
    """What the server does on its first connection; later connections are well behaved."""

    first: Callable[[ServerConnection], Awaitable[None]] | None = None
    reject_first_handshake: bool = False
    ack: bool = True
    connections: int = 0

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.reject_first_handshake and self.connections == 0:
            self.connections += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    async def handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        await connection.send(json.dumps({"type": "hello", "server_id": SERVER_ID}))
        if self.connections == 1 and self.first is not None:
            await self.first(connection)
            return
        with contextlib.suppress(Exception):
            async for raw in connection:
                frame = json.loads(raw)
                if self.ack:
                    await connection.send(json.dumps({"type": "ack", "id": frame["id"]}))


def _close_with(code: int, notice: bool = False) -> Callable[[ServerConnection], Awaitable[None]]:
    async def behave(connection: ServerConnection) -> None:
        await connection.recv()  # let the client send one message first
        if notice:
            await connection.send(json.dumps({"type": "reconnect"}))
        await connection.close(code, "test")

    return behave


async def _drop_connection(connection: ServerConnection) -> None:
    await connection.recv()
    connection.transport.abort()  # no close frame: the client sees 1006


async def _send_garbage(connection: ServerConnection) -> None:
    await connection.recv()
    await connection.send("this is not json")
    await connection.wait_closed()


async def _ack_without_id(connection: ServerConnection) -> None:
    await connection.recv()
    await connection.send(json.dumps({"type": "ack", "id": 7}))
    await connection.wait_closed()


async def _wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(POLL_SECONDS)


async def _run_ws_client(behaviour: WsBehaviour, expect_reconnect: bool, port: int | None = None) -> WsSummary:
    """One client: wait until it has sent messages (and reconnected, if expected), then stop and summarize."""
    stats = WsStats()
    async with contextlib.AsyncExitStack() as stack:
        if port is None:
            server = await stack.enter_async_context(
                serve(behaviour.handle, LOOPBACK, 0, process_request=behaviour.process_request)
            )
            port = server.sockets[0].getsockname()[1]
        client = WsClient("c0", f"ws://{LOOPBACK}:{port}/ws", WS_MESSAGE_INTERVAL, stats, random.Random(0))
        task = asyncio.get_running_loop().create_task(client.run())
        try:
            if expect_reconnect:
                await _wait_for(lambda: stats.connects >= 2)
            await _wait_for(lambda: stats.messages_sent >= MESSAGES_BEFORE_STOP)
            if behaviour.ack:
                await _wait_for(lambda: client.unacked == 0)
            client.stop_sending()
            await client.close()
            await asyncio.wait_for(task, WAIT_TIMEOUT_SECONDS)
        finally:
            task.cancel()
    return summarize_ws(stats, [client])


def _ws_report(ws: WsSummary) -> ProbeReport:
    return ProbeReport(http=_clean_http(), ws=ws)


def test_clean_ws_session_passes() -> None:
    ws = asyncio.run(_run_ws_client(WsBehaviour(), expect_reconnect=False))
    assert ws.connects == 1 and ws.messages_acked == ws.messages_sent >= MESSAGES_BEFORE_STOP
    assert ws.close_codes == {1000: 1}
    assert _ws_report(ws).ok is True


@pytest.mark.parametrize("notice", [True, False], ids=["with-notice", "without-notice"])
def test_service_restart_close_then_reconnect_is_not_a_failure(notice: bool) -> None:
    behaviour = WsBehaviour(first=_close_with(SERVICE_RESTART, notice))
    ws = asyncio.run(_run_ws_client(behaviour, expect_reconnect=True))
    assert ws.close_codes.get(SERVICE_RESTART) == 1
    assert ws.reconnects == 1 and ws.abnormal_total == 0 and ws.lost == 0
    assert ws.drain_notices == (1 if notice else 0)
    report = _ws_report(ws)
    assert report.ok is True, report.failure_reasons()


def test_going_away_close_then_reconnect_is_not_a_failure() -> None:
    behaviour = WsBehaviour(first=_close_with(1001))
    ws = asyncio.run(_run_ws_client(behaviour, expect_reconnect=True))
    assert ws.reconnects == 1 and ws.abnormal_total == 0
    assert _ws_report(ws).ok is True


@pytest.mark.parametrize("code", [1000, 1002, 1008, 1011])
def test_other_close_code_alone_fails_the_run(code: int) -> None:
    behaviour = WsBehaviour(first=_close_with(code))
    ws = asyncio.run(_run_ws_client(behaviour, expect_reconnect=True))
    assert ws.reconnects == 1 and ws.lost == 0  # the message was resent and acked after the reconnect
    _assert_fails_with(_ws_report(ws), f"ws abnormal close_{code}: 1")


def test_abnormal_close_1006_alone_fails_the_run() -> None:
    ws = asyncio.run(_run_ws_client(WsBehaviour(first=_drop_connection), expect_reconnect=True))
    assert ws.close_codes.get(1006) == 1 and ws.lost == 0
    _assert_fails_with(_ws_report(ws), "ws abnormal close_1006: 1")


@pytest.mark.parametrize("behave", [_send_garbage, _ack_without_id], ids=["not-json", "ack-without-id"])
def test_protocol_error_alone_fails_the_run(behave: Callable[[ServerConnection], Awaitable[None]]) -> None:
    ws = asyncio.run(_run_ws_client(WsBehaviour(first=behave), expect_reconnect=True))
    assert ws.lost == 0
    _assert_fails_with(_ws_report(ws), f"ws abnormal {KIND_PROTOCOL_ERROR}: 1")


def test_rejected_handshake_alone_fails_the_run() -> None:
    ws = asyncio.run(_run_ws_client(WsBehaviour(reject_first_handshake=True), expect_reconnect=False))
    assert ws.connects == 1 and ws.lost == 0
    _assert_fails_with(_ws_report(ws), f"ws abnormal {KIND_HANDSHAKE_FAILED}: 1")


def test_refused_ws_connection_fails_the_run() -> None:
    async def scenario() -> WsSummary:
        stats = WsStats()
        client = WsClient("c0", f"ws://{LOOPBACK}:{_free_port()}/ws", WS_MESSAGE_INTERVAL, stats, random.Random(0))
        task = asyncio.get_running_loop().create_task(client.run())
        await _wait_for(lambda: stats.abnormal_closes[KIND_CONNECT_FAILED] >= 1)
        await client.close()
        await asyncio.wait_for(task, WAIT_TIMEOUT_SECONDS)
        return summarize_ws(stats, [client])

    ws = asyncio.run(scenario())
    assert ws.connects == 0 and ws.abnormal_total == ws.abnormal_closes[KIND_CONNECT_FAILED] >= 1
    report = _ws_report(ws)
    assert report.ok is False
    assert report.failure_reasons()[0].startswith(f"ws abnormal {KIND_CONNECT_FAILED}: ")


def test_unacknowledged_message_alone_fails_the_run() -> None:
    ws = asyncio.run(_run_ws_client(WsBehaviour(ack=False), expect_reconnect=False))
    n = ws.messages_sent
    assert n >= MESSAGES_BEFORE_STOP and ws.messages_acked == 0 and ws.abnormal_total == 0
    assert ws.lost == n and ws.lost_sample == tuple(f"c0-{i}" for i in range(1, n + 1))
    _assert_fails_with(_ws_report(ws), f"ws lost messages: {n}")


# ---------------------------------------------------------------- the verdict and its counts as JSON (--json)


def _latency(base: float) -> LatencySummary:
    return LatencySummary(count=int(base), p50_ms=base + 0.5, p99_ms=base + 0.9, max_ms=base + 1.0)


def _latency_dict(base: float) -> dict[str, object]:
    return {"count": int(base), "p50_ms": base + 0.5, "p99_ms": base + 0.9, "max_ms": base + 1.0}


def test_json_report_carries_the_verdict_and_every_count() -> None:
    failures = {**dict.fromkeys(FAILURE_KINDS, 0), "reset": 2, "http_status": 1}
    steady = HttpWindowStats("steady", _latency(10), dict.fromkeys(FAILURE_KINDS, 0))
    window = HttpWindowStats("deploy-1", _latency(20), failures)
    http = HttpSummary(
        target_rate=200.0, achieved_rate=199.5, duration_s=3.25, scheduled=30, sent=29, completed_ok=27,
        connections_opened=4, peak_connections_in_use=3, steady=steady, windows=(window,),
        all_windows=HttpWindowStats("all-windows", _latency(20), failures),
        overall=HttpWindowStats("overall", _latency(30), failures), service_time=_latency(40),
        scheduler_lag=_latency(50), send_lag=_latency(60), status_codes={200: 28, 503: 1},
        server_ids={"a": 20, "b": 9}, error_samples=("request 3: reset: boom",),
    )
    ws = WsSummary(
        clients=2, connects=3, reconnects=1, drain_notices=1, abnormal_closes={"close_1006": 1},
        close_codes={1000: 2, 1006: 1}, reconnect_gap=_latency(70), messages_sent=11, messages_acked=9,
        messages_resent=2, duplicate_acks=1, unknown_acks=3, lost=2, lost_sample=("c0-4", "c1-5"),
        server_ids={"a": 2, "b": 1}, error_samples=("c0: close_1006",),
    )
    window_dict = {"name": "deploy-1", "count": 20, "latency": _latency_dict(20), "failures": failures,
                   "failure_total": 3}
    expected = {
        "ok": False,
        "failure_reasons": ["http http_status: 1", "http reset: 2", "ws abnormal close_1006: 1",
                            "ws lost messages: 2"],
        "http": {
            "target_rate": 200.0, "achieved_rate": 199.5, "duration_s": 3.25, "scheduled": 30, "sent": 29,
            "completed_ok": 27, "connections_opened": 4, "peak_connections_in_use": 3, "failure_total": 3,
            "failures": failures, "failed_status_codes": {"503": 1}, "status_codes": {"200": 28, "503": 1},
            "steady": {"name": "steady", "count": 10, "latency": _latency_dict(10),
                       "failures": dict.fromkeys(FAILURE_KINDS, 0), "failure_total": 0},
            "windows": [window_dict],
            "all_windows": {**window_dict, "name": "all-windows"},
            "overall": {**window_dict, "name": "overall", "count": 30, "latency": _latency_dict(30)},
            "max_latency_ms": 31.0, "service_time": _latency_dict(40), "scheduler_lag": _latency_dict(50),
            "send_lag": _latency_dict(60), "max_send_lag_ms": 61.0, "probe_lagged": False,
            "server_ids": {"a": 20, "b": 9}, "error_samples": ["request 3: reset: boom"],
        },
        "ws": {
            "clients": 2, "connects": 3, "reconnects": 1, "drain_notices": 1, "abnormal_total": 1,
            "abnormal_closes": {"close_1006": 1}, "close_codes": {"1000": 2, "1006": 1},
            "reconnect_gap": _latency_dict(70), "messages_sent": 11, "messages_acked": 9, "messages_resent": 2,
            "duplicate_acks": 1, "unknown_acks": 3, "lost": 2, "lost_sample": ["c0-4", "c1-5"],
            "server_ids": {"a": 2, "b": 1}, "error_samples": ["c0: close_1006"],
        },
    }
    as_dict = ProbeReport(http=http, ws=ws).to_dict()
    assert as_dict == expected
    assert json.loads(json.dumps(as_dict)) == expected
