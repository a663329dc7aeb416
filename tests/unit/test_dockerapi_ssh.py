"""The Engine API over an SSH channel (handover.dockerapi): HTTP keep-alive through one channel.

A fake SSH transport hands out "channels" that are unix-socket connections to a small HTTP/1.1 engine
(keep-alive, chunked event streams), so the client's own code runs as it does over paramiko: one
channel for many requests, a second one only while an event stream is read to its end, a kept
channel the host closed replaced once, the engine's clock used for event times, and the fallback to
the CLI when the channel does not answer.
"""

from __future__ import annotations

import json
import socket
import socketserver
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from handover import dockerapi
from handover.dockerapi import DIAL_ARGV, SWITCH_ENV, DockerAPI, engine_time
from handover.errors import CommandError

SKEW = 1000.0  # the fake engine's clock runs this far ahead of this machine's


class FakeChannel:
    """The parts of a paramiko channel the client uses, on a unix socket to the fake engine."""

    def __init__(self, path: str, transport: FakeTransport) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.transport = transport
        self.command = ""
        self.closed = False

    def exec_command(self, command: str) -> None:
        self.command = command
        if self.transport.refuse:  # e.g. no dial-stdio on the host: the command ends at once
            self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class FakeTransport:
    def __init__(self, path: str) -> None:
        self.path = path
        self.channels: list[FakeChannel] = []
        self.refuse = False

    def open_session(self, timeout: float | None = None) -> FakeChannel:
        channel = FakeChannel(self.path, self)
        self.channels.append(channel)
        return channel


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class KeepAliveEngine:
    """HTTP/1.1 with keep-alive; ``/events`` streams ``events`` (chunked) and ends at its ``until``."""

    def __init__(self, path: Path) -> None:
        self.requests: list[str] = []
        self.connections = 0
        self.events: list[str] = []
        self.stopping = 0
        self.most_stopping = 0
        count = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                engine.connections += 1

            def log_message(self, *args: Any) -> None:
                return None

            def address_string(self) -> str:
                return "fake"

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                engine.requests.append(self.path)
                if url.path == "/events":
                    until = float(urllib.parse.parse_qs(url.query)["until"][0])
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in engine.events:
                        data = line.encode() + b"\n"
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                    time.sleep(max(until - (time.time() + SKEW), 0.0))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if url.path == "/info":
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + SKEW))
                    body: Any = {"SystemTime": f"{stamp}.123456789Z"}
                elif url.path == "/_ping":
                    body = "OK"
                else:
                    body = {"Id": url.path.split("/")[2], "Config": {}, "State": {}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # a stop that takes its time
                engine.requests.append(self.path)
                with count:
                    engine.stopping += 1
                    engine.most_stopping = max(engine.most_stopping, engine.stopping)
                time.sleep(0.2)
                with count:
                    engine.stopping -= 1
                self.send_response(204)
                self.end_headers()

        self.server = _Server(str(path), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def engine() -> Iterator[tuple[KeepAliveEngine, FakeTransport]]:
    with tempfile.TemporaryDirectory(prefix="ssa") as d:  # a unix socket's path stays short
        path = Path(d) / "engine.sock"
        fake = KeepAliveEngine(path)
        yield fake, FakeTransport(str(path))
        fake.close()


def test_engine_time_reads_rfc3339_with_nanoseconds_and_offsets() -> None:
    assert engine_time("2026-11-27T03:58:01.123456789Z") == pytest.approx(1795751881.123456)
    assert engine_time("2026-11-27T04:58:01.5+01:00") == pytest.approx(1795751881.5)
    assert engine_time("2026-11-27T03:58:01Z") == pytest.approx(1795751881.0)
    assert engine_time("2026-11-27T03:58:01") is None  # no zone: not a point in time
    assert engine_time("") is None
    assert engine_time("yesterday") is None


def test_many_requests_go_through_one_channel_running_the_fixed_command(engine: Any) -> None:
    fake, transport = engine
    api = DockerAPI.over_ssh(transport)
    for n in range(5):
        assert api.inspect(f"c{n}") is not None
    assert len(transport.channels) == 1 and fake.connections == 1
    assert transport.channels[0].command == "docker system dial-stdio" == " ".join(DIAL_ARGV)
    api.close()
    assert transport.channels[0].closed


def test_a_kept_channel_the_host_closed_is_replaced_once(engine: Any) -> None:
    _, transport = engine
    api = DockerAPI.over_ssh(transport)
    api.inspect("a")
    transport.channels[0].sock.shutdown(socket.SHUT_RDWR)  # e.g. the engine restarted meanwhile
    assert api.inspect("b") is not None
    assert len(transport.channels) == 2
    assert api.inspect("c") is not None
    assert len(transport.channels) == 2  # the new one is kept in turn


def test_event_waits_use_the_engines_clock_and_keep_their_channel(engine: Any) -> None:
    fake, transport = engine
    api = DockerAPI.over_ssh(transport)
    fake.events = ['{"status":"health_status: healthy","id":"abc"}']
    since = time.time()
    t0 = time.monotonic()
    assert api.wait_event(["abc"], since, 0.6) is True
    assert time.monotonic() - t0 < 0.4  # at the event, not at the end of the wait
    info, events = fake.requests[0], fake.requests[1]
    assert info == "/info"  # read once, for the engine's clock
    asked = urllib.parse.parse_qs(urllib.parse.urlsplit(events).query)
    assert float(asked["since"][0]) == pytest.approx(since + SKEW, abs=2.0)  # in the engine's time
    time.sleep(0.8)  # the stream ends at its until: the channel is kept again
    fake.events = []
    t0 = time.monotonic()
    assert api.wait_event(["abc"], time.time(), 0.3) is False
    assert 0.2 < time.monotonic() - t0 < 1.5  # the engine's until, not one a thousand seconds away
    api.inspect("abc")
    assert len(transport.channels) == 1
    assert fake.requests.count("/info") == 1


def test_an_inspect_during_an_event_stream_takes_a_second_channel(engine: Any) -> None:
    fake, transport = engine
    api = DockerAPI.over_ssh(transport)
    fake.events = ['{"status":"die","id":"abc"}']
    api.clock_offset()
    assert api.wait_event(["abc"], time.time(), 1.0) is True
    api.inspect("abc")  # the first channel still reads its stream to the end
    assert len(transport.channels) == 2


def test_over_ssh_only_when_the_channel_answers_and_the_switch_is_on(engine: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake, transport = engine
    runner = object()
    monkeypatch.setattr(dockerapi, "ssh_transport", lambda r: transport if r is runner else None)
    assert DockerAPI.for_runner(runner, {SWITCH_ENV: "0"}) is None
    assert transport.channels == []  # switched off: not even tried
    api = DockerAPI.for_runner(runner, {})
    assert api is not None and DockerAPI.for_runner(runner, {}) is api  # one client per connection
    assert fake.requests == ["/_ping"]

    other = FakeTransport(transport.path)
    other.refuse = True  # the host has no dial-stdio, or may not use the engine
    refused = object()
    monkeypatch.setattr(dockerapi, "ssh_transport", lambda r: other if r is refused else None)
    assert DockerAPI.for_runner(refused, {}) is None
    assert DockerAPI.for_runner(refused, {}) is None
    assert len(other.channels) == 1  # tried once per connection, then the CLI


def test_a_refused_channel_is_a_command_error_not_a_traceback(engine: Any) -> None:
    _, transport = engine
    transport.refuse = True
    with pytest.raises(CommandError, match="docker engine API GET /_ping"):
        DockerAPI.over_ssh(transport).request("GET", "/_ping")


def test_stops_over_ssh_share_a_few_channels_not_one_each(engine: Any) -> None:
    fake, transport = engine
    api = DockerAPI.over_ssh(transport)
    ids = [f"c{n}" for n in range(8)]
    t0 = time.monotonic()
    api.stop(ids, 5)
    assert fake.most_stopping == dockerapi.SSH_PARALLEL_STOPS < len(ids)  # sshd's MaxSessions is 10
    assert len(transport.channels) == dockerapi.SSH_PARALLEL_STOPS
    assert time.monotonic() - t0 < 8 * 0.2  # still side by side, in two waves
    assert sorted(fake.requests) == sorted(f"/containers/{c}/stop?t=5" for c in ids)

