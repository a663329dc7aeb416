"""Graceful drain for any ASGI app (Starlette, FastAPI, ...): handover's drain contract in two lines.

A zero-downtime deploy moves traffic to the new version, then stops the old one with SIGTERM. What
the clients of the old process see then is up to the app. On its own, uvicorn stops listening,
cuts every WebSocket with close code 1012 at once (no chance for a goodbye) and waits for in-flight
HTTP requests without a bound. Wrapped by this module, the app instead, on the first SIGTERM
(or SIGINT):

1. marks itself draining (``app.drain.draining``; a configured ``health_path`` answers 503);
2. sends every open WebSocket a JSON notice, ``{"type": "reconnect", "reason": "draining"}`` by
   default, then closes it with code 1012 (Service Restart: reconnect at once), spreading the
   notices over ``spread`` seconds (never more than half of ``timeout``); a WebSocket that
   connects meanwhile gets the same notice and close right after its handshake, or, with
   ``refuse_new_sockets`` (``DRAIN_REFUSE_NEW_SOCKETS=1``), an HTTP 503 instead of the handshake,
   which a proxy can retry on another instance (nginx: ``proxy_next_upstream ... http_503``);
3. waits up to ``timeout`` seconds for the WebSocket handlers to return;
4. hands the signal to the server (uvicorn: stop listening, finish in-flight HTTP requests, run
   the lifespan shutdown, exit), and cancels whatever request still runs ``timeout`` seconds later.

So the whole stop takes at most about ``2 * timeout + spread`` seconds; give the container a
longer stop grace period. ``timeout`` and ``spread`` default to the ``DRAIN_TIMEOUT`` and
``DRAIN_SPREAD`` environment variables, else 10 s and 1 s. A second signal skips the rest of the
WebSocket phase; a third also stops waiting for HTTP requests.

Refusing a new WebSocket matters where a proxy may still route to a draining instance for a moment:
in a Swarm stack nginx follows Swarm's DNS, which can lag behind the stop signal on a loaded node.
An accepted socket whose first frame is the reconnect notice sends the client round again, maybe to
the same instance; a 503 before the accept lets the proxy try the next instance at once, so the
client never sees the draining one. The refusal needs the server to offer ASGI's
``websocket.http.response`` extension (uvicorn does); without it the notice and close stay. Plain
HTTP requests are served as always: what reaches a draining process is finished, not refused.

Usage, with ``uvicorn module:app`` as usual::

    from handover_asgi import drain   # this file copied beside the app; in a checkout: handover.asgi
    app = drain(app)

This file imports nothing from the rest of handover and nothing outside the standard library
(uvicorn only inside ``server``/``run``), so an app image can carry it alone: copy it next to the
app as ``handover_asgi.py``. It works with uvicorn (the CLI, ``uvicorn.run`` and ``run`` below):
on the first request, usually the lifespan startup, it wraps the SIGTERM/SIGINT handlers uvicorn
installed, so the drain runs *before* uvicorn's own shutdown. A server that installs no handler
of its own (``SIG_DFL``) gets the drain followed by the signal's default action; with any other
server, call ``await app.drain.drain()`` from its shutdown hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, MutableMapping
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
SignalHandler = Callable[[int, FrameType | None], Any]
SignalWork = Callable[[int, FrameType | None], Coroutine[Any, Any, None]]

# Close code of a server that goes away for a restart: the client should reconnect at once.
WS_CLOSE_SERVICE_RESTART = 1012
DEFAULT_TIMEOUT = 10.0
DEFAULT_SPREAD = 1.0  # 100 reconnects over 1 s: deploy-window p99 1.40x steady, over 0.5 s 1.57x (BENCHMARK.md)
TIMEOUT_ENV = "DRAIN_TIMEOUT"
SPREAD_ENV = "DRAIN_SPREAD"
REFUSE_ENV = "DRAIN_REFUSE_NEW_SOCKETS"
REFUSAL_STATUS = 503
REFUSAL_BODY = b'{"status":"draining"}'
DEFAULT_NOTICE: Mapping[str, Any] = {"type": "reconnect", "reason": "draining"}
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Through uvicorn's own error logger, so ``uvicorn module:app`` shows the drain with its own lines.
log = logging.getLogger("uvicorn.error.drain")


class SocketDrained(OSError):
    """The app wrote to a WebSocket the drain has closed (uvicorn raises an OSError alike)."""


def _seconds(name: str, value: float | None, env_name: str, default: float, *, allow_zero: bool) -> float:
    """``value``, else the environment variable, else ``default``; ValueError naming a bad one."""
    source = repr(value)
    if value is None:
        raw = os.environ.get(env_name, "").strip()
        if not raw:
            return default
        source = f"{env_name}={raw!r}"
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"drain {name} must be a number of seconds, got {source}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "zero or a positive" if allow_zero else "a positive"
        raise ValueError(f"drain {name} must be {kind} finite number of seconds, got {source}")
    return value


def _flag(name: str, value: bool | None, env_name: str) -> bool:
    """``value``, else the environment variable (1/true/yes/on or 0/false/no/off, empty: off);
    ValueError naming a bad one."""
    if value is not None:
        return value
    raw = os.environ.get(env_name, "").strip()
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"drain {name} must be 1 or 0 (true/false, yes/no, on/off), got {env_name}={raw!r}")


def _draining_response() -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of a 503 answered while draining (the health path, a refused WebSocket)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(REFUSAL_BODY)).encode())]
    return headers, REFUSAL_BODY


class _Socket:
    """One WebSocket between the server and the app: its sends, serialised with the drain's close."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = asyncio.Lock()
        self.accepted = False
        self.closed = False
        self.close_on_accept: str | None = None  # the notice, when the drain came before the accept
        task = asyncio.current_task()
        assert task is not None, "ASGI apps run inside a task"
        self.task: asyncio.Task[Any] = task  # to cancel it when it outlives the bound
        self.finished = asyncio.Event()  # the app's handler returned (its task may go on: a test client's)

    async def send(self, message: Message) -> None:
        """The app's ``send``: passed through until the drain closed the socket, then refused."""
        kind = message["type"]
        async with self._lock:
            if self.closed:
                if kind == "websocket.close":
                    return  # the app's own close after ours: already done
                raise SocketDrained("the WebSocket was closed by the drain")
            if kind == "websocket.close" or kind == "websocket.http.response.start":
                self.closed = True
            await self._send(message)
            if kind == "websocket.accept":
                self.accepted = True
                if self.close_on_accept is not None:
                    await self._farewell(self.close_on_accept)

    async def close(self, notice: str | None) -> None:
        """Send the notice and close with 1012 (after the accept if it has not come yet)."""
        async with self._lock:
            if self.closed:
                return
            if not self.accepted:
                self.close_on_accept = notice if notice is not None else ""
                return
            await self._farewell(notice)

    async def _farewell(self, notice: str | None) -> None:
        self.closed = True
        with contextlib.suppress(Exception):  # the peer may be gone: then there is nobody to tell
            if notice:
                await self._send({"type": "websocket.send", "text": notice})
            await self._send({"type": "websocket.close", "code": WS_CLOSE_SERVICE_RESTART, "reason": ""})


class Drain:
    """The drain of one process: the open WebSockets and requests, and what happens on SIGTERM."""

    def __init__(
        self,
        *,
        timeout: float | None = None,
        spread: float | None = None,
        notice: Mapping[str, Any] | None = DEFAULT_NOTICE,
        health_path: str | None = None,
        signals: bool = True,
        refuse_new_sockets: bool | None = None,
    ) -> None:
        self.timeout = _seconds("timeout", timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT, allow_zero=False)
        self.spread = _seconds("spread", spread, SPREAD_ENV, DEFAULT_SPREAD, allow_zero=True)
        self.refuse_new_sockets = _flag("refuse_new_sockets", refuse_new_sockets, REFUSE_ENV)
        self.notice = None if notice is None else json.dumps(dict(notice))
        self.health_path = health_path
        self.signals = signals
        self.draining = False
        self.sockets: set[_Socket] = set()
        self.requests: set[asyncio.Task[Any]] = set()
        self._watching = False
        self._signals_received = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while they run
        self._previous: dict[int, SignalHandler | int | None] = {}

    def wrap(self, app: ASGIApp) -> DrainingApp:
        return DrainingApp(app, self)

    # ------------------------------------------------------------------ the drain itself

    async def drain(self) -> None:
        """Tell every WebSocket client to reconnect, close with 1012, wait for the handlers.

        Bounded by ``timeout`` after the notices went out. Safe to call more than once.
        """
        self.draining = True
        sockets = list(self.sockets)
        log.info("drain begin: %d open socket(s)", len(sockets))
        started = time.monotonic()
        step = min(self.spread, self.timeout / 2) / max(len(sockets), 1)
        for index, sock in enumerate(sockets):
            if index and step:
                await asyncio.sleep(step)
            # A close in progress does not give way to cancellation; run it as its own task.
            self._track(asyncio.create_task(sock.close(self.notice)))
        current = asyncio.current_task()
        running = [sock for sock in sockets if sock.task is not current and not sock.task.done()]
        waiting = {asyncio.create_task(sock.finished.wait()) for sock in running}
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=self.timeout)
            for waiter in pending:
                waiter.cancel()
            if pending:
                log.warning("drain timed out after %.1fs: %d socket(s) still open", self.timeout, len(pending))
        log.info("drain done in %.3fs", time.monotonic() - started)

    async def finish_requests(self) -> None:
        """Wait up to ``timeout`` for the requests and sockets still running, then cancel them."""
        running = {*self.requests, *(sock.task for sock in self.sockets)} - {asyncio.current_task()}
        running = {task for task in running if not task.done()}
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self.timeout)
        if pending:
            log.warning("cancelling %d request(s) still running %.1fs after the drain", len(pending), self.timeout)
            for task in pending:
                task.cancel()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ signals

    def watch_signals(self) -> None:
        """Put the drain in front of the SIGTERM/SIGINT handlers the server installed (main thread only)."""
        if self._watching or not self.signals or threading.current_thread() is not threading.main_thread():
            return
        self._watching = True
        loop = asyncio.get_running_loop()
        for sig in DRAIN_SIGNALS:
            previous = signal.getsignal(sig)
            if previous in (signal.SIG_IGN, signal.default_int_handler):
                continue  # nobody stops on it, or Python's own KeyboardInterrupt: leave it be
            self._previous[sig] = previous
            signal.signal(sig, self._signal_handler(loop))

    def _signal_handler(self, loop: asyncio.AbstractEventLoop) -> SignalHandler:
        def handle(sig: int, frame: FrameType | None) -> None:
            self._signals_received += 1
            if self._signals_received == 1:
                self.draining = True
                log.info("signal %d: draining before the server stops", sig)
                loop.call_soon_threadsafe(self._start, sig, frame, self._drain_then_stop)
            elif self._signals_received == 2:
                loop.call_soon_threadsafe(self._stop_server, sig, frame)  # skip the rest of the WebSocket phase
            else:
                loop.call_soon_threadsafe(self._stop_server, sig, frame)
                loop.call_soon_threadsafe(self._start, sig, frame, self._cancel_requests)

        return handle

    def _start(self, sig: int, frame: FrameType | None, work: SignalWork) -> None:
        self._track(asyncio.create_task(work(sig, frame)))

    async def _drain_then_stop(self, sig: int, frame: FrameType | None) -> None:
        await self.drain()
        if self._signals_received == 1:
            self._stop_server(sig, frame)
        await self.finish_requests()

    async def _cancel_requests(self, sig: int, frame: FrameType | None) -> None:
        for task in {*self.requests, *(sock.task for sock in self.sockets)}:
            task.cancel()

    def _stop_server(self, sig: int, frame: FrameType | None) -> None:
        """Hand the signal to the handler that was there before ours (uvicorn's graceful shutdown)."""
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)
        else:  # SIG_DFL (or a handler not set from Python): let the signal do what it did
            self._track(asyncio.create_task(self._default_action(sig)))

    async def _default_action(self, sig: int) -> None:
        await self.finish_requests()
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)


class DrainingApp:
    """The app wrapped: ASGI in, the same app out, with its WebSockets and requests tracked."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.drain.watch_signals()
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = self.drain
        if drain.draining and drain.health_path is not None and scope.get("path") == drain.health_path:
            headers, body = _draining_response()
            await send({"type": "http.response.start", "status": REFUSAL_STATUS, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        task = asyncio.current_task()
        assert task is not None, "ASGI apps run inside a task"
        drain.requests.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            drain.requests.discard(task)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = self.drain
        if drain.draining:
            # Too late for this process: refuse the handshake (a proxy retries elsewhere), or accept,
            # tell the client where to go, close.
            message = await receive()
            if message["type"] != "websocket.connect":
                return
            if drain.refuse_new_sockets and "websocket.http.response" in (scope.get("extensions") or {}):
                headers, body = _draining_response()
                await send({"type": "websocket.http.response.start", "status": REFUSAL_STATUS, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": body})
                log.info("draining: refused a new WebSocket with %d", REFUSAL_STATUS)
                return
            refused = _Socket(send)
            await refused.send({"type": "websocket.accept"})
            await refused.close(drain.notice)
            return
        sock = _Socket(send)
        drain.sockets.add(sock)
        try:
            await self.app(scope, receive, sock.send)
        finally:
            drain.sockets.discard(sock)
            sock.finished.set()


def drain(
    app: ASGIApp,
    *,
    timeout: float | None = None,
    spread: float | None = None,
    notice: Mapping[str, Any] | None = DEFAULT_NOTICE,
    health_path: str | None = None,
    refuse_new_sockets: bool | None = None,
) -> DrainingApp:
    """Wrap ``app`` so that SIGTERM drains it (see the module docstring); ``app.drain`` is its state."""
    return Drain(timeout=timeout, spread=spread, notice=notice, health_path=health_path,
                 refuse_new_sockets=refuse_new_sockets).wrap(app)


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    """Stands in for a signal's handler once a graceful shutdown has dealt with that signal."""


def server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that exits 0 after a graceful SIGTERM instead of re-raising the signal."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # After serving, uvicorn re-raises the signals it captured against the handlers it
            # found; the process has shut down gracefully by then, so make that a no-op.
            previous = {sig: signal.signal(sig, _ignore_signal) for sig in DRAIN_SIGNALS}
            try:
                with super().capture_signals():
                    yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def run(app: ASGIApp, **config: Any) -> None:
    """Serve ``app`` (wrapped by ``drain`` if it is not yet) with uvicorn; ``config`` as for ``uvicorn.run``."""
    import uvicorn

    if not isinstance(app, DrainingApp):
        app = drain(app)
    server(uvicorn.Config(app, **config)).run()
