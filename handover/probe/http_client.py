"""Keep-alive HTTP/1.1 client connections (h11 over asyncio streams) and a bounded pool of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import h11

from .settings import tls_context

READ_CHUNK_BYTES = 65536
CONNECT_TIMEOUT_SECONDS = 5.0
CLOSE_WAIT_SECONDS = 1.0
# Idle connections older than this are not reused: below common server keep-alive timeouts
# (uvicorn 5 s, nginx 75 s) so an ordinary idle expiry is never mistaken for a deploy fault.
IDLE_MAX_AGE_SECONDS = 4.0
SERVER_ID_HEADER = b"x-server-id"
USER_AGENT = "handover-probe/1"
DEFAULT_PORTS = {"http": 80, "https": 443}

Clock = Callable[[], float]
SentCallback = Callable[[float], None]


class HttpFailureKind(StrEnum):
    HTTP_STATUS = "http_status"
    CONNECT_ERROR = "connect_error"
    RESET = "reset"
    STALE_KEEPALIVE = "stale_keepalive"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"


class HttpFailure(Exception):
    def __init__(self, kind: HttpFailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class HttpTarget:
    host: str
    port: int
    tls: bool
    host_header: str
    ca_file: str = ""  # extra CA certificates for https (see ProbeSettings.ca_file)

    @classmethod
    def from_url(cls, base_url: str, ca_file: str = "", host_header: str = "") -> HttpTarget:
        parts = urlsplit(base_url)
        if parts.hostname is None:
            raise ValueError(f"no host in {base_url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            tls=parts.scheme == "https",
            host_header=host_header or parts.netloc,
            ca_file=ca_file,
        )


@dataclass(frozen=True)
class HttpResponse:
    status: int
    server_id: str | None


class HttpConnection:
    """One persistent connection; serves requests one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, clock: Clock) -> None:
        self._reader = reader
        self._writer = writer
        self._clock = clock
        self._h11 = h11.Connection(h11.CLIENT)
        self.exchanges = 0
        self._response_bytes = 0
        self.idle_since = clock()

    @classmethod
    async def open(cls, target: HttpTarget, clock: Clock) -> HttpConnection:
        tls = tls_context(target.ca_file) if target.tls else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, ssl=tls), CONNECT_TIMEOUT_SECONDS
            )
        except TimeoutError as exc:
            raise HttpFailure(HttpFailureKind.CONNECT_ERROR, "connect timed out") from exc
        except OSError as exc:
            raise HttpFailure(HttpFailureKind.CONNECT_ERROR, f"{type(exc).__name__}: {exc}") from exc
        return cls(reader, writer, clock)

    def reusable(self, now: float) -> bool:
        """Both sides idle, the server has not closed, and not idle for too long."""
        return (
            self._h11.our_state is h11.IDLE
            and self._h11.their_state is h11.IDLE
            and not self._reader.at_eof()
            and not self._writer.is_closing()
            and now - self.idle_since < IDLE_MAX_AGE_SECONDS
        )

    def _lost(self, got_response_bytes: bool, detail: str) -> HttpFailure:
        if not got_response_bytes and self.exchanges > 0:
            return HttpFailure(HttpFailureKind.STALE_KEEPALIVE, f"reused connection closed: {detail}")
        return HttpFailure(HttpFailureKind.RESET, detail)

    async def get(self, target: HttpTarget, path: str, on_sent: SentCallback) -> HttpResponse:
        request = h11.Request(
            method="GET",
            target=path,
            headers=[("Host", target.host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*")],
        )
        self._response_bytes = 0
        try:
            payload = self._h11.send(request) + self._h11.send(h11.EndOfMessage())
            self._writer.write(payload)
            await self._writer.drain()
            on_sent(self._clock())
            response = await self._read_response()
        except _PeerClosed:
            raise self._lost(self._response_bytes > 0, "connection closed by peer") from None
        except OSError as exc:
            raise self._lost(self._response_bytes > 0, f"{type(exc).__name__}: {exc}") from exc
        except h11.ProtocolError as exc:
            raise HttpFailure(HttpFailureKind.PROTOCOL_ERROR, str(exc)) from exc
        self.exchanges += 1
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self.idle_since = self._clock()
        return response

    async def _read_response(self) -> HttpResponse:
        status: int | None = None
        server_id: str | None = None
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                chunk = await self._reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    self._h11.receive_data(b"")
                    try:
                        event = self._h11.next_event()
                    except h11.RemoteProtocolError:
                        raise _PeerClosed from None
                    if not isinstance(event, h11.EndOfMessage) or status is None:
                        raise _PeerClosed
                    return HttpResponse(status=status, server_id=server_id)
                self._response_bytes += len(chunk)
                self._h11.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name == SERVER_ID_HEADER:
                        server_id = value.decode("latin-1")
            elif isinstance(event, h11.EndOfMessage):
                if status is None:
                    raise h11.RemoteProtocolError("message ended without a response")
                return HttpResponse(status=status, server_id=server_id)
            elif isinstance(event, h11.ConnectionClosed):
                raise _PeerClosed
            # InformationalResponse and Data need no action.

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), CLOSE_WAIT_SECONDS)


class _PeerClosed(Exception):
    """The server closed the connection before a complete response."""


class ConnectionPool:
    """At most max_connections connections; idle ones are reused newest-first, new ones opened on demand."""

    def __init__(self, target: HttpTarget, max_connections: int, clock: Clock = time.monotonic) -> None:
        self._target = target
        self._clock = clock
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[HttpConnection] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.peak_in_use = 0
        self._in_use = 0

    async def get(self, path: str, on_sent: SentCallback) -> HttpResponse:
        async with self._slots:
            self._in_use += 1
            self.peak_in_use = max(self.peak_in_use, self._in_use)
            try:
                return await self._get_with_slot(path, on_sent)
            finally:
                self._in_use -= 1

    async def _get_with_slot(self, path: str, on_sent: SentCallback) -> HttpResponse:
        connection = self._take_idle()
        if connection is None:
            connection = await HttpConnection.open(self._target, self._clock)
            self.opened += 1
        try:
            response = await connection.get(self._target, path, on_sent)
        except BaseException:
            self._discard(connection)
            raise
        if connection.reusable(self._clock()):
            self._idle.append(connection)
        else:
            self._discard(connection)
        return response

    def _take_idle(self) -> HttpConnection | None:
        now = self._clock()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable(now):
                return connection
            self._discard(connection)
        return None

    def _discard(self, connection: HttpConnection) -> None:
        task = asyncio.get_running_loop().create_task(connection.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_WAIT_SECONDS * 2)
