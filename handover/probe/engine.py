"""Async orchestration of one probe run: WS clients first, then the HTTP scheduler; settle; report."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from .http_load import HttpLoad
from .report import ProbeReport
from .settings import ProbeError, ProbeSettings
from .summarize import summarize_http, summarize_ws
from .windows import Clock, WindowTimeline
from .ws_client import WsClient
from .ws_stats import WsStats

START_TIMEOUT_SECONDS = 10.0
SETTLE_POLL_SECONDS = 0.05
CLIENT_CLOSE_TIMEOUT_SECONDS = 5.0


class ProbeEngine:
    def __init__(self, settings: ProbeSettings, timeline: WindowTimeline, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._timeline = timeline
        self._clock = clock
        self._stats = WsStats()
        self._http = HttpLoad(settings, timeline, clock)
        self._clients: list[WsClient] = []
        self._client_tasks: list[asyncio.Task[None]] = []
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        rng = random.Random()
        tls = self._settings.tls_context()
        self._clients = [
            WsClient(f"c{i}", self._settings.ws_url, self._settings.ws_message_interval, self._stats, rng, self._clock,
                     tls=tls, connect_to=self._settings.ws_connect_to)
            for i in range(self._settings.ws_clients)
        ]
        loop = asyncio.get_running_loop()
        self._client_tasks = [loop.create_task(client.run()) for client in self._clients]
        waits = [client.first_hello.wait() for client in self._clients]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), START_TIMEOUT_SECONDS)
        except TimeoutError:
            ready = sum(1 for client in self._clients if client.first_hello.is_set())
            errors = "; ".join(self._stats.error_samples[:3]) or "no error recorded"
            await self._close_clients()
            raise ProbeError(
                f"only {ready}/{len(self._clients)} WebSocket clients got a hello from {self._settings.ws_url}"
                f" within {START_TIMEOUT_SECONDS:.0f} s ({errors})"
            ) from None
        self._http_task = loop.create_task(self._http.run())

    async def stop(self) -> ProbeReport:
        self._http.request_stop()
        for client in self._clients:
            client.stop_sending()
        if self._http_task is not None:
            await self._http_task
        deadline = self._clock() + self._settings.settle_timeout
        while self._clock() < deadline and (self._http.outstanding or any(c.unacked for c in self._clients)):
            await asyncio.sleep(SETTLE_POLL_SECONDS)
        await self._http.settle(max(0.0, deadline - self._clock()))
        await self._close_clients()
        return ProbeReport(
            http=summarize_http(self._http, self._settings.rate, self._timeline.names()),
            ws=summarize_ws(self._stats, self._clients),
        )

    async def abort(self) -> None:
        self._http.request_stop()
        if self._http_task is not None:
            self._http_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        await self._http.settle(0.0)
        await self._close_clients()

    async def _close_clients(self) -> None:
        if not self._client_tasks:
            return
        await asyncio.gather(*(client.close() for client in self._clients), return_exceptions=True)
        _, pending = await asyncio.wait(self._client_tasks, timeout=CLIENT_CLOSE_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
