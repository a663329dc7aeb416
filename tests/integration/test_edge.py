"""The edge as a client meets it on the real stack: nginx's headers, X-Forwarded-For and upgrades."""

from __future__ import annotations

import base64
import os
import socket

import pytest
import requests

from .conftest import StackHandle

pytestmark = pytest.mark.integration

SPOOFED = "6.6.6.6"
REQUEST_TIMEOUT = 5.0
STATUS_LINE_BYTES = 64


def test_a_client_cannot_choose_the_address_the_app_sees(stack: StackHandle) -> None:
    response = requests.get(f"{stack.url}/api/client", headers={"X-Forwarded-For": SPOOFED},
                            timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200
    seen = response.json()["client"]
    assert seen is not None  # nginx's X-Forwarded-For was believed (unix socket)
    assert seen != SPOOFED


@pytest.mark.parametrize("path", ["/", "/api/info", "/does-not-exist", "/nginx-health"])
def test_security_headers_on_every_answer_and_no_app_version(stack: StackHandle, path: str) -> None:
    response = requests.get(f"{stack.url}{path}", timeout=REQUEST_TIMEOUT)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "X-App-Version" not in response.headers


def handshake_status(stack: StackHandle, upgrade: str) -> bytes:
    """The status line nginx answers a WebSocket handshake on /ws that asks for ``upgrade``."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=REQUEST_TIMEOUT) as raw:
        raw.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nUpgrade: {upgrade}\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        return raw.recv(STATUS_LINE_BYTES).split(b"\r\n")[0]


def test_only_a_websocket_upgrade_reaches_the_app(stack: StackHandle) -> None:
    assert handshake_status(stack, "WebSocket") == b"HTTP/1.1 101 Switching Protocols"
    # Any other Upgrade is dropped: the app sees a plain GET of /ws, which it does not serve.
    assert handshake_status(stack, "websocketx") == b"HTTP/1.1 404 Not Found"
