"""One WebSocket client behaving like the browser page: id'd messages, acks, reconnects, resends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .backoff import backoff_delay
from .windows import Clock
from .ws_stats import ABNORMAL_CLOSURE, NORMAL_CLOSURE, RECONNECT_CLOSE_CODES, WsStats

OPEN_TIMEOUT_SECONDS = 5.0
HELLO_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0
PING_INTERVAL_SECONDS = 10.0
PING_TIMEOUT_SECONDS = 10.0
MAX_ERROR_SAMPLES = 20

KIND_CONNECT_FAILED = "connect_failed"
KIND_HANDSHAKE_FAILED = "handshake_failed"
KIND_HELLO_TIMEOUT = "hello_timeout"
KIND_PROTOCOL_ERROR = "protocol_error"


def close_kind(code: int) -> str:
    return f"close_{code}"


@dataclass(frozen=True)
class SessionEnd:
    """How one connection ended: expected (reconnect at once) or abnormal (kind says why)."""

    abnormal_kind: str | None
    had_hello: bool
    detail: str = ""


class WsClient:
    def __init__(
        self, name: str, url: str, interval: float, stats: WsStats, rng: random.Random, clock: Clock = time.monotonic,
        *, tls: ssl.SSLContext | None = None, connect_to: tuple[str, int] | None = None,
    ) -> None:
        self.name = name
        self._tls = tls  # the verifying context for wss:// (None: the library's default)
        self._url = url
        # host and port to connect to when the URL's authority is only the Host header (a front proxy)
        self._address = {"host": connect_to[0], "port": connect_to[1]} if connect_to else {}
        self._interval = interval
        self._stats = stats
        self._rng = rng
        self._clock = clock
        self._seq = 0
        self._unacked: dict[str, int] = {}  # message id -> transmissions so far
        self._acked: set[str] = set()
        self._live: ClientConnection | None = None  # set once the hello came and the backlog was re-sent
        self._current: ClientConnection | None = None
        self._disconnected_at: float | None = None
        self._sending = True
        self._closing = False
        self._wake = asyncio.Event()
        self._closers: set[asyncio.Task[None]] = set()
        self.first_hello = asyncio.Event()

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def unacked_ids(self) -> list[str]:
        return list(self._unacked)

    async def run(self) -> None:
        producer = asyncio.get_running_loop().create_task(self._produce())
        try:
            await self._connect_loop()
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    def stop_sending(self) -> None:
        self._sending = False

    async def close(self) -> None:
        """Stop reconnecting and close the current connection normally."""
        self._closing = True
        self._wake.set()
        connection = self._current
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close(NORMAL_CLOSURE)
        if self._closers:
            await asyncio.wait(set(self._closers), timeout=CLOSE_TIMEOUT_SECONDS * 2)

    async def _connect_loop(self) -> None:
        failures = 0
        while not self._closing:
            end = await self._session()
            self._record(end)
            if self._closing:
                break
            if end.abnormal_kind is None and end.had_hello:
                failures = 0
                continue
            delay = backoff_delay(failures, self._rng)
            failures += 1
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _session(self) -> SessionEnd:
        options: dict[str, Any] = {"ssl": self._tls} if self._tls is not None else {}
        try:
            connection = await connect(
                self._url,
                **options,
                open_timeout=OPEN_TIMEOUT_SECONDS,
                close_timeout=CLOSE_TIMEOUT_SECONDS,
                ping_interval=PING_INTERVAL_SECONDS,
                ping_timeout=PING_TIMEOUT_SECONDS,
                compression=None,
                proxy=None,
                max_queue=None,
                **self._address,  # type: ignore[arg-type]
            )
        except InvalidHandshake as exc:
            return SessionEnd(KIND_HANDSHAKE_FAILED, False, str(exc))
        except (OSError, TimeoutError) as exc:
            return SessionEnd(KIND_CONNECT_FAILED, False, f"{type(exc).__name__}: {exc}")
        self._current = connection
        try:
            return await self._converse(connection)
        finally:
            self._current = None

    async def _converse(self, connection: ClientConnection) -> SessionEnd:
        had_hello = False
        notice = False
        problem: tuple[str, str] | None = None
        try:
            server_id = _hello_server_id(await asyncio.wait_for(connection.recv(), HELLO_TIMEOUT_SECONDS))
            had_hello = True
            self._on_hello(server_id)
            await self._flush(connection)
            self._live = connection
            notice = await self._receive(connection)
        except ConnectionClosed:
            pass
        except TimeoutError:
            problem = (KIND_HELLO_TIMEOUT, f"no hello within {HELLO_TIMEOUT_SECONDS} s")
        except ValueError as exc:
            problem = (KIND_PROTOCOL_ERROR, str(exc))
        self._live = None
        if had_hello:
            self._disconnected_at = self._clock()
        if notice and not self._closing:
            # Like the page: reconnect at once, finish closing the old socket in the background.
            closer = asyncio.get_running_loop().create_task(self._finish_in_background(connection))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
            return SessionEnd(None, had_hello)
        return await self._finish(connection, notice or self._closing, problem, had_hello)

    async def _finish_in_background(self, connection: ClientConnection) -> None:
        self._record(await self._finish(connection, True, None, True))

    async def _finish(
        self, connection: ClientConnection, we_closed: bool, problem: tuple[str, str] | None, had_hello: bool
    ) -> SessionEnd:
        """Close (normally, if it is our turn), wait for the close to complete, and classify it."""
        if we_closed or problem is not None:
            with contextlib.suppress(Exception):
                await connection.close(NORMAL_CLOSURE)
        await connection.wait_closed()
        code = connection.close_code
        code = ABNORMAL_CLOSURE if code is None else code
        self._stats.close_codes[code] += 1
        if problem is not None:
            return SessionEnd(problem[0], had_hello, problem[1])
        if code in RECONNECT_CLOSE_CODES or (code == NORMAL_CLOSURE and we_closed):
            return SessionEnd(None, had_hello)
        return SessionEnd(close_kind(code), had_hello, str(connection.close_reason or ""))

    def _record(self, end: SessionEnd) -> None:
        if end.abnormal_kind is not None:
            self._stats.abnormal_closes[end.abnormal_kind] += 1
            self._stats.sample_error(f"{self.name}: {end.abnormal_kind} {end.detail}".strip(), MAX_ERROR_SAMPLES)

    def _on_hello(self, server_id: str) -> None:
        now = self._clock()
        self._stats.connects += 1
        self._stats.server_ids[server_id] += 1
        if self.first_hello.is_set():
            self._stats.reconnects += 1
            if self._disconnected_at is not None:
                self._stats.reconnect_gaps.append(now - self._disconnected_at)
        self._disconnected_at = None
        self.first_hello.set()

    async def _flush(self, connection: ClientConnection) -> None:
        """Re-send every unacked message, including ones queued while disconnected."""
        flushed: set[str] = set()
        while pending := [message_id for message_id in self._unacked if message_id not in flushed]:
            for message_id in pending:
                flushed.add(message_id)
                await self._transmit(connection, message_id)

    async def _transmit(self, connection: ClientConnection, message_id: str) -> None:
        transmissions = self._unacked.get(message_id)
        if transmissions is None:
            return
        self._unacked[message_id] = transmissions + 1
        if transmissions:
            self._stats.messages_resent += 1
        await connection.send(json.dumps({"type": "msg", "id": message_id, "body": {"client": self.name}}))

    async def _receive(self, connection: ClientConnection) -> bool:
        """Handle frames until the connection closes (False) or the server asks to reconnect (True)."""
        async for raw in connection:
            frame = _parse(raw)
            kind = frame.get("type")
            if kind == "ack":
                self._on_ack(frame.get("id"))
            elif kind == "reconnect":
                self._stats.drain_notices += 1
                return True
        return False

    def _on_ack(self, message_id: object) -> None:
        if not isinstance(message_id, str):
            raise ValueError(f"ack without a string id: {message_id!r}")
        if self._unacked.pop(message_id, None) is not None:
            self._acked.add(message_id)
            self._stats.messages_acked += 1
        elif message_id in self._acked:
            self._stats.duplicate_acks += 1
        else:
            self._stats.unknown_acks += 1

    async def _produce(self) -> None:
        await asyncio.sleep(self._rng.uniform(0, self._interval))  # spread clients over the interval
        start = self._clock()
        tick = 0
        while self._sending and not self._closing:
            self._seq += 1
            message_id = f"{self.name}-{self._seq}"
            self._unacked[message_id] = 0
            self._stats.messages_sent += 1
            connection = self._live
            if connection is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self._transmit(connection, message_id)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * self._interval - self._clock()))


def _parse(raw: str | bytes) -> dict[str, object]:
    try:
        frame = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"frame is not JSON: {raw!r:.200}") from exc
    if not isinstance(frame, dict):
        raise ValueError(f"frame is not a JSON object: {raw!r:.200}")
    return frame


def _hello_server_id(raw: str | bytes) -> str:
    frame = _parse(raw)
    server_id = frame.get("server_id")
    if frame.get("type") != "hello" or not isinstance(server_id, str):
        raise ValueError(f"first frame is not a hello: {raw!r:.200}")
    return server_id
