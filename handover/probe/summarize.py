"""Turn raw request records and WebSocket counters into report sections."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from .http_load import HttpLoad, RequestRecord
from .report import HttpSummary, HttpWindowStats, WsSummary, empty_failures
from .stats import LatencySummary
from .ws_client import WsClient
from .ws_stats import WsStats

STEADY = "steady"
ALL_WINDOWS = "all-windows"
OVERALL = "overall"
LOST_SAMPLE_SIZE = 20


def window_stats(name: str, records: Iterable[RequestRecord]) -> HttpWindowStats:
    latencies: list[float] = []
    failures = empty_failures()
    for record in records:
        latency = record.latency
        if latency is not None:
            latencies.append(latency)
        if record.error is not None:
            failures[record.error.value] += 1
    return HttpWindowStats(name=name, latency=LatencySummary.from_seconds(latencies), failures=failures)


def split_by_window(
    records: Sequence[RequestRecord], window_names: Sequence[str]
) -> tuple[HttpWindowStats, tuple[HttpWindowStats, ...], HttpWindowStats]:
    """Steady state (no window), each named window, and all windows together."""
    steady = window_stats(STEADY, (r for r in records if r.window is None))
    per_window = tuple(window_stats(name, (r for r in records if r.window == name)) for name in window_names)
    combined = window_stats(ALL_WINDOWS, (r for r in records if r.window is not None))
    return steady, per_window, combined


def summarize_http(load: HttpLoad, target_rate: float, window_names: Sequence[str]) -> HttpSummary:
    records = load.records
    steady, per_window, combined = split_by_window(records, window_names)
    started = load.started_at
    stopped = load.stopped_at
    duration = stopped - started if started is not None and stopped is not None else 0.0
    sent = sum(1 for r in records if r.sent is not None)
    status_codes: Counter[int] = Counter(r.status for r in records if r.status is not None)
    server_ids: Counter[str] = Counter(r.server_id for r in records if r.server_id is not None)
    return HttpSummary(
        target_rate=target_rate,
        achieved_rate=round(sent / duration, 2) if duration > 0 else 0.0,
        duration_s=round(duration, 3),
        scheduled=len(records),
        sent=sent,
        completed_ok=sum(1 for r in records if r.error is None and r.completed is not None),
        connections_opened=load.connections_opened,
        peak_connections_in_use=load.peak_connections_in_use,
        steady=steady,
        windows=per_window,
        all_windows=combined,
        overall=window_stats(OVERALL, records),
        service_time=LatencySummary.from_seconds(t for r in records if (t := r.service_time) is not None),
        scheduler_lag=LatencySummary.from_seconds(r.scheduler_lag for r in records),
        send_lag=LatencySummary.from_seconds(t for r in records if (t := r.send_lag) is not None),
        status_codes=dict(sorted(status_codes.items())),
        server_ids=dict(server_ids),  # Counter keeps first-appearance order
        error_samples=tuple(load.error_samples),
    )


def summarize_ws(stats: WsStats, clients: Sequence[WsClient]) -> WsSummary:
    lost_ids = [message_id for client in clients for message_id in client.unacked_ids()]
    return WsSummary(
        clients=len(clients),
        connects=stats.connects,
        reconnects=stats.reconnects,
        drain_notices=stats.drain_notices,
        abnormal_closes=dict(stats.abnormal_closes),
        close_codes=dict(sorted(stats.close_codes.items())),
        reconnect_gap=LatencySummary.from_seconds(stats.reconnect_gaps),
        messages_sent=stats.messages_sent,
        messages_acked=stats.messages_acked,
        messages_resent=stats.messages_resent,
        duplicate_acks=stats.duplicate_acks,
        unknown_acks=stats.unknown_acks,
        lost=len(lost_ids),
        lost_sample=tuple(lost_ids[:LOST_SAMPLE_SIZE]),
        server_ids=dict(stats.server_ids),
        error_samples=tuple(stats.error_samples),
    )
