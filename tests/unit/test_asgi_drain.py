"""The drain helper (handover/asgi.py) in-process: wrapping, notices, closes, settings; and its copies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from handover.asgi import WS_CLOSE_SERVICE_RESTART, Drain, DrainingApp, drain

ROOT = Path(__file__).resolve().parent.parent.parent
HELPER = ROOT / "handover" / "asgi.py"
TIMEOUT = 5.0
# Images are built from their own directories, so the helper travels as a copy; these must not drift.
COPIES = (
    ROOT / "server" / "webapp" / "handover_asgi.py",
    ROOT / "examples" / "starlette-drain" / "handover_asgi.py",
)


def test_copies_of_the_helper_are_identical() -> None:
    original = HELPER.read_bytes()
    for copy in COPIES:
        assert copy.read_bytes() == original, f"{copy} differs from {HELPER}: copy it again (cp {HELPER} {copy})"


# --------------------------------------------------------------------------- in-process, through TestClient


async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello"})
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def ok(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def wrapped(**options: Any) -> DrainingApp:
    app = Starlette(routes=[Route("/healthz", ok), Route("/other", ok), WebSocketRoute("/ws", echo_socket)])
    return drain(app, timeout=TIMEOUT, spread=0, **options)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(wrapped(health_path="/healthz")) as test_client:
        yield test_client


def state(client: TestClient) -> Drain:
    assert isinstance(client.app, DrainingApp)
    return client.app.drain


def test_drain_sends_the_notice_then_closes_with_1012(client: TestClient) -> None:
    assert client.portal is not None
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "hello"}
        assert len(state(client).sockets) == 1
        drained = client.portal.start_task_soon(state(client).drain)
        assert ws.receive_json() == {"type": "reconnect", "reason": "draining"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == WS_CLOSE_SERVICE_RESTART
    drained.result(timeout=5)
    assert not state(client).sockets
    assert state(client).draining


def test_health_path_answers_503_while_draining_and_other_paths_still_serve(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.portal is not None
    client.portal.call(state(client).drain)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json() == {"status": "draining"}
    assert client.get("/other").status_code == 200


def test_a_socket_opened_while_draining_gets_the_notice_and_1012_without_the_app(client: TestClient) -> None:
    assert client.portal is not None
    client.portal.call(state(client).drain)
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "reconnect", "reason": "draining"}  # no hello: the app never ran
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == WS_CLOSE_SERVICE_RESTART


def test_refusing_new_sockets_a_socket_opened_while_draining_gets_503_before_any_handshake() -> None:
    with TestClient(wrapped(refuse_new_sockets=True)) as client:
        assert client.portal is not None
        with client.websocket_connect("/ws") as ws:  # before the drain: served as always
            assert ws.receive_json() == {"type": "hello"}
        client.portal.call(state(client).drain)
        with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/ws"):
            pass
        assert (refused.value.status_code, refused.value.json()) == (503, {"status": "draining"})
        assert not state(client).sockets
        assert client.get("/other").status_code == 200  # a plain request is still served


def test_refusing_new_sockets_falls_back_to_the_notice_on_a_server_without_http_responses() -> None:
    app = wrapped(refuse_new_sockets=True)
    app.drain.signals = False  # called here, in the main thread, with no server's handlers to wrap
    app.drain.draining = True
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app({"type": "websocket", "path": "/ws", "extensions": {}}, receive, send))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[-1]["code"] == WS_CLOSE_SERVICE_RESTART


def test_notice_none_closes_without_a_message() -> None:
    with TestClient(wrapped(notice=None)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert client.portal is not None
        client.portal.start_task_soon(state(client).drain)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == WS_CLOSE_SERVICE_RESTART


def test_a_custom_notice_is_sent_as_given() -> None:
    notice = {"type": "reconnect", "reason": "draining", "server_id": "abc"}
    with TestClient(wrapped(notice=notice)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert client.portal is not None
        client.portal.start_task_soon(state(client).drain)
        assert ws.receive_json() == notice


def test_the_apps_sends_after_the_drain_fail_like_a_gone_client() -> None:
    """A handler that only sends learns that the socket is gone, and so ends within the drain."""
    sent_after: list[BaseException] = []

    async def ticker(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_json({"type": "tick"})
                await asyncio.sleep(0.01)
        except WebSocketDisconnect as exc:
            sent_after.append(exc)

    app = drain(Starlette(routes=[WebSocketRoute("/ws", ticker)]), timeout=TIMEOUT, spread=0)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "tick"}
        assert client.portal is not None
        started = time.monotonic()
        client.portal.call(app.drain.drain)
        assert time.monotonic() - started < TIMEOUT, "the handler ended; the drain did not wait its timeout"
    assert len(sent_after) == 1


def test_the_handlers_are_waited_for_at_most_the_timeout() -> None:
    async def deaf(websocket: WebSocket) -> None:
        await websocket.accept()
        await asyncio.sleep(3600)  # never reads, never writes

    app = drain(Starlette(routes=[WebSocketRoute("/ws", deaf)]), timeout=0.3, spread=0)
    with TestClient(app) as client, client.websocket_connect("/ws"):
        assert client.portal is not None
        started = time.monotonic()
        client.portal.call(app.drain.drain)
        assert 0.3 <= time.monotonic() - started < 2.0


def test_no_signal_handler_is_installed_off_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with TestClient(wrapped()) as client:  # the app runs in the client's own thread
        client.get("/other")
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_drains_then_hands_the_signal_to_the_servers_handler() -> None:
    """In the main thread, as under uvicorn: the drain runs first, then the handler that was there."""
    seen: list[tuple[str, bool]] = []

    def server_handler(sig: int, frame: FrameType | None) -> None:
        seen.append(("server", app.drain.draining))

    async def serve() -> None:
        app.drain.watch_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):
            if seen:
                return
            await asyncio.sleep(0.01)

    app = wrapped()
    original = signal.signal(signal.SIGTERM, server_handler)
    original_int = signal.getsignal(signal.SIGINT)
    try:
        asyncio.run(serve())
    finally:
        signal.signal(signal.SIGTERM, original)
        signal.signal(signal.SIGINT, original_int)
    assert seen == [("server", True)]


@pytest.mark.parametrize(
    ("options", "env", "message"),
    [
        ({"timeout": 0}, {}, "drain timeout must be a positive finite number of seconds, got 0"),
        ({"spread": -1.0}, {}, "drain spread must be zero or a positive finite number of seconds, got -1.0"),
        ({}, {"DRAIN_TIMEOUT": "soon"}, "drain timeout must be a number of seconds, got DRAIN_TIMEOUT='soon'"),
        ({}, {"DRAIN_SPREAD": "inf"}, "drain spread must be zero or a positive finite number of seconds, "
                                      "got DRAIN_SPREAD='inf'"),
        ({}, {"DRAIN_REFUSE_NEW_SOCKETS": "maybe"}, "drain refuse_new_sockets must be 1 or 0 (true/false, yes/no, "
                                                    "on/off), got DRAIN_REFUSE_NEW_SOCKETS='maybe'"),
    ],
)
def test_bad_settings_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, float], env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as refused:
        Drain(**options)
    assert str(refused.value) == message


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAIN_TIMEOUT", "4.5")
    monkeypatch.setenv("DRAIN_SPREAD", "")
    settings = Drain()
    assert (settings.timeout, settings.spread) == (4.5, 1.0)
    assert (Drain(timeout=1, spread=0).timeout, Drain(timeout=1, spread=0).spread) == (1, 0)
    assert not settings.refuse_new_sockets
    monkeypatch.setenv("DRAIN_REFUSE_NEW_SOCKETS", " Yes ")
    assert Drain().refuse_new_sockets and not Drain(refuse_new_sockets=False).refuse_new_sockets
    monkeypatch.setenv("DRAIN_REFUSE_NEW_SOCKETS", "0")
    assert not Drain().refuse_new_sockets


def test_the_helper_imports_without_starlette_or_uvicorn() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None; "
        "import handover.asgi as m; print(m.drain.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "drain"


def test_the_helper_imports_nothing_from_handover() -> None:
    source = HELPER.read_text()
    imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [name for name in imports if name.startswith("handover")]
    assert set(imports) <= {"__future__", "asyncio", "contextlib", "json", "logging", "math", "os", "signal",
                            "threading", "time", "collections.abc", "types", "typing"}


def test_the_drain_example_is_the_plain_one_plus_two_lines() -> None:
    plain = (ROOT / "examples" / "starlette-plain" / "app.py").read_text().split('"""', 2)[2]
    draining = (ROOT / "examples" / "starlette-drain" / "app.py").read_text().split('"""', 2)[2]
    added = [line for line in draining.splitlines() if "the drain helper" in line]
    assert added == [
        "from handover_asgi import drain  # the drain helper, line 1 of 2",
        "app = drain(  # the drain helper, line 2 of 2",
    ]
    assert "import handover" not in plain and "from handover" not in plain
    unwrapped = draining.replace(added[0] + "\n", "").replace("  # the drain helper, line 2 of 2", "")
    normalise = lambda text: "".join(text.split())  # noqa: E731 - the wrap re-indents the routes
    assert normalise(unwrapped) == normalise(plain.replace("app = Starlette(", "app = drain(Starlette(")
                                             .rstrip() .removesuffix(")") + '),health_path="/healthz",)')
