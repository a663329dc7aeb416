"""The process: logging, listening sockets, the uvicorn configuration and the exit statuses.

``python -m webapp`` runs ``main`` here; a bad setting exits 2 with a one-line message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys

import uvicorn
from starlette.types import ASGIApp

from . import handover_asgi
from .app import WebApp
from .faults import apply_startup_fault
from .runtime import Runtime
from .settings import ConfigError, Settings

LOGGER_NAME = "webapp"
UNIX_SOCKET_MODE = 0o666
LISTEN_BACKLOG = 2048
# uvicorn's websockets protocol: its close() waits for the client's closing handshake, so a
# finished handler means a cleanly closed socket. (uvicorn flags it as deprecated; the
# "websockets-sansio" protocol also works but returns from close() before the client replies.)
WS_IMPLEMENTATION = "websockets"

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2

log = logging.getLogger(__name__)


def configure_logging() -> None:
    """One stdout handler for every module of the package (their loggers sit below this one)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s webapp %(levelname)s %(message)s"))
    root = logging.getLogger(LOGGER_NAME)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def adopt_drain_log() -> None:
    """Give the drain helper's lines (logged under uvicorn's logger) the app's format and stream.

    Called once uvicorn's configuration exists: its logging setup resets that logger.
    """
    drain_log = handover_asgi.log
    drain_log.handlers = list(logging.getLogger(LOGGER_NAME).handlers)
    drain_log.setLevel(logging.INFO)
    drain_log.propagate = False


def build_server(runtime: Runtime, app: ASGIApp) -> uvicorn.Server:
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
        # The app applies proxy headers itself, trusting them per listening socket (see edge.py).
        proxy_headers=False,
        limit_concurrency=settings.limit_concurrency,
        access_log=False,
    )
    # Exits 0 after the drain (plain uvicorn would re-raise SIGTERM); the drain itself runs in
    # the app (runtime.drain), ahead of uvicorn's own shutdown.
    return handover_asgi.server(config)


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


def main() -> None:
    configure_logging()
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        sys.exit(EXIT_CONFIG_ERROR)
    apply_startup_fault(settings.fault, settings.fault_after)
    runtime = Runtime(settings)
    server = build_server(runtime, WebApp(runtime))
    adopt_drain_log()
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
