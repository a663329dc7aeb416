"""The deploy lock over a real SSH connection (a loopback sshd, no Docker): a holder whose client
is SIGKILLed loses its keeper when sshd closes the session, and the next run takes the lock over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric import Connection

from handover.errors import LockHeld
from handover.lock import HOLDER_FILE, DeployLock

from .sshd import SSHD, SshLab, SshServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "127.0.0.9"  # not one of the remote suite's addresses
TAKEOVER_TIMEOUT = 15.0
LONG_AGO = "2026-01-01T00:00:00.000+00:00"

HOLDER_SCRIPT = """
import json, sys, time
from fabric import Connection
from handover.lock import DeployLock
host, port, key, known, state, info = sys.argv[1:]
conn = Connection(host, user="root", port=int(port),
                  connect_kwargs={"key_filename": key, "look_for_keys": False, "allow_agent": False})
conn.client.load_host_keys(known)
DeployLock(conn, state).acquire(json.loads(info))
print("acquired", flush=True)
time.sleep(600)
"""


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshLab, SshServer]]:
    if not Path(SSHD).exists():
        pytest.fail(f"{SSHD} is not installed (scripts/bootstrap.sh installs it)")
    lab = SshLab(tmp_path_factory.mktemp("lock-sshd"))
    try:
        lab.start([ADDRESS], port=free_port(ADDRESS))
        yield lab, lab.servers[0]
    finally:
        lab.stop()


def connect(lab: SshLab, server: SshServer) -> Connection:
    conn = Connection(server.address, user="root", port=server.port,
                      connect_kwargs={"key_filename": str(lab.client_key), "look_for_keys": False,
                                      "allow_agent": False})
    conn.client.load_host_keys(str(lab.known_hosts))
    return conn


def test_a_sigkilled_ssh_holder_is_taken_over(server: tuple[SshLab, SshServer], tmp_path: Path) -> None:
    lab, srv = server
    state = tmp_path / "state"
    info = {"holder": "victim@box", "since": LONG_AGO, "action": "deploy", "version": "v7"}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, srv.address, str(srv.port), str(lab.client_key),
         str(lab.known_hosts), str(state), json.dumps(info)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    conn = connect(lab, srv)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "acquired", child.stderr.read() if child.stderr else line
        lock = DeployLock(conn, str(state), notify=lambda text: None)
        with pytest.raises(LockHeld, match=r"victim@box since .* \(\d+ days"):  # alive: refused
            lock.acquire({"holder": "next@box", "action": "deploy", "version": "v8"})

        child.send_signal(signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + TAKEOVER_TIMEOUT
        while True:
            try:
                notice = lock.acquire({"holder": "next@box", "action": "deploy", "version": "v8"})
                break
            except LockHeld:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert notice is not None and "took over" in notice and "victim@box" in notice and "days" in notice
        assert json.loads((state / "lock" / HOLDER_FILE).read_text())["holder"] == "next@box"
        lock.release()
        assert not (state / "lock").exists()
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
        conn.close()
