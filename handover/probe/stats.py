"""Percentiles and latency summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MS_PER_SECOND = 1000.0
MEDIAN = 50.0
TAIL = 99.0


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least pct% of values <= it)."""
    return percentile_of_sorted(sorted(values), pct)


def percentile_of_sorted(ordered: Sequence[float], pct: float) -> float | None:
    if not 0.0 < pct <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    if not ordered:
        return None
    rank = math.ceil(pct / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def _to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * MS_PER_SECOND, 3)


@dataclass(frozen=True)
class LatencySummary:
    """Count and p50/p99/max of durations, in milliseconds (None when empty)."""

    count: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def from_seconds(cls, values: Iterable[float]) -> LatencySummary:
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50_ms=_to_ms(percentile_of_sorted(ordered, MEDIAN)),
            p99_ms=_to_ms(percentile_of_sorted(ordered, TAIL)),
            max_ms=_to_ms(ordered[-1] if ordered else None),
        )

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms}
