"""The fake Docker host fixture: a fresh host per test, checked at the end for commands it did not model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakehost import FakeHost


@pytest.fixture
def fake_host(tmp_path: Path) -> Iterator[FakeHost]:
    host = FakeHost(tmp_path)
    yield host
    host._end_background()  # a lock's keeper left by a test that stopped half-way
    # An engine that swallowed the fake's AssertionError would otherwise pass unnoticed.
    assert not host.unknown, f"commands the fake host does not model: {host.unknown}"
