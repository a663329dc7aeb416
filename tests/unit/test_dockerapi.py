"""The Engine API client (handover.dockerapi) and the direct local commands (handover.shell.run_here).

The client is held to a fake engine on a real unix socket: a small HTTP server that answers from the
fake host's model (tests/unit/fakehost.py) by running the same ``docker`` commands the CLI path runs,
so a whole deploy through the API path is checked against the same model as the CLI path.
"""

from __future__ import annotations

import json
import shlex
import socketserver
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context

from handover import dockerapi, shell
from handover.backends.compose import ComposeBackend
from handover.dockerapi import ALL_ADDRESSES, SWITCH_ENV, DockerAPI, cli_uses_default_socket, path, query, tags_of
from handover.engine import DeployOptions, Engine
from handover.errors import CommandError, CommandTimeout
from handover.progress import Progress

from .fakehost import Behaviour, FakeHost


# -- pure parts ------------------------------------------------------------------------------------
def test_paths_quote_every_part_and_filters_are_json() -> None:
    assert path("images", "registry.example.com:5000/shop:v1", "json") == \
        "/images/registry.example.com%3A5000%2Fshop%3Av1/json"
    assert path("containers", "abc", "stop", params={"t": 25}) == "/containers/abc/stop?t=25"
    q = urllib.parse.parse_qs(query({"all": 1, "filters": {"label": ["a=b c"]}})[1:])
    assert q == {"all": ["1"], "filters": ['{"label": ["a=b c"]}']}
    assert query({}) == ""


def test_published_ports_read_as_the_cli_prints_them() -> None:
    from handover.dockerapi import published_line
    from handover.proxies.front import parse_published

    nginx = {"Names": ["/shop-nginx-1"], "Labels": {"com.docker.compose.project": "shop"},
             "Ports": [{"IP": "127.0.0.1", "PrivatePort": 8080, "PublicPort": 8080, "Type": "tcp"},
                       {"IP": "::", "PrivatePort": 8443, "PublicPort": 8443, "Type": "tcp"},
                       {"PrivatePort": 9000, "Type": "tcp"}]}
    line = published_line(nginx, "com.docker.compose.project")
    assert line == "shop-nginx-1\tshop\t127.0.0.1:8080->8080/tcp, [::]:8443->8443/tcp"
    assert parse_published(line) == [("shop-nginx-1", "shop", "127.0.0.1", 8080),
                                     ("shop-nginx-1", "shop", ALL_ADDRESSES, 8443)]
    bare = published_line({"Names": ["/db"], "Ports": [{"PrivatePort": 5432, "PublicPort": 5432, "Type": "tcp"}]}, "x")
    assert parse_published(bare) == [("db", "", ALL_ADDRESSES, 5432)]


def test_tags_of_references() -> None:
    assert tags_of(["shop:v1", "registry.example.com:5000/shop:v2", "<none>:<none>", "host:5000/app"]) == {"v1", "v2"}
    assert tags_of([]) == set()


@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [
        ({}, None, True),
        ({"DOCKER_HOST": "unix:///var/run/docker.sock"}, None, True),
        ({"DOCKER_HOST": "ssh://deploy@web1"}, None, False),
        ({"DOCKER_HOST": "tcp://10.0.0.2:2375"}, None, False),
        ({"DOCKER_CONTEXT": "remote"}, None, False),
        ({}, {"currentContext": "remote"}, False),
        ({}, {"currentContext": "default", "auths": {}}, True),
        ({}, "not json", False),
    ],
    ids=["nothing", "default-host", "ssh-host", "tcp-host", "context-env", "context-config", "default-config",
         "unreadable-config"],
)
def test_the_api_is_used_only_where_the_cli_would_go(tmp_path: Path, env: dict[str, str], config: object,
                                                    expected: bool) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    assert cli_uses_default_socket(env, tmp_path) is expected


# -- a fake engine on a unix socket ----------------------------------------------------------------
class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeEngine:
    """Answers the Engine API on ``socket_path`` from ``host``'s model (or as ``override`` says)."""

    def __init__(self, socket_path: Path, host: FakeHost | None = None) -> None:
        self.host = host
        self.requests: list[str] = []
        self.override: dict[str, tuple[int, object]] = {}  # "METHOD /path" -> (status, body)
        self.delay = 0.0
        self.events: list[str] = []  # lines the next /events answers with
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def address_string(self) -> str:
                return "fake"

            def _answer(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                key = f"{self.command} {urllib.parse.unquote(url.path)}"
                engine.requests.append(f"{self.command} {self.path}")
                if engine.delay:
                    time.sleep(engine.delay)
                if key in engine.override:
                    status, body = engine.override[key]
                elif url.path == "/events":
                    self.send_response(200)
                    self.end_headers()
                    for line in engine.events:
                        self.wfile.write(line.encode() + b"\n")
                    return
                else:
                    status, body = engine.from_host(self.command, url.path, urllib.parse.parse_qs(url.query))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

        self.server = _Server(str(socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def docker(self, *argv: str) -> Any:
        assert self.host is not None
        return self.host.runner.run(shlex.join(["docker", *argv]), hide=True, warn=True, in_stream=False)

    def from_host(self, method: str, where: str, params: dict[str, list[str]]) -> tuple[int, object]:
        parts = [urllib.parse.unquote(p) for p in where.strip("/").split("/")]
        if where == "/_ping":
            return 200, b"OK"
        if parts == ["containers", "json"]:
            labels = json.loads(params["filters"][0])["label"]
            out = self.docker("ps", "--all", "--no-trunc", "--quiet",
                              *(w for label in labels for w in ("--filter", f"label={label}")))
            return 200, [{"Id": line} for line in out.stdout.split()]
        if parts[0] == "containers" and parts[-1] == "json":
            done = self.docker("inspect", parts[1])
            return (200, json.loads(done.stdout)[0]) if done.exited == 0 else (404, {"message": "No such container"})
        if parts[0] == "containers" and parts[-1] == "stop":
            self.docker("stop", "--time", params["t"][0], parts[1])
            return 204, b""
        if parts[0] == "containers" and method == "DELETE":
            self.docker("rm", "--force", "--volumes", parts[1])
            return 204, b""
        if parts[0] == "images" and parts[-1] == "json" and len(parts) == 3:
            done = self.docker("image", "inspect", "--format", "{{.Id}}", parts[1])
            return (200, {"Id": done.stdout.strip()}) if done.exited == 0 else (404, {"message": "No such image"})
        if parts == ["images", "json"]:
            repo = json.loads(params["filters"][0])["reference"][0]
            out = self.docker("image", "ls", repo, "--format", "{{.Tag}}")
            return 200, [{"RepoTags": [f"{repo}:{tag}"]} for tag in out.stdout.split()]
        if parts[0] == "images" and method == "DELETE":
            done = self.docker("image", "rm", parts[1])
            return (200, []) if done.exited == 0 else (409, {"message": "image is in use"})
        raise AssertionError(f"the fake engine does not model {method} {where}")


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    # A unix socket path must stay short (108 bytes): not under pytest's long tmp_path.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ovh") as d:
        yield Path(d) / "docker.sock"


@pytest.fixture
def fake_engine(sock: Path) -> Iterator[FakeEngine]:
    engine = FakeEngine(sock)
    yield engine
    engine.close()


# -- the client ------------------------------------------------------------------------------------
def test_an_engine_error_names_the_call_and_what_the_engine_said(fake_engine: FakeEngine, sock: Path) -> None:
    fake_engine.override["GET /containers/abc/json"] = (500, {"message": "driver failed"})
    with pytest.raises(CommandError, match=r"GET /containers/abc/json[\s\S]*driver failed"):
        DockerAPI(str(sock)).inspect("abc")
    fake_engine.override["GET /containers/abc/json"] = (404, {"message": "No such container: abc"})
    assert DockerAPI(str(sock)).inspect("abc") is None


def test_no_engine_at_the_socket_is_a_command_error(sock: Path) -> None:
    with pytest.raises(CommandError, match="docker engine API GET /_ping"):
        DockerAPI(str(sock)).request("GET", "/_ping")


def test_a_slow_engine_is_a_timeout(fake_engine: FakeEngine, sock: Path) -> None:
    fake_engine.override["GET /_ping"] = (200, b"OK")
    fake_engine.delay = 0.5
    with pytest.raises(CommandTimeout, match=r"did not answer within 0\.1 s"):
        DockerAPI(str(sock)).request("GET", "/_ping", timeout=0.1)


def test_containers_are_stopped_at_once_not_one_after_another(fake_engine: FakeEngine, sock: Path) -> None:
    for cid in ("a", "b", "c"):
        fake_engine.override[f"POST /containers/{cid}/stop"] = (204, b"")
    fake_engine.delay = 0.3
    t0 = time.monotonic()
    DockerAPI(str(sock)).stop(["a", "b", "c"], 25)
    assert time.monotonic() - t0 < 0.75  # three stops of 0.3 s each, side by side
    assert sorted(fake_engine.requests) == [f"POST /containers/{c}/stop?t=25" for c in "abc"]


def test_a_failed_stop_is_raised_after_every_stop_was_asked(fake_engine: FakeEngine, sock: Path) -> None:
    fake_engine.override["POST /containers/a/stop"] = (500, {"message": "cannot kill"})
    fake_engine.override["POST /containers/b/stop"] = (304, b"")  # stopped already: fine
    with pytest.raises(CommandError, match="cannot kill"):
        DockerAPI(str(sock)).stop(["a", "b"], 5)
    assert len(fake_engine.requests) == 2


def test_removals_take_gone_and_in_use_as_they_come(fake_engine: FakeEngine, sock: Path) -> None:
    fake_engine.override["DELETE /containers/gone"] = (404, {"message": "No such container"})
    fake_engine.override["DELETE /images/app:v1"] = (409, {"message": "image is being used"})
    fake_engine.override["DELETE /images/app:v2"] = (200, [])
    api = DockerAPI(str(sock))
    api.remove(["gone"])
    api.remove_images(["app:v1", "app:v2"])
    assert fake_engine.requests == ["DELETE /containers/gone?force=1&v=1", "DELETE /images/app%3Av1",
                                    "DELETE /images/app%3Av2"]


def test_wait_event_returns_at_the_first_event_and_sleeps_without_one(fake_engine: FakeEngine, sock: Path) -> None:
    api = DockerAPI(str(sock))
    fake_engine.events = ['{"status":"health_status: healthy","id":"abc"}']
    t0 = time.monotonic()
    assert api.wait_event(["abc"], time.time(), 5.0) is True
    assert time.monotonic() - t0 < 1.0
    (request,) = fake_engine.requests
    filters = json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(request).query)["filters"][0])
    assert filters["container"] == ["abc"] and "health_status" in filters["event"] and "die" in filters["event"]
    assert "exec_start" not in filters["event"]  # the health check's own runs do not wake the wait
    fake_engine.events = []
    assert api.wait_event(["abc"], time.time(), 0.2) is False


def test_wait_event_without_an_engine_sleeps_the_time_out(sock: Path) -> None:
    t0 = time.monotonic()
    assert DockerAPI(str(sock)).wait_event(["abc"], time.time(), 0.2) is False
    assert 0.15 < time.monotonic() - t0 < 1.0


def test_for_runner_only_on_this_machine_and_only_with_an_engine(fake_engine: FakeEngine, sock: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine.override["GET /_ping"] = (200, b"OK")
    env = {"DOCKER_CONFIG": str(tmp_path)}
    assert DockerAPI.for_runner(Context(), env, str(sock)) is not None
    assert DockerAPI.for_runner(Context(), {**env, SWITCH_ENV: "0"}, str(sock)) is None
    assert DockerAPI.for_runner(Context(), {**env, "DOCKER_HOST": "ssh://web1"}, str(sock)) is None
    assert DockerAPI.for_runner(FakeHost(tmp_path / "h").runner, env, str(sock)) is None  # not a local Context

    class Remote(Context):  # a Fabric Connection is a Context subclass that runs over SSH
        pass

    assert DockerAPI.for_runner(Remote(), env, str(sock)) is None
    assert DockerAPI.for_runner(Context(), env, str(sock.with_name("none.sock"))) is None  # no engine there
    monkeypatch.setattr(dockerapi, "PING_TIMEOUT", 0.2)
    fake_engine.delay = 0.5
    assert DockerAPI.for_runner(Context(), env, str(sock)) is None  # an engine that does not answer


# -- the whole deploy through the API --------------------------------------------------------------
DOCKER_CALLS_THE_API_REPLACES = (("inspect",), ("ps",), ("stop",), ("rm",), ("image", "inspect"), ("image", "ls"),
                                 ("image", "rm"))


def _engine_with_api(host: FakeHost, sock: Path) -> tuple[Engine, FakeEngine]:
    fake = FakeEngine(sock, host)
    backend = ComposeBackend(host.runner, host.settings, api=DockerAPI(str(sock)))
    return Engine(host.runner, host.settings, Progress(quiet=True), backend=backend), fake


def _cli_calls(host: FakeHost, fake: FakeEngine, since: int) -> list[str]:
    """The replaced docker commands the engine ran itself (the fake engine's own ones are not counted)."""
    ours = [c.command.argv for c in host.calls[since:]]
    replaced = [a for a in ours if a[:1] == ["docker"] and (tuple(a[1:3]) in DOCKER_CALLS_THE_API_REPLACES
                                                            or tuple(a[1:2]) in DOCKER_CALLS_THE_API_REPLACES)]
    return [shlex.join(a) for a in replaced]


def test_a_deploy_through_the_api_moves_the_live_link_and_removes_the_old_one(tmp_path: Path, sock: Path) -> None:
    host = FakeHost(tmp_path)
    engine, fake = _engine_with_api(host, sock)
    try:
        assert engine.up("v1").result == "success"
        (old,) = host.app_containers()
        fake.requests.clear()
        rec = engine.deploy(DeployOptions(version="v2"))
        assert rec.result == "success"
        (new,) = host.app_containers()
        assert new.version == "v2" and new.id != old.id
        assert host.live_targets() == {0: f"app-{new.short_id}.sock"}
        assert any(r.startswith(f"POST /containers/{old.id}/stop?t=") for r in fake.requests)
        assert f"DELETE /containers/{old.id}?force=1&v=1" in fake.requests
        assert [r["result"] for r in host.records()] == ["success", "success"]
    finally:
        fake.close()


def test_a_failing_version_through_the_api_rolls_back(tmp_path: Path, sock: Path) -> None:
    host = FakeHost(tmp_path)
    engine, fake = _engine_with_api(host, sock)
    try:
        assert engine.up("v1").result == "success"
        (old,) = host.app_containers()
        host.behave("v2", Behaviour(dies_after=2))  # healthy, switched to, then dies: switched back
        with pytest.raises(Exception, match="after the switch"):
            engine.deploy(DeployOptions(version="v2"))
        assert [c.id for c in host.app_containers()] == [old.id]
        assert host.live_targets() == {0: f"app-{old.short_id}.sock"}
        assert host.records()[-1]["result"] == "rolled-back"
    finally:
        fake.close()


def test_the_api_path_starts_no_docker_client_for_what_it_replaces(tmp_path: Path, sock: Path) -> None:
    host = FakeHost(tmp_path)
    engine, fake = _engine_with_api(host, sock)
    try:
        engine.up("v1")
        fake.requests.clear()
        before = len(host.calls)
        # The fake engine's own commands are in host.calls too: count them by the requests it got.
        engine.deploy(DeployOptions(version="v2"))
        # The build's base image is looked for by the CLI (handover.images, only when building).
        base = f"docker image inspect {host.settings.base_image}"
        mine = [line for line in _cli_calls(host, fake, before) if line != base]
        answered = [r for r in fake.requests if not r.startswith("GET /events") and not r.startswith("GET /_ping")]
        assert len(mine) == len(answered)  # every replaced docker command came from a request
        assert len(answered) >= 5
    finally:
        fake.close()


# -- direct local commands -------------------------------------------------------------------------
def test_run_here_gives_the_exit_status_output_and_environment() -> None:
    done = shell.run_here(["sh", "-c", 'echo "$HANDOVER_X"; echo err >&2; exit 3'], {"HANDOVER_X": "a b"}, None)
    assert (done.stdout, done.stderr, done.exited) == ("a b\n", "err\n", 3)
    missing = shell.run_here(["handover-no-such-program"], None, None)
    assert missing.exited == 127 and "command not found" in missing.stderr
    assert shell.run_here(["cat"], None, 5).stdout == ""  # stdin is empty, never the terminal
    assert shell.run_here(["sh", "-c", "kill -TERM $$"], None, 5).exited == 143  # a signal: 128 + 15, as bash said


def test_run_here_kills_a_command_at_its_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"timed out after 0\.2 s: sleep 5"):
        shell.run_here(["sleep", "5"], None, 0.2)
    assert time.monotonic() - t0 < 2


def test_run_starts_commands_directly_only_for_a_plain_local_context(monkeypatch: pytest.MonkeyPatch) -> None:
    direct: list[list[str]] = []
    real = shell.run_here

    def spy(args: Any, env: Any, timeout: Any) -> Any:
        direct.append(list(args))
        return real(args, env, timeout)

    monkeypatch.setattr(shell, "run_here", spy)
    c = Context()
    assert shell.run(c, ["sh", "-c", "echo $A"], env={"A": "1"}).stdout == "1\n"
    assert direct == [["sh", "-c", "echo $A"]]
    with c.cd("/"):  # Invoke's own cd: left to Invoke, which honours it
        assert shell.run(c, ["pwd"]).stdout == "/\n"
    monkeypatch.setenv(shell.FAST_ENV, "0")
    assert shell.run(c, ["true"]).exited == 0
    assert direct == [["sh", "-c", "echo $A"]]
    with pytest.raises(CommandError, match="exit 4"):
        monkeypatch.delenv(shell.FAST_ENV)
        shell.run(c, ["sh", "-c", "exit 4"])
    assert subprocess.run(["true"], check=False).returncode == 0


# -- the preflight's stamp -------------------------------------------------------------------------
def _config_runs(host: FakeHost) -> int:
    return sum(1 for c in host.calls if c.command.argv[:2] == ["docker", "compose"] and "config" in c.command.argv)


def test_the_compose_file_is_checked_again_only_when_something_it_reads_changed(tmp_path: Path) -> None:
    from dataclasses import replace

    from handover.errors import PreflightError

    from .fakehost import compose

    host = FakeHost(tmp_path)
    Path(host.settings.state_path).mkdir(parents=True, exist_ok=True)  # made by the lock, before the preflight
    backend = ComposeBackend(host.runner, host.settings, local=True)
    backend.check()
    backend.check()
    assert _config_runs(host) == 1  # the second check: nothing changed, compose not started
    compose_file = Path(host.settings.compose_path)
    compose_file.write_text(compose_file.read_text() + "\n# changed\n")
    backend.check()
    assert _config_runs(host) == 2
    ComposeBackend(host.runner, replace(host.settings, http_port=9999), local=True).check()  # a variable
    assert _config_runs(host) == 3
    # A change that breaks it is refused, and the refusal is not remembered as a pass.
    compose_file.write_text(compose_file.read_text() + "services: [\n")
    rule = host.fail_on(compose("config"), stderr="yaml: line 3: did not find expected key", times=None)
    for _ in range(2):
        with pytest.raises(PreflightError, match="did not find expected key"):
            backend.check()
    assert rule.fired == 2
    # Not on this machine (over SSH): compose checks it every time, as before.
    remote = ComposeBackend(host.runner, host.settings)
    host.rules.clear()
    remote.check()
    remote.check()
    assert _config_runs(host) == 7


def test_a_compose_file_that_reads_other_files_is_always_checked(tmp_path: Path) -> None:
    from dataclasses import replace

    from handover.backends.compose import config_stamp

    host = FakeHost(tmp_path)
    extra = tmp_path / "mine.yml"
    extra.write_text("services:\n  worker:\n    image: busybox\n")
    mine = replace(host.settings, extra_compose_file=str(extra))
    assert mine.extra_compose_path == str(extra)
    env = ComposeBackend(host.runner, mine).env()
    assert config_stamp(mine, env) not in ("", config_stamp(host.settings, env))
    extra.write_text("services:\n  worker:\n    extends:\n      file: base.yml\n      service: worker\n")
    assert config_stamp(mine, env) == ""  # base.yml is read too: checked every time
    extra.write_text("include:\n  - other.yml\n")
    assert config_stamp(mine, env) == ""


def test_a_ctrl_c_during_a_request_is_raised_when_it_returned(fake_engine: FakeEngine, sock: Path) -> None:
    import os
    import signal

    fake_engine.override["POST /containers/a/stop"] = (204, b"")
    fake_engine.delay = 0.4
    api = DockerAPI(str(sock))
    timer = threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    with shell.interruptible():
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            api.stop(["a"], 5)
        raised_after = time.monotonic() - t0
    timer.join()
    assert fake_engine.requests == ["POST /containers/a/stop?t=5"]
    assert raised_after >= 0.35  # held until the engine answered (0.4 s), not raised at 0.1 s, and not lost
    assert shell._Interrupts.commands_running == 0


def test_a_swarm_tasks_project_is_its_stack() -> None:
    from handover.dockerapi import published_line

    task = {"Names": ["/shop_nginx.1.x"], "Labels": {"com.docker.stack.namespace": "shop"},
            "Ports": [{"PrivatePort": 8080, "PublicPort": 8080, "Type": "tcp"}]}
    assert published_line(task, "com.docker.compose.project", "com.docker.stack.namespace") == (
        "shop_nginx.1.x\tshop\t0.0.0.0:8080->8080/tcp")
    assert published_line(task, "com.docker.compose.project").split("\t")[1] == ""
