"""Configuration of a probe run."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SUPPORTED_SCHEMES = ("http", "https")


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
