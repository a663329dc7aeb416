"""The uvicorn server that drains WebSockets on SIGTERM before its own graceful shutdown.

uvicorn alone would close WebSockets with 1012 before the app could say goodbye; the deploy needs
every client told to reconnect first, then in-flight HTTP requests finished, then exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn

from .hub import Hub


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    """Placeholder handler: the signal was already handled by a full graceful shutdown."""


class DrainingServer(uvicorn.Server):
    """uvicorn server that drains WebSockets before its own graceful shutdown.

    uvicorn closes WebSockets with 1012 before the lifespan shutdown runs, which would
    cut the app's goodbye message. So the first SIGTERM/SIGINT only starts the drain; the
    base handler (stop accepting, finish in-flight HTTP requests) runs once it is done.
    A second signal skips the rest of the drain, a third forces the exit.
    """

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self.signals_received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None  # strong reference while it runs

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # After serving, uvicorn re-raises the signals it captured against the handlers it
        # found. We have shut down gracefully by then, so make that re-delivery a no-op and
        # let main() finish with status 0; the previous handlers are restored afterwards.
        previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with super().capture_signals():
                yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received == 1 and self.started and self._loop is not None:
            self.hub.draining = True
            self._loop.call_soon_threadsafe(self._start_drain, sig, frame)
            return
        if self.signals_received > 2:
            self.force_exit = True
        super().handle_exit(sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        self._drain_task = asyncio.create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        await self.hub.drain()
        if not self.should_exit:
            super().handle_exit(sig, frame)
