"""The fake Docker host fixture: a fresh host per test, checked at the end for commands it did not model.

nginx's reload and start polls wait 20 ms and 50 ms between looks at a real proxy; the fake one answers
at once, so the tests poll it every millisecond (what is checked between polls stays the same).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from handover.proxies import nginx

from .fakehost import FakeHost

FAST_POLL = 0.001


@pytest.fixture(autouse=True)
def _fast_proxy_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx, "RELOAD_POLL_SECONDS", FAST_POLL)
    monkeypatch.setattr(nginx, "START_POLL_SECONDS", FAST_POLL)


@pytest.fixture
def fake_host(tmp_path: Path) -> Iterator[FakeHost]:
    host = FakeHost(tmp_path)
    yield host
    host._end_background()  # a lock's keeper left by a test that stopped half-way
    # An engine that swallowed the fake's AssertionError would otherwise pass unnoticed.
    assert not host.unknown, f"commands the fake host does not model: {host.unknown}"
