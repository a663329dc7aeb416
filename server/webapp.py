"""Demo web app served behind nginx: HTTP endpoints, a WebSocket feed and a graceful drain.

Replace it with your own application. What the deploy relies on:

* ``GET /healthz`` answers 200 while the process serves and 503 once it drains;
* on SIGTERM the process tells every WebSocket client to reconnect (close code 1012),
  waits for those sockets to finish, then lets in-flight HTTP requests complete and exits 0.

Configuration comes from environment variables, read and validated at startup:
``APP_VERSION``, ``HOST``, ``PORT``, ``DRAIN_TIMEOUT``, ``DRAIN_SPREAD``, ``TICK_INTERVAL``, ``APP_FAULT``
and ``WS_MAX_MESSAGE``. An empty value counts as unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_HTML = STATIC_DIR / "index.html"

DEFAULT_VERSION = "dev"
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - the app listens inside its container
DEFAULT_PORT = 8000
DEFAULT_DRAIN_TIMEOUT = 10.0
# Reconnect notices go out spread over this long, so the clients do not all land on the new
# server in the same instant (a burst of handshakes would delay its HTTP requests).
DEFAULT_DRAIN_SPREAD = 0.5
DEFAULT_TICK_INTERVAL = 1.0
DEFAULT_WS_MAX_MESSAGE = 64 * 1024
MIN_PORT = 1
MAX_PORT = 65535

SLOW_MIN_SECONDS = 0.0
SLOW_MAX_SECONDS = 30.0

WS_CLOSE_SERVICE_RESTART = 1012
UNIX_SOCKET_MODE = 0o666
LISTEN_BACKLOG = 2048
# uvicorn's websockets protocol: its close() waits for the client's closing handshake, so a
# finished handler means a cleanly closed socket. (uvicorn flags it as deprecated; the
# "websockets-sansio" protocol also works but returns from close() before the client replies.)
WS_IMPLEMENTATION = "websockets"

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_FAULT_CRASH = 3
EXIT_FAULT_EXIT_AFTER = 4
# APP_FAULT=exit-after:<seconds>: serve (and pass health checks) for that long, then die.
FAULT_EXIT_AFTER_MAX_SECONDS = 3600.0

HEADER_SERVER_ID = "X-Server-Id"
HEADER_APP_VERSION = "X-App-Version"
SERVER_ID_BYTES = 4
# ASGI messages that open a response or a WebSocket handshake, and so carry headers.
RESPONSE_START_MESSAGES = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})

log = logging.getLogger("webapp")


class ConfigError(ValueError):
    """An environment variable holds a value the app cannot run with."""


class Fault(enum.StrEnum):
    """Deliberate failure modes, used to exercise deploy rollbacks."""

    NONE = ""
    UNHEALTHY = "unhealthy"
    CRASH = "crash"
    # Written "exit-after:<seconds>": healthy at first, then the process exits with status 4
    # that many seconds after it started (a version that dies right after the switch).
    EXIT_AFTER = "exit-after"


# --------------------------------------------------------------------------- settings


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = _env_value(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _env_seconds(env: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False) -> float:
    raw = _env_value(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "zero or a positive" if allow_zero else "a positive finite"
        raise ConfigError(f"{name} must be {kind} number of seconds, got {raw!r}")
    return value


def _env_fault(env: Mapping[str, str]) -> tuple[Fault, float]:
    """APP_FAULT: the fault and, for ``exit-after:<seconds>``, the seconds (else 0)."""
    raw = _env_value(env, "APP_FAULT")
    if raw is None:
        return Fault.NONE, 0.0
    name, colon, argument = raw.partition(":")
    if name == Fault.EXIT_AFTER.value:
        try:
            seconds = float(argument) if colon else math.nan
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or not 0 < seconds <= FAULT_EXIT_AFTER_MAX_SECONDS:
            raise ConfigError(
                f"APP_FAULT {raw!r}: expected exit-after:<seconds> with seconds above 0 and at most "
                f"{FAULT_EXIT_AFTER_MAX_SECONDS:g}"
            )
        return Fault.EXIT_AFTER, seconds
    plain = {f.value: f for f in Fault if f not in (Fault.NONE, Fault.EXIT_AFTER)}
    fault = plain.get(raw)
    if fault is None:
        allowed = ", ".join(repr(name) for name in plain)
        raise ConfigError(
            f"APP_FAULT {raw!r} is not supported (use {allowed}, 'exit-after:<seconds>' or leave it empty)"
        )
    return fault, 0.0


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; see the module docstring for the variables."""

    version: str = DEFAULT_VERSION
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    drain_spread: float = DEFAULT_DRAIN_SPREAD
    tick_interval: float = DEFAULT_TICK_INTERVAL
    fault: Fault = Fault.NONE
    fault_after: float = 0.0  # seconds, for Fault.EXIT_AFTER
    ws_max_message: int = DEFAULT_WS_MAX_MESSAGE
    # With a directory set, the app also listens on <dir>/app-<hostname>.sock: the deploy points
    # nginx at that socket by an atomic symlink swap (see the README on why no reload is needed).
    unix_socket_dir: str | None = None

    @property
    def unix_socket_path(self) -> str | None:
        if self.unix_socket_dir is None:
            return None
        return os.path.join(self.unix_socket_dir, f"app-{socket.gethostname()}.sock")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; raise ConfigError on a bad value."""
        fault, fault_after = _env_fault(env)
        return cls(
            version=_env_value(env, "APP_VERSION") or DEFAULT_VERSION,
            host=_env_value(env, "HOST") or DEFAULT_HOST,
            port=_env_int(env, "PORT", DEFAULT_PORT, MIN_PORT, MAX_PORT),
            drain_timeout=_env_seconds(env, "DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT),
            drain_spread=_env_seconds(env, "DRAIN_SPREAD", DEFAULT_DRAIN_SPREAD, allow_zero=True),
            tick_interval=_env_seconds(env, "TICK_INTERVAL", DEFAULT_TICK_INTERVAL),
            fault=fault,
            fault_after=fault_after,
            ws_max_message=_env_int(env, "WS_MAX_MESSAGE", DEFAULT_WS_MAX_MESSAGE, 1, sys.maxsize),
            unix_socket_dir=_env_value(env, "UNIX_SOCKET_DIR"),
        )


# --------------------------------------------------------------------------- websocket messages

JsonObject = dict[str, Any]


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(reason: str) -> JsonObject:
    return {"type": "error", "error": reason}


def reply_to_text(text: str, server_id: str) -> JsonObject:
    """The server's answer to one inbound text frame."""
    try:
        message = json.loads(text)
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        return _error("invalid JSON: nested too deeply")
    except ValueError:
        return _error("invalid JSON")
    if not isinstance(message, dict):
        return _error("message must be a JSON object")
    kind = message.get("type")
    if kind == "ping":
        return {"type": "pong"}
    if kind == "msg":
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            return _error("'msg' needs a non-empty string 'id'")
        return {"type": "ack", "id": message_id, "server_id": server_id}
    return _error(f"unknown message type {kind!r}")


class Connection:
    """One accepted WebSocket; serialises sends and remembers when it is closed."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._send_lock = asyncio.Lock()
        self._closed = False
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Connection must be created inside a task")
        self.handler_task: asyncio.Task[Any] = task

    async def send(self, payload: JsonObject) -> bool:
        """Send one JSON message; return False once the socket can no longer be written."""
        async with self._send_lock:
            if self._closed:
                return False
            try:
                await self.websocket.send_json(payload)
            except (WebSocketDisconnect, RuntimeError, OSError):
                # The peer went away, or the socket is already closed on our side.
                self._closed = True
                return False
            return True

    async def close(self, code: int, farewell: JsonObject) -> None:
        """Send a last message, then close with ``code``; no-op if already closed."""
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.websocket.send_json(farewell)
                await self.websocket.close(code)


# --------------------------------------------------------------------------- runtime state


@dataclass
class Hub:
    """Registry of open WebSocket connections and the draining flag."""

    server_id: str
    drain_timeout: float
    drain_spread: float = 0.0
    draining: bool = False
    connections: set[Connection] = field(default_factory=set)
    _closing: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    def reconnect_message(self) -> JsonObject:
        return {"type": "reconnect", "reason": "draining", "server_id": self.server_id}

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)

    def discard(self, connection: Connection) -> None:
        self.connections.discard(connection)

    async def drain(self) -> None:
        """Ask every client to reconnect elsewhere, close with 1012 and wait for the handlers.

        Bounded by ``drain_timeout``. Closes run as their own tasks and are waited for rather
        than cancelled: a WebSocket closing handshake in progress does not give way to
        cancellation. Safe to call more than once.
        """
        self.draining = True
        started = time.monotonic()
        connections = list(self.connections)
        log.info("drain begin: %d open socket(s)", len(connections))
        farewell = self.reconnect_message()
        # Spread the notices, but never over more than half of the drain's time.
        step = min(self.drain_spread, self.drain_timeout / 2) / max(len(connections), 1)
        for index, connection in enumerate(connections):
            if index and step:
                await asyncio.sleep(step)
            self._track(asyncio.create_task(connection.close(WS_CLOSE_SERVICE_RESTART, farewell)))
        unfinished = await self._wait_for_handlers(connections)
        if unfinished:
            log.warning("drain timed out after %.1fs: %d socket(s) still open", self.drain_timeout, unfinished)
        log.info("drain done in %.3fs", time.monotonic() - started)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _wait_for_handlers(self, connections: list[Connection]) -> int:
        """Wait up to ``drain_timeout`` for the handlers to return; give the number still running."""
        current = asyncio.current_task()
        handlers = {c.handler_task for c in connections if c.handler_task is not current}
        if not handlers:
            return 0
        _, pending = await asyncio.wait(handlers, timeout=self.drain_timeout)
        return len(pending)


@dataclass
class Runtime:
    """Per-process identity and shared state, stored on ``app.state.runtime``."""

    settings: Settings
    server_id: str = field(default_factory=lambda: secrets.token_hex(SERVER_ID_BYTES))
    started_at: str = field(default_factory=_utc_now_iso)
    hub: Hub = field(init=False)

    def __post_init__(self) -> None:
        self.hub = Hub(
            server_id=self.server_id,
            drain_timeout=self.settings.drain_timeout,
            drain_spread=self.settings.drain_spread,
        )

    @property
    def draining(self) -> bool:
        return self.hub.draining

    def hello_message(self) -> JsonObject:
        return {
            "type": "hello",
            "server_id": self.server_id,
            "version": self.settings.version,
            "started_at": self.started_at,
        }

    def tick_message(self) -> JsonObject:
        return {"type": "tick", "server_id": self.server_id, "t": time.time()}


def _runtime_of(connection: HTTPConnection) -> Runtime:
    runtime = connection.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


# --------------------------------------------------------------------------- HTTP endpoints


async def index(request: Request) -> Response:
    return FileResponse(INDEX_HTML, media_type="text/html; charset=utf-8")


async def healthz(request: Request) -> Response:
    runtime = _runtime_of(request)
    if runtime.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if runtime.settings.fault is Fault.UNHEALTHY:
        return JSONResponse({"status": "unhealthy", "fault": Fault.UNHEALTHY.value}, status_code=503)
    return JSONResponse({"status": "ok"})


async def info(request: Request) -> Response:
    runtime = _runtime_of(request)
    return JSONResponse(
        {
            "server_id": runtime.server_id,
            "version": runtime.settings.version,
            "started_at": runtime.started_at,
            "draining": runtime.draining,
        }
    )


def _parse_seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not math.isfinite(seconds) or not SLOW_MIN_SECONDS <= seconds <= SLOW_MAX_SECONDS:
        return None
    return seconds


async def slow(request: Request) -> Response:
    seconds = _parse_seconds(request.query_params.get("seconds"))
    if seconds is None:
        return JSONResponse(
            {"error": f"'seconds' must be a number from {SLOW_MIN_SECONDS:g} to {SLOW_MAX_SECONDS:g}"},
            status_code=400,
        )
    runtime = _runtime_of(request)
    await asyncio.sleep(seconds)
    return JSONResponse({"server_id": runtime.server_id, "slept": seconds})


# --------------------------------------------------------------------------- WebSocket endpoint


async def _tick_loop(connection: Connection, runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(runtime.settings.tick_interval)
        if not await connection.send(runtime.tick_message()):
            return


async def _receive_loop(connection: Connection, runtime: Runtime) -> None:
    while True:
        message = await connection.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            reply = _error("binary frames are not supported; send JSON text frames")
        else:
            reply = reply_to_text(text, runtime.server_id)
        await connection.send(reply)


async def websocket_feed(websocket: WebSocket) -> None:
    runtime = _runtime_of(websocket)
    hub = runtime.hub
    await websocket.accept()
    connection = Connection(websocket)
    if hub.draining:
        await connection.close(WS_CLOSE_SERVICE_RESTART, hub.reconnect_message())
        return
    hub.add(connection)
    ticker: asyncio.Task[None] | None = None
    try:
        await connection.send(runtime.hello_message())
        ticker = asyncio.create_task(_tick_loop(connection, runtime))
        await _receive_loop(connection, runtime)
    finally:
        hub.discard(connection)
        if ticker is not None:
            ticker.cancel()
            await asyncio.wait({ticker})


# --------------------------------------------------------------------------- application


class ServerHeadersMiddleware:
    """Pure ASGI middleware adding identity headers to every HTTP response and WebSocket handshake."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.raw_headers = [(name.lower().encode("latin-1"), v.encode("latin-1")) for name, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in RESPONSE_START_MESSAGES:
                message["headers"] = [*message.get("headers", []), *self.raw_headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class WebApp(Starlette):
    """Starlette app whose identity headers wrap even the built-in 500 handler."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(
            routes=[
                Route("/", index, methods=["GET"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/api/info", info, methods=["GET"]),
                Route("/api/slow", slow, methods=["GET"]),
                WebSocketRoute("/ws", websocket_feed),
            ]
        )
        self.state.runtime = runtime
        self.runtime = runtime

    def build_middleware_stack(self) -> ASGIApp:
        headers = {
            HEADER_SERVER_ID: self.runtime.server_id,
            HEADER_APP_VERSION: self.runtime.settings.version,
        }
        return ServerHeadersMiddleware(super().build_middleware_stack(), headers)


def create_app(settings: Settings) -> WebApp:
    return WebApp(Runtime(settings))


def __getattr__(name: str) -> WebApp:
    """Build ``app`` from the environment on first use (e.g. ``uvicorn webapp:app``).

    Importing the module never fails on bad configuration; reading ``app`` does.
    """
    if name == "app":
        application = create_app(Settings.from_env(os.environ))
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- process & signals


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    """Placeholder handler: the signal was already handled by a full graceful shutdown."""


class DrainingServer(uvicorn.Server):
    """uvicorn server that drains WebSockets before its own graceful shutdown.

    uvicorn closes WebSockets with 1012 before the lifespan shutdown runs, which would
    cut the app's goodbye message. So the first SIGTERM/SIGINT only starts the drain; the
    base handler (stop accepting, finish in-flight HTTP requests) runs once it is done.
    A second signal skips the rest of the drain, a third forces the exit.
    """

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self.signals_received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None  # strong reference while it runs

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # After serving, uvicorn re-raises the signals it captured against the handlers it
        # found. We have shut down gracefully by then, so make that re-delivery a no-op and
        # let main() finish with status 0; the previous handlers are restored afterwards.
        previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with super().capture_signals():
                yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received == 1 and self.started and self._loop is not None:
            self.hub.draining = True
            self._loop.call_soon_threadsafe(self._start_drain, sig, frame)
            return
        if self.signals_received > 2:
            self.force_exit = True
        super().handle_exit(sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        self._drain_task = asyncio.create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        await self.hub.drain()
        if not self.should_exit:
            super().handle_exit(sig, frame)


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s webapp %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def build_server(runtime: Runtime, app: ASGIApp) -> DrainingServer:
    settings = runtime.settings
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=WS_IMPLEMENTATION,
        ws_max_size=settings.ws_max_message,
        # uvicorn takes whole seconds; rounding up keeps the HTTP phase under drain_timeout + 1s.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips="*",
        access_log=False,
    )
    return DrainingServer(config, runtime.hub)


def bind_sockets(settings: Settings) -> list[socket.socket]:
    """The TCP socket (health checks, direct use) and, if configured, the unix socket for nginx."""
    tcp = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((settings.host, settings.port))
    sockets = [tcp]
    path = settings.unix_socket_path
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of an earlier process with the same hostname
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(path)
        os.chmod(path, UNIX_SOCKET_MODE)  # nginx's workers run as another user
        sockets.append(unix)
    for sock in sockets:
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        sock.set_inheritable(True)
    return sockets


def _exit_later(seconds: float) -> None:
    """APP_FAULT=exit-after: end the process abruptly (no drain) ``seconds`` from now."""

    def die() -> None:
        log.error("APP_FAULT=exit-after:%g: exiting with status %d", seconds, EXIT_FAULT_EXIT_AFTER)
        os._exit(EXIT_FAULT_EXIT_AFTER)

    timer = threading.Timer(seconds, die)
    timer.daemon = True
    timer.start()


def main() -> None:
    configure_logging()
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        sys.exit(EXIT_CONFIG_ERROR)
    if settings.fault is Fault.CRASH:
        log.error("APP_FAULT=crash: exiting with status %d before serving", EXIT_FAULT_CRASH)
        sys.exit(EXIT_FAULT_CRASH)
    if settings.fault is Fault.EXIT_AFTER:
        _exit_later(settings.fault_after)
    runtime = Runtime(settings)
    server = build_server(runtime, WebApp(runtime))
    log.info(
        "start: server_id=%s version=%s listen=%s:%d%s pid=%d",
        runtime.server_id,
        settings.version,
        settings.host,
        settings.port,
        f" and {settings.unix_socket_path}" if settings.unix_socket_path else "",
        os.getpid(),
    )
    sockets = bind_sockets(settings)
    try:
        server.run(sockets=sockets)
    finally:
        if settings.unix_socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(settings.unix_socket_path)
    log.info("exit: server_id=%s status=%d", runtime.server_id, EXIT_OK)


if __name__ == "__main__":
    main()
