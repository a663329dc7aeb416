"""The deploy engine against the fake Docker host: each outcome of a deploy, in a fraction of a second.

These drive the engine's public entry points (``up``, ``deploy``) and look only at the host: which
containers exist, where the live links point, the release log and the lock. The last tests pin
down the fake itself where a wrong answer would let an engine test pass by accident.
"""

from __future__ import annotations

import pytest
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from handover.engine import DeployOptions, Engine
from handover.errors import BuildFailed, HealthCheckFailed, ProxyConfigInvalid
from handover.progress import Progress

from .fakehost import Behaviour, FakeHost, Killed, Match, compose, docker

OLD, NEW = "v1", "v2"


def started(host: FakeHost) -> Engine:
    """An engine whose stack is up with version OLD."""
    engine = Engine(host.runner, host.settings, Progress(quiet=True))
    assert engine.up(OLD).result == "success"
    assert host.live_versions() == {OLD} and len(host.app_containers()) == 1
    return engine


def assert_only_old_serves(host: FakeHost, old_id: str) -> None:
    assert [c.id for c in host.app_containers()] == [old_id]
    assert [c.id for c in host.live_containers()] == [old_id]
    assert host.sockets() == [f"app-{old_id[:12]}.sock"]
    assert not host.lock_held()


def test_deploy_moves_the_live_link_and_removes_the_old_container(fake_host: FakeHost) -> None:
    engine = started(fake_host)
    old = fake_host.app_containers()[0]
    assert fake_host.nginx_reloads == 1  # `up` loaded nginx's config once

    rec = engine.deploy(DeployOptions(version=NEW))

    assert rec.result == "success"
    (new,) = fake_host.app_containers()
    assert new.version == NEW and new.name == "handover-app-2" and new.id != old.id
    assert fake_host.live_targets() == {0: f"app-{new.short_id}.sock"}
    assert fake_host.sockets() == [f"app-{new.short_id}.sock"]
    assert fake_host.nginx_reloads == 1  # a switch swaps links; nginx's config did not change
    assert [r["result"] for r in fake_host.records()] == ["success", "success"]
    assert not fake_host.lock_held()


@pytest.mark.parametrize(
    ("behaviour", "app_env", "switched"),
    [
        (Behaviour(never_healthy=True), {}, False),
        (None, {"APP_FAULT": "crash"}, False),
        (Behaviour(dies_after=1), {}, True),  # healthy, switched to, then dies: switched back
    ],
    ids=["never-healthy", "crash", "dies-after-switch"],
)
def test_a_failing_version_rolls_back(fake_host: FakeHost, behaviour: Behaviour | None,
                                      app_env: dict[str, str], switched: bool) -> None:
    engine = started(fake_host)
    old = fake_host.app_containers()[0]
    if behaviour is not None:
        fake_host.behave(NEW, behaviour)

    with pytest.raises(HealthCheckFailed):
        engine.deploy(DeployOptions(version=NEW, app_env=app_env))

    assert_only_old_serves(fake_host, old.id)
    assert fake_host.records()[-1]["result"] == "rolled-back"
    assert fake_host.records()[-1]["new_containers"] == ["handover-app-2"]
    steps = [step["name"] for step in fake_host.records()[-1]["steps"]]
    assert ("switch back" in steps) == switched and "rollback" in steps


def test_an_invalid_nginx_config_aborts_before_any_container_starts(fake_host: FakeHost) -> None:
    engine = started(fake_host)
    old = fake_host.app_containers()[0]
    conf = fake_host.root / "deploy" / "nginx" / "nginx.conf"
    conf.write_text(conf.read_text() + "\nbogus_directive on;\n")  # nginx's files changed: nginx -t runs
    fake_host.nginx_test_error = 'unknown directive "bogus_directive"'
    mark = len(fake_host.commands)

    with pytest.raises(ProxyConfigInvalid, match="bogus_directive"):
        engine.deploy(DeployOptions(version=NEW))

    assert fake_host.matching(" nginx -t ", since=mark)
    assert fake_host.matching(compose("build"), since=mark) == []
    assert fake_host.matching(compose("up"), since=mark) == []
    assert fake_host.nginx_reloads == 1
    assert_only_old_serves(fake_host, old.id)


def test_a_build_failure_stops_before_touching_containers(fake_host: FakeHost) -> None:
    engine = started(fake_host)
    old = fake_host.app_containers()[0]
    fake_host.fail_build(NEW)
    mark = len(fake_host.commands)

    with pytest.raises(BuildFailed, match="No matching distribution found") as failed:
        engine.deploy(DeployOptions(version=NEW))

    assert "no container was started or stopped" in str(failed.value)
    for touching in (compose("up"), docker("stop"), docker("rm")):
        assert fake_host.matching(touching, since=mark) == []
    assert NEW not in fake_host.image_tags()
    assert_only_old_serves(fake_host, old.id)


@pytest.mark.parametrize("after", [False, True], ids=["before-up-ran", "after-up-ran"])
def test_ctrl_c_at_compose_up_leaves_one_version(fake_host: FakeHost, after: bool) -> None:
    engine = started(fake_host)
    old = fake_host.app_containers()[0]
    rule = fake_host.interrupt_on(compose("up", "app"), after=after)

    with pytest.raises(KeyboardInterrupt):
        engine.deploy(DeployOptions(version=NEW))

    assert rule.fired == 1
    assert_only_old_serves(fake_host, old.id)
    # Before `compose up` ran nothing had started; after it, the new container was started and removed.
    assert fake_host.records()[-1]["result"] == ("rolled-back" if after else "failed")
    assert fake_host.records()[-1]["failed_step"] == "start"
    assert fake_host.records()[-1]["error"] == "interrupted by the user"


KILL_POINTS: list[tuple[str, Match, bool]] = [
    ("compose-up-ran", compose("up", "app"), True),
    ("before-docker-stop", docker("stop"), False),
]


@pytest.mark.parametrize(("match", "after"), [(m, a) for _, m, a in KILL_POINTS], ids=[n for n, _, _ in KILL_POINTS])
def test_a_killed_deploy_converges_on_the_next_run(fake_host: FakeHost, match: Match, after: bool) -> None:
    engine = started(fake_host)
    rule = fake_host.kill_on(match, after=after)

    with pytest.raises(Killed):
        engine.deploy(DeployOptions(version=NEW))

    assert rule.fired == 1
    with pytest.raises(Killed):  # the process is gone: nothing more reaches the host
        fake_host.runner.run("mkdir after-death", hide=True, warn=True)
    assert not (fake_host.root / "after-death").exists()
    assert fake_host.lock_held()  # nobody released it

    fake_host.revive()
    engine = Engine(fake_host.runner, fake_host.settings, Progress(quiet=True))
    rec = engine.deploy(DeployOptions(version=NEW))  # the dead holder's lock is taken over

    assert rec.result in ("success", "unchanged")
    (live,) = fake_host.app_containers()
    assert live.version == NEW and fake_host.live_containers() == [live]
    assert fake_host.sockets() == [f"app-{live.short_id}.sock"]
    assert not fake_host.lock_held()


# -- the fake itself ---------------------------------------------------------------------------------
def test_the_fake_answers_like_docker_and_fails_loudly_on_the_unknown(fake_host: FakeHost) -> None:
    started(fake_host)
    run = fake_host.runner.run
    (app,) = fake_host.app_containers()

    both = run(f"docker inspect {app.id} {'f' * 64}", hide=True, warn=True)
    assert both.exited == 1 and "No such object" in both.stderr and app.id in both.stdout
    with pytest.raises(UnexpectedExit):  # warn=False: Invoke raises on a non-zero exit
        run(f"docker rm {'f' * 64}", hide=True)

    with pytest.raises(AssertionError, match="docker network"):
        run("docker network ls", hide=True, warn=True)
    with pytest.raises(AssertionError, match="option --format"):
        run("docker ps --format x", hide=True, warn=True)
    fake_host.unknown.clear()  # provoked on purpose

    fake_host.timeout_on(docker("logs"))
    with pytest.raises(CommandTimedOut):  # as Invoke does, warn or not
        run(f"docker logs --tail 5 {app.id}", hide=True, warn=True, timeout=3)
    failing = fake_host.fail_on("sh -c", exited=7, stderr="disk full", nth=2)
    assert run("sh -c 'echo one'", hide=True, warn=True).stdout == "one\n"
    second = run("sh -c 'echo two'", hide=True, warn=True)
    assert (second.exited, second.stderr, failing.fired) == (7, "disk full", 1)
