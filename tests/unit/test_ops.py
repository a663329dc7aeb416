"""Pure parts of what both front doors share: formats, choices, lock details, host checks, command lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from handover import ops, settings
from handover.backends.compose import ComposeBackend
from handover.checks import require
from handover.cli import defaults
from handover.errors import ConfigError, PreflightError
from handover.lock import lock_info
from handover.record import operator

SETTINGS = settings.load(dict(defaults()["deploy"]))
RECORD = {"started_at": "2026-11-26T18:00:00.000+00:00", "action": "deploy", "version": "v2",
          "result": "success", "seconds": 12.5, "by": "ann@box"}


def test_release_line_format() -> None:
    assert ops.release_line(RECORD) == (
        "2026-11-26T18:00:00.000+00:00  deploy   v2                   success      12.5 s  by ann@box"
    )
    assert ops.release_line({}) == " " * 46 + "s  by "  # missing keys leave blanks, not an error


def test_release_lines_keep_the_last_count_and_refuse_a_bad_count() -> None:
    records = [{**RECORD, "version": f"v{i}"} for i in range(5)]
    lines = ops.release_lines(records, 2)
    assert [line.split()[2] for line in lines] == ["v3", "v4"]
    assert len(ops.release_lines(records, 50)) == 5
    for bad in (0, -2):
        with pytest.raises(ConfigError, match="--count") as info:
            ops.release_lines(records, bad)
        assert info.value.exit_code == 2


def test_release_json_lines_are_one_object_a_line() -> None:
    lines = ops.release_json_lines([RECORD, {**RECORD, "version": "v3"}], 10, host="web1")
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert [json.loads(line) for line in lines][1] == {**RECORD, "version": "v3", "host": "web1"}
    assert "host" not in json.loads(ops.release_json_lines([RECORD], 1)[0])


def test_lock_info_names_the_holder_and_leaves_out_empty_details() -> None:
    info = lock_info("deploy", "v2", via="fab", host="web1")
    assert info["holder"] == operator() and info["since"].startswith("20")
    assert {k: info[k] for k in ("action", "version", "via", "host")} == {
        "action": "deploy", "version": "v2", "via": "fab", "host": "web1"}
    assert "reason" not in info
    held = lock_info("lock", via="fab", reason="db migration")
    assert held["reason"] == "db migration" and "version" not in held and "host" not in held


ROWS = (
    ops.StatusRow("handover-app-1", "0123456789ab", "v1", "running", "healthy", False),
    ops.StatusRow("handover-app-2", "ba9876543210", "v2", "running", "healthy", True),
)


def test_status_view_text() -> None:
    view = ops.StatusView(ROWS, "handover-nginx-1", "v2")
    assert view.lines() == [
        "proxy: handover-nginx-1   live version: v2",
        "    handover-app-1           0123456789ab  v1               running    healthy",
        "  * handover-app-2           ba9876543210  v2               running    healthy",
    ]
    assert view.lines(host="web1")[0] == "web1: proxy handover-nginx-1   live version: v2"
    assert ops.StatusView((), None, "").lines() == ["proxy: not running   live version: -"]


def test_status_view_json_form() -> None:
    data = ops.StatusView(ROWS, None, "v2").to_dict()
    assert data["proxy"] is None and data["live_version"] == "v2"
    assert data["app"] == [  # the keys the JSON output has always had
        {"name": "handover-app-1", "id": "0123456789ab", "version": "v1", "status": "running",
         "health": "healthy", "live": False},
        {"name": "handover-app-2", "id": "ba9876543210", "version": "v2", "status": "running",
         "health": "healthy", "live": True},
    ]
    json.dumps(data)


def _settings(**overrides: Any) -> settings.Settings:
    return settings.load({**defaults()["deploy"], **overrides})


def test_compose_argv_names_project_and_file() -> None:
    from handover.backends.compose import ComposeBackend, compose_argv

    s = _settings(project="shop")
    assert compose_argv(s, "config", "--quiet") == [
        "docker", "compose", "--project-name", "shop", "--file", s.compose_path, "config", "--quiet"]
    backend = ComposeBackend(runner=None, settings=s)  # type: ignore[arg-type]
    argv, env = backend.logs_command(5, False)
    assert argv[-3:] == ["logs", "--tail", "5"] and env["HANDOVER_STATE_DIR"] == s.state_path
    assert backend.logs_command(0, True)[0][-4:] == ["logs", "--tail", "0", "--follow"]
    with pytest.raises(ConfigError, match="--tail"):
        ops.check_tail(-1)


@pytest.mark.parametrize(
    ("records", "live", "expected"),
    [
        ([{"version": "v1", "result": "success"}, {"version": "v2", "result": "success"}], "v2", "v1"),
        ([{"version": "v1", "result": "success"}, {"version": "v3", "result": "rolled_back"},
          {"version": "v2", "result": "success"}], "v2", "v1"),
        ([{"version": "v1", "result": "success"}, {"version": "v2", "result": "success"}], "", "v2"),
        ([{"version": "v2", "result": "success"}, {"version": "", "result": "success"}], "v2", None),
        ([{"version": "v1", "result": "failed"}, {"version": "v2", "result": "success"}], "v2", None),
        ([], "v2", None),
    ],
)
def test_previous_version_choice(records: list[dict[str, object]], live: str, expected: str | None) -> None:
    assert ops.choose_previous(records, live) == expected


@dataclass
class Answer:
    stdout: str = ""
    stderr: str = ""
    exited: int = 0


class FakeHost:
    """Answers each command line that starts with a known prefix; anything else fails."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers

    def run(self, command: str, **kwargs: Any) -> Answer:
        return next((a for prefix, a in self.answers.items() if command.startswith(prefix)),
                    Answer(stderr="unexpected", exited=1))


DOCKER = "docker version"
COMPOSE = "docker compose version"


def test_host_checks_pass_with_docker_and_compose_v2() -> None:
    host = FakeHost({DOCKER: Answer("27.3.1\n"), COMPOSE: Answer("v2.29.7\n")})
    checks = ComposeBackend(host, SETTINGS).host_checks()
    assert [(c.name, c.ok, c.detail) for c in checks] == [("docker", True, "engine 27.3.1"),
                                                         ("compose", True, "v2.29.7")]
    require(checks, "the host")


def test_host_checks_say_what_is_missing() -> None:
    no_docker = ComposeBackend(FakeHost({DOCKER: Answer(exited=127), COMPOSE: Answer(exited=127)}),
                               SETTINGS).host_checks()
    assert [c.ok for c in no_docker] == [False, False]
    assert no_docker[0].detail.startswith("docker is not installed: install Docker Engine")
    with pytest.raises(PreflightError) as info:
        require(no_docker, "web1")
    assert str(info.value).splitlines()[:2] == ["web1 is not ready:", f"  - docker: {no_docker[0].detail}"]

    compose_v1 = ComposeBackend(FakeHost({DOCKER: Answer("27.3.1"), COMPOSE: Answer("1.29.2")}), SETTINGS).host_checks()
    assert [c.ok for c in compose_v1] == [True, False]
    assert compose_v1[1].detail.startswith("Docker Compose v2 is missing (`docker compose version` failed)")

    denied = FakeHost({DOCKER: Answer(stderr="permission denied while trying to connect\n", exited=1),
                       "id -un": Answer("deploy\n"), COMPOSE: Answer("v2.29.7")})
    detail = ComposeBackend(denied, SETTINGS).host_checks()[0].detail
    assert "not reachable for deploy (permission denied while trying to connect)" in detail
    assert "add deploy to the docker group" in detail
