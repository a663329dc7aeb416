"""Counters shared by all WebSocket clients of one probe (touched only from the probe's event loop)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
ABNORMAL_CLOSURE = 1006
SERVICE_RESTART = 1012
# Server-initiated closes after which a browser page reconnects at once.
RECONNECT_CLOSE_CODES = frozenset({GOING_AWAY, SERVICE_RESTART})


@dataclass
class WsStats:
    connects: int = 0
    reconnects: int = 0
    abnormal_closes: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    reconnect_gaps: list[float] = field(default_factory=list)
    messages_sent: int = 0
    messages_acked: int = 0
    messages_resent: int = 0
    duplicate_acks: int = 0
    unknown_acks: int = 0
    drain_notices: int = 0
    server_ids: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    def sample_error(self, detail: str, limit: int) -> None:
        if len(self.error_samples) < limit:
            self.error_samples.append(detail)
