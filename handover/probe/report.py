"""The result of a probe run: what was sent, what came back, what was lost."""

from __future__ import annotations

from dataclasses import dataclass, field

from .http_client import HttpFailureKind
from .report_table import format_report
from .stats import LatencySummary

FAILURE_KINDS: tuple[str, ...] = tuple(kind.value for kind in HttpFailureKind)
# Send lag above this means the probe itself (not the server) was late; latencies then include that stall.
PROBE_LAG_WARNING_MS = 100.0


def empty_failures() -> dict[str, int]:
    return dict.fromkeys(FAILURE_KINDS, 0)


@dataclass(frozen=True)
class HttpWindowStats:
    """Requests scheduled in one window (or in none: "steady"), with their latency and failures."""

    name: str
    latency: LatencySummary
    failures: dict[str, int] = field(default_factory=empty_failures)

    @property
    def count(self) -> int:
        return self.latency.count

    @property
    def failure_total(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "count": self.count,
            "latency": self.latency.to_dict(),
            "failures": dict(self.failures),
            "failure_total": self.failure_total,
        }


@dataclass(frozen=True)
class HttpSummary:
    target_rate: float
    achieved_rate: float
    duration_s: float
    scheduled: int
    sent: int
    completed_ok: int
    connections_opened: int
    peak_connections_in_use: int
    steady: HttpWindowStats
    windows: tuple[HttpWindowStats, ...]
    all_windows: HttpWindowStats
    overall: HttpWindowStats
    service_time: LatencySummary
    scheduler_lag: LatencySummary
    send_lag: LatencySummary
    status_codes: dict[int, int]
    server_ids: dict[str, int]
    error_samples: tuple[str, ...]

    @property
    def failures(self) -> dict[str, int]:
        return self.overall.failures

    @property
    def failure_total(self) -> int:
        return self.overall.failure_total

    @property
    def failed_status_codes(self) -> dict[int, int]:
        return {code: n for code, n in self.status_codes.items() if not 200 <= code <= 299}

    @property
    def max_send_lag_ms(self) -> float | None:
        return self.send_lag.max_ms

    @property
    def probe_lagged(self) -> bool:
        lag = self.scheduler_lag.max_ms
        return lag is not None and lag > PROBE_LAG_WARNING_MS

    def to_dict(self) -> dict[str, object]:
        return {
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate,
            "duration_s": self.duration_s,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "completed_ok": self.completed_ok,
            "connections_opened": self.connections_opened,
            "peak_connections_in_use": self.peak_connections_in_use,
            "failure_total": self.failure_total,
            "failures": dict(self.failures),
            "failed_status_codes": {str(code): n for code, n in self.failed_status_codes.items()},
            "status_codes": {str(code): n for code, n in self.status_codes.items()},
            "steady": self.steady.to_dict(),
            "windows": [window.to_dict() for window in self.windows],
            "all_windows": self.all_windows.to_dict(),
            "overall": self.overall.to_dict(),
            "max_latency_ms": self.overall.latency.max_ms,
            "service_time": self.service_time.to_dict(),
            "scheduler_lag": self.scheduler_lag.to_dict(),
            "send_lag": self.send_lag.to_dict(),
            "max_send_lag_ms": self.max_send_lag_ms,
            "probe_lagged": self.probe_lagged,
            "server_ids": dict(self.server_ids),
            "error_samples": list(self.error_samples),
        }


@dataclass(frozen=True)
class WsSummary:
    clients: int
    connects: int
    reconnects: int
    drain_notices: int
    abnormal_closes: dict[str, int]
    close_codes: dict[int, int]
    reconnect_gap: LatencySummary
    messages_sent: int
    messages_acked: int
    messages_resent: int
    duplicate_acks: int
    unknown_acks: int
    lost: int
    lost_sample: tuple[str, ...]
    server_ids: dict[str, int]
    error_samples: tuple[str, ...]

    @property
    def abnormal_total(self) -> int:
        return sum(self.abnormal_closes.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "clients": self.clients,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "drain_notices": self.drain_notices,
            "abnormal_total": self.abnormal_total,
            "abnormal_closes": dict(self.abnormal_closes),
            "close_codes": {str(code): n for code, n in self.close_codes.items()},
            "reconnect_gap": self.reconnect_gap.to_dict(),
            "messages_sent": self.messages_sent,
            "messages_acked": self.messages_acked,
            "messages_resent": self.messages_resent,
            "duplicate_acks": self.duplicate_acks,
            "unknown_acks": self.unknown_acks,
            "lost": self.lost,
            "lost_sample": list(self.lost_sample),
            "server_ids": dict(self.server_ids),
            "error_samples": list(self.error_samples),
        }


@dataclass(frozen=True)
class ProbeReport:
    http: HttpSummary
    ws: WsSummary
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", not self.failure_reasons())

    def failure_reasons(self) -> list[str]:
        reasons = [f"http {kind}: {n}" for kind, n in self.http.failures.items() if n]
        reasons += [f"ws abnormal {kind}: {n}" for kind, n in self.ws.abnormal_closes.items() if n]
        if self.ws.lost:
            reasons.append(f"ws lost messages: {self.ws.lost}")
        return reasons

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "failure_reasons": self.failure_reasons(),
            "http": self.http.to_dict(),
            "ws": self.ws.to_dict(),
        }

    def format_table(self) -> str:
        return format_report(self)
