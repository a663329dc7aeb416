"""Stand-in for the demo app (server/webapp) speaking the same HTTP + WebSocket protocol, for probe tests.

Run with: uvicorn --app-dir tests probe_standin:app
POST /admin/drain sends {"type":"reconnect"} and closes every open socket with 1012 (new sockets
are still accepted, as if a fresh backend had taken over).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SERVER_ID = os.environ.get("PROBE_STANDIN_SERVER_ID", f"standin-{uuid.uuid4().hex[:8]}")
VERSION = "standin-1"
TICK_SECONDS = 1.0
SERVICE_RESTART = 1012


class Socket:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.lock = asyncio.Lock()
        self.closed = False

    async def send(self, frame: dict[str, object]) -> None:
        async with self.lock:
            if not self.closed:
                await self.websocket.send_json(frame)

    async def drain(self) -> None:
        async with self.lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(Exception):
                await self.websocket.send_json({"type": "reconnect", "reason": "draining"})
                await self.websocket.close(code=SERVICE_RESTART)


SOCKETS: set[Socket] = set()


async def info(request: Request) -> JSONResponse:
    return JSONResponse({"server_id": SERVER_ID, "version": VERSION}, headers={"X-Server-Id": SERVER_ID})


async def drain(request: Request) -> JSONResponse:
    sockets = list(SOCKETS)
    await asyncio.gather(*(socket.drain() for socket in sockets))
    return JSONResponse({"drained": len(sockets)}, headers={"X-Server-Id": SERVER_ID})


async def ticker(socket: Socket) -> None:
    with contextlib.suppress(Exception):
        while not socket.closed:
            await asyncio.sleep(TICK_SECONDS)
            await socket.send({"type": "tick", "server_id": SERVER_ID})


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    socket = Socket(websocket)
    await socket.send({"type": "hello", "server_id": SERVER_ID, "version": VERSION})
    SOCKETS.add(socket)
    tick_task = asyncio.get_running_loop().create_task(ticker(socket))
    try:
        while True:
            frame = await websocket.receive_json()
            if frame.get("type") == "msg":
                await socket.send({"type": "ack", "id": frame.get("id"), "server_id": SERVER_ID})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        SOCKETS.discard(socket)
        tick_task.cancel()


app = Starlette(
    routes=[
        Route("/api/info", info),
        Route("/admin/drain", drain, methods=["POST"]),
        WebSocketRoute("/ws", ws_endpoint),
    ]
)
