"""The shared front: rendered configuration, claims of host names and ports, the registry of apps."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context

from handover.errors import ConfigError, HandoverError, ProxyConfigInvalid
from handover.probe.http_client import HttpTarget
from handover.probe.settings import ProbeError, ProbeSettings
from handover.progress import Progress
from handover.proxies import front
from handover.proxies.front import Entry, collisions, entry_of, published_conflicts, render_conf
from handover.settings import load

from .fakehost import fake_settings

ALL = "0.0.0.0"  # noqa: S104 (an address in the registry, never bound here)
A = Entry("shop", ("shop.test", "www.shop.test"), "127.0.0.1", 18001, ALL, 80)
B = Entry("blog", ("blog.test",), "127.0.0.1", 18002, ALL, 80)


def deploy_config(**overrides: Any) -> dict[str, Any]:
    from handover.cli import defaults

    config = dict(defaults()["deploy"])
    config.update(overrides)
    return config


# -- rendering -----------------------------------------------------------------------------------
def test_the_rendered_config_routes_each_name_to_its_app_with_keepalive_and_websockets() -> None:
    text = render_conf([A, B])
    assert "listen 0.0.0.0:80 default_server;" in text and 'return 404 "no app here\\n";' in text
    assert text.count("listen 0.0.0.0:80;") == 2
    assert "server_name shop.test www.shop.test;" in text and "server_name blog.test;" in text
    shop = text[text.index("upstream app_shop"):]
    assert shop.index("server 127.0.0.1:18001 max_fails=0;") < shop.index("keepalive 32;") < shop.index("}")
    assert "proxy_pass http://app_shop;" in text and "proxy_pass http://app_blog;" in text
    # Upgrade only for WebSocket; other requests keep the upstream connection alive (Connection "").
    assert '"~*^websocket$" websocket;' in text and "proxy_set_header Connection $front_connection;" in text
    assert "proxy_next_upstream error timeout;" in text and "proxy_http_version 1.1;" in text
    assert render_conf([B, A]) == text  # the same apps give the same bytes


def test_an_app_bound_to_all_addresses_is_reached_on_loopback() -> None:
    text = render_conf([dataclasses.replace(A, bind=ALL)])
    assert "server 127.0.0.1:18001 max_fails=0;" in text


def test_with_no_app_the_front_answers_404_only() -> None:
    text = render_conf([], "127.0.0.1:9000")
    assert "upstream app_" not in text and "return 404" in text and "listen 127.0.0.1:9000 default_server;" in text


def test_apps_that_disagree_on_the_front_address_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="different front addresses"):
        render_conf([A, dataclasses.replace(B, front_port=8080)])


def test_a_project_name_becomes_an_upstream_name_nginx_accepts() -> None:
    assert front.upstream_name("my-shop_2") == "app_my_shop_2"


def test_the_compose_file_runs_the_projects_nginx_image_on_host_networking() -> None:
    text = front.render_compose("hf-nginx")
    assert "image: hf-nginx:1" in text and "network_mode: host" in text and "context: ./image" in text
    assert "ports:" not in text  # it listens where its configuration says


# -- claims --------------------------------------------------------------------------------------
def test_a_host_name_claimed_twice_is_named_with_both_projects() -> None:
    intruder = dataclasses.replace(B, project="intruder", port=18003, hostnames=("new.test", "www.shop.test"))
    problems = collisions([A, B], intruder)
    assert problems == ["host name www.shop.test is claimed by project 'shop' and project 'intruder' "
                        "(deploy.hostnames); each name can route to one app only"]


@pytest.mark.parametrize(("bind_a", "bind_b", "clash"), [("127.0.0.1", "127.0.0.1", True),
                                                         (ALL, "127.0.0.1", True),
                                                         ("127.0.0.1", ALL, True),
                                                         ("127.0.0.1", "127.0.0.2", False)])
def test_a_port_claimed_twice_is_named_with_both_projects(bind_a: str, bind_b: str, clash: bool) -> None:
    other = dataclasses.replace(A, bind=bind_a)
    candidate = dataclasses.replace(B, bind=bind_b, port=A.port)
    problems = collisions([other], candidate)
    assert bool(problems) is clash
    if clash:
        assert "port" in problems[0] and "'shop'" in problems[0] and "'blog'" in problems[0]


def test_apps_must_agree_on_where_the_front_listens() -> None:
    problems = collisions([A], dataclasses.replace(B, front_port=8080))
    assert problems and "0.0.0.0:80" in problems[0] and "0.0.0.0:8080" in problems[0] and "'shop'" in problems[0]


def test_an_apps_port_where_the_front_listens_is_refused() -> None:
    other = dataclasses.replace(A, port=80, bind="127.0.0.1")
    problems = collisions([other], B)
    assert problems and "where the front" in problems[0]


def test_an_app_never_collides_with_itself_and_distinct_apps_fit() -> None:
    assert collisions([A, B], A) == []
    assert collisions([A], B) == []


LISTING = "\n".join([
    "shop-nginx-1\tshop\t127.0.0.1:18001->8080/tcp",
    "other-web-1\tother\t0.0.0.0:18003->80/tcp, :::18003->80/tcp",
    "ranged\t\t127.0.0.1:19000-19002->9000-9002/tcp",
    "shop-app-1\tshop\t8000/tcp",
])


def test_published_ports_are_parsed_with_ranges_and_all_addresses() -> None:
    found = front.parse_published(LISTING)
    assert ("shop-nginx-1", "shop", "127.0.0.1", 18001) in found
    assert ("other-web-1", "other", ALL, 18003) in found
    assert [port for name, _, _, port in found if name == "ranged"] == [19000, 19001, 19002]
    assert not [f for f in found if f[0] == "shop-app-1"]


@pytest.mark.parametrize(("project", "port", "owner"), [("blog", 18001, "project 'shop'"),
                                                        ("blog", 18003, "project 'other'"),
                                                        ("blog", 19001, "a container outside any compose project")])
def test_a_port_another_project_publishes_is_refused_naming_both(tmp_path: Path, project: str, port: int,
                                                                 owner: str) -> None:
    s = dataclasses.replace(fake_settings(tmp_path), project=project, http_port=port)
    problems = published_conflicts(LISTING, s)
    assert len(problems) == 1 and owner in problems[0] and f"project {project!r}" in problems[0]


def test_the_apps_own_published_port_is_no_conflict(tmp_path: Path) -> None:
    s = dataclasses.replace(fake_settings(tmp_path), project="shop", http_port=18001)
    assert published_conflicts(LISTING, s) == []


# -- settings ------------------------------------------------------------------------------------
def test_hostnames_are_a_list_or_a_string_of_names() -> None:
    assert load(deploy_config()).hostnames == ()
    assert load(deploy_config(hostnames=["a.test", "*.b.test"])).hostnames == ("a.test", "*.b.test")
    assert load(deploy_config(hostnames="a.test, www.a.test b.test")).hostnames == ("a.test", "www.a.test", "b.test")


@pytest.mark.parametrize("bad", ["A.test", "a..test", "a.test;rm", "-a.test", "a.*.test", ["a.test", 3], 7,
                                 "a.test a.test", "a.test $(id)", "x" * 64 + ".test"])
def test_a_bad_host_name_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"deploy\.hostnames"):
        load(deploy_config(hostnames=bad))


@pytest.mark.parametrize(("key", "value"), [("front_port", 0), ("front_bind", "everywhere"),
                                            ("front_project", "Front!"), ("front_dir", "a\nb")])
def test_bad_front_settings_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"deploy.{key}"):
        load(deploy_config(**{key: value}))


def test_an_app_that_is_its_own_front_or_publishes_on_the_fronts_port_is_refused() -> None:
    s = load(deploy_config(project="shop", hostnames="shop.test"))
    with pytest.raises(ConfigError, match=r"front_project and deploy\.project"):
        front.check_settings(dataclasses.replace(s, front_project="shop"))
    with pytest.raises(ConfigError, match=r"front_port and deploy\.http_port"):
        front.check_settings(dataclasses.replace(s, front_port=s.http_port))


# -- the probe's Host header ---------------------------------------------------------------------
def test_the_probe_sends_the_host_header_and_connects_to_the_url() -> None:
    s = ProbeSettings(base_url="http://127.0.0.1:18900", host_header="a.test")
    assert s.ws_url == "ws://a.test/ws" and s.ws_connect_to == ("127.0.0.1", 18900)
    target = HttpTarget.from_url(s.base_url, host_header=s.host_header)
    assert (target.host, target.port, target.host_header) == ("127.0.0.1", 18900, "a.test")
    plain = ProbeSettings(base_url="http://127.0.0.1:18900")
    assert plain.ws_url == "ws://127.0.0.1:18900/ws" and plain.ws_connect_to is None


@pytest.mark.parametrize("bad", ["a.test/x", "a test", "u@a.test", "a.test\r\nX: y"])
def test_a_bad_host_header_is_refused(bad: str) -> None:
    with pytest.raises(ProbeError, match="host_header"):
        ProbeSettings(host_header=bad)


# -- the registry, on real files ------------------------------------------------------------------
class DockerStub:
    """Real shell commands (files, the lock's flock keeper) through Invoke; ``docker`` answered here:
    no container publishes a port and no front runs."""

    def __init__(self) -> None:
        self.context = Context()
        self.docker: list[str] = []

    def run(self, command: str, **kwargs: Any) -> Any:
        argv = shlex.split(command)
        while argv and (argv[0] == "env" or "=" in argv[0]):
            argv = argv[1:]
        if argv and argv[0] == "docker":
            self.docker.append(command)
            return dataclasses.make_dataclass("R", ["stdout", "stderr", "exited"])("", "", 0)
        return self.context.run(command, **kwargs)


def app_settings(tmp_path: Path, project: str, port: int, hostnames: str) -> Any:
    return load(deploy_config(project=project, http_port=port, hostnames=hostnames,
                              state_dir=f".state-{project}", front_dir=str(tmp_path / "front")),
                deploy_dir=str(tmp_path))


def test_register_change_and_remove_apps_in_the_registry(tmp_path: Path) -> None:
    runner = DockerStub()
    quiet = Progress(quiet=True)
    shop = app_settings(tmp_path, "shop", 18001, "shop.test")
    blog = app_settings(tmp_path, "blog", 18002, "blog.test")
    registry = tmp_path / "front" / "apps"
    assert front.claim(runner, shop, quiet) is True
    assert front.claim(runner, blog, quiet) is True
    assert sorted(p.name for p in registry.iterdir()) == ["blog.json", "shop.json"]
    entries = front.Front(runner, shop, quiet).entries()
    assert sorted(entries, key=lambda e: e.project) == [entry_of(blog), entry_of(shop)]
    assert front.claim(runner, shop, quiet) is False  # unchanged: nothing written
    renamed = dataclasses.replace(shop, hostnames=("shop.test", "www.shop.test"))
    assert front.claim(runner, renamed, quiet) is True
    assert '"www.shop.test"' in (registry / "shop.json").read_text()
    assert front.release(runner, blog, quiet) is True
    assert [p.name for p in registry.iterdir()] == ["shop.json"]
    assert front.release(runner, blog, quiet) is False
    assert not (tmp_path / "front" / "lock").exists()  # the front's lock was released each time


def test_a_claimed_name_changes_nothing_in_the_registry(tmp_path: Path) -> None:
    runner = DockerStub()
    quiet = Progress(quiet=True)
    front.claim(runner, app_settings(tmp_path, "shop", 18001, "shop.test"), quiet)
    registry = tmp_path / "front" / "apps"
    before = {p.name: p.read_bytes() for p in registry.iterdir()}
    for intruder in (app_settings(tmp_path, "blog", 18002, "blog.test shop.test"),
                     app_settings(tmp_path, "blog", 18001, "blog.test")):
        with pytest.raises(ConfigError, match=r"'shop' and project 'blog'.*nothing was changed"):
            front.claim(runner, intruder, quiet)
        assert {p.name: p.read_bytes() for p in registry.iterdir()} == before
    assert not (tmp_path / "front" / "lock").exists()


def test_an_app_without_host_names_leaves_the_front_alone(tmp_path: Path) -> None:
    runner = DockerStub()
    assert front.claim(runner, app_settings(tmp_path, "plain", 18005, ""), Progress(quiet=True)) is False
    assert not (tmp_path / "front").exists()
    assert runner.docker and all(" ps " in line for line in runner.docker)  # only the port check ran


def test_an_app_that_drops_its_host_names_is_removed(tmp_path: Path) -> None:
    runner = DockerStub()
    quiet = Progress(quiet=True)
    shop = app_settings(tmp_path, "shop", 18001, "shop.test")
    front.claim(runner, shop, quiet)
    assert front.claim(runner, dataclasses.replace(shop, hostnames=()), quiet) is True
    assert list((tmp_path / "front" / "apps").iterdir()) == []


def test_an_unreadable_entry_is_named(tmp_path: Path) -> None:
    runner = DockerStub()
    quiet = Progress(quiet=True)
    shop = app_settings(tmp_path, "shop", 18001, "shop.test")
    registry = tmp_path / "front" / "apps"
    registry.mkdir(parents=True)
    (registry / "blog.json").write_text("{not json")
    with pytest.raises(HandoverError, match=r"blog\.json"):
        front.claim(runner, shop, quiet)
    assert not (registry / "shop.json").exists()


# -- over fab (a fake Docker host, real files) ---------------------------------------------------------
def fab_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostnames: tuple[str, ...]) -> Any:
    from fabfile import hostconfig, sync
    from fabfile.connect import Remote

    from .fakehost import FakeHost
    from .test_secrets import LocalConn

    settings = dataclasses.replace(fake_settings(tmp_path, source_subdir=hostconfig.RELEASE_LINK),
                                   hostnames=hostnames, front_dir=str(tmp_path / "front"))
    host = FakeHost(tmp_path, settings)
    deploy = Path(settings.deploy_dir)

    def upload(remote: Remote, s: Any, version: str, progress: Any, dirs: Any) -> str:
        name = sync.release_name(version)
        for part in ("compose", "nginx"):
            shutil.copytree(deploy / part, deploy / sync.RELEASES_DIR / name / part)
        return name

    monkeypatch.setattr(sync, "upload", upload)
    target = hostconfig.Target(name="web1", host="web1", user=None, port=None, settings=settings, env_file=None)
    return host, Remote(target, LocalConn(host), tmp_path / "known_hosts")


def test_a_fab_deploy_registers_the_app_at_the_hosts_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fabfile import hostrun

    _, remote = fab_remote(tmp_path, monkeypatch, ("shop.test",))
    assert hostrun.deploy(remote, "v1", force=False, progress=Progress(quiet=True)).result == "success"
    entry = Entry.from_json((tmp_path / "front" / "apps" / f"{remote.target.settings.project}.json").read_text(), "")
    assert entry == entry_of(remote.target.settings)


def test_a_fab_deploy_claiming_another_apps_name_stops_before_anything(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fabfile import hostrun, sync

    host, remote = fab_remote(tmp_path, monkeypatch, ("shop.test",))
    registry = tmp_path / "front" / "apps"
    registry.mkdir(parents=True)
    (registry / "blog.json").write_text(dataclasses.replace(A, project="blog", port=18099,
                                                            front_bind="127.0.0.1", front_port=8088).to_json())
    before = sorted(p.name for p in registry.iterdir())
    with pytest.raises(ConfigError, match=r"host name shop\.test is claimed by project 'blog'"):
        hostrun.deploy(remote, "v1", force=False, progress=Progress(quiet=True))
    assert sorted(p.name for p in registry.iterdir()) == before
    assert not host.matching("--project-name")  # only the host checks ran: no compose command of the app
    assert host.app_containers() == []
    assert sync.list_releases(remote, remote.target.settings) == []


class RunningFront(DockerStub):
    """A front container that runs: ``nginx -t`` answers ``test_error`` (exit 1) when set, and a
    reload brings new workers unless ``reload_stuck``."""

    def __init__(self) -> None:
        super().__init__()
        self.test_error = ""
        self.reload_stuck = False
        self.workers = [101]
        self.reloads = 0

    def run(self, command: str, **kwargs: Any) -> Any:
        argv = shlex.split(command)
        while argv and (argv[0] == "env" or "=" in argv[0]):
            argv = argv[1:]
        result = dataclasses.make_dataclass("R", ["stdout", "stderr", "exited"])
        if argv[:2] == ["docker", "compose"] and "ps" in argv:
            return result("f00d\n", "", 0)
        if argv[:3] == ["docker", "exec", "f00d"]:
            inner = argv[3:]
            if inner[:2] == ["nginx", "-t"]:
                return result("", self.test_error, 1 if self.test_error else 0)
            if inner[:2] == ["nginx", "-s"]:
                self.reloads += 1
                if not self.reload_stuck:
                    self.workers = [w + 100 for w in self.workers]
                return result("", "", 0)
            return result("".join(f"{w} nginx: worker process\n" for w in self.workers), "", 0)
        return super().run(command, **kwargs)


def running_front(tmp_path: Path) -> tuple[RunningFront, Any, Path]:
    runner = RunningFront()
    shop = app_settings(tmp_path, "shop", 18001, "shop.test")
    (tmp_path / "front" / "nginx").mkdir(parents=True)
    (tmp_path / "front" / "compose.yml").write_text(front.render_compose("x"))
    conf = tmp_path / "front" / "nginx" / "nginx.conf"
    conf.write_text(render_conf([], "127.0.0.1:8088"))
    return runner, shop, conf


def test_a_registration_reloads_a_running_front_once(tmp_path: Path) -> None:
    runner, shop, conf = running_front(tmp_path)
    assert front.claim(runner, shop, Progress(quiet=True)) is True
    assert runner.reloads == 1 and "server_name shop.test;" in conf.read_text()
    assert front.claim(runner, shop, Progress(quiet=True)) is False and runner.reloads == 1


@pytest.mark.parametrize("fault", ["nginx -t", "reload"])
def test_a_front_that_refuses_the_new_config_keeps_the_old_and_the_registry(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           fault: str) -> None:
    runner, shop, conf = running_front(tmp_path)
    monkeypatch.setattr(front, "RELOAD_TIMEOUT", 0.2)
    before = conf.read_text()
    if fault == "nginx -t":
        runner.test_error = 'nginx: [emerg] unknown directive "x"'
    else:
        runner.reload_stuck = True
    with pytest.raises(ProxyConfigInvalid, match=r"unknown directive|did not take the new configuration"):
        front.claim(runner, shop, Progress(quiet=True))
    assert conf.read_text() == before
    assert list((tmp_path / "front" / "apps").iterdir()) == []  # the registration was undone
    assert not (tmp_path / "front" / "lock").exists()
