"""Deliberate failure modes (``APP_FAULT``), so deploy rollbacks can be exercised against a real app.

Parsing the variable and acting on it at startup live together here, away from the normal path.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import sys
import threading

log = logging.getLogger(__name__)

EXIT_FAULT_CRASH = 3
EXIT_FAULT_EXIT_AFTER = 4
# APP_FAULT=exit-after:<seconds>: serve (and pass health checks) for that long, then die.
FAULT_EXIT_AFTER_MAX_SECONDS = 3600.0


class FaultSpecError(ValueError):
    """``APP_FAULT`` names no supported fault."""


class Fault(enum.StrEnum):
    """Deliberate failure modes, used to exercise deploy rollbacks."""

    NONE = ""
    UNHEALTHY = "unhealthy"
    CRASH = "crash"
    # Written "exit-after:<seconds>": healthy at first, then the process exits with status 4
    # that many seconds after it started (a version that dies right after the switch).
    EXIT_AFTER = "exit-after"


def parse_fault(raw: str) -> tuple[Fault, float]:
    """The fault named by ``raw`` and, for ``exit-after:<seconds>``, the seconds (else 0)."""
    name, colon, argument = raw.partition(":")
    if name == Fault.EXIT_AFTER.value:
        try:
            seconds = float(argument) if colon else math.nan
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or not 0 < seconds <= FAULT_EXIT_AFTER_MAX_SECONDS:
            raise FaultSpecError(
                f"APP_FAULT {raw!r}: expected exit-after:<seconds> with seconds above 0 and at most "
                f"{FAULT_EXIT_AFTER_MAX_SECONDS:g}"
            )
        return Fault.EXIT_AFTER, seconds
    plain = {f.value: f for f in Fault if f not in (Fault.NONE, Fault.EXIT_AFTER)}
    fault = plain.get(raw)
    if fault is None:
        allowed = ", ".join(repr(name) for name in plain)
        raise FaultSpecError(
            f"APP_FAULT {raw!r} is not supported (use {allowed}, 'exit-after:<seconds>' or leave it empty)"
        )
    return fault, 0.0


def apply_startup_fault(fault: Fault, fault_after: float) -> None:
    """Act on a fault that concerns the process rather than a request: crash now, or die later."""
    if fault is Fault.CRASH:
        log.error("APP_FAULT=crash: exiting with status %d before serving", EXIT_FAULT_CRASH)
        sys.exit(EXIT_FAULT_CRASH)
    if fault is Fault.EXIT_AFTER:
        _exit_later(fault_after)


def _exit_later(seconds: float) -> None:
    """APP_FAULT=exit-after: end the process abruptly (no drain) ``seconds`` from now."""

    def die() -> None:
        log.error("APP_FAULT=exit-after:%g: exiting with status %d", seconds, EXIT_FAULT_EXIT_AFTER)
        os._exit(EXIT_FAULT_EXIT_AFTER)

    timer = threading.Timer(seconds, die)
    timer.daemon = True
    timer.start()
