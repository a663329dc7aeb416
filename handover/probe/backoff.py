"""Jittered exponential backoff for reconnects after abnormal closes."""

from __future__ import annotations

import random

BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 5.0
JITTER_FLOOR = 0.5  # delay drawn uniformly from [JITTER_FLOOR * d, d]


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Delay before reconnect attempt number `attempt` (0 for the first retry)."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempt, 16))
    return rng.uniform(JITTER_FLOOR * ceiling, ceiling)
