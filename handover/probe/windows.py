"""Named time windows (e.g. "deploy-1") and attribution of instants to them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Window:
    name: str
    start: float
    end: float | None = None  # None while still open

    def contains(self, instant: float) -> bool:
        return self.start <= instant and (self.end is None or instant < self.end)


def window_at(instant: float, windows: Sequence[Window]) -> str | None:
    """Name of the window holding instant; with overlaps the latest-started one wins."""
    best: Window | None = None
    for window in windows:
        if window.contains(instant) and (best is None or window.start >= best.start):
            best = window
    return None if best is None else best.name


class WindowTimeline:
    """Thread-safe record of windows; timestamps are taken under the lock so lookups stay consistent."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: list[Window] = []

    def open(self, name: str) -> int:
        with self._lock:
            self._windows.append(Window(name=name, start=self._clock()))
            return len(self._windows) - 1

    def close(self, index: int) -> None:
        with self._lock:
            window = self._windows[index]
            if window.end is None:
                self._windows[index] = Window(name=window.name, start=window.start, end=self._clock())

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        index = self.open(name)
        try:
            yield
        finally:
            self.close(index)

    def window_at(self, instant: float) -> str | None:
        with self._lock:
            return window_at(instant, self._windows)

    def names(self) -> list[str]:
        """Window names in order of first opening, without duplicates."""
        with self._lock:
            return list(dict.fromkeys(window.name for window in self._windows))
