"""The probe against a real uvicorn stand-in process: a steady run, a killed server, a drain."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from handover.probe import Probe, ProbeReport, ProbeSettings

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
