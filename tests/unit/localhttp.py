"""A throwaway HTTP server on a loopback port, for tests of clients that must reach a real socket
(the health check script, nginx's bash health and port clients)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def answering(status: int, paths: list[str] | None = None) -> Iterator[int]:
    """A server answering every GET with ``status`` (each path asked appended to ``paths``); yields
    its port, and is stopped on the way out."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if paths is not None:
                paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
