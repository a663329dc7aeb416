"""An app on a TCP port (``deploy.app_port``): its config keys, nginx's targets file and the switch,
the fallback to the old containers, and the engine's health GET, against the fake Docker host.

The app here listens on the port its ``PORT`` says once it is healthy (see fakehost's Behaviour);
nginx reads the live ``<ip>:<port>`` targets from ``targets.json``, which a switch replaces.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handover import bench
from handover import settings as settings_mod
from handover.backends import Instance
from handover.cli import defaults
from handover.engine import DeployOptions, Engine
from handover.errors import ConfigError, HandoverError, ProxyConfigInvalid
from handover.progress import Progress
from handover.proxies import nginx
from handover.proxies.nginx import NginxProxy

from .fakehost import Behaviour, FakeHost, fake_settings
from .localhttp import answering

OLD, NEW = "v1", "v2"
PORT = 8000
HEALTH = "/healthz"


def config(**overrides: Any) -> dict[str, Any]:
    return {**defaults()["deploy"], **overrides}


def tcp_host(tmp_path: Path, **overrides: Any) -> FakeHost:
    settings = fake_settings(tmp_path, **{"app_port": PORT, "app_health": HEALTH, **overrides})
    return FakeHost(tmp_path, settings)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return tcp_host(tmp_path)


def engine_for(host: FakeHost) -> Engine:
    return Engine(host.runner, host.settings, Progress(quiet=True))


def serving(host: FakeHost, version: str = OLD) -> Engine:
    engine = engine_for(host)
    assert engine.up(version).result == "success"
    return engine


def deploy(engine: Engine, version: str = NEW) -> str:
    return engine.deploy(DeployOptions(version=version)).result


def only(host: FakeHost, version: str) -> None:
    """Exactly ``version`` serves through targets.json, nothing else of the app is left, no fallback."""
    (live,) = host.app_containers()
    assert live.version == version and live.status == "running"
    targets = host.tcp_targets()
    assert targets["live"] == [f"{live.address}:{PORT}"] and targets["live_ids"] == [live.short_id]
    assert targets["fallback"] == [] and targets["fallback_ids"] == []
    assert host.sockets() == []  # a TCP app binds no unix socket
    assert not host.lock_held()


# -- config keys -------------------------------------------------------------------------------------
def test_the_defaults_keep_the_unix_socket_contract() -> None:
    s = settings_mod.load(config())
    assert (s.app_port, s.app_health, s.tcp) == (0, "", False)


def test_a_tcp_app_is_configured_by_port_and_health_path() -> None:
    s = settings_mod.load(config(app_port="8000", app_health="/healthz?deep=1"))
    assert (s.app_port, s.app_health, s.tcp) == (8000, "/healthz?deep=1", True)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"app_port": 70000}, "deploy.app_port: expected a whole number from 0 to 65535"),
        ({"app_port": "http"}, "deploy.app_port: expected a whole number from 0 to 65535"),
        ({"app_port": True}, "deploy.app_port"),
        ({"app_port": 8000, "app_health": "healthz"}, "deploy.app_health: expected an HTTP path starting with '/'"),
        ({"app_port": 8000, "app_health": "/a b"}, "deploy.app_health"),
        ({"app_port": 8000, "app_health": "/x\n"}, "deploy.app_health"),
        ({"app_health": "/healthz"}, "deploy.app_health ('/healthz') needs deploy.app_port"),
    ],
)
def test_bad_tcp_keys_are_refused_by_name(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_mod.load(config(**overrides))
    assert says in str(info.value)


# -- pure parts --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exited", "output", "verdict"),
    [
        (0, "HTTP/1.1 200 OK\r\n", ""),
        (0, "HTTP/1.0 204 No Content", ""),
        (0, "HTTP/1.1 404 Not Found", "GET http://x/healthz answered 404 (deploy.app_health wants 2xx)"),
        (0, "HTTP/1.1 500 Internal Server Error", "answered 500"),
        (0, "HTTP/1.1 301 Moved", "answered 301"),
        (7, "", "connection refused (does the app listen on deploy.app_port?)"),
        (124, "", "no answer within 2 s"),
        (0, "SSH-2.0-OpenSSH", "no HTTP answer (SSH-2.0-OpenSSH)"),
    ],
)
def test_the_health_answer_is_judged_by_its_status_line(exited: int, output: str, verdict: str) -> None:
    found = nginx.health_verdict(exited, output, "http://x/healthz")
    assert (found == "") if verdict == "" else (verdict in found)


@pytest.mark.parametrize(("status", "healthy"), [(199, False), (200, True), (299, True), (300, False)])
def test_only_a_2xx_status_is_healthy(status: int, healthy: bool) -> None:
    found = nginx.health_verdict(0, f"HTTP/1.1 {status} X\r\n", "http://x/h")
    assert found == ("" if healthy else f"GET http://x/h answered {status} (deploy.app_health wants 2xx)")


def test_a_long_non_http_answer_is_quoted_to_80_characters() -> None:
    quoted = nginx.health_verdict(0, " " + "x" * 100 + "\n", "http://x/h")
    assert quoted == f"GET http://x/h: no HTTP answer ({'x' * 80})"
    assert nginx.health_verdict(1, "", "http://x/h") == "GET http://x/h: no HTTP answer (exit 1)"


def test_the_tcp_routes_and_the_targets_are_written_as_handover_js_reads_them() -> None:
    assert nginx.render_tcp_upstream("/etc/handover/./nginx/handover.js") == (
        "# Written by handover; a TCP app: handover.js reads the live containers from targets.json.\n"
        "js_import handover from /etc/handover/./nginx/handover.js;\n"
        "js_set $handover_target handover.target;\n"
        "js_set $handover_fallback handover.fallback;\n"
        "# What nginx could not get an answer for goes to @http_fallback or @websocket_fallback (nginx.conf).\n"
        "error_page 502 504 = @${proxy_kind}_fallback;\n"
    )
    new, old = instance("a" * 64, "10.0.0.3"), instance("b" * 64, "10.0.0.2")
    assert nginx.render_targets([new], [old], PORT) == (
        '{\n "live": [\n  "10.0.0.3:8000"\n ],\n "fallback": [\n  "10.0.0.2:8000"\n ],\n'
        ' "live_ids": [\n  "aaaaaaaaaaaa"\n ],\n "fallback_ids": [\n  "bbbbbbbbbbbb"\n ]\n}\n'
    )


def instance(container_id: str, address: str, name: str = "p-app-1") -> Instance:
    return Instance(id=container_id, name=name, service="app", version=NEW, image=f"p-app:{NEW}", status="running",
                    health="healthy", restarts=0, created="", address=address)


def test_targets_round_trip_and_unreadable_ones_are_empty() -> None:
    assert nginx.parse_targets(None)["live"] == []
    assert nginx.parse_targets("not json{")["live_ids"] == []
    assert nginx.parse_targets('["a list"]')["fallback"] == []


def test_the_health_and_port_clients_take_their_input_as_arguments() -> None:
    argv = nginx.health_argv("10.0.0.2", 8000, "/h'; rm -rf /")
    assert argv[:4] == ["timeout", "2", "bash", "-c"] and argv[5:] == ["health", "10.0.0.2", "8000", "/h'; rm -rf /"]
    assert nginx.port_argv(["10.0.0.2:8000"])[5:] == ["ports", "10.0.0.2:8000"]


@pytest.fixture
def http_port() -> Iterator[int]:
    """A local HTTP server answering 204 to any GET, on a port of its own."""
    with answering(204) as port:
        yield port


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


def test_the_health_and_port_clients_work_as_bash_runs_them(http_port: int) -> None:
    """The scripts nginx's container runs, run here by bash as they are: /dev/tcp, timeout and all."""
    closed = closed_port()
    ports = subprocess.run(nginx.port_argv([f"127.0.0.1:{http_port}", f"127.0.0.1:{closed}"]),
                           capture_output=True, text=True, timeout=10, check=False)
    assert (ports.returncode, ports.stdout) == (0, f"127.0.0.1:{closed}\n")
    health = subprocess.run(nginx.health_argv("127.0.0.1", http_port, "/healthz"), capture_output=True, text=True,
                            timeout=10, check=False)
    assert health.stdout.startswith("HTTP/1.0 204 ")
    assert nginx.health_verdict(health.returncode, health.stdout, "u") == ""
    refused = subprocess.run(nginx.health_argv("127.0.0.1", closed, "/healthz"), capture_output=True, text=True,
                             timeout=10, check=False)
    assert nginx.health_verdict(refused.returncode, refused.stdout, "u") == (
        "GET u: connection refused (does the app listen on deploy.app_port?)")


def test_the_reload_baseline_lists_the_old_containers_as_backups() -> None:
    text = bench.render_tcp_servers(["10.0.0.3:8000"], ["10.0.0.2:8000"])
    assert "server 10.0.0.3:8000 max_fails=0;" in text and "server 10.0.0.2:8000 max_fails=0 backup;" in text
    assert "map $uri $handover_target { default handover_app; }" in text
    assert "server 127.0.0.1:1" in bench.render_tcp_servers([], [])  # nothing live: refused, 502


# -- the switch --------------------------------------------------------------------------------------
def test_a_tcp_app_starts_and_deploys_with_no_reload_at_the_switch(host: FakeHost) -> None:
    engine = serving(host)
    only(host, OLD)
    generated = host.state_path / "nginx"
    assert "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;" in (generated / "modules.main").read_text()
    routes = (generated / "upstream.conf").read_text()
    assert "js_set $handover_target handover.target;" in routes
    assert "js_import handover from /etc/handover/./nginx/handover.js;" in routes  # the release's own script
    reloads = host.nginx_reloads
    assert deploy(engine) == "success"
    only(host, NEW)
    assert host.nginx_reloads == reloads  # the switch renamed targets.json; nginx was not reloaded
    (new,) = host.app_containers()
    assert f"http://{new.address}:{PORT}{HEALTH}" in host.health_gets
    assert engine.facts().live_version == NEW


def test_the_old_containers_are_the_fallback_until_dropped(host: FakeHost) -> None:
    engine = serving(host)
    (old,) = engine.backend.instances()
    engine.backend.build(NEW)
    (new,) = engine.wait_healthy(engine.backend.start(NEW, 1, {}))
    engine.proxy.point([new], fallback=[old])
    targets = host.tcp_targets()
    assert targets["live"] == [f"{new.address}:{PORT}"] and targets["fallback"] == [f"{old.address}:{PORT}"]
    assert engine.proxy.live_ids() == {new.short_id}
    engine.proxy.drop_fallback()
    assert host.tcp_targets()["fallback"] == [] and host.tcp_targets()["live_ids"] == [new.short_id]
    # the same file a switch with no fallback writes
    assert (host.state_path / "nginx" / "targets.json").read_text() == nginx.render_targets([new], [], PORT)


def test_forgetting_a_fallback_container_takes_it_out_of_the_targets(host: FakeHost) -> None:
    engine = serving(host)
    (old,) = engine.backend.instances()
    engine.backend.build(NEW)
    (new,) = engine.wait_healthy(engine.backend.start(NEW, 1, {}))
    engine.proxy.point([new], fallback=[old])
    engine.proxy.forget([old])
    assert host.tcp_targets()["fallback_ids"] == [] and host.tcp_targets()["live_ids"] == [new.short_id]


def test_forgetting_one_of_two_fallback_containers_keeps_the_other(tmp_path: Path) -> None:
    host = tcp_host(tmp_path, replicas=2)
    engine = serving(host)
    gone, kept = engine.backend.instances()
    engine.backend.build(NEW)
    new = engine.wait_healthy(engine.backend.start(NEW, 2, {}))
    engine.proxy.point(new, fallback=[gone, kept])
    engine.proxy.forget([gone])
    assert (host.state_path / "nginx" / "targets.json").read_text() == nginx.render_targets(new, [kept], PORT)


def test_a_new_container_that_dies_after_the_switch_is_switched_back(host: FakeHost) -> None:
    engine = serving(host)
    host.behave(NEW, Behaviour(dies_after=2, exit_code=4))
    host.settings = dataclasses.replace(host.settings, post_switch_check=5.0)
    engine = engine_for(host)
    with pytest.raises(HandoverError) as info:
        engine.deploy(DeployOptions(version=NEW))
    assert "after the switch" in str(info.value)
    only(host, OLD)


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 500])
def test_a_health_path_that_fails_leaves_the_old_version_serving(tmp_path: Path, status: int) -> None:
    host = tcp_host(tmp_path, health_timeout=0.2)
    engine = serving(host)
    host.behave(NEW, Behaviour(http_status=status))
    with pytest.raises(HandoverError) as info:
        engine.deploy(DeployOptions(version=NEW))
    message = str(info.value)
    assert f"{HEALTH} answered {status} (deploy.app_health wants 2xx)" in message
    assert "not healthy within 0.2 s" in message
    only(host, OLD)


def test_a_port_the_app_never_opens_is_named_and_the_old_version_serves(tmp_path: Path) -> None:
    host = tcp_host(tmp_path, health_timeout=0.2)
    engine = serving(host)
    host.behave(NEW, Behaviour(fixed_port=9000))  # ignores PORT
    with pytest.raises(HandoverError) as info:
        engine.deploy(DeployOptions(version=NEW))
    assert f":{PORT}{HEALTH}: connection refused (does the app listen on deploy.app_port?)" in str(info.value)
    only(host, OLD)


def test_without_a_health_path_a_closed_port_stops_the_switch(tmp_path: Path) -> None:
    host = tcp_host(tmp_path, app_health="")
    engine = serving(host)
    host.behave(NEW, Behaviour(fixed_port=9000))  # healthy by its own Docker check, wrong port
    with pytest.raises(HandoverError) as info:
        engine.deploy(DeployOptions(version=NEW))
    assert f"the new app does not listen on TCP port {PORT} (deploy.app_port)" in str(info.value)
    only(host, OLD)


def test_the_socket_mode_writes_no_njs_and_no_targets(fake_host: FakeHost) -> None:
    engine = engine_for(fake_host)
    assert engine.up(OLD).result == "success"
    generated = fake_host.state_path / "nginx"
    assert not (generated / "modules.main").exists() and not (generated / "targets.json").exists()
    assert "map $uri $handover_target { default handover_app; }" in (generated / "upstream.conf").read_text()


@pytest.mark.parametrize("tcp_first", [False, True])
def test_changing_app_port_under_a_serving_stack_is_refused_and_changes_nothing(tmp_path: Path,
                                                                                tcp_first: bool) -> None:
    first = {"app_port": PORT, "app_health": HEALTH} if tcp_first else {"app_port": 0, "app_health": ""}
    then = {"app_port": 0, "app_health": ""} if tcp_first else {"app_port": PORT, "app_health": HEALTH}
    host = FakeHost(tmp_path, fake_settings(tmp_path, **first))
    serving(host)
    before = ([c.id for c in host.app_containers()], host.live_targets(), host.tcp_targets(), host.nginx_reloads)
    host.settings = dataclasses.replace(host.settings, **then)
    with pytest.raises(HandoverError) as info:
        engine_for(host).deploy(DeployOptions(version=NEW))
    was, now = ("a TCP port", "a unix socket (0)") if tcp_first else ("a unix socket (0)", "a TCP port")
    assert str(info.value) == (
        f"config key deploy.app_port says the app listens on {now}, but the running stack of project "
        f"{host.settings.project!r} reaches it on {was}; a deploy cannot change that without downtime: "
        "run `down` and then `up` (or set app_port back)")
    assert ([c.id for c in host.app_containers()], host.live_targets(), host.tcp_targets(),
            host.nginx_reloads) == before


def test_every_replica_of_a_tcp_app_is_a_live_target(tmp_path: Path) -> None:
    host = tcp_host(tmp_path, replicas=2)
    engine = serving(host)
    assert deploy(engine) == "success"
    new = host.app_containers()
    assert len(new) == 2 and {c.version for c in new} == {NEW}
    targets = host.tcp_targets()
    assert sorted(targets["live"]) == sorted(f"{c.address}:{PORT}" for c in new)
    assert sorted(targets["live_ids"]) == sorted(c.short_id for c in new) and targets["fallback"] == []


def test_a_container_without_an_address_is_named_and_not_routed_to(host: FakeHost) -> None:
    engine = serving(host)
    before = host.tcp_targets()
    engine.backend.build(NEW)
    (new,) = engine.wait_healthy(engine.backend.start(NEW, 1, {}))
    lost = dataclasses.replace(new, address="")
    assert engine.proxy.check_http(lost, HEALTH) == (
        f"GET http://?:{PORT}{HEALTH}: {new.name} has no address on the app's network")
    other = dataclasses.replace(lost, name="p-app-2")
    with pytest.raises(HandoverError) as info:
        engine.proxy.point([lost, other])
    assert str(info.value) == f"the new app has no address on the project's network: {new.name}, p-app-2"
    assert host.tcp_targets() == before


def test_every_replica_that_refuses_the_port_is_named(tmp_path: Path) -> None:
    host = tcp_host(tmp_path, app_health="", replicas=2)
    engine = serving(host)
    before = host.tcp_targets()
    host.behave(NEW, Behaviour(fixed_port=9000))
    engine.backend.build(NEW)
    new = engine.wait_healthy(engine.backend.start(NEW, 2, {}))
    with pytest.raises(HandoverError) as info:
        engine.proxy.point(new)
    refused = ", ".join(f"{c.address}:{PORT}" for c in new)
    assert str(info.value) == (f"the new app does not listen on TCP port {PORT} (deploy.app_port): {refused} "
                               "refused a connection from nginx")
    assert host.tcp_targets() == before


# -- the proxy's generated files put back -------------------------------------------------------------
@pytest.mark.parametrize("tcp_first", [False, True])
def test_routes_nginx_refuses_are_put_back_with_their_modules_file(tmp_path: Path, tcp_first: bool) -> None:
    """A change of routing mode rewrites upstream.conf and modules.main (njs for a TCP app); when
    ``nginx -t`` refuses the result, both are as before: modules.main back, or gone again."""
    first = {"app_port": PORT, "app_health": HEALTH} if tcp_first else {}
    then = {"app_port": 0, "app_health": ""} if tcp_first else {"app_port": PORT, "app_health": HEALTH}
    host = FakeHost(tmp_path, fake_settings(tmp_path, **first))
    serving(host)
    generated = host.state_path / "nginx"
    upstream, modules = (generated / "upstream.conf").read_text(), generated / "modules.main"
    assert modules.exists() == tcp_first
    before = modules.read_text() if tcp_first else None
    host.nginx_test_error = 'unknown directive "js_import"'
    proxy = NginxProxy(host.runner, dataclasses.replace(host.settings, **then), engine_for(host).backend)
    with pytest.raises(ProxyConfigInvalid, match="js_import"):
        proxy.configure(1)
    assert (generated / "upstream.conf").read_text() == upstream
    assert (modules.read_text() if modules.exists() else None) == before
    assert proxy.restore() is False  # put back once: nothing left to put back


@pytest.mark.parametrize("tcp_first", [False, True])
def test_a_configured_change_is_put_back_once(tmp_path: Path, tcp_first: bool) -> None:
    first = {"app_port": PORT, "app_health": HEALTH} if tcp_first else {}
    then = {"app_port": 0, "app_health": ""} if tcp_first else {"app_port": PORT, "app_health": HEALTH}
    host = FakeHost(tmp_path, fake_settings(tmp_path, **first))
    serving(host)
    generated = host.state_path / "nginx"
    files = {name: (generated / name).read_text() for name in ("upstream.conf", "modules.main")
             if (generated / name).exists()}
    proxy = NginxProxy(host.runner, dataclasses.replace(host.settings, **then), engine_for(host).backend)
    assert proxy.configure(1, load=False) is True
    assert (generated / "modules.main").exists() == (not tcp_first)  # njs loaded for a TCP app only
    assert proxy.restore() is True  # the routes it wrote are put back: a reload is due
    assert {name: (generated / name).read_text() for name in ("upstream.conf", "modules.main")
            if (generated / name).exists()} == files
    assert proxy.restore() is False
