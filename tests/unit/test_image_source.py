"""Where the app's image comes from (build, registry pull, ship), how it stops (signal, pre_stop) and the
user's other services (their own compose file), against the fake Docker host.

The plans are exact; a bad input is refused naming it, before anything changes; the other services
are started by the first start and never touched by a deploy.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

import pytest

from fabfile import hostconfig, hostrun, sync
from fabfile.connect import Remote
from handover import settings as settings_mod
from handover.backends.compose import compose_argv, compose_env
from handover.cli import defaults, target_version
from handover.engine import DeployOptions, Engine
from handover.errors import ConfigError, HandoverError
from handover.progress import Progress
from handover.settings import DEMO_APP_DIR, PROJECT_ROOT

from .fakehost import FakeHost, compose, docker, fake_settings

REGISTRY_IMAGE = "127.0.0.1:5000/img-shop"
OLD, NEW = "v1", "v2"
PULL_DEPLOY = ["lock", "preflight", "proxy config", "pull", "start", "health", "switch", "verify", "drain", "prune"]
PULL_FIRST_START = ["lock", "preflight", "pull", "build", "services", "start", "health", "switch", "proxy"]
EXTRA_COMPOSE = """\
services:
  db:
    image: img-db:1
    command: ["sleep", "infinity"]
  worker:
    image: img-worker:1
"""


def load(**overrides: Any) -> settings_mod.Settings:
    config = {**defaults()["deploy"], **overrides}
    return settings_mod.load(config)


def engine_for(host: FakeHost) -> Engine:
    return Engine(host.runner, host.settings, Progress(quiet=True))


def quiet_engine(host: FakeHost) -> tuple[Engine, list[str]]:
    """An engine whose warnings are kept (they are what a person reads about a pre_stop)."""
    said: list[str] = []
    progress = Progress(quiet=True)
    progress.warn = said.append  # type: ignore[method-assign]
    return Engine(host.runner, host.settings, progress), said


def pulling_host(tmp_path: Path, **overrides: Any) -> FakeHost:
    settings = fake_settings(tmp_path, app_build="", app_image=REGISTRY_IMAGE, **overrides)
    host = FakeHost(tmp_path, settings)
    host.registry |= {f"{REGISTRY_IMAGE}:{OLD}", f"{REGISTRY_IMAGE}:{NEW}"}
    return host


def state(host: FakeHost) -> tuple[object, ...]:
    return ([(c.id, c.status) for c in host.containers.values()], host.live_targets(), host.sockets(),
            host.nginx_reloads, sorted(host.images))


# -- the pure parts: compose's command line and environment ------------------------------------------
def test_compose_gets_the_build_directory_the_stop_signal_and_the_extra_file(tmp_path: Path) -> None:
    extra = tmp_path / "services.yml"
    extra.write_text(EXTRA_COMPOSE)
    build = tmp_path / "shop"
    build.mkdir()
    (build / "Dockerfile").write_text("FROM scratch\n")
    s = load(app_build=str(build), app_stop_signal="SIGQUIT", extra_compose_file=str(extra))
    argv = compose_argv(s, "up", "app")
    assert argv == ["docker", "compose", "--project-name", s.project, "--file", s.compose_path,
                    "--file", str(extra), "up", "app"]
    env = compose_env(s, "v1")
    assert (env["APP_BUILD_DIR"], env["APP_STOP_SIGNAL"], env["APP_VERSION"]) == (str(build), "SIGQUIT", "v1")
    assert s.extra_services == ("db", "worker")
    # The default: the demo app, one compose file, SIGTERM.
    d = load()
    assert compose_argv(d, "ps") == ["docker", "compose", "--project-name", d.project, "--file", d.compose_path,
                                     "ps"]
    assert compose_env(d)["APP_BUILD_DIR"] == str(DEMO_APP_DIR) and compose_env(d)["APP_STOP_SIGNAL"] == "SIGTERM"
    # No build: compose gets no build directory (it never builds the app then).
    assert "APP_BUILD_DIR" not in compose_env(load(app_build="", app_image=REGISTRY_IMAGE))


def test_on_a_host_the_build_directory_and_the_extra_file_are_the_synced_copies(tmp_path: Path) -> None:
    extra = tmp_path / "services.yml"
    extra.write_text(EXTRA_COMPOSE)
    s = dataclasses.replace(load(extra_compose_file=str(extra)), deploy_dir="/srv/shop", source_subdir="current")
    assert s.build_dir == "/srv/shop/current/server"
    assert s.extra_compose_path == "/srv/shop/current/services.yml"
    assert compose_argv(s, "ps")[-3:] == ["--file", "/srv/shop/current/services.yml", "ps"]
    assert compose_env(s)["APP_BUILD_DIR"] == "/srv/shop/current/server"
    dirs = sync.source_dirs(("nginx",), s)
    assert dirs == (str(PROJECT_ROOT / "compose"), str(PROJECT_ROOT / "nginx"), str(DEMO_APP_DIR), str(extra))
    assert sync.shown(dirs) == "compose/, nginx/, server/, services.yml"
    assert sync.source_dirs(("nginx",), load(app_build="", app_image=REGISTRY_IMAGE)) == dirs[:2]


# -- bad input: the key and the problem named, nothing runs -------------------------------------------
def test_a_build_directory_without_a_dockerfile_or_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    with pytest.raises(ConfigError, match=rf"deploy.app_build: the build directory {tmp_path}/app has no Dockerfile"):
        load(app_build=str(tmp_path / "app"))
    with pytest.raises(ConfigError, match=rf"deploy.app_build: the build directory {tmp_path}/nope does not exist"):
        load(app_build=str(tmp_path / "nope"))
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(ConfigError, match=r"deploy.app_build: a build directory may not be called 'compose'"):
        load(app_build=str(tmp_path / "compose"))


def test_a_relative_build_directory_is_taken_from_the_project_root() -> None:
    assert load(app_build="server").app_build == str(DEMO_APP_DIR)
    assert load(app_build=None).app_build == ""


@pytest.mark.parametrize("name", ["app", "nginx"])
def test_a_service_named_like_handovers_own_is_refused(tmp_path: Path, name: str) -> None:
    extra = tmp_path / "services.yml"
    extra.write_text(f"services:\n  db:\n    image: x\n  {name}:\n    image: y\n")
    with pytest.raises(ConfigError, match=rf"deploy.extra_compose_file: service '{name}' in {extra} has the name "
                                          rf"of handover's own service '{name}'"):
        load(extra_compose_file=str(extra))


@pytest.mark.parametrize(("text", "words"), [
    ("services: [", "is not valid YAML"),
    ("volumes: {}\n", "defines no services"),
    ("services:\n  'bad name':\n    image: x\n", "is not a compose service name"),
])
def test_an_extra_compose_file_that_is_not_one_is_refused(tmp_path: Path, text: str, words: str) -> None:
    extra = tmp_path / "services.yml"
    extra.write_text(text)
    with pytest.raises(ConfigError, match=f"deploy.extra_compose_file: .*{words}"):
        load(extra_compose_file=str(extra))
    with pytest.raises(ConfigError, match=f"deploy.extra_compose_file: cannot read {tmp_path}/missing.yml"):
        load(extra_compose_file=str(tmp_path / "missing.yml"))


@pytest.mark.parametrize(("key", "value", "words"), [
    ("app_stop_signal", "TERM; rm -rf /", "a signal name such as SIGTERM"),
    ("app_pre_stop", "sleep 1\nrm -rf /", "a command on one line"),
    ("app_pre_stop", [], None),
    ("app_pre_stop", [""], "a command on one line"),
    ("app_pre_stop_timeout", 0, "a number from 1 to 600"),
    ("app_ship", "maybe", "true or false"),
])
def test_stop_and_ship_values_are_checked(key: str, value: object, words: str | None) -> None:
    if words is None:
        assert load(**{key: value}).app_pre_stop == ()
        return
    with pytest.raises(ConfigError, match=f"config key deploy.{key}: expected {words}"):
        load(**{key: value})


def test_ship_and_a_build_directory_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"deploy.app_ship and deploy.app_build"):
        load(app_ship=True)
    assert load(app_ship="true", app_build="").app_ship


def test_pre_stop_takes_a_command_line_or_a_list() -> None:
    assert load(app_pre_stop="kill -USR1 1").app_pre_stop == ("sh", "-c", "kill -USR1 1")
    assert load(app_pre_stop=["/bin/drain", "--now"]).app_pre_stop == ("/bin/drain", "--now")


def test_a_ready_made_image_needs_its_version_given() -> None:
    s = load(app_build="", app_image=REGISTRY_IMAGE)
    with pytest.raises(ConfigError, match=rf"{REGISTRY_IMAGE}:<version> is ready-made: give --version"):
        target_version(s, None)
    assert target_version(s, "1.4") == "1.4"
    assert target_version(load(), None).startswith("src-")


# -- pull from a registry -------------------------------------------------------------------------------
def test_a_pull_deploy_takes_exactly_the_planned_steps(tmp_path: Path) -> None:
    host = pulling_host(tmp_path)
    first = engine_for(host).up(OLD)
    assert [s.name for s in first.steps] == [n for n in PULL_FIRST_START if n != "services"]
    assert host.matching(docker("pull"))[0] == ["docker", "pull", "--quiet", f"{REGISTRY_IMAGE}:{OLD}"]
    built = host.matching(compose("build"))
    assert built and all(argv[-1] == "nginx" for argv in built)  # the proxy only: the app is never built
    plan = engine_for(host).deploy(DeployOptions(version=NEW, dry_run=True))
    assert [s.name for s in plan.steps] == PULL_DEPLOY
    assert plan.steps[3].detail == f"{REGISTRY_IMAGE}:{NEW} from its registry"
    done = engine_for(host).deploy(DeployOptions(version=NEW))
    assert done.result == "success" and [s.name for s in done.steps] == PULL_DEPLOY
    assert host.live_versions() == {NEW} and f"{REGISTRY_IMAGE}:{NEW}" in host.images
    assert not host.matching(compose("build", "app"))
    host.unknown.clear()


def test_an_image_that_cannot_be_pulled_changes_nothing_and_is_named(tmp_path: Path) -> None:
    host = pulling_host(tmp_path)
    assert engine_for(host).up(OLD).result == "success"
    before = state(host)
    with pytest.raises(HandoverError) as caught:
        engine_for(host).deploy(DeployOptions(version="v9"))
    message = str(caught.value)
    assert f"the image {REGISTRY_IMAGE}:v9 cannot be pulled" in message
    assert "pull access denied" in message and "no container was started or stopped" in message
    assert state(host) == before and host.live_versions() == {OLD} and not host.lock_held()
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("failed", "pull")


def test_a_local_ready_made_image_is_used_as_it_is(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, app_build="", app_ship=True, app_image="img-shop")
    host = FakeHost(tmp_path, settings)
    host._add_image("img-shop:v1")
    rec = engine_for(host).up(OLD)
    assert rec.result == "success" and "image" in [s.name for s in rec.steps]
    assert not host.matching(docker("pull")) and not host.matching(compose("build", "app"))
    with pytest.raises(HandoverError, match="image img-shop:v7 is not on the host"):
        engine_for(host).deploy(DeployOptions(version="v7"))


# -- how the old version stops -------------------------------------------------------------------------
def test_pre_stop_runs_in_each_old_container_before_its_stop(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, fake_settings(tmp_path, app_pre_stop=("sh", "-c", "touch /tmp/stopping"), replicas=2,
                                            app_stop_signal="SIGQUIT"))
    engine, said = quiet_engine(host)
    assert engine.up(OLD).result == "success"
    old = host.app_containers()
    assert {c.stop_signal for c in old} == {"SIGQUIT"}
    mark = len(host.commands)
    plan = engine.deploy(DeployOptions(version=NEW, dry_run=True))
    drain = next(s for s in plan.steps if s.name == "drain")
    assert drain.detail.startswith("run pre_stop in each (up to 10 s; a failure is reported, the stop goes on), ")
    assert "(SIGQUIT, grace 25 s)" in drain.detail
    assert engine.deploy(DeployOptions(version=NEW)).result == "success"
    done = host.commands_since(mark)
    execs = [argv for argv in done if argv[:2] == ["docker", "exec"] and argv[2] in {c.id for c in old}]
    assert execs == [["docker", "exec", c.id, "sh", "-c", "touch /tmp/stopping"] for c in old]
    stop = next(i for i, argv in enumerate(done) if argv[:2] == ["docker", "stop"])
    assert all(done.index(e) < stop for e in execs)
    assert said == []


@pytest.mark.parametrize("fault", ["fails", "hangs"])
def test_a_pre_stop_that_fails_or_hangs_is_reported_and_the_stop_goes_on(tmp_path: Path, fault: str) -> None:
    host = FakeHost(tmp_path, fake_settings(tmp_path, app_pre_stop=("/bin/drain",), app_pre_stop_timeout=3))
    engine, said = quiet_engine(host)
    assert engine.up(OLD).result == "success"
    (old,) = host.app_containers()
    is_pre_stop = docker("exec", old.id, "/bin/drain")
    if fault == "fails":
        rule = host.fail_on(is_pre_stop, exited=7, stderr="drain: queue unreachable")
        words = f"pre_stop in {old.name} exited 7: drain: queue unreachable; stopped it anyway"
    else:
        rule = host.timeout_on(is_pre_stop)
        words = f"pre_stop in {old.name} did not finish within 3 s; stopped it anyway"
    rec = engine.deploy(DeployOptions(version=NEW))
    assert rule.fired == 1
    assert rec.result == "success" and host.live_versions() == {NEW}
    assert old.id not in host.containers and not host.lock_held()
    assert said == [words]
    drain = next(s for s in rec.steps if s.name == "drain")
    assert drain.detail == words
    assert host.records()[-1]["steps"][-2]["detail"] == words


# -- the user's other services ---------------------------------------------------------------------------
def test_other_services_start_once_and_no_deploy_touches_them(tmp_path: Path) -> None:
    extra = tmp_path / "services.yml"
    extra.write_text(EXTRA_COMPOSE)
    host = FakeHost(tmp_path, fake_settings(tmp_path, extra_compose_file=str(extra), extra_services=("db", "worker")))
    engine = engine_for(host)
    first = engine.up(OLD)
    assert [s.name for s in first.steps] == ["lock", "preflight", "build", "services", "start", "health", "switch",
                                             "proxy"]
    others = {c.service: (c.id, c.seq, c.status) for c in host.containers.values() if c.service in ("db", "worker")}
    assert sorted(others) == ["db", "worker"] and all(v[2] == "running" for v in others.values())
    mark = len(host.commands)
    for version in ("v2", "v3", "v4"):
        assert engine_for(host).deploy(DeployOptions(version=version)).result == "success"
    now = {c.service: (c.id, c.seq, c.status) for c in host.containers.values() if c.service in ("db", "worker")}
    assert now == others
    composed = [argv for argv in host.commands_since(mark) if argv[:2] == ["docker", "compose"]]
    assert composed and all(argv[3:7] == [host.settings.project, "--file", host.settings.compose_path, "--file"]
                            for argv in composed)
    ups = [argv for argv in composed if "up" in argv]
    assert ups and all(argv[-1] == "app" and "--no-deps" in argv for argv in ups)
    assert not any("db" in argv or "worker" in argv for argv in composed)
    assert [s.name for s in engine_for(host).deploy(DeployOptions(version="v5", dry_run=True)).steps] == [
        "lock", "preflight", "proxy config", "build", "start", "health", "switch", "verify", "drain", "prune"]


# -- ship: this machine's image to a host ---------------------------------------------------------------
@dataclasses.dataclass
class LocalConn:
    host: FakeHost
    user: str = pwd.getpwuid(os.getuid()).pw_name

    def run(self, command: str, **kwargs: Any) -> Any:
        return self.host.runner.run(command, **kwargs)


def shipping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeHost, Remote, dict[str, str], list[str]]:
    settings = fake_settings(tmp_path, source_subdir=hostconfig.RELEASE_LINK, app_build="", app_ship=True,
                             app_image="img-shop")
    host = FakeHost(tmp_path, settings)
    deploy = Path(settings.deploy_dir)

    def upload(remote: Remote, s: Any, version: str, progress: Any, dirs: Any) -> str:
        name = sync.release_name(version)
        for part in ("compose", "nginx"):
            shutil.copytree(deploy / part, deploy / sync.RELEASES_DIR / name / part)
        return name

    local: dict[str, str] = {}  # this machine's images: reference -> ID
    sent: list[str] = []

    def stream(remote: Remote, ref: str) -> None:
        sent.append(ref)
        host.images[ref] = local[ref]  # docker load keeps the image ID

    monkeypatch.setattr(sync, "upload", upload)
    monkeypatch.setattr(hostrun, "local_image_id", lambda ref: local.get(ref, ""))
    monkeypatch.setattr(hostrun, "stream_image", stream)
    target = hostconfig.Target(name="web1", host="web1", user=None, port=None, settings=settings, env_file=None)
    return host, Remote(target, LocalConn(host), tmp_path / "known_hosts"), local, sent  # type: ignore[arg-type]


def test_ship_sends_the_local_image_once_and_only_when_the_host_lacks_its_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, remote, local, sent = shipping(tmp_path, monkeypatch)
    quiet = Progress(quiet=True)
    local["img-shop:v1"] = "sha256:" + "1" * 64
    local["img-shop:v2"] = "sha256:" + "2" * 64
    first = hostrun.deploy(remote, OLD, force=False, progress=quiet)
    assert first.result == "success" and sent == ["img-shop:v1"]
    assert [s.name for s in first.steps][:5] == ["lock", "sync", "preflight", "ship", "build"]
    plan = hostrun.dry_run(remote, NEW, force=False, progress=quiet)
    assert [s.name for s in plan.steps] == ["lock", "sync", "preflight", "proxy config", "ship", "start", "health",
                                            "switch", "verify", "drain", "prune"]
    ship = plan.steps[4].detail
    assert ship == "img-shop:v2 from this machine to web1 (docker save | ssh docker load, streamed)"
    assert hostrun.deploy(remote, NEW, force=False, progress=quiet).result == "success"
    assert sent == ["img-shop:v1", "img-shop:v2"] and host.live_versions() == {NEW}
    # The host has that image ID already: nothing is sent again.
    again = hostrun.deploy(remote, NEW, force=True, progress=quiet)
    assert again.result == "success" and sent == ["img-shop:v1", "img-shop:v2"]
    assert next(s for s in again.steps if s.name == "ship").detail == "on the host already, nothing sent"
    assert not host.matching(docker("pull")) and not host.matching(compose("build", "app"))


def test_ship_of_an_image_this_machine_lacks_is_refused_before_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, remote, local, sent = shipping(tmp_path, monkeypatch)
    local["img-shop:v1"] = "sha256:" + "1" * 64
    assert hostrun.deploy(remote, OLD, force=False, progress=Progress(quiet=True)).result == "success"
    before = state(host)
    with pytest.raises(HandoverError, match="image img-shop:v3 is not in this machine's Docker"):
        hostrun.deploy(remote, "v3", force=False, progress=Progress(quiet=True))
    assert state(host) == before and sent == ["img-shop:v1"] and not host.lock_held()
    assert (host.records()[-1]["result"], host.records()[-1]["failed_step"]) == ("failed", "ship")


def test_the_stream_is_docker_save_into_ssh_docker_load(tmp_path: Path) -> None:
    conn = type("Conn", (), {"host": "web1", "port": 22, "user": "deploy", "connect_timeout": 15, "gateway": None,
                             "known_hosts_files": (), "config": {"load_ssh_configs": False},
                             "connect_kwargs": {}})()
    target = hostconfig.Target(name="web1", host="web1", user="deploy", port=22, settings=load(), env_file=None)
    remote = Remote(target, conn, tmp_path / "known_hosts")  # type: ignore[arg-type]
    save, load_argv = hostrun.ship_argv(remote, "img-shop:v1")
    assert save == ["docker", "save", "img-shop:v1"]
    assert load_argv[0] == "ssh" and load_argv[-3:] == ["--", "web1", "docker load --quiet"]
    assert "StrictHostKeyChecking=yes" in load_argv and "BatchMode=yes" in load_argv
    assert os.fspath(tmp_path / "known_hosts") in " ".join(load_argv)


def test_a_rollback_to_a_pruned_registry_image_says_to_deploy_it_again(tmp_path: Path) -> None:
    host = pulling_host(tmp_path)
    assert engine_for(host).up(OLD).result == "success"
    assert engine_for(host).deploy(DeployOptions(version=NEW)).result == "success"
    del host.images[f"{REGISTRY_IMAGE}:{OLD}"]
    before = state(host)
    with pytest.raises(HandoverError, match=rf"image {REGISTRY_IMAGE}:{OLD} is not on the host; deploy version "
                                            rf"{OLD} instead \(it is pulled from its registry again\)"):
        engine_for(host).deploy(DeployOptions(version=OLD, build=False, action="rollback"))
    assert state(host) == before and host.live_versions() == {NEW} and not host.lock_held()


@pytest.mark.parametrize(("fault", "words"), [
    ("", None),
    ("save", r"\(docker save exited 1\); no container was started or stopped:\nError: No such image: img-shop:v1"),
    ("ssh", r"\(ssh web1 docker load exited 255\); no container was started or stopped:\nHost key verification "
            r"failed\."),
])
def test_the_stream_names_the_end_that_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str,
                                              words: str | None) -> None:
    """Stand-ins for docker and ssh on PATH (real processes, a real pipe between them): a save that fails
    leaves the load an empty stream, an ssh that fails leaves the save a broken pipe; each is named right."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    received = tmp_path / "received"
    save = ('echo "Error: No such image: $2" >&2; exit 1' if fault == "save"
            else 'head -c 300000 /dev/zero || { echo "write /dev/stdout: broken pipe" >&2; exit 1; }')
    receive = ('echo "Host key verification failed." >&2; exit 255' if fault == "ssh"
            else f'cat > {received}; [ -s {received} ] || {{ echo "stdin is empty" >&2; exit 1; }}')
    for name, body in (("docker", save), ("ssh", receive)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    conn = type("Conn", (), {"host": "web1", "port": 22, "user": "deploy", "connect_timeout": 15, "gateway": None,
                             "known_hosts_files": (), "config": {"load_ssh_configs": False},
                             "connect_kwargs": {}})()
    target = hostconfig.Target(name="web1", host="web1", user="deploy", port=22, settings=load(), env_file=None)
    remote = Remote(target, conn, tmp_path / "known_hosts")  # type: ignore[arg-type]
    if words is None:
        hostrun.stream_image(remote, "img-shop:v1")
        assert received.stat().st_size == 300000
        return
    with pytest.raises(HandoverError, match=rf"^sending img-shop:v1 to web1 failed {words}$"):
        hostrun.stream_image(remote, "img-shop:v1")


# -- build arguments (app_build_args) --------------------------------------------------------------------
def test_build_arguments_go_to_the_app_build_alone_in_their_order(tmp_path: Path) -> None:
    from handover.backends.compose import build_args

    s = load(app_build_args={"PYTHON_IMAGE": "localhost/python:3.11-bookworm", "PIP_EXTRA": "--pre x", "N": 3})
    assert s.app_build_args == (("PYTHON_IMAGE", "localhost/python:3.11-bookworm"), ("PIP_EXTRA", "--pre x"),
                                ("N", "3"))
    assert build_args(s, ["app"]) == ["build", "--build-arg=PYTHON_IMAGE=localhost/python:3.11-bookworm",
                                      "--build-arg=PIP_EXTRA=--pre x", "--build-arg=N=3", "app"]
    assert build_args(s, ["nginx"]) == ["build", "nginx"]  # never another service's Dockerfile
    assert build_args(load(), ["app"]) == ["build", "app"]  # none by default
    # The first start builds both images: the app with its arguments, the proxy in a build of its own.
    host = FakeHost(tmp_path, fake_settings(tmp_path, app_build_args=s.app_build_args))
    rec = engine_for(host).up(OLD)
    assert rec.result == "success"
    builds = [argv[argv.index("build"):] for argv in host.matching(compose("build"))]
    assert builds == [build_args(s, ["app"]), ["build", "nginx"]], builds
    plan = engine_for(host).deploy(DeployOptions(version=NEW, dry_run=True))
    build_step = next(step for step in plan.steps if step.name == "build")
    assert build_step.detail.endswith("with PYTHON_IMAGE=localhost/python:3.11-bookworm PIP_EXTRA=--pre x N=3")
    done = engine_for(host).deploy(DeployOptions(version=NEW))
    assert done.result == "success" and host.live_versions() == {NEW}
    assert [argv[argv.index("build"):] for argv in host.matching(compose("build"))][-1] == build_args(s, ["app"])


def test_the_default_version_changes_with_the_build_arguments() -> None:
    plain = target_version(load(app_build="examples/starlette-plain"), None)
    local = target_version(load(app_build="examples/starlette-plain", app_build_args={"PYTHON_IMAGE": "a:1"}), None)
    other = target_version(load(app_build="examples/starlette-plain", app_build_args={"PYTHON_IMAGE": "b:1"}), None)
    assert len({plain, local, other}) == 3 and all(v.startswith("src-") for v in (plain, local, other))
    assert local == target_version(load(app_build="examples/starlette-plain",
                                        app_build_args={"PYTHON_IMAGE": "a:1"}), None)


@pytest.mark.parametrize(("value", "words"), [
    ("PYTHON_IMAGE=x", "expected a mapping of build argument names to values"),
    (["PYTHON_IMAGE"], "expected a mapping of build argument names to values"),
    ({"1ST": "x"}, "'1ST' is not a build argument name"),
    ({"A-B": "x"}, "'A-B' is not a build argument name"),
    ({"A B": "x"}, "'A B' is not a build argument name"),
    ({"PYTHON_IMAGE": "a\nRUN rm -rf /"}, r"deploy.app_build_args.PYTHON_IMAGE: expected a value on one line"),
    ({"PYTHON_IMAGE": "a\rb"}, r"deploy.app_build_args.PYTHON_IMAGE: expected a value on one line"),
    ({"PYTHON_IMAGE": None}, r"deploy.app_build_args.PYTHON_IMAGE: expected a value on one line"),
    ({"PYTHON_IMAGE": True}, r"deploy.app_build_args.PYTHON_IMAGE: expected a value on one line"),
    ({"PYTHON_IMAGE": {"x": 1}}, r"deploy.app_build_args.PYTHON_IMAGE: expected a value on one line"),
    ({"APP_VERSION": "9"}, "APP_VERSION is set by handover from the version"),
    ({"BASE_IMAGE": "x"}, r"BASE_IMAGE is set by handover from deploy.base_image"),
])
def test_bad_build_arguments_are_refused_naming_them(value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(app_build_args=value)


def test_build_arguments_without_a_build_directory_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"deploy.app_build_args: build arguments need a build directory"):
        load(app_build="", app_image=REGISTRY_IMAGE, app_build_args={"PYTHON_IMAGE": "x"})
    assert load(app_build="", app_image=REGISTRY_IMAGE, app_build_args={}).app_build_args == ()


def test_a_build_argument_reaches_the_command_line_as_one_quoted_word() -> None:
    from handover.backends.compose import build_args
    from handover.shell import command_line

    s = load(app_build_args={"X": "a b; touch /tmp/pwned $(id)"})
    line = command_line(compose_argv(s, *build_args(s, ["app"])))
    assert "'--build-arg=X=a b; touch /tmp/pwned $(id)'" in line


def test_an_image_without_a_health_check_and_no_health_path_is_named_at_once(tmp_path: Path) -> None:
    from handover.errors import HealthCheckFailed
    from handover.proxies.nginx import SERVICE as PROXY

    from .fakehost import Behaviour

    host = FakeHost(tmp_path, fake_settings(tmp_path))
    assert engine_for(host).up(OLD).result == "success"
    before = [c.id for c in host.containers_of("app")]
    host.behave(NEW, Behaviour(no_healthcheck=True))
    with pytest.raises(HealthCheckFailed, match=r"has no health check: its image has no HEALTHCHECK and "
                                                r"deploy.app_health is \"\"; set deploy.app_health"):
        engine_for(host).deploy(DeployOptions(version=NEW))
    assert host.live_versions() == {OLD} and [c.id for c in host.containers_of("app")] == before
    assert host.records()[-1]["failed_step"] == "health" and host.containers_of(PROXY)


def test_the_compose_file_leaves_the_health_check_to_the_image() -> None:
    import yaml

    app = yaml.safe_load((PROJECT_ROOT / "compose" / "docker-compose.yml").read_text())["services"]["app"]
    assert "healthcheck" not in app
    assert "HEALTHCHECK" in (DEMO_APP_DIR / "Dockerfile").read_text()
