"""Configuration of a probe run."""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

SUPPORTED_SCHEMES = ("http", "https")


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificates and host names verified, against the system's CAs and ``ca_file``'s. One per
    ``ca_file`` for the whole run: loading the system's CA store costs tens of milliseconds of CPU,
    too much to spend on the event loop for every new connection."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class ProbeError(RuntimeError):
    """The probe could not run as asked (bad settings, server unreachable at start, ...)."""


@dataclass(frozen=True)
class ProbeSettings:
    """What to load, how hard, and how long to wait for stragglers."""

    base_url: str = "http://127.0.0.1:8080"
    http_path: str = "/api/info"
    rate: float = 200.0
    ws_path: str = "/ws"
    ws_clients: int = 100
    ws_message_interval: float = 0.5
    request_timeout: float = 10.0
    max_connections: int = 128
    settle_timeout: float = 10.0
    # CA certificates (PEM) that https:// and wss:// connections verify the server against, besides
    # the system's; "" = the system's only.
    ca_file: str = ""
    # The Host header (and the WebSocket URL's authority) when it is not base_url's, e.g. to reach an
    # app by its name through a front proxy at 127.0.0.1: connections still go to base_url's address.
    host_header: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in SUPPORTED_SCHEMES or not parts.hostname:
            raise ProbeError(f"base_url must be http(s)://host[:port], got {self.base_url!r}")
        if not self.http_path.startswith("/") or not self.ws_path.startswith("/"):
            raise ProbeError("http_path and ws_path must start with '/'")
        if self.rate < 0:
            raise ProbeError(f"rate must be >= 0, got {self.rate}")
        if self.ws_clients < 0:
            raise ProbeError(f"ws_clients must be >= 0, got {self.ws_clients}")
        if self.ws_message_interval <= 0:
            raise ProbeError(f"ws_message_interval must be > 0, got {self.ws_message_interval}")
        if self.request_timeout <= 0 or self.settle_timeout < 0:
            raise ProbeError("request_timeout must be > 0 and settle_timeout >= 0")
        if self.host_header and (urlsplit(f"//{self.host_header}").netloc != self.host_header
                                 or any(c in self.host_header for c in "/?#@ \t\r\n")):
            raise ProbeError(f"host_header must be host[:port], got {self.host_header!r}")
        if self.max_connections < 1:
            raise ProbeError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.ca_file and not os.access(self.ca_file, os.R_OK):
            raise ProbeError(f"ca_file {self.ca_file!r} is not a readable file")

    def tls_context(self) -> ssl.SSLContext | None:
        """The verifying TLS context for an https base URL (None for http)."""
        if urlsplit(self.base_url).scheme != "https":
            return None
        return tls_context(self.ca_file)

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{self.host_header or parts.netloc}{self.ws_path}"

    @property
    def ws_connect_to(self) -> tuple[str, int] | None:
        """Where the WebSocket clients connect when ``host_header`` names another host than base_url's."""
        if not self.host_header:
            return None
        parts = urlsplit(self.base_url)
        assert parts.hostname is not None
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
