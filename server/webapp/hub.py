"""The open WebSocket connections of this process, and the drain that closes them all.

Draining is the app's half of a zero-downtime deploy: every client is told to reconnect (to the
new version, which nginx already points at) and the sockets are closed cleanly with 1012.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .protocol import WS_CLOSE_SERVICE_RESTART, JsonObject

log = logging.getLogger(__name__)


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
