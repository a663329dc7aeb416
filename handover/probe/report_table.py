"""Human-readable rendering of a ProbeReport."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .text_table import fmt_counts, fmt_ms, render_table

if TYPE_CHECKING:
    from .report import HttpSummary, HttpWindowStats, ProbeReport, WsSummary

SHORT_KIND_NAMES = {
    "http_status": "status",
    "connect_error": "connect",
    "reset": "reset",
    "stale_keepalive": "stale_ka",
    "timeout": "timeout",
    "protocol_error": "proto",
}


def _window_row(stats: HttpWindowStats) -> list[str]:
    latency = stats.latency
    return [
        stats.name,
        str(stats.count),
        fmt_ms(latency.p50_ms),
        fmt_ms(latency.p99_ms),
        fmt_ms(latency.max_ms),
        *(str(stats.failures[kind]) for kind in SHORT_KIND_NAMES),
    ]


def format_http(http: HttpSummary) -> str:
    headers = ["HTTP window", "requests", "p50 ms", "p99 ms", "max ms", *SHORT_KIND_NAMES.values()]
    rows = [_window_row(http.steady), *(_window_row(w) for w in http.windows)]
    if http.windows:
        rows.append(_window_row(http.all_windows))
    rows.append(_window_row(http.overall))
    lag_note = "  <-- the probe itself stalled" if http.probe_lagged else ""
    lines = [
        render_table(headers, rows),
        f"rate: target {http.target_rate:.1f}/s, achieved {http.achieved_rate:.1f}/s over {http.duration_s:.1f} s"
        f" ({http.sent}/{http.scheduled} sent, {http.completed_ok} ok)",
        f"connections: {http.connections_opened} opened, peak {http.peak_connections_in_use} in use",
        f"service time ms: p50 {fmt_ms(http.service_time.p50_ms)}, p99 {fmt_ms(http.service_time.p99_ms)},"
        f" max {fmt_ms(http.service_time.max_ms)}",
        f"probe lag ms: scheduler max {fmt_ms(http.scheduler_lag.max_ms)}, send p99 {fmt_ms(http.send_lag.p99_ms)},"
        f" send max {fmt_ms(http.max_send_lag_ms)}{lag_note}",
        f"status codes: {fmt_counts(http.status_codes)}",
        f"server ids: {fmt_counts(http.server_ids)}",
    ]
    lines += [f"  ! {sample}" for sample in http.error_samples]
    return "\n".join(lines)


def format_ws(ws: WsSummary) -> str:
    rows = [
        ["clients", str(ws.clients)],
        ["connects", str(ws.connects)],
        ["reconnects", str(ws.reconnects)],
        ["drain notices", str(ws.drain_notices)],
        ["abnormal closes", str(ws.abnormal_total)],
        ["reconnect gap p50 ms", fmt_ms(ws.reconnect_gap.p50_ms)],
        ["reconnect gap p99 ms", fmt_ms(ws.reconnect_gap.p99_ms)],
        ["reconnect gap max ms", fmt_ms(ws.reconnect_gap.max_ms)],
        ["messages sent", str(ws.messages_sent)],
        ["messages acked", str(ws.messages_acked)],
        ["messages resent", str(ws.messages_resent)],
        ["duplicate acks", str(ws.duplicate_acks)],
        ["messages lost", str(ws.lost)],
    ]
    lines = [
        render_table(["WebSocket", "value"], rows),
        f"abnormal closes: {fmt_counts(ws.abnormal_closes)}",
        f"close codes: {fmt_counts(ws.close_codes)}",
        f"server ids: {fmt_counts(ws.server_ids)}",
    ]
    if ws.lost_sample:
        lines.append(f"lost ids (sample): {', '.join(ws.lost_sample)}")
    lines += [f"  ! {sample}" for sample in ws.error_samples]
    return "\n".join(lines)


def format_report(report: ProbeReport) -> str:
    verdict = "OK: nothing lost" if report.ok else "FAIL: " + "; ".join(report.failure_reasons())
    return "\n\n".join([format_http(report.http), format_ws(report.ws), f"RESULT {verdict}"])
