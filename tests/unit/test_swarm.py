"""The Swarm backend's pure parts and decisions: its settings, the stack file it derives, how it reads
Swarm's answers (tasks, update state, endpoint modes, the node's swarm state) and the plan it picks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from handover import plans, settings
from handover.backends import make_backend
from handover.backends.swarm import (
    SwarmBackend,
    UpdateState,
    check_manager,
    current_tasks,
    deploy_argv,
    rollout_outcome,
    stack_definition,
    stack_yaml,
    task_instance,
    task_rows,
    version_of,
    vip_services,
)
from handover.cli import defaults
from handover.engine import DeployOptions, Engine, Facts
from handover.errors import ConfigError, HandoverError, PreflightError
from handover.proxies import make_proxy
from handover.proxies.swarm import SwarmNginx, config_name, nginx_config, stack_service
from handover.steps import Rollout, SwarmImages

from .scripted import Answer, Scripted

SWARM = {"backend": "swarm", "app_build": "", "app_port": 8000, "http_bind": "0.0.0.0",  # noqa: S104
         "replicas": 3}


def _settings(**overrides: Any) -> settings.Settings:
    return settings.load({**defaults()["deploy"], **SWARM, "project": "shop", **overrides})


# -- settings --------------------------------------------------------------------------------------
def test_compose_is_the_default_backend_and_swarm_is_chosen_by_name() -> None:
    assert settings.load(defaults()["deploy"]).backend == "compose"
    s = _settings(swarm_parallelism=2, swarm_monitor=7)
    assert (s.swarm, s.swarm_parallelism, s.swarm_monitor) == (True, 2, 7.0)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"backend": "kubernetes"}, "deploy.backend"),
    ({"swarm_parallelism": 0}, "deploy.swarm_parallelism"),
    ({"swarm_monitor": -1}, "deploy.swarm_monitor"),
    ({"app_port": 0}, "deploy.app_port"),
    ({"app_build": "server"}, "deploy.app_build"),
    ({"http_bind": "127.0.0.1"}, "deploy.http_bind"),
    ({"app_health": "/healthz"}, "deploy.app_health"),
    ({"release_command": "true"}, "deploy.release_command"),
    ({"app_pre_stop": "sleep 1"}, "deploy.app_pre_stop"),
    ({"hostnames": "shop.example"}, "deploy.hostnames"),
])
def test_what_a_swarm_stack_cannot_do_is_refused_naming_the_key(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _settings(**overrides)


def test_the_same_values_are_fine_with_compose() -> None:
    s = settings.load({**defaults()["deploy"], "app_port": 0, "http_bind": "127.0.0.1"})
    assert not s.swarm


def test_the_backend_and_proxy_follow_the_setting() -> None:
    s = _settings()
    backend = make_backend(None, s)  # type: ignore[arg-type]
    assert isinstance(backend, SwarmBackend)
    assert isinstance(make_proxy(None, s, backend), SwarmNginx)  # type: ignore[arg-type]


# -- the stack file --------------------------------------------------------------------------------
def test_the_stack_rolls_start_first_health_gated_and_back_on_failure() -> None:
    s = _settings(swarm_parallelism=2, swarm_monitor=4, stop_grace_period=30, app_stop_signal="SIGQUIT")
    proxy = stack_service(s, template="conf")
    stack = stack_definition(s, "v7", proxy, {"nginx": "/state/swarm/nginx.conf"})
    app = stack["services"]["app"]
    assert app["image"] == "shop-app:v7" and app["environment"]["APP_VERSION"] == "v7"
    assert app["environment"]["PORT"] == "8000" and app["environment"]["UNIX_SOCKET_DIR"] == ""
    assert app["environment"]["DRAIN_REFUSE_NEW_SOCKETS"] == "1"  # a draining task refuses, nginx retries
    assert (app["stop_grace_period"], app["stop_signal"]) == ("30s", "SIGQUIT")
    deploy = app["deploy"]
    assert deploy["endpoint_mode"] == "dnsrr" and deploy["replicas"] == 3
    update = deploy["update_config"]
    assert (update["order"], update["failure_action"], update["parallelism"], update["monitor"]) == (
        "start-first", "rollback", 2, "4s")
    assert update["max_failure_ratio"] == 0
    assert deploy["rollback_config"]["order"] == "start-first"
    nginx = stack["services"]["nginx"]
    assert nginx["ports"] == [{"target": 8080, "published": s.http_port, "protocol": "tcp", "mode": "host"}]
    assert nginx["deploy"]["endpoint_mode"] == "dnsrr"
    assert nginx["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert nginx["networks"] == app["networks"] == ["app"]
    assert stack["configs"]["nginx"] == {"name": config_name(s, "conf"), "file": "/state/swarm/nginx.conf"}
    assert stack["networks"]["app"] == {"driver": "overlay", "attachable": True}
    assert yaml.safe_load(stack_yaml(stack)) == stack


def test_nginx_resolves_the_tasks_by_swarm_dns_each_second() -> None:
    conf = nginx_config(_settings(app_port=9000))
    assert "resolver 127.0.0.11 valid=1s" in conf
    assert 'set $handover_target "tasks.app:9000";' in conf and "proxy_pass http://$handover_target;" in conf
    assert "proxy_next_upstream error timeout;" in conf and "@APP" not in conf
    assert "proxy_next_upstream_tries 0;" in conf  # every address of the answer, stale ones among them
    websocket = conf.split("location @websocket {", 1)[1].split("}", 1)[0]
    assert "proxy_next_upstream error timeout http_503;" in websocket  # past a task that drains


def test_a_changed_nginx_configuration_gets_a_new_config_name() -> None:
    s = _settings()
    assert config_name(s, "a") == config_name(s, "a") != config_name(s, "b")
    assert config_name(s, "a").startswith("shop_nginx_")


def test_deploy_argv_names_the_stack_file_and_the_stack() -> None:
    assert deploy_argv(_settings(), "/s/stack.yml") == [
        "docker", "stack", "deploy", "--prune", "--resolve-image", "changed", "--with-registry-auth", "--compose-file",
        "/s/stack.yml", "shop"]


# -- reading Swarm's answers -----------------------------------------------------------------------
@pytest.mark.parametrize(("image", "version"), [
    ("shop-app:v2", "v2"),
    ("shop-app:v2@sha256:" + "a" * 64, "v2"),
    ("registry.example:5000/team/shop-app:src-12ab", "src-12ab"),
    ("registry.example:5000/shop-app", ""),
])
def test_the_version_is_the_image_tag(image: str, version: str) -> None:
    assert version_of(image) == version


def test_tasks_are_instances_and_only_the_wanted_ones_count() -> None:
    lines = "\n".join(json.dumps(row) for row in [
        {"ID": "t1", "Name": "shop_app.1", "Image": "shop-app:v2", "Node": "w1", "DesiredState": "Running",
         "CurrentState": "Running 3 seconds ago", "Error": ""},
        {"ID": "t0", "Name": "shop_app.1", "Image": "shop-app:v1", "Node": "w1", "DesiredState": "Shutdown",
         "CurrentState": "Shutdown 2 seconds ago", "Error": ""},
        {"ID": "t2", "Name": "shop_app.2", "Image": "shop-app:v2", "Node": "m", "DesiredState": "Running",
         "CurrentState": "Starting 1 second ago", "Error": ""},
    ])
    tasks = [task_instance(r, "app") for r in current_tasks(task_rows(lines))]
    assert [(t.id, t.name, t.version, t.status, t.health) for t in tasks] == [
        ("t1", "shop_app.1@w1", "v2", "running", "healthy"), ("t2", "shop_app.2@m", "v2", "starting", "starting")]
    assert tasks[0].is_healthy and not tasks[1].is_healthy
    failed = task_instance({"ID": "t3", "Name": "shop_app.3", "Image": "shop-app:v2", "CurrentState": "Failed 1s",
                            "DesiredState": "Running"}, "app")
    assert failed.status == "exited" and failed.has_failed


def test_a_service_on_a_virtual_ip_is_found() -> None:
    inspected = [{"Spec": {"Name": "shop_app", "EndpointSpec": {"Mode": "dnsrr"}}},
                 {"Spec": {"Name": "shop_nginx"}},  # no endpoint spec: Swarm's default, a VIP
                 {"Spec": {"Name": "shop_other", "EndpointSpec": {"Mode": "vip"}}}]
    assert vip_services(inspected) == ["shop_nginx", "shop_other"]


def test_an_update_is_over_only_once_swarm_says_so_for_this_update() -> None:
    old = UpdateState("completed", "2026-01-01T00:00:00Z", "")
    assert rollout_outcome(old, old, changed=True) is None  # Swarm has not begun this one yet
    assert rollout_outcome(old, UpdateState("updating", "2026-01-02T00:00:00Z", ""), changed=True) is None
    assert rollout_outcome(old, UpdateState("completed", "2026-01-02T00:00:00Z", ""), changed=True) == "completed"
    back = UpdateState("rollback_completed", "2026-01-02T00:00:00Z", "rollback completed")
    assert rollout_outcome(old, back, changed=True) == "rollback_completed"
    assert rollout_outcome(old, old, changed=False) == "completed"
    assert UpdateState.parse("null") == UpdateState("", "", "")
    assert UpdateState.parse('{"State":"paused","StartedAt":"x","Message":"update paused"}').state == "paused"


# -- a scripted engine -----------------------------------------------------------------------------
def test_setup_says_how_to_make_a_node_a_manager() -> None:
    inactive = Scripted({"docker info": Answer("inactive false\n")})
    check = check_manager(inactive)
    assert not check.ok and "docker swarm init --advertise-addr" in check.detail and "swarm join" in check.detail
    worker = check_manager(Scripted({"docker info": Answer("active false\n")}))
    assert not worker.ok and "worker, not a manager" in worker.detail and "docker node promote" in worker.detail
    assert check_manager(Scripted({"docker info": Answer("active true\n")})).ok


def test_preflight_refuses_a_stack_service_on_a_virtual_ip() -> None:
    s = _settings()
    inspect = json.dumps([{"Spec": {"Name": "shop_app", "EndpointSpec": {"Mode": "vip"}}}])
    runner = Scripted({"docker version": Answer("20.10.24\n"), "docker info": Answer("active true\n"),
                       "docker service ls": Answer("abc\n"), "docker service inspect": Answer(inspect)})
    with pytest.raises(PreflightError, match=r"shop_app is reached through a virtual IP .*IPVS.*dnsrr"):
        SwarmBackend(runner, s).check()


def test_the_swarm_backend_refuses_what_only_the_compose_sequence_asks() -> None:
    backend = SwarmBackend(Scripted({}), _settings())
    with pytest.raises(HandoverError, match="not part of a Swarm deploy"):
        backend.stop([], 5)
    with pytest.raises(HandoverError, match="builds no app image"):
        backend.build("v1")


def _engine(tasks: list[dict[str, str]], nginx_running: bool = True) -> Engine:
    rows = "\n".join(json.dumps(t) for t in tasks)
    nginx = json.dumps({"ID": "n1", "Name": "shop_nginx.1", "Image": "shop-nginx:1", "Node": "m",
                        "DesiredState": "Running", "CurrentState": "Running 1 minute ago"})
    runner = Scripted({"docker service ps --no-trunc --format '{{json .}}' shop_app": Answer(rows),
                       "docker service ps --no-trunc --format '{{json .}}' shop_nginx":
                           Answer(nginx if nginx_running else "")})
    return Engine(runner, _settings())  # type: ignore[arg-type]


def _task(n: int, version: str) -> dict[str, str]:
    return {"ID": f"t{n}{version}", "Name": f"shop_app.{n}", "Image": f"shop-app:{version}", "Node": f"w{n}",
            "DesiredState": "Running", "CurrentState": "Running 1 minute ago"}


def test_a_swarm_run_is_the_lock_the_images_and_one_rollout() -> None:
    engine = _engine([_task(n, "v1") for n in (1, 2, 3)])
    facts = engine.facts()
    assert facts.serving and facts.live_version == "v1" and len(facts.live) == 3
    steps = engine.plan(DeployOptions(version="v2"), facts)
    assert [s.name for s in steps] == ["lock", "preflight", "images", "rollout"]
    assert isinstance(steps[2], SwarmImages) and isinstance(steps[3], Rollout) and steps[3].forward
    assert [s.name for s in plans.swarm()] == ["lock", "preflight", "images", "rollout"]


def test_nothing_to_do_when_every_task_runs_the_version_unless_forced() -> None:
    engine = _engine([_task(n, "v1") for n in (1, 2, 3)])
    facts = engine.facts()
    assert engine.plan(DeployOptions(version="v1"), facts) == []
    assert engine.plan(DeployOptions(version="v1", action="up"), facts) == []
    assert [s.name for s in engine.plan(DeployOptions(version="v1", force=True), facts)][-1] == "rollout"
    short = _engine([_task(1, "v1")])  # fewer tasks than replicas: the stack is deployed again
    assert short.plan(DeployOptions(version="v1", action="up"), short.facts())


def test_a_rollback_of_nothing_serving_is_refused() -> None:
    engine = _engine([], nginx_running=False)
    facts: Facts = engine.facts()
    assert not facts.serving
    with pytest.raises(HandoverError, match="nothing to roll back"):
        engine.plan(DeployOptions(version="v1", action="rollback"), facts)
    assert [s.name for s in engine.plan(DeployOptions(version="v1", action="up"), facts)][-1] == "rollout"


@dataclass
class Sequenced:
    """A runner whose answers to a command change from call to call (the last one stays)."""

    answers: dict[str, list[Answer]]
    asked: list[str] = field(default_factory=list)

    def run(self, command: str, **kwargs: Any) -> Answer:
        self.asked.append(command)
        for start, answers in self.answers.items():
            if command.startswith(start):
                return answers.pop(0) if len(answers) > 1 else answers[0]
        return Answer()


def _rows(*tasks: dict[str, str]) -> Answer:
    return Answer("\n".join(json.dumps(t) for t in tasks))


UPDATE = "docker service inspect --format '{{json .UpdateStatus}}'"
TASKS = "docker service ps --no-trunc --format '{{json .}}' shop_app"


def test_the_rollout_waits_for_swarm_to_finish_this_update_and_every_task_to_run_the_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handover.backends.swarm.POLL", 0.0)
    before = UpdateState("completed", "T1", "")
    runner = Sequenced({
        UPDATE: [Answer('{"State":"completed","StartedAt":"T1"}'), Answer('{"State":"updating","StartedAt":"T2"}'),
                 Answer('{"State":"completed","StartedAt":"T2"}')],
        TASKS: [_rows(_task(1, "v1"), _task(2, "v1"), _task(3, "v1")),
                _rows(_task(1, "v2"), _task(2, "v1"), _task(3, "v1")),
                _rows(_task(1, "v2"), _task(2, "v2"), _task(3, "v1")),  # Swarm said completed; one still old
                _rows(_task(1, "v2"), _task(2, "v2"), _task(3, "v2"))],
    })
    seen: list[str] = []
    backend = SwarmBackend(runner, _settings())  # type: ignore[arg-type]
    assert backend.wait_rollout("v2", before, True, 5.0, seen.append) == "completed"
    assert sum(c.startswith(TASKS) for c in runner.asked) == 4 and seen[-1].startswith("2/3 of v2 running")


def test_a_rollout_swarm_rolled_back_is_said_and_a_stuck_one_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handover.backends.swarm.POLL", 0.0)
    back = Sequenced({UPDATE: [Answer('{"State":"rollback_completed","StartedAt":"T2","Message":"rollback: '
                                      'update rolled back due to failure"}')],
                      TASKS: [_rows(_task(1, "v1"))]})
    outcome = SwarmBackend(back, _settings()).wait_rollout(  # type: ignore[arg-type]
        "v2", UpdateState("completed", "T1", ""), True, 5.0)
    assert outcome.startswith("rollback_completed: rollback: update rolled back due to failure")
    stuck = Sequenced({UPDATE: [Answer('{"State":"updating","StartedAt":"T2"}')], TASKS: [_rows(_task(1, "v1"))]})
    with pytest.raises(HandoverError, match=r"Swarm did not finish within 0.01 s \(updating\); tasks: shop_app.1@w1"):
        SwarmBackend(stuck, _settings()).wait_rollout(  # type: ignore[arg-type]
            "v2", UpdateState("completed", "T1", ""), True, 0.01)


def test_a_first_stack_is_done_when_its_tasks_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handover.backends.swarm.POLL", 0.0)
    runner = Sequenced({UPDATE: [Answer("null")],
                        TASKS: [_rows(), _rows(_task(1, "v1"), _task(2, "v1"), _task(3, "v1"))]})
    assert SwarmBackend(runner, _settings()).wait_rollout(  # type: ignore[arg-type]
        "v1", UpdateState("", "", ""), True, 5.0) == "completed"


def test_down_nodes_are_read_from_node_ls() -> None:
    from handover.backends.swarm import down_nodes, stall_seconds

    assert down_nodes("m Ready\nw1 Ready\nw2 Down\nw3 Unknown\n") == ["w2"]
    assert stall_seconds(_settings(swarm_monitor=3)) == 15.0 and stall_seconds(_settings(swarm_monitor=20)) == 40.0


def test_an_update_stuck_on_a_lost_node_is_started_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handover.backends.swarm.POLL", 0.0)
    monkeypatch.setattr("handover.backends.swarm.STALL_MINIMUM", 0.0)
    s = _settings(swarm_monitor=0)
    stuck = _rows(_task(1, "v2"), _task(2, "v1"), _task(3, "v1"))
    runner = Sequenced({
        UPDATE: [Answer('{"State":"updating","StartedAt":"T2"}')] * 6 + [
            Answer('{"State":"completed","StartedAt":"T3"}')],
        TASKS: [stuck] * 6 + [_rows(_task(1, "v2"), _task(2, "v2"), _task(3, "v2"))],
        "docker node ls": [Answer("m Ready\nw2 Down\n")],
    })
    warned: list[str] = []
    outcome = SwarmBackend(runner, s).wait_rollout(  # type: ignore[arg-type]
        "v2", UpdateState("completed", "T1", ""), True, 5.0, None, warned.append)
    assert outcome == "completed"
    forced = [c for c in runner.asked if c.startswith("docker service update --detach --force shop_app")]
    assert len(forced) == 1, runner.asked
    assert warned and warned[0].startswith("node w2 is down and Swarm's update has not moved")


def test_a_slow_update_with_every_node_up_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handover.backends.swarm.POLL", 0.0)
    monkeypatch.setattr("handover.backends.swarm.STALL_MINIMUM", 0.0)
    runner = Sequenced({
        UPDATE: [Answer('{"State":"updating","StartedAt":"T2"}')] * 5 + [
            Answer('{"State":"completed","StartedAt":"T2"}')],
        TASKS: [_rows(_task(1, "v1"))] * 5 + [_rows(_task(1, "v2"), _task(2, "v2"), _task(3, "v2"))],
        "docker node ls": [Answer("m Ready\nw2 Ready\n")],
    })
    assert SwarmBackend(runner, _settings(swarm_monitor=0)).wait_rollout(  # type: ignore[arg-type]
        "v2", UpdateState("completed", "T1", ""), True, 5.0) == "completed"
    assert not [c for c in runner.asked if "--force" in c]


def test_the_plan_lines_say_what_swarm_will_do() -> None:
    from handover.record import RunRecord
    from handover.steps import Run

    engine = _engine([_task(n, "v1") for n in (1, 2, 3)])
    facts = engine.facts()
    run = Run(engine, DeployOptions(version="v2"), facts, RunRecord("deploy", "v2", "shop", "local"), old=facts.live)
    line = Rollout().describe(run)
    assert "Swarm replaces 3 tasks of v1 with v2, 1 at a time, start-first" in line and "rolled back" in line
    fresh = _engine([], nginx_running=False)
    empty = fresh.facts()
    first = Run(fresh, DeployOptions(version="v1", action="up"), empty, RunRecord("up", "v1", "shop", "local"))
    assert Rollout().describe(first).endswith("Swarm starts 3 tasks of v1 and nginx, which follows Swarm's DNS")
