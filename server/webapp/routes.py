"""The app's HTTP endpoints and its WebSocket feed, and the table that routes requests to them.

``GET /healthz`` is the deploy's contract: 200 while the process serves, 503 once it drains.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .faults import Fault
from .protocol import JsonObject, error_message, reply_to_text
from .runtime import Runtime, runtime_of

# The page sits beside the package (server/static/, /app/static/ in the image).
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX_HTML = STATIC_DIR / "index.html"

SLOW_MIN_SECONDS = 0.0
SLOW_MAX_SECONDS = 30.0


class Connection:
    """One accepted WebSocket; serialises the ticks with the replies and remembers when it is closed.

    Once the drain has closed the socket (see handover_asgi), a send fails and the loops end.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._send_lock = asyncio.Lock()
        self._closed = False

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


async def index(request: Request) -> Response:
    return FileResponse(INDEX_HTML, media_type="text/html; charset=utf-8")


async def healthz(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if runtime.settings.fault is Fault.UNHEALTHY:
        return JSONResponse({"status": "unhealthy", "fault": Fault.UNHEALTHY.value}, status_code=503)
    return JSONResponse({"status": "ok"})


async def info(request: Request) -> Response:
    runtime = runtime_of(request)
    return JSONResponse(
        {
            "server_id": runtime.server_id,
            "version": runtime.settings.version,
            "started_at": runtime.started_at,
            "draining": runtime.draining,
        }
    )


async def client(request: Request) -> Response:
    """The caller's address and scheme as the app sees them, after the trusted proxy headers.

    Shows whether the edge passes the real client address and whether a client can forge one.
    """
    peer = request.client
    return JSONResponse({"client": peer.host if peer is not None else None, "scheme": request.url.scheme})


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
    runtime = runtime_of(request)
    await asyncio.sleep(seconds)
    return JSONResponse({"server_id": runtime.server_id, "slept": seconds})


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
            reply = error_message("binary frames are not supported; send JSON text frames")
        else:
            reply = reply_to_text(text, runtime.server_id)
        await connection.send(reply)


async def websocket_feed(websocket: WebSocket) -> None:
    # A socket that connects while the process drains never gets here: the drain answers it.
    runtime = runtime_of(websocket)
    await websocket.accept()
    connection = Connection(websocket)
    ticker: asyncio.Task[None] | None = None
    try:
        await connection.send(runtime.hello_message())
        ticker = asyncio.create_task(_tick_loop(connection, runtime))
        await _receive_loop(connection, runtime)
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.wait({ticker})


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/client", client, methods=["GET"]),
        Route("/api/slow", slow, methods=["GET"]),
        WebSocketRoute("/ws", websocket_feed),
    ]
