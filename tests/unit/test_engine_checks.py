"""The engine's own checks and words, against the fake Docker host: the post-switch check's whole
window, a restart behind a healthy face, the logs shown with a failure, what a no-op says, `down`."""

from __future__ import annotations

import dataclasses
import io

import pytest

from handover.engine import MAX_ERROR_CHARS, DeployOptions, Engine
from handover.errors import HandoverError, HealthCheckFailed, LockHeld, PreflightError, ProxyConfigInvalid
from handover.lock import DeployLock
from handover.progress import Progress
from handover.proxies import nginx

from .fakehost import Behaviour, Command, FakeHost, compose, docker, fake_settings

OLD, NEW = "v1", "v2"


def engine_for(host: FakeHost, **settings: object) -> Engine:
    return Engine(host.runner, dataclasses.replace(host.settings, **settings), Progress(quiet=True))


@pytest.fixture
def host(fake_host: FakeHost) -> FakeHost:
    assert engine_for(fake_host).up(OLD).result == "success"
    yield fake_host  # type: ignore[misc]
    fake_host._end_background()


def test_the_post_switch_check_watches_its_whole_window(host: FakeHost) -> None:
    host.behave(NEW, Behaviour(dies_after=6))  # dies well after the first checks

    with pytest.raises(HealthCheckFailed) as failed:
        engine_for(host, post_switch_check=5.0).deploy(DeployOptions(version=NEW))

    assert str(failed.value).startswith("after the switch: handover-app-2 crashed: exited with status 1")
    assert host.records()[-1]["error"].startswith("after the switch: handover-app-2 crashed")
    assert host.live_versions() == {OLD}


def test_a_restart_after_the_switch_is_caught_though_healthy_again(host: FakeHost) -> None:
    bumped: list[bool] = []
    mark = len(host.commands)

    def restart_once_switched(command: Command) -> bool:
        switched = host.matching(lambda c: c.argv[:2] == ["sh", "-c"] and "point" in c.argv, since=mark)
        if switched and not bumped and command.argv[:2] == ["docker", "inspect"]:
            new = host.app_containers()[-1]
            new.restarts += 1  # it died and Docker restarted it; it answers healthy again
            bumped.append(True)
        return False

    host.fail_on(restart_once_switched)

    with pytest.raises(HealthCheckFailed, match="after the switch: handover-app-2 crashed: it exited and was "
                                                "restarted 1 time"):
        engine_for(host, post_switch_check=0.05).deploy(DeployOptions(version=NEW))

    assert bumped and host.live_versions() == {OLD}


def test_a_failure_shows_the_new_containers_logs(host: FakeHost) -> None:
    host.behave(NEW, Behaviour(never_healthy=True, log=("boom: cannot reach the database",)))

    with pytest.raises(HealthCheckFailed) as failed:
        engine_for(host).deploy(DeployOptions(version=NEW))

    text = str(failed.value)
    assert "--- last 40 log lines of handover-app-2 (" in text
    assert "boom: cannot reach the database" in text


def test_a_container_without_logs_says_so(host: FakeHost) -> None:
    host.behave(NEW, Behaviour(never_healthy=True))
    host.fail_on(docker("logs"), exited=0)  # docker logs prints nothing

    with pytest.raises(HealthCheckFailed) as failed:
        engine_for(host).deploy(DeployOptions(version=NEW))

    assert str(failed.value).rstrip().endswith("(no output)")


def test_a_long_error_is_kept_bounded_in_the_record(host: FakeHost) -> None:
    host.fail_on(lambda c: c.argv[:3] == ["docker", "compose", "--project-name"] and "build" in c.argv,
                 stdout="x" * (3 * MAX_ERROR_CHARS))

    with pytest.raises(HandoverError):
        engine_for(host).deploy(DeployOptions(version=NEW))

    error = host.records()[-1]["error"]
    assert len(error) == MAX_ERROR_CHARS + 2 and error.endswith(" …")


@pytest.mark.parametrize(("raised", "kept"), [
    (HandoverError("y" * MAX_ERROR_CHARS), "y" * MAX_ERROR_CHARS),  # at the bound: whole
    (HandoverError("  "), "HandoverError"),  # no words: the error's kind
])
def test_an_error_at_the_bound_or_without_words_is_kept_as_it_reads(host: FakeHost,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    raised: HandoverError, kept: str) -> None:
    from handover import steps

    def fail(self: steps.Step, run: steps.Run) -> None:
        raise raised

    monkeypatch.setattr(steps.Build, "run", fail)
    with pytest.raises(HandoverError):
        engine_for(host).deploy(DeployOptions(version=NEW))
    assert host.records()[-1]["error"] == kept


@pytest.mark.parametrize(("options", "said"), [
    (DeployOptions(version=OLD), f"==> version {OLD} is already live; nothing to do (use --force to redeploy)\n"),
    (DeployOptions(version=OLD, action="up"), f"==> already up: handover-app-1 ({OLD})\n"),
])
def test_a_run_with_nothing_to_do_says_so(host: FakeHost, options: DeployOptions, said: str) -> None:
    stream = io.StringIO()
    records = len(host.records())

    rec = Engine(host.runner, host.settings, Progress(stream=stream)).deploy(options)

    assert rec.result == "unchanged" and stream.getvalue() == said
    assert len(host.records()) == records + (0 if options.action == "up" else 1)


def test_down_removes_the_stack_and_its_state(host: FakeHost) -> None:
    engine_for(host).down()

    assert host.app_containers() == [] and host.containers_of("nginx") == []
    assert not (host.state_path / "nginx").exists() and not (host.state_path / "sockets").exists()
    assert not host.lock_held()


def test_down_is_refused_while_a_deploy_holds_the_lock(host: FakeHost) -> None:
    other = DeployLock(host.runner, str(host.state_path), notify=lambda _text: None)
    other.acquire({"holder": "ann@box", "since": "2026-01-01T00:00:00+00:00", "action": "deploy", "version": "v9"})
    try:
        with pytest.raises(LockHeld, match="ann@box"):
            engine_for(host).down()
        assert len(host.app_containers()) == 1 and host.lock_held()
    finally:
        other.release()


@pytest.mark.parametrize(("behaviour", "starts"), [
    (Behaviour(crash=True, listens=False), "handover-app-2 crashed: exited with status 1, restarted"),
    (Behaviour(never_healthy=True), "handover-app-2 is unhealthy\n"),
    (Behaviour(healthy_after=None), "not healthy within 0.25 s: handover-app-2 is starting\n"),
], ids=["crash", "unhealthy", "stuck-starting"])
def test_health_says_at_once_what_is_wrong(host: FakeHost, behaviour: Behaviour, starts: str) -> None:
    host.behave(NEW, behaviour)

    with pytest.raises(HealthCheckFailed) as failed:
        engine_for(host, health_timeout=0.25).deploy(DeployOptions(version=NEW))

    assert str(failed.value).startswith(starts)


def test_a_container_that_vanishes_while_starting_is_named(host: FakeHost) -> None:
    host.behave(NEW, Behaviour(healthy_after=5))
    gone: list[str] = []
    seen: list[str] = []

    def remove_it(command: Command) -> bool:  # on the health wait's second look at the new container
        new = [c for c in host.app_containers() if c.version == NEW]
        if new and not gone and command.argv == ["docker", "inspect", new[0].id]:
            seen.append(new[0].id)
            if len(seen) == 2:
                gone.append(new[0].id)
                del host.containers[new[0].id]  # removed by someone else meanwhile
        return False

    host.fail_on(remove_it)

    with pytest.raises(HealthCheckFailed, match=r"containers vanished: \['[0-9a-f]{64}'\]"):
        engine_for(host).deploy(DeployOptions(version=NEW))

    assert gone and host.live_versions() == {OLD}


def test_builds_use_the_base_images_found_on_the_host(fake_host: FakeHost) -> None:
    engine_for(fake_host).up(OLD)
    builds = [c for c in fake_host.calls if c.command.argv[3:4] and "build" in c.command.argv]
    first = builds[0].command.env
    assert first["BASE_IMAGE"] == fake_host.settings.base_image
    assert first["PROXY_BASE_IMAGE"] == fake_host.settings.proxy_base_image
    assert first["PROXY_IMAGE"] == f"{fake_host.settings.project}-nginx"
    fake_host._end_background()


def test_prune_never_removes_what_runs(host: FakeHost) -> None:
    engine = engine_for(host, releases_kept=1)
    engine.deploy(DeployOptions(version=NEW))

    assert engine.prune_images(keep=set()) == []  # NEW runs; nothing else is known and present
    assert NEW in host.image_tags(host.settings.app_image)


# -- the proxy: what it says when it does not do its part ---------------------------------------------
def test_a_reload_that_brings_no_new_workers_fails_naming_the_old_ones(host: FakeHost) -> None:
    proxy = engine_for(host, reload_timeout=0.05).proxy
    before = proxy.workers()
    host.nginx_reload_delay = None  # the reload is accepted, but no new worker ever starts

    with pytest.raises(ProxyConfigInvalid) as failed:
        proxy.reload()

    assert str(failed.value) == ("nginx did not start new workers within 0.05 s of the reload (old workers still "
                                 f"accepting: {sorted(before)})")


def test_a_reload_waits_for_the_new_workers(host: FakeHost) -> None:
    proxy = engine_for(host).proxy
    before = proxy.workers()
    host.nginx_reload_delay = 3  # three more listings before the new workers show

    proxy.reload()

    after = proxy.workers()
    assert after and not after & before


def test_asking_a_stopped_proxy_names_its_project(host: FakeHost) -> None:
    (proxy,) = host.containers_of("nginx")
    host.crash_container(proxy.id)
    with pytest.raises(PreflightError, match=r"^the nginx container of project 'handover' is not running$"):
        engine_for(host).proxy.workers()


def test_an_invalid_proxy_configuration_is_nginxs_own_words(host: FakeHost) -> None:
    conf = host.root / "deploy" / "nginx" / "nginx.conf"
    conf.write_text(conf.read_text() + "\nbogus on;\n")
    host.nginx_test_error = 'unknown directive "bogus"'

    with pytest.raises(ProxyConfigInvalid) as failed:
        engine_for(host).proxy.test_config()

    assert str(failed.value) == ("nginx -t failed:\nnginx: [emerg] unknown directive \"bogus\" in "
                                 "/etc/handover/./nginx/nginx.conf:1\nnginx: configuration file "
                                 "/etc/handover/./nginx/nginx.conf test failed")


def test_a_proxy_that_never_runs_stops_the_first_start(fake_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx, "START_TIMEOUT", 0.05)
    fake_host.fail_on(compose("up", "nginx"), exited=0, times=None)  # compose says yes; nothing runs

    with pytest.raises(PreflightError, match=r"^nginx did not start \(see `logs`\): its container is not running$"):
        engine_for(fake_host).up(OLD)


def test_two_new_containers_without_sockets_are_both_named(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    host = FakeHost(root, fake_settings(root, replicas=2))
    engine_for(host).up(OLD)
    host.behave(NEW, Behaviour(listens=False))
    mark = len(host.commands)

    with pytest.raises(HandoverError) as failed:
        engine_for(host).deploy(DeployOptions(version=NEW))

    (checked,) = host.matching(lambda c: c.argv[:2] == ["sh", "-c"] and c.argv[3:4] == ["check"], since=mark)
    names = checked[5:]
    assert len(names) == 2
    assert str(failed.value).startswith(f"the new app does not listen on its unix socket ({', '.join(names)} "
                                        f"missing in {host.state_path}/sockets)")
    host._end_background()


def test_backup_links_that_cannot_be_dropped_do_not_fail_a_deploy(host: FakeHost) -> None:
    (host.state_path / "sockets" / "prev-9.sock").mkdir()  # rm -f cannot remove a directory
    assert engine_for(host).deploy(DeployOptions(version=NEW)).result == "success"
def test_a_source_version_whose_image_exists_is_not_built_again(host: FakeHost) -> None:
    """src-<hash> names the build directory's sources: its image, once built, is that build."""
    same, before = "src-0123456789", len(host.matching(compose("build", "app")))
    engine_for(host).deploy(DeployOptions(version=same))
    builds = len(host.matching(compose("build", "app")))
    assert builds == before + 1 and host.live_versions() == {same}

    plan = engine_for(host).deploy(DeployOptions(version=same, force=True, dry_run=True))
    assert "not rebuilt" in next(s.detail for s in plan.steps if s.name == "build")
    again = engine_for(host).deploy(DeployOptions(version=same, force=True))
    assert again.result == "success" and host.live_versions() == {same}
    assert len(host.matching(compose("build", "app"))) == builds  # no second build
    assert "not rebuilt" in next(s.detail for s in again.steps if s.name == "build")

    named = "v7"  # any other tag may name other sources: always built
    engine_for(host).deploy(DeployOptions(version=named))
    engine_for(host).deploy(DeployOptions(version=named, force=True))
    assert len(host.matching(compose("build", "app"))) == builds + 2


# -- the proxy's configuration loaded again (`certs`) -------------------------------------------------
def test_refreshing_the_proxy_loads_only_a_changed_configuration_under_the_lock(host: FakeHost) -> None:
    reloads = host.nginx_reloads
    assert engine_for(host).refresh_proxy() is False  # nothing changed: nothing loaded
    assert host.nginx_reloads == reloads and not host.lock_held()
    assert engine_for(host, replicas=2).refresh_proxy() is True
    assert host.nginx_reloads == reloads + 1 and not host.lock_held()
    assert "live-1.sock" in (host.state_path / "nginx" / "upstream.conf").read_text()


def test_refreshing_a_proxy_that_does_not_run_is_refused_and_frees_the_lock(fake_host: FakeHost) -> None:
    engine = engine_for(fake_host)
    with pytest.raises(PreflightError) as info:
        engine.refresh_proxy()
    assert str(info.value) == (f"the proxy of project {fake_host.settings.project!r} is not running: start the "
                               "stack first (its first start installs the certificate)")
    assert not fake_host.lock_held()


def test_refreshing_the_proxy_waits_for_no_deploy(host: FakeHost) -> None:
    other = DeployLock(host.runner, host.settings.state_path)
    other.acquire({"holder": "ann@laptop", "since": "2026-01-01T00:00:00+00:00", "action": "deploy", "version": NEW})
    try:
        with pytest.raises(LockHeld, match="ann@laptop"):
            engine_for(host).refresh_proxy()
        assert host.lock_held()  # still ann's
    finally:
        other.release()
