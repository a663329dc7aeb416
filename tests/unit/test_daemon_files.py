"""deploy.proxy_files: which mode ``auto`` picks, what the compose file then mounts, and how the proxy's
files are written through the Docker daemon (handover/proxies/daemonfiles.py) without a byte of the TLS
key on a command line. The whole path against a real daemon that cannot see the checkout is
tests/integration/test_daemon_elsewhere.py."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from handover import settings as settings_module
from handover.backends.compose import PROXY_VOLUME_ENV, ComposeBackend, check_docker, compose_env, volume_names
from handover.errors import ConfigError, DockerHostUnreachable
from handover.proxies import make_proxy, proxy_files
from handover.proxies.daemonfiles import DaemonFiles, exec_line, files_container
from handover.proxies.nginx import NginxProxy
from handover.proxies.tls import write_private
from handover.settings import PROJECT_ROOT, daemon_elsewhere

from .fakehost import fake_settings

DEFAULTS = settings_module.DEFAULTS_FILE


def config(**overrides: object) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULTS.read_text())["deploy"]
    return {**data, **overrides}


@dataclasses.dataclass
class Done:
    """What the recording runner answers."""

    stdout: str = ""
    stderr: str = ""
    exited: int = 0


class Recorder:
    """A runner that records each command line (and its stdin) and answers from ``answers`` by prefix."""

    def __init__(self, answers: dict[str, Done] | None = None) -> None:
        self.lines: list[str] = []
        self.stdin: list[str] = []
        self.answers = answers or {}

    def run(self, command: str, **kwargs: Any) -> Done:
        self.lines.append(command)
        stream = kwargs.get("in_stream")
        if isinstance(stream, io.StringIO):
            self.stdin.append(stream.getvalue())
        for prefix, answer in self.answers.items():
            if command.startswith(prefix):
                return answer
        return Done()


@pytest.mark.parametrize(("environ", "platform", "docker_config", "elsewhere"), [
    ({}, "linux", None, False),
    ({"DOCKER_HOST": "unix:///var/run/docker.sock"}, "linux", None, False),
    ({"DOCKER_HOST": "tcp://127.0.0.1:2375"}, "linux", None, True),
    ({"DOCKER_HOST": "ssh://me@build-box"}, "linux", None, True),
    ({}, "darwin", None, True),
    ({}, "win32", None, True),
    ({"DOCKER_CONTEXT": "desktop-linux"}, "linux", None, True),
    ({"DOCKER_CONTEXT": "default"}, "linux", json.dumps({"currentContext": "desktop-linux"}), False),
    ({}, "linux", json.dumps({"currentContext": "desktop-linux"}), True),
    ({}, "linux", json.dumps({"currentContext": "default"}), False),
    ({}, "linux", "{not json", False),
])
def test_auto_finds_a_daemon_that_may_not_see_this_machines_files(environ: dict[str, str], platform: str,
                                                                   docker_config: str | None, elsewhere: bool) -> None:
    assert bool(daemon_elsewhere(environ, platform, docker_config)) is elsewhere


def test_proxy_files_is_bind_volume_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_module.load(config(proxy_files="volume")).proxy_files == "volume"
    assert settings_module.load(config(proxy_files="bind")).proxy_files == "bind"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert settings_module.load(config(proxy_files="auto")).proxy_volumes
    assert not settings_module.load(config(proxy_files="bind")).proxy_volumes
    with pytest.raises(ConfigError, match=r"deploy\.proxy_files: expected auto or bind or volume, got 'nfs'"):
        settings_module.load(config(proxy_files="nfs"))


def test_a_synced_release_always_binds_the_state_directory() -> None:
    s = settings_module.load(config(proxy_files="volume", source_subdir="current"), deploy_dir="/srv/shop")
    assert s.proxy_files == "volume" and not s.proxy_volumes
    assert "PROXY_UPSTREAM" not in compose_env(s)


def test_the_compose_file_mounts_named_volumes_and_nothing_of_this_machine_in_volume_mode(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    env = compose_env(s)
    assert {k: env[k] for k in PROXY_VOLUME_ENV} == PROXY_VOLUME_ENV
    done = subprocess.run(["docker", "compose", "--project-name", "lap-unit", "--file",
                           str(PROJECT_ROOT / "compose" / "docker-compose.yml"), "config", "--format", "json"],
                          env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=60)
    model = json.loads(done.stdout)
    for service in ("app", "nginx"):
        kinds = {(v["type"], v["source"]) for v in model["services"][service]["volumes"]}
        assert all(kind == "volume" for kind, _ in kinds), (service, kinds)
    keeper = model["services"]["proxy-files"]
    assert keeper["network_mode"] == "none"
    assert {v["target"] for v in keeper["volumes"]} == {s.deploy_dir, f"{s.state_path}/nginx", f"{s.state_path}/tls",
                                                         f"{s.state_path}/sockets"}
    assert sorted(v["name"] for v in model["volumes"].values()) == sorted(
        name.replace(s.project, "lap-unit") for name in volume_names(s))
    # bind mode (the default here): the state directory, and no files container
    plain = compose_env(fake_settings(tmp_path))
    done = subprocess.run(["docker", "compose", "--project-name", "lap-unit", "--file",
                           str(PROJECT_ROOT / "compose" / "docker-compose.yml"), "config", "--format", "json"],
                          env={**os.environ, **plain}, capture_output=True, text=True, check=True, timeout=60)
    model = json.loads(done.stdout)
    assert "proxy-files" not in model["services"] and not model.get("volumes")
    assert {v["type"] for v in model["services"]["nginx"]["volumes"]} == {"bind"}


def test_files_commands_run_in_the_files_container_started_on_first_use(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    runner = Recorder({"docker container inspect": Done(exited=1, stderr="No such container")})
    files = DaemonFiles(runner, s, lambda: "localhost/debian-minbase:bookworm")
    files.run("cat /x", hide=True, warn=True)
    files.run("ls /y", hide=True, warn=True)
    inspect, up, first, second = runner.lines
    assert inspect.startswith("docker container inspect") and inspect.endswith(files_container(s))
    assert "PROXY_FILES_IMAGE=localhost/debian-minbase:bookworm" in up and "COMPOSE_PROFILES=proxy-volumes" in up
    assert shlex.split(up)[-4:] == ["up", "--detach", "--no-deps", "proxy-files"]
    assert first == exec_line(files_container(s), "cat /x") == f"docker exec {s.project}-proxy-files-1 sh -c 'cat /x'"
    assert second == exec_line(files_container(s), "ls /y")


def test_a_running_files_container_is_not_started_again(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    runner = Recorder({"docker container inspect": Done(stdout="true\n")})
    DaemonFiles(runner, s, lambda: pytest.fail("the image is not needed")).run("true")
    assert len(runner.lines) == 2 and not any(" up " in line for line in runner.lines)


def test_the_tls_pair_reaches_the_files_container_on_stdin_only(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    runner = Recorder({"docker container inspect": Done(stdout="true\n")})
    files = DaemonFiles(runner, s, lambda: "img")
    secret = b"-----BEGIN PRIVATE KEY-----\nS3CR3T\n-----END PRIVATE KEY-----\n"
    write_private(files, "/state/tls/abc.pem", secret)
    assert not any("S3CR3T" in line or "UzNDUjNU" in line for line in runner.lines)
    put = shlex.split(runner.lines[-1])
    assert put[:4] == ["docker", "exec", "-i", files_container(s)] and put[-3:] == ["put", "/state/tls/abc.pem", "600"]
    assert base64.b64decode(runner.stdin[-1]) == secret


def test_a_failed_write_names_the_file_not_the_content(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    runner = Recorder({"docker container inspect": Done(stdout="true\n"),
                       "docker exec -i": Done(exited=1, stderr="No space left on device")})
    with pytest.raises(Exception, match=r"writing /state/tls/abc\.pem in .*No space left.*content is not shown"):
        DaemonFiles(runner, s, lambda: "img").put_private("/state/tls/abc.pem", b"S3CR3T", 0o600)


def test_the_proxy_uses_the_files_container_only_in_volume_mode(tmp_path: Path) -> None:
    runner = Recorder()
    volume = fake_settings(tmp_path, proxy_files="volume")
    proxy = make_proxy(runner, volume, ComposeBackend(runner, volume))
    assert isinstance(proxy, NginxProxy) and isinstance(proxy.files, DaemonFiles)
    assert proxy.tls.runner is proxy.files
    bind = fake_settings(tmp_path)
    assert proxy_files(runner, bind) is runner
    assert make_proxy(runner, bind, ComposeBackend(runner, bind)).files is runner  # type: ignore[attr-defined]


def test_down_removes_the_volumes_and_a_stopped_stack_reads_nothing(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    runner = Recorder({"docker container inspect": Done(stdout="false\n"), "docker ps": Done(stdout="")})
    proxy = make_proxy(runner, s, ComposeBackend(runner, s))
    assert proxy.live_ids() == set()
    assert not any(line.startswith("docker exec") or " up " in line for line in runner.lines), runner.lines
    proxy.remove_state()
    assert shlex.split(runner.lines[-1]) == ["docker", "volume", "rm", "--force", *volume_names(s)]


def test_nginx_sources_are_copied_into_their_volume_once_per_run(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, proxy_files="volume")
    runner = Recorder({"docker container inspect": Done(stdout="true\n")})
    proxy = make_proxy(runner, s, ComposeBackend(runner, s))
    proxy.prepare()
    proxy.prepare()
    copies = [shlex.split(line) for line in runner.lines if "tar -C" in line]
    assert len(copies) == 1 and copies[0][-3:] == [s.source_path, files_container(s), "nginx"], copies


def test_an_unreachable_docker_host_is_named_and_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    refused = Done(exited=1, stderr="Cannot connect to the Docker daemon at tcp://127.0.0.1:1. Is the docker "
                                    "daemon running?")
    runner = Recorder({"docker version": refused, "docker compose version": Done(stdout="2.40.3")})
    check = check_docker(runner, "tcp://127.0.0.1:1")
    assert not check.ok and "no Docker daemon answers at DOCKER_HOST=tcp://127.0.0.1:1" in check.detail
    with pytest.raises(DockerHostUnreachable) as caught:
        ComposeBackend(runner, fake_settings(tmp_path)).diagnose()
    assert caught.value.exit_code == 2 and "DOCKER_HOST=tcp://127.0.0.1:1" in str(caught.value)
    # Without DOCKER_HOST it is the host's state, as before (exit 1, the usual advice).
    monkeypatch.delenv("DOCKER_HOST")
    with pytest.raises(Exception, match="start dockerd") as other:
        ComposeBackend(runner, fake_settings(tmp_path)).diagnose()
    assert not isinstance(other.value, DockerHostUnreachable)


@pytest.mark.parametrize(("mode", "made_with", "refused"), [
    ("volume", "bind", True), ("volume", "volume", False), ("bind", "volume", True), ("bind", "bind", False)])
def test_a_proxy_made_in_the_other_mode_is_refused_before_anything_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, made_with: str, refused: bool) -> None:
    from handover.backends import Instance

    s = fake_settings(tmp_path, proxy_files=mode)
    runner = Recorder({"docker container inspect": Done(stdout="true\n")})
    proxy = make_proxy(runner, s, ComposeBackend(runner, s))
    nginx = Instance("f" * 64, f"{s.project}-nginx-1", "nginx", "", "img", "running", "healthy", 0, "now",
                     mounts=(f"{made_with}:/etc/handover", f"{made_with}:/etc/nginx/upstream.d"))
    monkeypatch.setattr(proxy, "running", lambda: nginx)
    assert isinstance(proxy, NginxProxy)
    if mode == "bind":  # bind mode looks at nginx's container only with TLS on (it does then anyway)
        if refused:
            with pytest.raises(ConfigError, match=r"made with volume mounts.*inv local\.down && inv local\.up"):
                proxy._check_mounts(nginx)
        else:
            proxy._check_mounts(nginx)
        return
    if refused:
        with pytest.raises(ConfigError, match=r"deploy\.proxy_files: it is volume .*made with bind mounts"):
            proxy.check()
    else:
        proxy.check()
    assert not any(line.startswith("docker exec") for line in runner.lines)


def test_mounts_are_read_from_docker_inspect() -> None:
    from handover.backends.compose import container_mounts

    raw = {"Mounts": [{"Type": "volume", "Destination": "/etc/nginx/upstream.d"},
                      {"Type": "bind", "Destination": "/x"}]}
    assert container_mounts(raw) == ("volume:/etc/nginx/upstream.d", "bind:/x")
    assert container_mounts({}) == ()


def test_the_shared_front_is_refused_with_the_daemon_elsewhere(tmp_path: Path) -> None:
    from handover.progress import Progress
    from handover.proxies import front

    s = fake_settings(tmp_path, proxy_files="volume", hostnames=("shop.example.com",))
    runner = Recorder()
    with pytest.raises(ConfigError, match=r"deploy\.hostnames: the shared front .* deploy\.proxy_files is volume"):
        front.claim(runner, s, Progress(quiet=True))
    with pytest.raises(ConfigError, match=r"deploy\.hostnames"):
        front.front_task(runner, s, Progress(quiet=True))
    assert runner.lines == []  # refused before any command
    front.refuse_elsewhere(fake_settings(tmp_path, hostnames=("shop.example.com",)))  # bind: the front may run
