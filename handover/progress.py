"""What a person sees while the engine works: each step, what it is doing, and how long it took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from .record import RunRecord, StepRecord

PROGRESS_EVERY_SECONDS = 2.0


class Progress:
    """Prints step lines to ``stream``; ``quiet`` keeps only errors, ``prefix`` tags lines (e.g. a host)."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, prefix: str = "") -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.prefix = f"[{prefix}] " if prefix else ""
        self._last_wait_note = 0.0

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}{text}", file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        print(f"{self.prefix}! {text}", file=sys.stderr, flush=True)

    def waiting(self, text: str, force: bool = False) -> None:
        """A progress note during a long wait, at most every few seconds."""
        now = time.monotonic()
        if force or now - self._last_wait_note >= PROGRESS_EVERY_SECONDS:
            self._last_wait_note = now
            self.say(f"    … {text}")

    @contextmanager
    def step(self, record: RunRecord, name: str, doing: str) -> Iterator[StepRecord]:
        self.say(f"==> {name}: {doing}")
        self._last_wait_note = time.monotonic()
        step = StepRecord(name=name, seconds=0.0, result="ok")
        t0 = time.monotonic()
        try:
            yield step
        except BaseException as exc:
            step.result = "failed" if isinstance(exc, Exception) else "interrupted"
            step.detail = step.detail or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            step.seconds = round(time.monotonic() - t0, 3)
            record.steps.append(step)
            tail = f" ({step.detail})" if step.detail and step.result == "ok" else ""
            self.say(f"    {step.result} in {step.seconds:.2f} s{tail}")
