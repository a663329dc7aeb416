"""The SSH front door against real sshd (no Docker): jump hosts, timeouts, known_hosts and login errors.

A jump sshd on 127.0.0.61 forwards to a target sshd on 127.0.0.62 (both with generated host keys,
one generated client key). The target is reachable directly too (both are on loopback), so each
test that is about the route checks the jump's own log for the forwarding it did. A plain socket
on 127.0.0.63 that accepts and never finishes the SSH handshake stands for a dead host.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fabric import Config

from fabfile import hostconfig
from fabfile.connect import SSH_CONNECT_TIMEOUT, connected, open_remote, rsync_destination, rsync_shell
from fabfile.hostkeys import HostKeyRefused
from handover.cli import defaults
from handover.errors import HandoverError

from .sshd import SshLab, SshServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
JUMP, TARGET, SILENT = "127.0.0.61", "127.0.0.62", "127.0.0.63"
PORT = 28461
SHORT_TIMEOUT = 2
SLACK = 4.0  # seconds a bounded failure may take beyond its timeout
BANNER = b"SSH-2.0-OpenSSH_9.2 silent\r\n"


@dataclass
class JumpLab:
    ssh: SshLab
    work: Path

    @property
    def jump(self) -> SshServer:
        return self.ssh.servers[0]

    @property
    def target(self) -> SshServer:
        return self.ssh.servers[1]

    def file(self, name: str, text: str) -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def known_hosts(self, name: str, *servers: SshServer) -> Path:
        return self.file(name, "".join(s.known_hosts_line + "\n" for s in servers))

    def ssh_config(self, name: str, alias: str, host: str, jump: bool = True, hops: int = 1, **extra: str) -> Path:
        lines = [f"Host {alias}", f"    HostName {host}", f"    Port {PORT}", "    User root"]
        if jump:
            lines.append("    ProxyJump " + ",".join([f"root@{JUMP}:{PORT}"] * hops))
        lines += [f"    {key} {value}" for key, value in extra.items()]
        return self.file(name, "\n".join(lines) + "\n")

    def fabric(self, ssh_config: Path | None = None, timeout: int | None = None, key: Path | None = None,
               with_key: bool = True) -> Config:
        """The configuration `fab -S ssh_config -t timeout -i key` gives."""
        overrides: dict[str, Any] = {}
        if with_key:
            overrides["connect_kwargs"] = {"key_filename": [str(key or self.ssh.client_key)]}
        if timeout:
            overrides["timeouts"] = {"connect": timeout}
        return Config(runtime_ssh_path=str(ssh_config) if ssh_config else None, overrides=overrides)

    def forwards(self, to: str = TARGET) -> int:
        """How many connections to ``to`` the jump sshd has forwarded so far."""
        return len(re.findall(rf"connected to {re.escape(to)} port {PORT}", self.jump.log.read_text(errors="replace")))


def section(**overrides: Any) -> dict[str, Any]:
    merged = dict(defaults()["deploy"])
    merged.update(defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"])
    merged.update(overrides)
    return merged


def target(spec: str, **overrides: Any) -> hostconfig.Target:
    return hostconfig.load(section(**overrides), [spec]).targets[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JumpLab]:
    root = tmp_path_factory.mktemp("sshhard")
    ssh = SshLab(root / "ssh")
    try:
        ssh.start([JUMP, TARGET], port=PORT, options={JUMP: ["AllowTcpForwarding yes", "LogLevel DEBUG1"]})
        yield JumpLab(ssh, root / "work")
    finally:
        ssh.stop()
        shutil.rmtree(root, ignore_errors=True)


class SilentServer:
    """Accepts TCP connections on SILENT and never completes an SSH handshake (``banner``: what it
    says first, if anything)."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.listener = socket.create_server((SILENT, PORT))
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self.banner:
                sock.sendall(self.banner)
            self.held.append(sock)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.listener.close()
        self.thread.join()
        for sock in self.held:
            sock.close()


@pytest.fixture(params=[b"", BANNER], ids=["no-greeting", "greeting-then-nothing"])
def silent(request: pytest.FixtureRequest) -> Iterator[SilentServer]:
    server = SilentServer(request.param)
    try:
        yield server
    finally:
        server.close()


# --- 1. ProxyJump hops are checked like the target -------------------------------------------------


def test_jump_host_with_unknown_key_is_refused(lab: JumpLab) -> None:
    known = lab.known_hosts("target_only_known_hosts", lab.target)
    cfg = lab.fabric(lab.ssh_config("jump_config", "behind-jump", TARGET))
    before = lab.forwards()
    with pytest.raises(HostKeyRefused) as info:
        open_remote(cfg, target("behind-jump", known_hosts=str(known)), known)
    message = str(info.value)
    assert f"the host key of [{JUMP}]:{PORT} (jump host on the way to behind-jump) is not in {known}" in message
    assert f"ssh-keyscan -p {PORT} {JUMP}" in message
    assert lab.forwards() == before  # refused before anything went through the jump host


def test_jump_host_with_changed_key_is_refused(lab: JumpLab) -> None:
    known = lab.file("changed_jump_known_hosts",
                     f"[{JUMP}]:{PORT} {lab.target.host_key_line}\n{lab.target.known_hosts_line}\n")
    cfg = lab.fabric(lab.ssh_config("jump_config", "behind-jump", TARGET))
    with pytest.raises(HostKeyRefused) as info:
        open_remote(cfg, target("behind-jump", known_hosts=str(known)), known)
    assert f"[{JUMP}]:{PORT} (jump host on the way to behind-jump) has CHANGED" in str(info.value)


def test_known_jump_host_connects_through_it(lab: JumpLab) -> None:
    cfg = lab.fabric(lab.ssh_config("jump_config", "behind-jump", TARGET))
    before = lab.forwards()
    with connected(cfg, target("behind-jump", known_hosts=str(lab.ssh.known_hosts)), lab.ssh.known_hosts) as remote:
        assert remote.conn.run("echo reached", hide=True, in_stream=False).stdout.strip() == "reached"
    assert lab.forwards() == before + 1


def test_jump_host_that_refuses_to_forward_is_named(lab: JumpLab) -> None:
    """The target's sshd (AllowTcpForwarding no) used as the jump host to the other one."""
    config = lab.file("no_forward_config", f"Host via-no-forward\n    HostName {JUMP}\n    Port {PORT}\n"
                                           f"    ProxyJump root@{TARGET}:{PORT}\n")
    with pytest.raises(HandoverError) as info:
        open_remote(lab.fabric(config), target("via-no-forward", known_hosts=str(lab.ssh.known_hosts)),
                    lab.ssh.known_hosts)
    assert (f"the jump host root@[{TARGET}]:{PORT} (jump host on the way to via-no-forward) could not open a "
            f"connection to [{JUMP}]:{PORT}") in str(info.value)


# --- 3. rsync takes the same route, strictly ------------------------------------------------------


def test_rsync_goes_through_the_jump_host_and_checks_its_key(lab: JumpLab, tmp_path: Path) -> None:
    known = lab.file("rsync_known_hosts", lab.ssh.known_hosts.read_text())
    source = tmp_path / "src"
    source.mkdir()
    (source / "release.txt").write_text("r1\n")
    dest = tmp_path / "dest with space"
    cfg = lab.fabric(lab.ssh_config("jump_config", "behind-jump", TARGET))
    with connected(cfg, target("behind-jump", known_hosts=str(known)), known) as remote:
        before = lab.forwards()
        rsync = ["rsync", "--archive", "--protect-args", "-e", rsync_shell(remote), f"{source}/",
                 rsync_destination(remote, f"{dest}/")]
        done = subprocess.run(rsync, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert (dest / "release.txt").read_text() == "r1\n"
        assert lab.forwards() == before + 1

        # The same command once the jump host's key is no longer trusted: ssh refuses the hop.
        known.write_text(lab.target.known_hosts_line + "\n")
        (source / "release.txt").write_text("r2\n")
        refused = subprocess.run(rsync, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert refused.returncode != 0
    assert "Host key verification failed" in refused.stderr
    assert (dest / "release.txt").read_text() == "r1\n"


def test_two_hops_with_awkward_known_hosts_path(lab: JumpLab) -> None:
    """ProxyJump hop1,hop2 (the jump host twice: hop2 is reached through hop1), and a known_hosts
    path with a blank and a '%' that ssh must not take for a token, at every level."""
    known = lab.file("odd 100%/known_hosts", lab.ssh.known_hosts.read_text())
    cfg = lab.fabric(lab.ssh_config("two_hops_config", "two-hops", TARGET, hops=2))
    spec = target("two-hops", known_hosts=str(known))
    before = (lab.forwards(), lab.forwards(JUMP))
    with connected(cfg, spec, known) as remote:
        assert remote.conn.run("echo two", hide=True, in_stream=False).stdout.strip() == "two"
        assert (lab.forwards(), lab.forwards(JUMP)) == (before[0] + 1, before[1] + 1)
        dest = lab.work / "two-hops-dest"
        done = subprocess.run(["rsync", "--archive", "-e", rsync_shell(remote), str(known),
                               rsync_destination(remote, f"{dest}/")],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert (dest / "known_hosts").read_text() == known.read_text()
        assert (lab.forwards(), lab.forwards(JUMP)) == (before[0] + 2, before[1] + 2)


# --- 2. bounded connect -------------------------------------------------------------------------


def _timed_failure(cfg: Config, spec: str, known: Path, limit: float) -> tuple[str, float]:
    """open_remote's error message and how long it took; fails the test if it takes over ``limit``."""
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            open_remote(cfg, target(spec, known_hosts=str(known)), known)
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(limit)
    elapsed = time.monotonic() - t0
    assert not worker.is_alive(), f"connecting to {spec} still hangs after {limit:g} s"
    assert outcome and isinstance(outcome[0], HandoverError), outcome
    return str(outcome[0]), elapsed


def test_host_that_never_answers_fails_within_the_given_timeout(lab: JumpLab, silent: SilentServer) -> None:
    message, elapsed = _timed_failure(lab.fabric(timeout=SHORT_TIMEOUT), f"root@{SILENT}:{PORT}",
                                      lab.ssh.known_hosts, SHORT_TIMEOUT + SLACK)
    assert elapsed >= SHORT_TIMEOUT - 0.5
    assert f"cannot connect to root@[{SILENT}]:{PORT}: no SSH answer within {SHORT_TIMEOUT} s" in message
    assert "fab -t SECONDS" in message


def test_host_that_stalls_after_its_greeting_fails_within_the_default_timeout(lab: JumpLab) -> None:
    server = SilentServer(BANNER)
    try:
        message, _ = _timed_failure(lab.fabric(), f"root@{SILENT}:{PORT}", lab.ssh.known_hosts,
                                    SSH_CONNECT_TIMEOUT + SLACK)
    finally:
        server.close()
    assert f"[{SILENT}]:{PORT}: no SSH answer within {SSH_CONNECT_TIMEOUT} s" in message


def test_dead_host_behind_a_jump_host_fails_within_the_timeout(lab: JumpLab) -> None:
    server = SilentServer(BANNER)
    cfg = lab.fabric(lab.ssh_config("silent_config", "dead-behind-jump", SILENT), timeout=SHORT_TIMEOUT)
    try:
        message, _ = _timed_failure(cfg, "dead-behind-jump", lab.ssh.known_hosts, SHORT_TIMEOUT + SLACK)
    finally:
        server.close()
    assert f"[{SILENT}]:{PORT}: no SSH answer within {SHORT_TIMEOUT} s" in message


def test_closed_port_says_connection_refused(lab: JumpLab) -> None:
    spec = f"root@{SILENT}:{PORT}"  # nothing listens there outside the tests above
    with pytest.raises(HandoverError) as info:
        open_remote(lab.fabric(), target(spec, known_hosts=str(lab.ssh.known_hosts)), lab.ssh.known_hosts)
    assert f"cannot connect to root@[{SILENT}]:{PORT}: connection refused" in str(info.value)


# --- 4. ssh_config's UserKnownHostsFile ----------------------------------------------------------


def test_user_known_hosts_file_from_ssh_config_is_used_unless_deploy_known_hosts_is_set(lab: JumpLab) -> None:
    listed = lab.file("ssh config dir/known hosts", lab.target.known_hosts_line + "\n")
    empty = lab.file("empty_known_hosts", "")
    cfg = lab.fabric(lab.ssh_config("kh_config", "kh-target", TARGET, jump=False,
                                    UserKnownHostsFile=f'"{listed}"'))
    # deploy.known_hosts unset: the default file (empty here) gives way to ssh_config's file.
    with connected(cfg, target("kh-target"), empty) as remote:
        assert remote.known_hosts == listed
        done = subprocess.run(["rsync", "--archive", "-e", rsync_shell(remote), str(listed),
                               rsync_destination(remote, str(lab.work / "kh-copy"))],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
    # deploy.known_hosts set: it wins.
    with pytest.raises(HostKeyRefused) as info:
        open_remote(cfg, target("kh-target", known_hosts=str(empty)), empty)
    assert f"is not in {empty}" in str(info.value)


# --- 5. the suggested commands work where ~/.ssh does not exist -----------------------------------


def test_suggested_commands_add_the_key_where_the_directory_is_missing(lab: JumpLab, tmp_path: Path) -> None:
    known = tmp_path / "fresh home" / ".ssh" / "known_hosts"
    spec = f"root@{TARGET}:{PORT}"
    with pytest.raises(HostKeyRefused) as info:
        open_remote(lab.fabric(), target(spec, known_hosts=str(known)), known)
    message = str(info.value)
    assert "out of band" in message
    commands = [line.strip() for line in message.splitlines() if line.startswith("      ")]
    assert commands and commands[0].startswith("mkdir -p -m 700 ")
    for command in commands:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    assert lab.target.host_key_line in known.read_text()
    assert (known.parent.stat().st_mode & 0o777) == 0o700
    with connected(lab.fabric(), target(spec, known_hosts=str(known)), known) as remote:
        assert remote.conn.run("true", hide=True, in_stream=False).ok


# --- 7. no usable key ---------------------------------------------------------------------------


def test_login_without_a_key_says_what_was_tried(lab: JumpLab, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* here
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    spec = f"root@{TARGET}:{PORT}"
    with pytest.raises(HandoverError) as info:
        open_remote(lab.fabric(with_key=False), target(spec, known_hosts=str(lab.ssh.known_hosts)),
                    lab.ssh.known_hosts)
    message = str(info.value)
    assert f"SSH login to root@[{TARGET}]:{PORT} failed" in message
    assert "no key was found" in message and "-i KEY" in message and "IdentityFile" in message

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(HandoverError) as info:
        open_remote(lab.fabric(key=other), target(spec, known_hosts=str(lab.ssh.known_hosts)), lab.ssh.known_hosts)
    assert f"the keys tried were {other};" in str(info.value)


# --- 6 and 8 through `fab` itself -----------------------------------------------------------------


def _fab(lab: JumpLab, name: str, deploy: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    config = lab.file(f"{name}.yaml", yaml.safe_dump({"deploy": deploy}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
    return subprocess.run([FAB, "-f", str(config), "-i", str(lab.ssh.client_key), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_mistyped_host_lists_the_configured_ones(lab: JumpLab) -> None:
    hosts = {"prod": {"hostname": TARGET, "port": PORT}, "staging": {"hostname": JUMP, "port": PORT}}
    result = _fab(lab, "typo", {"known_hosts": str(lab.ssh.known_hosts), "hosts": hosts}, "-H", "prdo", "status")
    assert result.returncode == 1
    assert "'prdo' does not resolve" in result.stderr
    assert "not one of the hosts configured under deploy.hosts: prod, staging (did you mean -H prod?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_known_hosts_line_is_named_not_a_traceback(lab: JumpLab) -> None:
    truncated = lab.jump.known_hosts_line[:-3]  # a line cut short, as a bad copy and paste leaves it
    known = lab.file("corrupt_known_hosts", f"{lab.target.known_hosts_line}\n{truncated}\n")
    result = _fab(lab, "corrupt", {"known_hosts": str(known)}, "-H", f"root@{TARGET}:{PORT}", "status")
    assert result.returncode == 1
    assert f"{known} line 2 is not a valid known_hosts entry" in result.stderr
    assert "Traceback" not in result.stderr
