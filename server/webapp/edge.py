"""ASGI middleware at the app's edge: identity headers out, trusted proxy headers in.

uvicorn's own proxy-header handling trusts one address list for every listening socket, and a
unix-socket peer has no address, so it can trust nginx's socket only by trusting everyone
(``forwarded_allow_ips="*"``), which lets any TCP client pick its own address with
``X-Forwarded-For``. Here the listening socket decides: headers are believed from the unix socket
(nginx) and, on TCP, only from the configured addresses. Either way the client is the right-most
address not vouched for, the one the trusted proxy itself saw: a proxy that appended to the
client's header instead of replacing it would still not let the client choose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from .settings import IpNetwork

HEADER_SERVER_ID = "X-Server-Id"
HEADER_APP_VERSION = "X-App-Version"
# ASGI messages that open a response or a WebSocket handshake, and so carry headers.
RESPONSE_START_MESSAGES = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})
# Stands in for the unix-socket peer's missing address while uvicorn decides whom to trust.
UNIX_SOCKET_PEER = "unix-socket-peer"


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


def via_unix_socket(scope: Scope) -> bool:
    """Whether the connection came in on a unix socket: uvicorn gives its server address no port."""
    server = scope.get("server")
    return server is not None and server[1] is None


class _ForgetUnixSocketPeer:
    """Put back the unix-socket peer's missing address if no forwarded address replaced it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("client") == (UNIX_SOCKET_PEER, 0):
            scope = {**scope, "client": None}
        await self.app(scope, receive, send)


class TrustedProxyMiddleware:
    """Apply X-Forwarded-For/-Proto from the unix socket's peer and from trusted TCP peers only."""

    def __init__(self, app: ASGIApp, trusted_tcp_peers: Iterable[IpNetwork]) -> None:
        self.app = app
        self.from_socket = ProxyHeadersMiddleware(
            _ForgetUnixSocketPeer(app),  # type: ignore[arg-type]
            trusted_hosts=[UNIX_SOCKET_PEER],
        )
        self.from_tcp = ProxyHeadersMiddleware(
            app,  # type: ignore[arg-type]
            trusted_hosts=[str(network) for network in trusted_tcp_peers],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
        elif via_unix_socket(scope):
            scope = {**scope, "client": (UNIX_SOCKET_PEER, 0)}
            await self.from_socket(scope, receive, send)  # type: ignore[arg-type]
        else:
            await self.from_tcp(scope, receive, send)  # type: ignore[arg-type]
