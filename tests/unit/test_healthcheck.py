"""The app image's health check (server/healthcheck.sh): 200 on /healthz is healthy, anything else is not."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import localhttp

SCRIPT = Path(__file__).resolve().parents[2] / "server" / "healthcheck.sh"


@contextmanager
def answering(status: int) -> Iterator[int]:
    """A local HTTP server answering every GET with ``status``; yields its port. Only /healthz is asked."""
    paths: list[str] = []
    with localhttp.answering(status, paths) as port:
        yield port
    assert paths in ([], ["/healthz"])


def check(port: int) -> int:
    return subprocess.run(["bash", str(SCRIPT)], env={"PORT": str(port)}, timeout=10, check=False).returncode


def test_an_app_answering_200_is_healthy() -> None:
    with answering(200) as port:
        assert check(port) == 0


@pytest.mark.parametrize("status", [503, 500, 404, 204])
def test_any_other_answer_is_unhealthy(status: int) -> None:
    with answering(status) as port:
        assert check(port) == 1


def test_nothing_listening_is_unhealthy() -> None:
    with answering(200) as port:
        pass
    assert check(port) == 1
