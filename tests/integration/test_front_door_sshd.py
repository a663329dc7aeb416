"""`fab` against a real sshd (no Docker): one Ctrl-C ends `logs --follow` and nothing of it stays on
the host; `lock`, `status` and `unlock` show the lock as the lock describes it.

The sshd session's PATH starts with a fake ``docker``: ``... logs ...`` records its pid and then
waits as ``docker compose logs --follow`` does (``exec sleep``), so the test can look for that
process on the "host" (loopback: the same machine) after `fab` is interrupted or killed; anything
else answers as an empty Docker host (no containers).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .sshd import SSHD, SshLab, SshServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
ADDRESS = "127.0.0.71"  # not one of the other suites' addresses
FOLLOW_SECONDS = 600  # how long the stand-in for `logs --follow` would wait on its own
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0  # one Ctrl-C must end `fab` well within this
GONE_TIMEOUT = 10.0  # ... and the remote follow within this
POLL = 0.05
RUN_TIMEOUT = 60
REASON = "payments freeze until monday"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FollowLab:
    ssh: SshLab
    server: SshServer
    pids: Path  # the fake docker appends its pid here
    config: Path

    def argv(self, *args: str) -> list[str]:
        return [FAB, "-f", str(self.config), "-i", str(self.ssh.client_key), "-H", self.server.spec, *args]

    def fab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), cwd=ROOT, env=fab_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)

    def start_follow(self) -> tuple[subprocess.Popen[str], int]:
        """`fab logs --follow` in a session of its own (as a terminal's foreground job), and the pid
        of the remote follow once it runs."""
        self.pids.write_text("")
        fab = subprocess.Popen(self.argv("logs", "--follow"), cwd=ROOT, env=fab_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.pids.read_text().split()
            if text:
                return fab, int(text[0])
            if fab.poll() is not None:
                out, err = fab.communicate()
                raise AssertionError(f"fab exited {fab.returncode} before following:\n{out}\n{err}")
            time.sleep(POLL)
        os.killpg(fab.pid, signal.SIGKILL)
        raise AssertionError("the remote follow did not start")


def fab_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's fabfile and handover
    return env


def without_age(description: str) -> str:
    """The lock's description without its age (which moves on between two calls)."""
    return re.sub(r" \(([^()]*)\): ", " (AGE): ", description, count=1)


def alive(pid: int) -> bool:
    """``pid`` is still the stand-in follow (not a zombie, not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and cmdline[0].endswith(b"sleep")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(POLL)
    return not alive(pid)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FollowLab]:
    if not Path(SSHD).exists():
        pytest.fail(f"{SSHD} is not installed (scripts/bootstrap.sh installs it)")
    root = tmp_path_factory.mktemp("follow")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    pids = root / "follow.pids"
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\n"
                      'case " $* " in *" logs "*)\n'
                      f'    echo "$$" >> {shlex.quote(str(pids))}\n'
                      '    echo "following: $*"\n'
                      f"    exec sleep {FOLLOW_SECONDS};;\n"
                      "esac\n")
    docker.chmod(0o755)
    ssh = SshLab(root / "ssh")
    try:
        ssh.start([ADDRESS], port=free_port(ADDRESS),
                  session_env={ADDRESS: {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}})
        config = root / "fabric.yaml"
        config.write_text(yaml.safe_dump({"deploy": {"known_hosts": str(ssh.known_hosts),
                                                     "deploy_dir": str(root / "srv")}}))
        yield FollowLab(ssh, ssh.servers[0], pids, config)
    finally:
        ssh.stop()


def test_one_ctrl_c_ends_the_follow_and_its_remote_process(lab: FollowLab) -> None:
    fab, pid = lab.start_follow()
    try:
        assert alive(pid)
        os.killpg(fab.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground job
        try:
            out, err = fab.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fab logs --follow still runs {STOP_TIMEOUT:g} s after one Ctrl-C")
        assert wait_gone(pid, GONE_TIMEOUT), "the remote `logs --follow` outlived the interrupted fab"
        assert "following: compose" in out and "logs --tail 100 --follow" in out
        assert fab.returncode == 130 and "interrupted" in err and "Traceback" not in err
    finally:
        if fab.poll() is None:
            os.killpg(fab.pid, signal.SIGKILL)
            fab.wait()
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_fab_leaves_no_follow_on_the_host(lab: FollowLab) -> None:
    fab, pid = lab.start_follow()
    try:
        os.killpg(fab.pid, signal.SIGKILL)  # no chance to say goodbye: sshd sees the connection drop
        fab.wait()
        assert wait_gone(pid, GONE_TIMEOUT), "the remote `logs --follow` outlived the killed fab"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_lock_status_and_unlock_show_the_lock(lab: FollowLab) -> None:
    status = lab.fab("status")
    assert status.returncode == 0, status.stderr
    prefix = f"{lab.server.label}: lock: "
    assert f"{prefix}unlocked" in status.stdout.splitlines()

    taken = lab.fab("lock", "--reason", REASON)
    assert taken.returncode == 0, taken.stderr
    status = lab.fab("status")
    line = next(x for x in status.stdout.splitlines() if x.startswith(prefix))
    assert line.startswith(f"{prefix}held by ") and line.endswith(f"): {REASON}")
    data = json.loads(lab.fab("status", "--json").stdout)
    assert data["host"] == lab.server.label and data["lock"]["held"] is True
    assert data["lock"]["reason"] == REASON and data["lock"]["via"] == "fab"
    assert without_age(data["lock"]["description"]) == without_age(line.removeprefix(prefix))

    again = lab.fab("lock")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "deploys to this host are stopped: the lock at " in again.stderr and f"{REASON}. Release it" in again.stderr

    released = lab.fab("unlock")
    assert released.returncode == 0, released.stderr
    assert f"{lab.server.label}: lock released; it was held by " in released.stdout
    assert released.stdout.rstrip().endswith(f": {REASON}") and "{" not in released.stdout
    assert f"{prefix}unlocked" in lab.fab("status").stdout.splitlines()
