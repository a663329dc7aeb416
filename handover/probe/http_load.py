"""Open-loop, constant-rate HTTP load: request i is scheduled at t0 + i/rate whatever happened before."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .http_client import ConnectionPool, HttpFailure, HttpFailureKind, HttpTarget
from .settings import ProbeSettings
from .windows import Clock, WindowTimeline

MAX_ERROR_SAMPLES = 20
SUCCESS_STATUS_MIN = 200
SUCCESS_STATUS_MAX = 299
UNFINISHED_DETAIL = "still outstanding when the settle timeout expired"


@dataclass(slots=True)
class RequestRecord:
    index: int
    scheduled: float
    window: str | None
    spawned: float
    sent: float | None = None
    completed: float | None = None
    status: int | None = None
    server_id: str | None = None
    error: HttpFailureKind | None = None

    @property
    def latency(self) -> float | None:
        """Completion minus scheduled time: includes any stall of the server, the pool or the probe."""
        return None if self.completed is None else self.completed - self.scheduled

    @property
    def service_time(self) -> float | None:
        if self.completed is None or self.sent is None:
            return None
        return self.completed - self.sent

    @property
    def send_lag(self) -> float | None:
        return None if self.sent is None else self.sent - self.scheduled

    @property
    def scheduler_lag(self) -> float:
        return self.spawned - self.scheduled

    def mark_sent(self, instant: float) -> None:
        self.sent = instant


class HttpLoad:
    """Runs the scheduler; keeps one record per scheduled request."""

    def __init__(self, settings: ProbeSettings, timeline: WindowTimeline, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._timeline = timeline
        self._clock = clock
        target = HttpTarget.from_url(settings.base_url, settings.ca_file, settings.host_header)
        self._pool = ConnectionPool(target, settings.max_connections, clock)
        self._outstanding: set[asyncio.Task[None]] = set()
        self._stop_requested = False
        self.records: list[RequestRecord] = []
        self.error_samples: list[str] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    @property
    def connections_opened(self) -> int:
        return self._pool.opened

    @property
    def peak_connections_in_use(self) -> int:
        return self._pool.peak_in_use

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def request_stop(self) -> None:
        self._stop_requested = True

    async def run(self) -> None:
        rate = self._settings.rate
        self.started_at = start = self._clock()
        index = 0
        try:
            while rate > 0 and not self._stop_requested:
                scheduled = start + index / rate
                delay = scheduled - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if self._stop_requested:
                        break
                self._spawn(index, scheduled)
                index += 1
        finally:
            self.stopped_at = self._clock()

    def _spawn(self, index: int, scheduled: float) -> None:
        record = RequestRecord(
            index=index, scheduled=scheduled, window=self._timeline.window_at(scheduled), spawned=self._clock()
        )
        self.records.append(record)
        task = asyncio.get_running_loop().create_task(self._execute(record))
        self._outstanding.add(task)
        task.add_done_callback(self._outstanding.discard)

    async def _execute(self, record: RequestRecord) -> None:
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                response = await self._pool.get(self._settings.http_path, record.mark_sent)
        except TimeoutError:
            self._fail(record, HttpFailureKind.TIMEOUT, f"no response within {self._settings.request_timeout} s")
            return
        except HttpFailure as failure:
            self._fail(record, failure.kind, failure.detail)
            return
        except Exception as exc:  # anything unforeseen is a failure, never silently dropped
            self._fail(record, HttpFailureKind.PROTOCOL_ERROR, f"{type(exc).__name__}: {exc}")
            return
        record.completed = self._clock()
        record.status = response.status
        record.server_id = response.server_id
        if not SUCCESS_STATUS_MIN <= response.status <= SUCCESS_STATUS_MAX:
            record.error = HttpFailureKind.HTTP_STATUS

    def _fail(self, record: RequestRecord, kind: HttpFailureKind, detail: str) -> None:
        record.completed = self._clock()
        record.error = kind
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"request {record.index}: {kind}: {detail}")

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for outstanding requests; whatever is left is cancelled and counted as timeout."""
        if self._outstanding:
            await asyncio.wait(set(self._outstanding), timeout=timeout)
        leftovers = set(self._outstanding)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers)
        for record in self.records:
            if record.completed is None:
                self._fail(record, HttpFailureKind.TIMEOUT, UNFINISHED_DETAIL)
        await self._pool.aclose()
