"""The probe in a process of its own, for callers that do heavy work in the same process.

A deploy run in-process (the benchmark, ``local.deploy --probe``) would share the interpreter
lock with the probe's event loop and delay its sends, which the report would then show as
latency. Window marks cross the pipe as messages; both processes read the same monotonic clock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection

from .probe import Probe, ProbeRun
from .report import ProbeReport
from .settings import ProbeError, ProbeSettings

START_TIMEOUT_SECONDS = 30.0
STOP_MARGIN_SECONDS = 60.0
_OPEN, _CLOSE, _STOP = "open", "close", "stop"


def _child(settings: ProbeSettings, conn: Connection) -> None:
    probe = Probe(settings)
    try:
        probe.start()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("started", None))
    windows: list[contextlib.AbstractContextManager[None]] = []
    while True:
        command, name = conn.recv()
        if command == _OPEN:
            window = probe.window(name)
            window.__enter__()
            windows.append(window)
        elif command == _CLOSE and windows:
            windows.pop().__exit__(None, None, None)
        elif command == _STOP:
            conn.send(("report", probe.stop()))
            return


class ProbeProcess(ProbeRun):
    """Same use as :class:`Probe` (start, window, stop), with the load generated in a child process."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.report: ProbeReport | None = None
        self._open = 0
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child, args=(settings, child_conn), name="handover-probe",
                                        daemon=True)

    def start(self) -> None:
        self._process.start()
        if not self._conn.poll(START_TIMEOUT_SECONDS):
            self._process.kill()
            raise ProbeError("probe process did not start in time")
        kind, detail = self._conn.recv()
        if kind != "started":
            self._process.join(timeout=STOP_MARGIN_SECONDS)
            raise ProbeError(str(detail))

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        self.open_window(name)
        try:
            yield
        finally:
            self.close_window()

    def open_window(self, name: str) -> None:
        self._conn.send((_OPEN, name))
        self._open += 1

    def close_window(self) -> None:
        """Close the innermost open window; nothing happens if none is open (or after stop)."""
        if self._open and self.report is None:
            self._conn.send((_CLOSE, None))
            self._open -= 1

    def stop(self) -> ProbeReport:
        if self.report is not None:
            return self.report
        self._conn.send((_STOP, None))
        timeout = self.settings.settle_timeout + self.settings.request_timeout + STOP_MARGIN_SECONDS
        if not self._conn.poll(timeout):
            self._process.kill()
            raise ProbeError(f"probe process did not stop within {timeout:.0f} s")
        kind, report = self._conn.recv()
        self._process.join(timeout=STOP_MARGIN_SECONDS)
        if kind != "report" or not isinstance(report, ProbeReport):
            raise ProbeError(f"probe process answered {kind!r} instead of a report")
        self.report = report
        return report
