"""Per-process identity (server id, start time), the drain, and the state the request handlers share.

The server id is what a client (and the deploy's load probe) uses to tell two versions apart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from .handover_asgi import Drain
from .protocol import JsonObject, utc_now_iso
from .settings import Settings

SERVER_ID_BYTES = 4


@dataclass
class Runtime:
    """Per-process identity and shared state, stored on ``app.state.runtime``."""

    settings: Settings
    server_id: str = field(default_factory=lambda: secrets.token_hex(SERVER_ID_BYTES))
    started_at: str = field(default_factory=utc_now_iso)
    drain: Drain = field(init=False)

    def __post_init__(self) -> None:
        # The drain on SIGTERM (reconnect notice, close 1012, in-flight requests) is handover's
        # drain helper, the same file an app of your own can carry (handover/asgi.py).
        self.drain = Drain(
            timeout=self.settings.drain_timeout,
            spread=self.settings.drain_spread,
            notice=self.reconnect_message(),
        )

    @property
    def draining(self) -> bool:
        return self.drain.draining

    def reconnect_message(self) -> JsonObject:
        return {"type": "reconnect", "reason": "draining", "server_id": self.server_id}

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
