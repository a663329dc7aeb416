"""The demo app as a real child process (``python -m webapp``) on a free loopback port, for tests
that need real sockets and signals: drain, faults, fuzzing, proxy-header trust."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SERVER_DIR = Path(__file__).resolve().parent.parent / "server"
LOOPBACK = "127.0.0.1"
DRAIN_TIMEOUT = 3.0
STARTUP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
SLOW_REQUEST_WAIT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


# The app's settings that a test sets itself or expects at their defaults.
OWN_SETTINGS = ("APP_FAULT", "HOST", "PORT", "FORWARDED_ALLOW_IPS", "UNIX_SOCKET_DIR", "LIMIT_CONCURRENCY")


def server_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
    env.update(
        PORT=str(port),
        HOST=LOOPBACK,
        APP_VERSION="proc-test",
        DRAIN_TIMEOUT=str(DRAIN_TIMEOUT),
        TICK_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_server(port: int, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "webapp"],
        cwd=SERVER_DIR,
        env=server_env(port, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(base_url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=1) as client:  # one client: each new one loads the CA bundle again
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server exited early with {process.returncode}")
            try:
                if client.get(f"{base_url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL_INTERVAL)
    pytest.fail("server did not become healthy")


@contextlib.contextmanager
def healthy(process: subprocess.Popen[str], port: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``process`` (an ASGI server just started on ``port``) once it answers its health check;
    killed afterwards if still running, its output pipe closed."""
    try:
        wait_healthy(f"http://{LOOPBACK}:{port}", process)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@contextlib.contextmanager
def running_server(**env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A healthy server process on a free loopback port; killed afterwards if still running."""
    port = free_port()
    with healthy(start_server(port, **env), port) as running:
        yield running


@dataclass
class Reply:
    status_code: int
    body: dict[str, object]


class SlowRequest:
    """``GET <path>?seconds=N`` sent on a connection opened now, so that it is in flight before a
    signal that follows (a request sent from a thread may not have connected yet on a busy machine);
    its answer is read in a thread."""

    def __init__(self, port: int, path: str, seconds: float) -> None:
        self.result: Reply | BaseException | None = None
        self._sock = socket.create_connection((LOOPBACK, port), timeout=60)
        self._sock.sendall(f"GET {path}?seconds={seconds} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        chunks: list[bytes] = []
        try:
            with self._sock:
                while chunk := self._sock.recv(65536):
                    chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            self.result = Reply(int(head.split()[1]), json.loads(body) if body else {})
        except (OSError, IndexError, ValueError) as exc:
            self.result = exc

    def wait(self) -> Reply | BaseException | None:
        self._thread.join(SLOW_REQUEST_WAIT)
        return self.result

    def response(self) -> Reply:
        result = self.wait()
        assert isinstance(result, Reply), f"in-flight request failed: {result!r}"
        return result
