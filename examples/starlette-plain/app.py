"""A plain Starlette app on port 8000: a page, a health check, a slow endpoint and a WebSocket.

It knows nothing about handover (see ../starlette-drain/ for the same app with the drain helper).
Run it with ``uvicorn app:app --host 0.0.0.0 --port 8000``; ``APP_VERSION`` names the version shown.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

VERSION = os.environ.get("APP_VERSION", "dev")
SERVER_ID = secrets.token_hex(4)  # tells two processes (two versions) apart
HEADERS = {"X-Server-Id": SERVER_ID, "X-App-Version": VERSION}
SLOW_MAX_SECONDS = 30.0

PAGE = """<!doctype html>
<meta charset="utf-8"><title>example app</title>
<h1>example app, version {version}</h1>
<p>server <code>{server_id}</code>; WebSocket: <span id="ws">connecting</span></p>
<pre id="log"></pre>
<script>
  const log = (line) => (document.getElementById("log").textContent += line + "\\n");
  function connect() {{
    const ws = new WebSocket(`${{location.protocol === "https:" ? "wss" : "ws"}}://${{location.host}}/ws`);
    ws.onmessage = (event) => log(event.data);
    ws.onopen = () => (document.getElementById("ws").textContent = "open");
    ws.onclose = (event) => {{
      document.getElementById("ws").textContent = `closed (${{event.code}}), reconnecting`;
      setTimeout(connect, event.code === 1012 ? 0 : 1000);
    }};
  }}
  connect();
</script>
"""


def info() -> dict[str, str]:
    return {"server_id": SERVER_ID, "version": VERSION}


async def index(request: Request) -> Response:
    return HTMLResponse(PAGE.format(version=VERSION, server_id=SERVER_ID), headers=HEADERS)


async def api_info(request: Request) -> Response:
    return JSONResponse(info(), headers=HEADERS)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=HEADERS)


async def slow(request: Request) -> Response:
    """Answers after ``?seconds=`` (at most 30): an in-flight request to watch during a deploy."""
    try:
        seconds = float(request.query_params.get("seconds", "1"))
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= SLOW_MAX_SECONDS:
        return JSONResponse({"error": f"'seconds' must be a number from 0 to {SLOW_MAX_SECONDS:g}"}, status_code=400)
    await asyncio.sleep(seconds)
    return JSONResponse({**info(), "slept": seconds}, headers=HEADERS)


def reply(text: str) -> dict[str, object]:
    """An ``ack`` for a JSON message with an ``id`` (what handover's probe sends), else an echo."""
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("id"), str):
        return {"type": "ack", "id": message["id"], "server_id": SERVER_ID}
    return {"type": "echo", "text": text, "server_id": SERVER_ID}


async def websocket_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", **info()})
    try:
        while True:
            await websocket.send_json(reply(await websocket.receive_text()))
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", index),
        Route("/api/info", api_info),
        Route("/healthz", healthz),
        Route("/slow", slow),
        WebSocketRoute("/ws", websocket_echo),
    ]
)
