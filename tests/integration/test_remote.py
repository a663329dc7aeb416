"""`fab` end to end: real sshd on 127.0.0.2-4 (HANDOVER_TEST_SSH_NET moves them), rsync, and the real Docker engine.

Each "host" is an sshd on its own loopback address with its own host key; each gets its own deploy
directory, compose project, port and app image name, as separate machines would have. `fab` runs
as a user runs it, with a config file (-f), a key (-i) and -H.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .conftest import LAB_PORT_SHIFT, LAB_TAG, docker_ready, loopback
from .sshd import SshLab, SshServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
ADDRESSES = [loopback(2), loopback(3), loopback(4)]
PORT_BASE = 28100 + LAB_PORT_SHIFT
FAB_TIMEOUT = 300
PRIVATE_VALUE = "private-value-never-printed-42"
PWNED = Path("/tmp/handover-pwned-marker")  # noqa: S108 - what an injected `touch` would create
TIMINGS: dict[str, float] = {}
CONCURRENT_POST_SWITCH_CHECK = 4


@dataclass
class HostSetup:
    server: SshServer
    deploy_dir: Path
    project: str
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def version(self) -> str:
        return str(requests.get(f"{self.url}/api/info", timeout=5).json()["version"])


@dataclass
class Lab:
    ssh: SshLab
    work: Path
    projects: list[str] = field(default_factory=list)
    counter: int = 0
    prefix: str = "hrt"  # compose projects and ports of their own, for a second lab beside this one
    port_base: int = PORT_BASE

    def close(self, root: Path) -> None:
        """Stop the sshd servers, remove every compose project the lab made, and its files."""
        self.ssh.stop()
        for project in self.projects:
            remove_project(project)
        shutil.rmtree(root, ignore_errors=True)

    def hosts(self, tag: str, servers: list[SshServer], deploy_dir: str | None = None) -> list[HostSetup]:
        made = []
        for server in servers:
            self.counter += 1
            project = f"{self.prefix}-{tag}-{self.counter}"
            self.projects.append(project)
            path = Path(deploy_dir) if deploy_dir else self.work / project / "deploy"
            made.append(HostSetup(server, path, project, self.port_base + self.counter))
        return made

    def config(self, name: str, hosts: list[HostSetup], known_hosts: Path | None = None,
               **extra: Any) -> Path:
        section: dict[str, Any] = {
            "known_hosts": str(known_hosts or self.ssh.known_hosts),
            "drain_timeout": 2,
            "stop_grace_period": 6,
            "releases_kept": 3,
            "hosts": {h.server.address: {"deploy_dir": str(h.deploy_dir), "project": h.project,
                                         "http_port": h.http_port, "app_image": f"{h.project}-app"}
                      for h in hosts},
            **extra,
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"deploy": section}))
        return path

    def fab_command(self, config: Path, hosts: list[HostSetup], *args: str) -> list[str]:
        return [FAB, "-f", str(config), "-i", str(self.ssh.client_key),
                "-H", ",".join(h.server.spec for h in hosts), *args]

    def fab(self, config: Path, hosts: list[HostSetup], *args: str, check: bool = True, root: Path = ROOT
            ) -> subprocess.CompletedProcess[str]:
        """Run fab as a user does; ``root``: another copy of the project to run it from."""
        command = self.fab_command(config, hosts, *args)
        result = subprocess.run(command, cwd=root, env=fab_env(root), capture_output=True, text=True,
                                timeout=FAB_TIMEOUT, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def timed(self, label: str, config: Path, hosts: list[HostSetup], *args: str) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        result = self.fab(config, hosts, *args)
        TIMINGS[label] = round(time.monotonic() - t0, 2)
        return result


def fab_env(root: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
    if root != ROOT:
        env["PYTHONPATH"] = str(root)  # that copy's handover package, so it syncs that copy's files
    return env


def assert_one_healthy_app(host: HostSetup, version: str) -> None:
    """One app container (stopped ones counted), healthy, of ``version``."""
    ids = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={host.project}",
         "--filter", "label=com.docker.compose.service=app"], capture_output=True, text=True, check=True,
    ).stdout.split()
    assert len(ids) == 1, ids
    health, image = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}} {{.Config.Image}}",
                                    ids[0]], capture_output=True, text=True, check=True).stdout.split()
    assert health == "healthy" and image.endswith(f":{version}"), (health, image)


def remove_project(project: str) -> None:
    subprocess.run(["docker", "compose", "--project-name", project, "down", "--timeout", "1", "--remove-orphans"],
                   capture_output=True, check=False)
    images = subprocess.run(["docker", "image", "ls", f"{project}-app", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, check=False).stdout.split()
    if images:
        subprocess.run(["docker", "image", "rm", *images], capture_output=True, check=False)


@contextmanager
def open_lab(tmp_path_factory: pytest.TempPathFactory, name: str, prefix: str, addresses: Sequence[str],
             port_base: int = PORT_BASE) -> Iterator[Lab]:
    """A lab of sshd "hosts" on ``addresses``, with compose projects and ports of its own; everything
    it made (servers, projects, files) is removed on the way out."""
    docker_ready()
    root = tmp_path_factory.mktemp(name)
    the_lab = Lab(SshLab(root / "ssh"), root / "work", prefix=prefix, port_base=port_base)
    the_lab.work.mkdir()
    PWNED.unlink(missing_ok=True)
    try:
        the_lab.ssh.start(list(addresses))
        yield the_lab
    finally:
        the_lab.close(root)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory, "remote", f"hrt{LAB_TAG}", ADDRESSES) as the_lab:
        yield the_lab
    if TIMINGS:
        print("\nremote timings (s):", TIMINGS)


@pytest.fixture(scope="module")
def web1(lab: Lab) -> tuple[Path, HostSetup]:
    """One host with a running stack (started by its first deploy), secrets included."""
    [host] = lab.hosts("one", lab.ssh.servers[:1])
    secrets = lab.work / "app.env"
    secrets.write_text(f"APP_SECRET_TOKEN={PRIVATE_VALUE}\n")
    config = lab.config("web1", [host], env_file=str(secrets))
    setup = lab.fab(config, [host], "setup")
    assert "is ready for deploys" in setup.stdout
    assert stat.S_IMODE(host.deploy_dir.stat().st_mode) == 0o750
    first = lab.timed("first deploy, starts the stack", config, [host], "deploy", "--version", "r1")
    assert "==> proxy: start the proxy" in first.stdout  # nothing served yet: the first start
    # One run, one record: the first deploy, with the sync's timing in it.
    (record,) = [json.loads(line) for line in (host.deploy_dir / ".state" / "releases.jsonl").read_text().splitlines()]
    assert (record["action"], record["result"], record["host"]) == ("deploy", "success", host.server.label)
    assert [s["name"] for s in record["steps"]][:3] == ["lock", "sync", "preflight"]
    assert all(isinstance(s["seconds"], float) for s in record["steps"])
    assert host.version() == "r1"
    release = os.readlink(host.deploy_dir / "current").rpartition("/")[2]
    env_copy = lab.ssh.home / ".config" / "handover" / host.project / f"{release}.env"  # the release's own
    assert env_copy.read_text() == secrets.read_text()
    assert stat.S_IMODE(env_copy.stat().st_mode) == 0o600
    assert PRIVATE_VALUE not in first.stdout + first.stderr
    return config, host


def test_deploy_under_load_has_zero_failures(lab: Lab, web1: tuple[Path, HostSetup]) -> None:
    from handover.probe import Probe, ProbeSettings

    config, host = web1
    probe = Probe(ProbeSettings(base_url=host.url, rate=50, ws_clients=10))
    probe.start()
    try:
        time.sleep(1.5)
        result = lab.timed("deploy r2, one host", config, [host], "deploy", "--version", "r2")
        time.sleep(1.0)
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    assert host.version() == "r2"
    assert "deploy success: r1 -> r2" in result.stdout
    current = os.readlink(host.deploy_dir / "current")
    assert current.startswith("releases/") and current.endswith("Z-r2")  # relative, swapped
    assert len(list((host.deploy_dir / "releases").iterdir())) == 2
    assert PRIVATE_VALUE not in result.stdout + result.stderr
    assert_one_healthy_app(host, "r2")  # the old container drained and removed
    assert not (host.deploy_dir / ".state" / "lock").exists()


def test_rollback_restores_previous_version(lab: Lab, web1: tuple[Path, HostSetup]) -> None:
    config, host = web1
    before = host.version()
    lab.fab(config, [host], "deploy", "--version", "r3")
    assert host.version() == "r3"
    release_dirs = sorted(p.name for p in (host.deploy_dir / "releases").iterdir())
    result = lab.timed("rollback, one host", config, [host], "rollback")
    assert host.version() == before
    assert "rollback success: r3 -> " + before in result.stdout
    assert "sync" not in result.stdout and "build" not in result.stdout  # no sync, no rebuild
    assert sorted(p.name for p in (host.deploy_dir / "releases").iterdir()) == release_dirs
    assert os.readlink(host.deploy_dir / "current").endswith(f"Z-{before}")
    history = lab.fab(config, [host], "releases").stdout
    assert "rollback r3" not in history and f"rollback {before}" in history


def test_lock_refuses_a_second_deploy_until_unlocked(lab: Lab, web1: tuple[Path, HostSetup]) -> None:
    config, host = web1
    before = host.version()
    releases = sorted((host.deploy_dir / "releases").iterdir())
    lab.fab(config, [host], "lock", "--reason", "db migration")
    refused = lab.fab(config, [host], "deploy", "--version", "r9", check=False)
    assert refused.returncode != 0
    assert re.search(r"held by \S+ since \S+ \(\d+ s\): db migration", refused.stderr), refused.stderr
    assert "another deploy holds the lock" not in refused.stderr
    assert host.version() == before
    assert sorted((host.deploy_dir / "releases").iterdir()) == releases  # nothing synced either
    freed = lab.fab(config, [host], "unlock")
    assert "lock released" in freed.stdout
    assert not (host.deploy_dir / ".state" / "lock").exists()


def test_two_deploys_at_once_one_is_refused(lab: Lab, web1: tuple[Path, HostSetup]) -> None:
    """Two real `fab deploy`s to one host: the second, started while the first waits for health, is
    refused naming the first; the first finishes; one version serves, one container, no lock."""
    from handover.probe import Probe, ProbeSettings

    _, host = web1
    # A post-switch check keeps the first deploy's lock held well past the second's start.
    config = lab.config("web1-slow", [host], env_file=str(lab.work / "app.env"),
                        post_switch_check=CONCURRENT_POST_SWITCH_CHECK)
    probe = Probe(ProbeSettings(base_url=host.url, rate=50, ws_clients=10))
    probe.start()
    try:
        first = subprocess.Popen(lab.fab_command(config, [host], "deploy", "--version", "c1"), cwd=ROOT,
                                 env=fab_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 stdin=subprocess.DEVNULL)
        assert first.stdout is not None
        seen = []
        for line in first.stdout:
            seen.append(line)
            if line.startswith("==> health"):
                break
        second = lab.fab(config, [host], "deploy", "--version", "c2", check=False)
        rest, _ = first.communicate(timeout=FAB_TIMEOUT)
        output = "".join(seen) + rest
    finally:
        report = probe.stop()
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another deploy holds the lock" in second.stderr, second.stderr
    assert ": deploy c1 (" in second.stderr and "held by " in second.stderr, second.stderr
    assert first.returncode == 0, output
    assert "deploy success: " in output and "-> c1" in output, output
    assert report.ok, report.format_table()
    assert host.version() == "c1"
    assert os.readlink(host.deploy_dir / "current").endswith("Z-c1")
    assert not any(p.name.endswith("Z-c2") for p in (host.deploy_dir / "releases").iterdir())  # c2 synced nothing
    assert_one_healthy_app(host, "c1")
    assert not (host.deploy_dir / ".state" / "lock").exists()


def test_unknown_or_changed_host_key_is_refused(lab: Lab) -> None:
    [host] = lab.hosts("nokey", lab.ssh.servers[:1])
    empty = lab.work / "empty_known_hosts"
    empty.write_text("")
    config = lab.config("nokey", [host], known_hosts=empty)
    result = lab.fab(config, [host], "deploy", "--version", "r1", check=False)
    assert result.returncode != 0
    assert "is not in" in result.stderr and "refusing to connect" in result.stderr
    assert f"ssh-keyscan -p {host.server.port} {host.server.address}" in result.stderr
    assert not host.deploy_dir.exists() and not host.deploy_dir.parent.exists()

    wrong = lab.work / "wrong_known_hosts"  # .2 recorded with .3's key
    wrong.write_text(f"[{host.server.address}]:{host.server.port} {lab.ssh.servers[1].host_key_line}\n")
    changed = lab.fab(lab.config("changed", [host], known_hosts=wrong), [host], "setup", check=False)
    assert changed.returncode != 0 and "has CHANGED" in changed.stderr
    assert not host.deploy_dir.parent.exists()

    trusted = lab.work / "tofu_known_hosts"
    config = lab.config("tofu", [host], known_hosts=trusted)
    lab.fab(config, [host], "setup", "--accept-new")
    assert host.server.host_key_line in trusted.read_text()
    lab.fab(config, [host], "status")  # now known


def test_invalid_config_exits_2_before_connecting(lab: Lab) -> None:
    [host] = lab.hosts("badcfg", lab.ssh.servers[:1])
    config = lab.config("badcfg", [host])
    data = yaml.safe_load(config.read_text())
    data["deploy"]["hosts"][host.server.address]["http_port"] = "eighty"
    config.write_text(yaml.safe_dump(data))
    result = lab.fab(config, [host], "setup", check=False)
    assert result.returncode == 2
    assert f"deploy.hosts.{host.server.address}.http_port" in result.stderr
    assert not host.deploy_dir.parent.exists()


def test_shell_metacharacters_in_config_are_quoted(lab: Lab) -> None:
    nasty = str(lab.work / f"odd dir $(touch {PWNED}) `touch {PWNED}`; touch {PWNED}")
    [host] = lab.hosts("quoted", lab.ssh.servers[1:2], deploy_dir=nasty)
    config = lab.config("quoted", [host])
    lab.fab(config, [host], "setup")
    lab.fab(config, [host], "deploy", "--version", "q1")
    lab.fab(config, [host], "deploy", "--version", "q2")
    assert host.version() == "q2"
    assert Path(nasty).is_dir() and (Path(nasty) / "current").is_symlink()
    assert not PWNED.exists()


def test_three_hosts_roll_one_and_three_at_a_time(lab: Lab) -> None:
    hosts = lab.hosts("roll", lab.ssh.servers)
    config = lab.config("roll", hosts)
    lab.fab(config, hosts, "setup")
    lab.timed("3 hosts, first deploy, K=3", config, hosts, "deploy", "--version", "m1", "--parallel", "3")
    assert [h.version() for h in hosts] == ["m1"] * 3

    k1 = lab.timed("3 hosts, K=1", config, hosts, "deploy", "--version", "m2")
    assert [h.version() for h in hosts] == ["m2"] * 3
    assert "3 of 3 host(s) done" in k1.stdout
    k3 = lab.timed("3 hosts, K=3", config, hosts, "deploy", "--version", "m3", "--parallel", "3")
    assert [h.version() for h in hosts] == ["m3"] * 3
    assert "3 of 3 host(s) done" in k3.stdout

    # The second host is locked: the rollout stops there; the third host is not touched.
    lab.fab(config, hosts[1:2], "lock")
    stopped = lab.fab(config, hosts, "deploy", "--version", "m4", check=False)
    assert stopped.returncode != 0
    assert [h.version() for h in hosts] == ["m4", "m3", "m3"]
    assert "1 of 3 host(s) done; stopped at the first failure" in stopped.stdout
    lines = {line.split()[0]: line for line in stopped.stdout.splitlines() if line.startswith("    127.")}
    assert "done" in lines[hosts[0].server.label] and "m4" in lines[hosts[0].server.label]
    assert "FAILED" in lines[hosts[1].server.label] and "m3" in lines[hosts[1].server.label]
    assert "not started" in lines[hosts[2].server.label] and "m3" in lines[hosts[2].server.label]
    lab.fab(config, hosts[1:2], "unlock")
