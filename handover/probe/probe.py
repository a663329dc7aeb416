"""Probe: runs the load in a background thread with its own event loop."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import threading
from types import TracebackType
from typing import Self

from .engine import START_TIMEOUT_SECONDS, ProbeEngine
from .report import ProbeReport
from .settings import ProbeError, ProbeSettings
from .windows import WindowTimeline

START_MARGIN_SECONDS = 10.0
STOP_MARGIN_SECONDS = 30.0


class ProbeRun(abc.ABC):
    """Start, mark windows while deploying, stop, read the report. Also a context manager."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def window(self, name: str) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    def stop(self) -> ProbeReport: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Probe(ProbeRun):
    """The load in a background thread of this process, with its own event loop."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.report: ProbeReport | None = None
        self._timeline = WindowTimeline()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._finished: concurrent.futures.Future[ProbeReport] = concurrent.futures.Future()

    def start(self) -> None:
        if self._thread is not None:
            raise ProbeError("probe already started")
        self._thread = threading.Thread(target=self._thread_main, name="handover-probe", daemon=True)
        self._thread.start()
        try:
            self._started.result(timeout=START_TIMEOUT_SECONDS + START_MARGIN_SECONDS)
        except concurrent.futures.TimeoutError:
            self._request_stop()
            raise ProbeError("probe did not start in time") from None
        except BaseException:
            self._thread.join(timeout=STOP_MARGIN_SECONDS)
            raise

    def window(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Requests scheduled while this context is open are attributed to `name`."""
        return self._timeline.window(name)

    def stop(self) -> ProbeReport:
        if self._thread is None or not self._started.done():
            raise ProbeError("probe was not started")
        if self.report is not None:
            return self.report
        self._request_stop()
        timeout = self.settings.settle_timeout + self.settings.request_timeout + STOP_MARGIN_SECONDS
        try:
            self.report = self._finished.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ProbeError(f"probe did not stop within {timeout:.0f} s") from None
        self._thread.join(timeout=STOP_MARGIN_SECONDS)
        return self.report


    def _request_stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(event.set)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            for future in (self._started, self._finished):
                if not future.done():
                    future.set_exception(exc)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        engine = ProbeEngine(self.settings, self._timeline)
        try:
            await engine.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            await engine.abort()
            return
        self._started.set_result(None)
        await self._stop_event.wait()
        try:
            self._finished.set_result(await engine.stop())
        except BaseException as exc:
            self._finished.set_exception(exc)
            raise
