"""The deploy engine against the fake Docker host: each outcome of a deploy, in a fraction of a second.

These drive the engine's public entry points (``up``, ``deploy``) and look only at the host: which
containers exist, where the live links point, the release log and the lock. The last tests pin
down the fake itself where a wrong answer would let an engine test pass by accident. Every step's
failure, Ctrl-C and kill are in test_steps.py.
"""

from __future__ import annotations

import pytest
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from handover.engine import DeployOptions, Engine
from handover.errors import HealthCheckFailed
from handover.progress import Progress

from .fakehost import Behaviour, FakeHost, docker

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
        (Behaviour(dies_after=2), {}, True),  # healthy, switched to, then dies: switched back
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
