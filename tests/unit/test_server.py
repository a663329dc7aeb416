"""In-process tests of the demo app (server/webapp) through Starlette's TestClient."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message
from starlette.websockets import WebSocketDisconnect
from webapp.app import WebApp, create_app
from webapp.faults import Fault
from webapp.protocol import WS_CLOSE_SERVICE_RESTART
from webapp.settings import ConfigError, Settings

# Ticks would interleave with the replies under test; keep them out of the way.
QUIET_TICK_INTERVAL = 3600.0
FAST_TICK_INTERVAL = 0.05
TEST_VERSION = "1.2.3"


def make_client(**overrides: Any) -> TestClient:
    options: dict[str, Any] = {"version": TEST_VERSION, "tick_interval": QUIET_TICK_INTERVAL, **overrides}
    settings = Settings(**options)
    return TestClient(create_app(settings))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def app_of(client: TestClient) -> WebApp:
    assert isinstance(client.app, WebApp)
    return client.app


# --------------------------------------------------------------------------- HTTP


def test_healthz_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_info_fields(client: TestClient) -> None:
    runtime = app_of(client).runtime
    body = client.get("/api/info").json()
    assert body == {
        "server_id": runtime.server_id,
        "version": TEST_VERSION,
        "started_at": runtime.started_at,
        "draining": False,
    }
    assert body["started_at"].endswith("Z")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/healthz", 200),
        ("GET", "/api/info", 200),
        ("GET", "/api/slow?seconds=0", 200),
        ("GET", "/api/slow?seconds=nope", 400),
        ("GET", "/does-not-exist", 404),
        ("POST", "/healthz", 405),
    ],
)
def test_identity_headers_on_every_response(client: TestClient, method: str, path: str, status: int) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert response.headers["x-server-id"] == app_of(client).runtime.server_id
    assert response.headers["x-app-version"] == TEST_VERSION


def test_identity_headers_on_unhandled_error() -> None:
    def explode(request: Request) -> Response:
        raise RuntimeError("boom")

    app = create_app(Settings(version=TEST_VERSION))
    app.add_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/explode")
    assert response.status_code == 500
    assert response.headers["x-server-id"] == app.runtime.server_id
    assert response.headers["x-app-version"] == TEST_VERSION


def test_index_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.headers["content-type"].startswith("text/html")
    assert "window.handoverStats" in response.text


def test_server_ids_differ_per_process() -> None:
    assert create_app(Settings()).runtime.server_id != create_app(Settings()).runtime.server_id


@pytest.mark.parametrize("seconds", ["0", "0.01", "0.0"])
def test_slow_valid(client: TestClient, seconds: str) -> None:
    response = client.get("/api/slow", params={"seconds": seconds})
    assert response.status_code == 200
    assert response.json()["server_id"] == app_of(client).runtime.server_id


@pytest.mark.parametrize("query", ["", "?seconds=", "?seconds=-1", "?seconds=30.5", "?seconds=abc", "?seconds=nan"])
def test_slow_invalid(client: TestClient, query: str) -> None:
    response = client.get(f"/api/slow{query}")
    assert response.status_code == 400
    assert "seconds" in response.json()["error"]


def test_fault_unhealthy_makes_healthz_fail() -> None:
    with make_client(fault=Fault.UNHEALTHY) as client:
        response = client.get("/healthz")
    assert response.status_code == 503


# --------------------------------------------------------------------------- WebSocket


def test_ws_hello(client: TestClient) -> None:
    runtime = app_of(client).runtime
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {
            "type": "hello",
            "server_id": runtime.server_id,
            "version": TEST_VERSION,
            "started_at": runtime.started_at,
        }


def test_ws_ack_and_ping(client: TestClient) -> None:
    server_id = app_of(client).runtime.server_id
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"type": "msg", "id": "m-1", "body": {"any": ["thing"]}})
        assert ws.receive_json() == {"type": "ack", "id": "m-1", "server_id": server_id}
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "object"),
        ('{"type": "msg", "body": 1}', "id"),
        ('{"type": "msg", "id": 7}', "id"),
        ('{"type": "shout"}', "unknown message type"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_ws_errors_keep_socket_open(client: TestClient, frame: str, fragment: str) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(frame)
        reply = ws.receive_json()
        assert reply["type"] == "error"
        assert fragment in reply["error"]
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


def test_ws_binary_frame_is_an_error(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(b'{"type": "ping"}')
        assert ws.receive_json()["type"] == "error"
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


def test_ws_ticks() -> None:
    with make_client(tick_interval=FAST_TICK_INTERVAL) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        tick = ws.receive_json()
        assert tick["type"] == "tick"
        assert tick["server_id"] == app_of(client).runtime.server_id
        assert isinstance(tick["t"], float)


# --------------------------------------------------------------------------- drain


def test_drain_closes_sockets_and_fails_healthz(client: TestClient) -> None:
    runtime = app_of(client).runtime
    assert client.portal is not None
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        drained = client.portal.start_task_soon(runtime.drain.drain)
        assert ws.receive_json() == {"type": "reconnect", "reason": "draining", "server_id": runtime.server_id}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == WS_CLOSE_SERVICE_RESTART
    drained.result(timeout=5)
    assert not runtime.drain.sockets
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "draining"}
    assert client.get("/api/info").json()["draining"] is True


def test_connect_while_draining_is_told_to_reconnect(client: TestClient) -> None:
    runtime = app_of(client).runtime
    assert client.portal is not None
    client.portal.call(runtime.drain.drain)
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "reconnect"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == WS_CLOSE_SERVICE_RESTART


# --------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    assert Settings.from_env({}) == Settings(
        version="dev",
        host="0.0.0.0",  # noqa: S104
        port=8000,
        drain_timeout=10.0,
        tick_interval=1.0,
        fault=Fault.NONE,
        ws_max_message=65536,
    )


def test_settings_from_env() -> None:
    env = {
        "APP_VERSION": "v9",
        "HOST": "127.0.0.1",
        "PORT": "9000",
        "DRAIN_TIMEOUT": "2.5",
        "TICK_INTERVAL": "0.5",
        "APP_FAULT": "crash",
        "WS_MAX_MESSAGE": "1024",
        "DRAIN_SPREAD": "0.25",
        "UNIX_SOCKET_DIR": "/run/x",
    }
    assert Settings.from_env(env) == Settings(
        version="v9", host="127.0.0.1", port=9000, drain_timeout=2.5, drain_spread=0.25, tick_interval=0.5,
        fault=Fault.CRASH, ws_max_message=1024, unix_socket_dir="/run/x",
    )


@pytest.mark.parametrize(
    ("raw", "seconds"), [("exit-after:2", 2.0), ("exit-after:0.5", 0.5), (" exit-after:10 ", 10.0)]
)
def test_fault_exit_after_takes_seconds(raw: str, seconds: float) -> None:
    settings = Settings.from_env({"APP_FAULT": raw})
    assert settings.fault is Fault.EXIT_AFTER
    assert settings.fault_after == seconds


def test_fault_exit_after_is_healthy_until_it_exits() -> None:
    with make_client(fault=Fault.EXIT_AFTER, fault_after=60.0) as client:
        assert client.get("/healthz").status_code == 200


def test_empty_values_count_as_unset() -> None:
    assert Settings.from_env({"APP_FAULT": "", "PORT": "", "APP_VERSION": ""}) == Settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "http"}, "PORT must be an integer, got 'http'"),
        ({"PORT": "70000"}, "PORT must be between 1 and 65535, got 70000"),
        ({"DRAIN_TIMEOUT": "soon"}, "DRAIN_TIMEOUT must be a number of seconds, got 'soon'"),
        ({"DRAIN_SPREAD": "-0.5"}, "DRAIN_SPREAD must be zero or a positive number of seconds"),
        ({"DRAIN_TIMEOUT": "-1"}, "DRAIN_TIMEOUT must be a positive finite number"),
        ({"TICK_INTERVAL": "0"}, "TICK_INTERVAL must be a positive finite number"),
        ({"TICK_INTERVAL": "inf"}, "TICK_INTERVAL must be a positive finite number"),
        ({"WS_MAX_MESSAGE": "0"}, "WS_MAX_MESSAGE must be between 1"),
        ({"APP_FAULT": "explode"}, "APP_FAULT 'explode' is not supported"),
        ({"APP_FAULT": "crash:2"}, "APP_FAULT 'crash:2' is not supported"),
        ({"APP_FAULT": "exit-after"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:soon"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:0"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:-1"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:nan"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:inf"}, "expected exit-after:<seconds>"),
        ({"APP_FAULT": "exit-after:3601"}, "expected exit-after:<seconds>"),
    ],
)
def test_invalid_env_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


# --------------------------------------------------------------------------- proxy headers

SPOOFED = "6.6.6.6"


@pytest.mark.parametrize(
    ("peer", "seen"), [("203.0.113.7", "203.0.113.7"), ("127.0.0.1", SPOOFED), ("testclient", "testclient")]
)
def test_forwarded_for_is_believed_on_tcp_only_from_trusted_peers(peer: str, seen: str) -> None:
    with TestClient(create_app(Settings()), client=(peer, 40000)) as client:
        response = client.get("/api/client", headers={"X-Forwarded-For": SPOOFED, "X-Forwarded-Proto": "https"})
    assert response.json() == {"client": seen, "scheme": "https" if seen == SPOOFED else "http"}


def test_forwarded_allow_ips_replaces_the_trusted_tcp_peers() -> None:
    settings = Settings.from_env({"FORWARDED_ALLOW_IPS": "192.0.2.0/24"})
    for peer, seen in (("127.0.0.1", "127.0.0.1"), ("192.0.2.9", SPOOFED)):
        with TestClient(create_app(settings), client=(peer, 40000)) as client:
            assert client.get("/api/client", headers={"X-Forwarded-For": SPOOFED}).json()["client"] == seen


def get_via_unix_socket(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    """One GET as uvicorn hands it over from a unix socket: a server address without port, no client."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"app"), *headers], "client": None, "server": ("/run/handover/app-x.sock", None),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    # Served from the main thread, as uvicorn serves it, the app puts its drain in front of the signal
    # handlers it finds there (here asyncio.run's own SIGINT handler, which it then cannot take back).
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.parametrize(
    ("headers", "seen"),
    [
        ([(b"x-forwarded-for", SPOOFED.encode())], {"client": SPOOFED, "scheme": "http"}),
        ([(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")], {"client": "203.0.113.7", "scheme": "http"}),
        ([(b"x-forwarded-proto", b"https")], {"client": None, "scheme": "https"}),
        ([], {"client": None, "scheme": "http"}),
    ],
)
def test_forwarded_headers_are_believed_from_the_unix_socket(
    headers: list[tuple[bytes, bytes]], seen: dict[str, object]
) -> None:
    assert get_via_unix_socket(create_app(Settings()), "/api/client", headers) == (200, seen)


def test_forwarded_allow_ips_and_limit_concurrency_from_env() -> None:
    settings = Settings.from_env({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, 192.0.2.1", "LIMIT_CONCURRENCY": "50"})
    assert [str(n) for n in settings.forwarded_allow_ips] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert settings.limit_concurrency == 50
    assert [str(n) for n in Settings.from_env({}).forwarded_allow_ips] == ["127.0.0.1/32", "::1/128"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FORWARDED_ALLOW_IPS": "*"}, "FORWARDED_ALLOW_IPS must list IP addresses or networks.*'\\*'"),
        ({"FORWARDED_ALLOW_IPS": "127.0.0.1,nginx"}, "FORWARDED_ALLOW_IPS .* got 'nginx'"),
        ({"LIMIT_CONCURRENCY": "0"}, "LIMIT_CONCURRENCY must be between 1"),
    ],
)
def test_invalid_edge_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
