"""The benchmark's swarm sequence, its pure parts: the lab's state file, the stack's settings, the versions
and their tags on every node, "to healthy" from Swarm's own timestamps, the manager check's message, and
the table's columns when a time is not known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from handover import bench, settings, swarm_bench
from handover.backends.swarm import SwarmBackend
from handover.cli import defaults
from handover.errors import ConfigError, HandoverError
from handover.probe import ProbeReport
from handover.swarm_bench import Lab

from .scripted import Answer, Scripted
from .test_probe_verdict import _clean_http, _clean_ws_stats, _ws_summary

LAB = Lab(prefix="swb-lab", project="swb-swarm", url="http://127.0.0.1:22040",
          nodes={"swb-lab-m": "unix:///run/lab/m.sock", "swb-lab-w1": "unix:///run/lab/w1.sock",
                 "swb-lab-w2": "unix:///run/lab/w2.sock"},
          manager="swb-lab-m", app_image="swb-swarm-app", app_tag="lab", proxy_image="swb-swarm-nginx:1",
          base_image="localhost/debian-minbase:bookworm", node_image="swb-lab-dind-host:47bef9aee3bc")


def _compose_settings(**overrides: Any) -> settings.Settings:
    return settings.load({**defaults()["deploy"], **overrides})


# -- the lab's state file --------------------------------------------------------------------------
def test_the_state_file_the_lab_writes_is_the_lab_the_bench_reads(tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    path.write_text(swarm_bench.lab_json(LAB))
    lab = swarm_bench.load_lab(path)
    assert lab == LAB
    assert lab.docker_host == "unix:///run/lab/m.sock"


def _broken(**changes: Any) -> str:
    data = json.loads(swarm_bench.lab_json(LAB))
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize(("text", "said"), [
    ("{not json", "not a swarm lab's state file (not JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_broken(url=None), "url: expected a non-empty string, got None"),
    (_broken(url="ftp://x"), "url: expected http(s)://host:port"),
    (_broken(manager="elsewhere"), "manager: 'elsewhere' is not one of the nodes (swb-lab-m, swb-lab-w1, swb-lab-w2)"),
    (_broken(nodes={}), "nodes: expected node names with their DOCKER_HOST"),
    (_broken(nodes={"m": "/run/m.sock"}), "nodes: expected node names with their DOCKER_HOST"),
    (_broken(app_tag="no tags with spaces"), "no tags with spaces"),
])
def test_a_broken_state_file_is_named_with_the_key(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        swarm_bench.parse_lab(text, "--swarm-lab x.json")
    assert str(caught.value).startswith("--swarm-lab x.json: ") and said in str(caught.value)


def test_without_a_state_file_the_error_says_how_to_get_a_swarm(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs a swarm: --swarm-lab <its state file>; `scripts/swarm_lab.py up` "
                                          r"makes a swarm to run on"):
        swarm_bench.load_lab("")
    with pytest.raises(ConfigError, match=r"--swarm-lab .*gone.json: cannot read it \(No such file or directory\)"):
        swarm_bench.load_lab(tmp_path / "gone.json")


# -- the stack's settings --------------------------------------------------------------------------
def test_the_stack_keeps_the_configured_timing_and_takes_the_labs_names() -> None:
    configured = _compose_settings(drain_timeout=3, stop_grace_period=9, swarm_monitor=2, health_timeout=40,
                                   app_port=0, replicas=1, http_port=18100)
    s = swarm_bench.swarm_settings(configured, LAB)
    assert (s.drain_timeout, s.stop_grace_period, s.swarm_monitor, s.health_timeout) == (3, 9, 2, 40)
    assert (s.project, s.app_image, s.backend, s.replicas) == ("swb-swarm", "swb-swarm-app", "swarm", 3)
    assert (s.app_port, s.app_health, s.app_build, s.http_port) == (8000, "", "", 8080)
    assert s.http_bind == settings.ALL_ADDRESSES  # what Swarm's host-mode port binds on the manager
    assert s.state_dir == ".state-bench-swb-swarm" and s.hooks_dir == ""
    assert [key for key, bad, _ in settings.SWARM_UNSUPPORTED if bad(s)] == []


def test_what_a_stack_cannot_do_is_left_out_even_when_configured_for_compose(tmp_path: Path) -> None:
    configured = _compose_settings(release_command="python -m app.migrate", app_pre_stop="sleep 1",
                                   hostnames="shop.example")
    s = swarm_bench.swarm_settings(configured, LAB)
    assert [key for key, bad, _ in settings.SWARM_UNSUPPORTED if bad(s)] == []
    assert (s.release_command, s.app_pre_stop, s.hostnames) == ((), (), ())


# -- versions and their tags -----------------------------------------------------------------------
def test_each_update_has_a_version_of_its_own_or_the_live_one_again() -> None:
    tagged, updates = swarm_bench.bench_versions("041500", 5)
    assert tagged == [f"bench-swarm-041500-{n}" for n in range(6)]
    assert updates == tagged[1:]  # the first is the stack's first start
    tagged, updates = swarm_bench.bench_versions("041500", 3, same_version=True)
    assert (tagged, updates) == (["bench-swarm-041500-0"], ["bench-swarm-041500-0"] * 3)


def test_every_version_is_tagged_on_every_node_through_its_own_engine() -> None:
    runner = Scripted()
    swarm_bench.tag_versions(runner, LAB, ["v1", "v2"])
    assert runner.asked == [f"env DOCKER_HOST={host} docker tag swb-swarm-app:lab swb-swarm-app:{v}"
                            for host in LAB.nodes.values() for v in ("v1", "v2")]
    runner.asked.clear()
    swarm_bench.untag_versions(runner, LAB, ["v1", "v2"])
    assert runner.asked == [f"env DOCKER_HOST={host} docker image rm swb-swarm-app:v1 swb-swarm-app:v2"
                            for host in LAB.nodes.values()]


# -- to healthy, from Swarm's clock ----------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("2026-11-27T03:40:00Z", 1795750800.0),
    ("2026-11-27T03:40:00.123456789Z", 1795750800.123456),
    ("2026-11-27T04:40:00.5+01:00", 1795750800.5),
    ("0001-01-01T00:00:00Z", None),  # Go's zero time: never happened
    ("", None),
    ("yesterday", None),
])
def test_dockers_times_are_read_to_the_microsecond(text: str, seconds: float | None) -> None:
    got = swarm_bench.parse_timestamp(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def _task(version: str, state: str, at: str) -> dict[str, Any]:
    return {"Spec": {"ContainerSpec": {"Image": f"swb-swarm-app:{version}@sha256:abc"}},
            "Status": {"State": state, "Timestamp": at}}


def test_to_healthy_is_the_updates_start_to_the_first_new_task_running() -> None:
    tasks = [_task("v2", "running", "2026-11-27T03:40:07.5Z"), _task("v2", "running", "2026-11-27T03:40:03.25Z"),
             _task("v2", "starting", "2026-11-27T03:40:01Z"), _task("v1", "running", "2026-11-27T03:00:00Z")]
    assert swarm_bench.update_to_healthy("2026-11-27T03:40:00.75Z", tasks, "v2") == pytest.approx(2.5)
    assert swarm_bench.update_to_healthy("2026-11-27T03:40:00.75Z", tasks, "v3") is None  # none running
    assert swarm_bench.update_to_healthy("0001-01-01T00:00:00Z", tasks, "v2") is None  # no update started
    assert swarm_bench.update_to_healthy("2026-11-27T03:41:00Z", tasks, "v2") is None  # running before: not this one


def test_to_healthy_is_read_from_the_update_status_and_the_current_tasks() -> None:
    rows = "\n".join(json.dumps({"ID": f"t{n}", "Name": f"swb-swarm_app.{n}", "Image": "swb-swarm-app:v2",
                                 "Node": "m", "DesiredState": "Running", "CurrentState": "Running 2 seconds ago"})
                     for n in (1, 2))
    runner = Scripted({"service inspect --format '{{json .UpdateStatus}}'": Answer(json.dumps(
        {"State": "completed", "StartedAt": "2026-11-27T03:40:00Z", "Message": "update completed"})),
        "service ps": Answer(rows),
        "docker inspect --type task t1 t2": Answer(json.dumps([_task("v2", "running", "2026-11-27T03:40:04Z"),
                                                               _task("v2", "running", "2026-11-27T03:40:02Z")]))})
    backend = SwarmBackend(runner, swarm_bench.swarm_settings(_compose_settings(), LAB))
    assert swarm_bench.measured_to_healthy(backend, "v2") == pytest.approx(2.0)
    runner.answers["docker inspect --type task t1 t2"] = Answer(stderr="no such task", exited=1)
    assert swarm_bench.measured_to_healthy(backend, "v2") is None


# -- the manager ------------------------------------------------------------------------------------
def test_a_manager_that_does_not_answer_is_named_with_what_to_do() -> None:
    down = Scripted({"docker version": Answer(stderr="Cannot connect to the Docker daemon at unix:///run/lab/m.sock",
                                              exited=1)})
    with pytest.raises(HandoverError) as caught:
        swarm_bench.check_lab(down, _compose_settings(), LAB, "lab.json")
    said = str(caught.value)
    assert said.startswith("--swarm-lab lab.json: the swarm manager swb-lab-m (unix:///run/lab/m.sock) does not "
                           "answer as one: ") and "Cannot connect to the Docker daemon" in said
    assert "scripts/swarm_lab.py up" in said
    worker = Scripted({"docker version": Answer("20.10.24\n"), "docker info": Answer("active false\n")})
    with pytest.raises(HandoverError, match="a swarm worker, not a manager"):
        swarm_bench.check_lab(worker, _compose_settings(), LAB, "lab.json")
    swarm_bench.check_lab(Scripted({"docker version": Answer("20.10.24\n"), "docker info": Answer("active true\n")}),
                          _compose_settings(), LAB, "lab.json")


def test_docker_host_is_set_for_the_sequence_and_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    with swarm_bench.docker_host(LAB.docker_host):
        assert swarm_bench.os.environ["DOCKER_HOST"] == "unix:///run/lab/m.sock"
    assert swarm_bench.os.environ["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    monkeypatch.delenv("DOCKER_HOST")
    with swarm_bench.docker_host(LAB.docker_host):
        pass
    assert "DOCKER_HOST" not in swarm_bench.os.environ


# -- the table --------------------------------------------------------------------------------------
def _result(name: str, timings: list[bench.DeployTiming]) -> bench.SequenceResult:
    report = ProbeReport(http=_clean_http(), ws=_ws_summary(_clean_ws_stats()))
    return bench.SequenceResult(name, timings, report=report)


def _row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(label))
    return line[len(label):].split()


def test_swarm_has_the_same_columns_and_a_time_not_known_is_a_dash() -> None:
    engine = _result("engine", [bench.DeployTiming(4.0, 1.5), bench.DeployTiming(5.0, 2.5)])
    swarm = _result("swarm", [bench.DeployTiming(20.0, 3.0), bench.DeployTiming(22.0, None)])
    table = bench.format_comparison([engine, swarm], 200, 100)
    assert table.splitlines()[1].split() == ["engine", "swarm"]
    assert _row(table, "deploy wall s (mean / max)") == ["4.50", "/", "5.00", "21.00", "/", "22.00"]
    assert _row(table, "to healthy s (mean)") == ["2.00", "3.00"]  # of the updates whose time is known
    assert _row(table, "wall - to healthy s (mean / max)") == ["2.50", "/", "2.50", "17.00", "/", "17.00"]
    unknown = bench.format_comparison([_result("swarm", [bench.DeployTiming(20.0, None)])], 200, 100)
    assert _row(unknown, "to healthy s (mean)") == ["-"]
    assert _row(unknown, "wall - to healthy s (mean / max)") == ["-", "/", "-"]


def test_the_tools_steps_line_is_only_for_sequences_with_start_and_health_steps() -> None:
    compose = _result("engine", [bench.DeployTiming(4.0, 1.5, {"start": 0.5, "health": 1.0, "drain": 1.0})])
    swarm = _result("swarm", [bench.DeployTiming(20.0, 3.0, {"lock": 0.1, "images": 0.2, "rollout": 19.0})])
    text = bench.format_per_deploy([compose, swarm])
    assert "tool's steps (all but start and health) s: 1.00" in text
    swarm_part = text[text.index("swarm:"):]
    assert "step means s: lock 0.10, images 0.20, rollout 19.00" in swarm_part
    assert "tool's steps" not in swarm_part
