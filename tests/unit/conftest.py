"""The fake Docker host fixture: a fresh host per test, checked at the end for commands it did not model.

nginx's reload and start polls wait 20 ms and 50 ms between looks at a real proxy; the fake one answers
at once, so the tests poll it every millisecond (what is checked between polls stays the same).

Every test must leave the SIGINT and SIGTERM handlers as it found them: a handler left behind makes
a later test that sends itself a signal hang or fail, and only where the tests run in one process
after another run (as under mutmut, which runs the suite twice in one process).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from handover.proxies import nginx

from .fakehost import FakeHost

FAST_POLL = 0.001
WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _fast_proxy_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx, "RELOAD_POLL_SECONDS", FAST_POLL)
    monkeypatch.setattr(nginx, "START_POLL_SECONDS", FAST_POLL)


@pytest.fixture(autouse=True)
def _signal_handlers_left_as_found() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in WATCHED_SIGNALS}
    yield
    after = {sig: signal.getsignal(sig) for sig in WATCHED_SIGNALS}
    for sig, handler in before.items():
        signal.signal(sig, handler)
    changed = [signal.Signals(sig).name for sig in WATCHED_SIGNALS if after[sig] is not before[sig]]
    assert not changed, f"the test left other handlers for {', '.join(changed)}"


@pytest.fixture
def fake_host(tmp_path: Path) -> Iterator[FakeHost]:
    host = FakeHost(tmp_path)
    yield host
    host._end_background()  # a lock's keeper left by a test that stopped half-way
    # An engine that swallowed the fake's AssertionError would otherwise pass unnoticed.
    assert not host.unknown, f"commands the fake host does not model: {host.unknown}"
