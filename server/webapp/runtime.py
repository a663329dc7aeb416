"""Per-process identity (server id, start time) and the state the request handlers share.

The server id is what a client (and the deploy's load probe) uses to tell two versions apart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from .hub import Hub
from .protocol import JsonObject, utc_now_iso
from .settings import Settings

SERVER_ID_BYTES = 4


@dataclass
class Runtime:
    """Per-process identity and shared state, stored on ``app.state.runtime``."""

    settings: Settings
    server_id: str = field(default_factory=lambda: secrets.token_hex(SERVER_ID_BYTES))
    started_at: str = field(default_factory=utc_now_iso)
    hub: Hub = field(init=False)

    def __post_init__(self) -> None:
        self.hub = Hub(
            server_id=self.server_id,
            drain_timeout=self.settings.drain_timeout,
            drain_spread=self.settings.drain_spread,
        )

    @property
    def draining(self) -> bool:
        return self.hub.draining

    def hello_message(self) -> JsonObject:
        return {
            "type": "hello",
            "server_id": self.server_id,
            "version": self.settings.version,
            "started_at": self.started_at,
        }

    def tick_message(self) -> JsonObject:
        return {"type": "tick", "server_id": self.server_id, "t": time.time()}


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime = connection.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime
