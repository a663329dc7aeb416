"""Faults during a local deploy, each with the probe running: the old version keeps serving (or the new
one serves fully), nothing is lost, the lock is released and the user reads what went wrong.

Covered elsewhere: a version that never becomes healthy or crash-loops
(test_deploy.py::test_failed_health_check_rolls_back), a broken nginx config
(test_deploy.py::test_broken_nginx_config_aborts_before_any_change) and a killed deploy
(test_deploy.py::test_rerun_after_a_killed_deploy_converges).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from .conftest import INV, ROOT, SCRATCH_PROJECT, StackHandle, probe_for
from .faultlog import first_error, note, probe_line
from .test_deploy import app_containers, assert_one_live_container, assert_unlocked, unique

pytestmark = pytest.mark.integration

# Sent when the health wait begins: long enough to outlast it (a few seconds on a busy machine) and
# reach past the switch. The old server promises an in-flight request ceil(drain_timeout) = 5 s of
# graceful shutdown from its drain; a post-switch check of SLOW_POST_SWITCH_CHECK s puts the drain
# late enough that the request ends inside that promise.
SLOW_SECONDS = 8
SLOW_POST_SWITCH_CHECK = 5
# exit-after: the new app passes its health check (about 1-2 s), is switched to, then dies
# inside the post-switch check window.
EXIT_AFTER_SECONDS = 4
POST_SWITCH_CHECK = 10
MISSING_PACKAGE = "no-such-package-handover"


def with_env(stack: StackHandle, **env: str) -> StackHandle:
    return dataclasses.replace(stack, env={**stack.env, **env})


def start_deploy(stack: StackHandle, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([*INV, "local.deploy", *args], cwd=ROOT, env=stack.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=new_session)


def read_until(process: subprocess.Popen[str], prefix: str) -> list[str]:
    """Lines of the process's output up to and including the first that starts with ``prefix``."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the deploy never reached {prefix!r}:\n{''.join(seen)}")


def finish(process: subprocess.Popen[str], seen: list[str], timeout: float = 120) -> str:
    assert process.stdout is not None
    rest, _ = process.communicate(timeout=timeout)
    return "".join(seen) + rest


def last_record(stack: StackHandle) -> dict[str, object]:
    record: dict[str, object] = json.loads(stack.inv("local.releases", "--count", "1", "--json").stdout)
    return record


def record_count(stack: StackHandle) -> int:
    log = stack.state_dir / "releases.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_death_right_after_the_switch_switches_back(stack: StackHandle) -> None:
    """#3: healthy, switched to, then the process exits: the post-switch check goes back to the old."""
    before = stack.info()
    version = unique("exitafter")
    probe = probe_for(stack.url)
    probe.start()
    try:
        result = with_env(stack, INVOKE_DEPLOY_POST_SWITCH_CHECK=str(POST_SWITCH_CHECK)).inv(
            "local.deploy", "--version", version, "--fault", f"exit-after:{EXIT_AFTER_SECONDS}", check=False)
    finally:
        report = probe.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: after the switch:" in result.stderr and "crashed" in result.stderr, result.stderr
    assert f"APP_FAULT=exit-after:{EXIT_AFTER_SECONDS}: exiting with status 4" in result.stderr  # its logs
    assert "==> switch back" in result.stdout and "==> rollback" in result.stdout
    # The process dies at a random instant (os._exit): a response it is writing at that instant dies with it,
    # and no proxy can finish it (its first bytes are on their way to the client already; seen once in
    # several full runs, as a reset). Every other request is answered: before the death by the new version,
    # after it by nginx's retry on the old one, then by the old one alone.
    data = report.to_dict()
    http, ws = data["http"], data["ws"]
    failed = {kind for kind, count in http["failures"].items() if count}  # type: ignore[index, union-attr]
    assert failed <= {"reset"} and http["failure_total"] <= 1, report.format_table()  # type: ignore[index, operator]
    assert (ws["lost"], ws["abnormal_closes"]) == (0, {}), report.format_table()  # type: ignore[index]
    assert stack.info()["server_id"] == before["server_id"]
    assert_one_live_container(stack, str(before["version"]))
    assert_unlocked(stack.state_dir)
    assert last_record(stack)["result"] == "rolled-back" and last_record(stack)["failed_step"] == "verify"
    note("#3", f"exit {result.returncode}; {first_error(result.stderr)}; serves {stack.info()['server_id']} "
               f"(before: {before['server_id']}); {probe_line(report)}")


def test_second_deploy_while_one_runs_is_refused(stack: StackHandle) -> None:
    """#7: a second deploy started while the first waits for health is refused naming the first."""
    first_version, second_version = unique("first"), unique("second")
    probe = probe_for(stack.url)
    probe.start()
    try:
        # A longer post-switch check keeps the first deploy's lock held well past the second's start.
        first = start_deploy(with_env(stack, INVOKE_DEPLOY_POST_SWITCH_CHECK="3"), "--version", first_version)
        seen = read_until(first, "==> health")
        second = stack.inv("local.deploy", "--version", second_version, check=False)
        output = finish(first, seen)
    finally:
        report = probe.stop()
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another deploy holds the lock" in second.stderr, second.stderr
    assert f": deploy {first_version} (" in second.stderr and "held by " in second.stderr
    assert re.search(r" since \S+ \(\d+ s\): ", second.stderr), second.stderr  # the lock's age
    assert first.returncode == 0, output
    assert "deploy success: " in output and f"-> {first_version}" in output
    assert report.ok, report.format_table()
    assert stack.info()["version"] == first_version
    assert_one_live_container(stack, first_version)
    assert_unlocked(stack.state_dir)
    note("#7", f"second: exit {second.returncode}; {first_error(second.stderr)}; first: exit {first.returncode}, "
               f"serves {first_version}; {probe_line(report)}")


@pytest.mark.parametrize("at", ["==> health", "==> drain"])
def test_ctrl_c_leaves_one_whole_version(stack: StackHandle, at: str) -> None:
    """#8: SIGINT to the deploy's process group (what a terminal's Ctrl-C does) at a step."""
    before = stack.info()
    version = unique("ctrlc")
    probe = probe_for(stack.url)
    probe.start()
    try:
        process = start_deploy(stack, "--version", version, new_session=True)
        seen = read_until(process, at)
        os.killpg(process.pid, signal.SIGINT)
        output = finish(process, seen)
        time.sleep(0.5)
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    assert_unlocked(stack.state_dir)
    if at == "==> health":  # before the switch: the old version serves, the new one is gone
        assert process.returncode == 130, output
        assert "interrupted" in output and "==> rollback" in output
        assert stack.info()["server_id"] == before["server_id"]
        assert_one_live_container(stack, str(before["version"]))
        assert last_record(stack)["result"] == "rolled-back" and last_record(stack)["failed_step"] == "health"
        assert last_record(stack)["error"] == "interrupted by the user"
    else:  # after the switch: the new version serves and the old one is drained all the same
        assert process.returncode == 130, output
        assert stack.info()["version"] == version
        assert_one_live_container(stack, version)
        assert last_record(stack)["result"] == "success"
        assert "interrupted by the user during drain" in str(last_record(stack)["error"])
    note(f"#8 {at}", f"exit {process.returncode}; serves {stack.info()['version']} (before: {before['version']}); "
                     f"record {last_record(stack)['result']}; {probe_line(report)}")


def test_slow_request_in_flight_completes_on_the_old_server(stack: StackHandle) -> None:
    """#11: a slow request sent before the switch is still in flight when "==> switch" is printed,
    and ends after it with 200 from the old server."""
    before = stack.info()
    outcome: list[requests.Response | BaseException] = []
    returned: list[float] = []

    def slow() -> None:
        try:
            outcome.append(requests.get(f"{stack.url}/api/slow", params={"seconds": SLOW_SECONDS}, timeout=60))
        except requests.RequestException as exc:
            outcome.append(exc)
        returned.append(time.monotonic())

    version = unique("slow")
    probe = probe_for(stack.url)
    probe.start()
    try:
        process = start_deploy(with_env(stack, INVOKE_DEPLOY_POST_SWITCH_CHECK=str(SLOW_POST_SWITCH_CHECK)),
                               "--version", version)
        seen = read_until(process, "==> health")  # the new container runs; nginx routes to the old only
        thread = threading.Thread(target=slow)
        thread.start()
        seen += read_until(process, "==> switch")
        switched = time.monotonic()
        in_flight_at_switch = thread.is_alive()
        output = finish(process, seen)
        thread.join(timeout=60)
    finally:
        report = probe.stop()
    assert process.returncode == 0, output
    assert in_flight_at_switch, "the slow request returned before the switch: it proves nothing"
    [response] = outcome
    assert isinstance(response, requests.Response), f"the in-flight request failed: {response!r}"
    assert returned[0] > switched
    assert response.status_code == 200
    assert response.json()["server_id"] == before["server_id"]
    assert report.ok, report.format_table()
    data = report.to_dict()["ws"]
    assert data["messages_sent"] == data["messages_acked"], report.format_table()  # type: ignore[index]
    assert stack.info()["version"] == version
    assert stack.info()["server_id"] != before["server_id"]
    assert_one_live_container(stack, version)
    note("#11", f"slow request: in flight at the switch, ended {returned[0] - switched:.1f} s after it with "
                f"{response.status_code} from {response.json()['server_id']} (old: {before['server_id']}); "
                f"{probe_line(report)}")


@pytest.mark.parametrize("value", ["v1;touch /tmp/handover-pwned-marker", "$(touch /tmp/handover-pwned-marker)"])
def test_version_with_shell_metacharacters_is_refused(stack: StackHandle, value: str) -> None:
    """#12: a version is an image tag; anything else stops the run before it changes anything."""
    before = app_containers(stack)
    result = stack.inv("local.deploy", "--version", value, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: version {value!r}: expected" in result.stderr
    assert app_containers(stack) == before
    assert not Path("/tmp/handover-pwned-marker").exists()  # noqa: S108
    assert_unlocked(stack.state_dir)
    note("#12 version", f"exit {result.returncode}; {first_error(result.stderr)}")


def test_project_name_with_shell_metacharacters_is_a_config_error(stack: StackHandle) -> None:
    """#12: the compose project name is validated, the key named, before anything runs."""
    result = with_env(stack, INVOKE_DEPLOY_PROJECT="shop; touch /tmp/handover-pwned-marker").inv(
        "local.deploy", "--version", unique("badproject"), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "config key deploy.project: expected a compose project name" in result.stderr
    assert not Path("/tmp/handover-pwned-marker").exists()  # noqa: S108
    note("#12 project", f"exit {result.returncode}; {first_error(result.stderr)}")


def test_build_failure_stops_before_touching_containers(scratch: StackHandle) -> None:
    """#13a: the image build fails (a requirement the wheelhouse lacks): no container is touched."""
    before = scratch.info()
    containers = app_containers(scratch)
    server = scratch.state_dir.parent / "server"
    for requirements in (server / "requirements.txt", server / "wheelhouse" / "requirements.txt"):
        requirements.write_text(requirements.read_text() + f"{MISSING_PACKAGE}==1.0\n")
    version = unique("nobuild")
    records = record_count(scratch)
    probe = probe_for(scratch.url)
    probe.start()
    try:
        result = scratch.inv("local.deploy", "--version", version, check=False)
    finally:
        report = probe.stop()
    # One run, one line: failed at the build, pip's words kept.
    assert record_count(scratch) == records + 1
    record = last_record(scratch)
    assert (record["version"], record["result"], record["failed_step"]) == (version, "failed", "build")
    assert MISSING_PACKAGE in str(record["error"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: the build of {SCRATCH_PROJECT}-app:{version} failed" in result.stderr, result.stderr
    assert "no container was started or stopped" in result.stderr
    assert MISSING_PACKAGE in result.stderr, result.stderr  # pip's own words about it
    assert "==> start" not in result.stdout
    assert report.ok, report.format_table()
    assert scratch.info()["server_id"] == before["server_id"]
    assert app_containers(scratch) == containers
    assert_one_live_container(scratch, str(before["version"]))
    assert_unlocked(scratch.state_dir)
    missing = subprocess.run(["docker", "image", "inspect", f"{SCRATCH_PROJECT}-app:{version}"],
                             capture_output=True, check=False)
    assert missing.returncode != 0  # no image of the failed version
    pip = next((line.strip() for line in result.stderr.splitlines() if MISSING_PACKAGE in line), "")
    note("#13a", f"exit {result.returncode}; {first_error(result.stderr)} ... {pip}; serves "
                 f"{scratch.info()['server_id']} (before: {before['server_id']}); {probe_line(report)}")
