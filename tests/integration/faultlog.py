"""What the fault tests saw, printed per scenario (shown with `pytest -s`): exit status, message, probe."""

from __future__ import annotations

from handover.probe.report import ProbeReport


def first_error(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("error:")), "(no error line)")[:200]


def probe_line(report: ProbeReport) -> str:
    http, ws = report.http, report.ws
    return (f"probe: http {http.completed_ok}/{http.sent} ok, {http.failure_total} failed; ws "
            f"{ws.messages_acked}/{ws.messages_sent} acked, {ws.lost} lost, {ws.abnormal_total} abnormal closes, "
            f"{ws.reconnects} reconnects")


def note(scenario: str, text: str) -> None:
    print(f"\n[{scenario}] {text}", flush=True)
