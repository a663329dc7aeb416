"""What the two front doors print: messages instead of tracebacks, the record as JSON when a deploy
fails, the deploy lock in `status` and `unlock`, and a Ctrl-C that ends `logs --follow`.

The local tasks run against the fake Docker host (``tasks._settings`` gives them its settings);
the wheelhouse download is replaced only where the test is about what comes after it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import invoke
import pytest
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.program import Program

import tasks
from handover import cli, images, ops
from handover.errors import PreflightError
from handover.lock import DeployLock, lock_info
from handover.progress import Progress
from handover.record import RunRecord

from .fakehost import FakeHost

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "v1", "v2"
REASON = "db migration until 20:00"
POLL = 0.005  # how often the test looks whether the followed command runs, to press Ctrl-C
SETTLE = 0.05  # then it waits this long before pressing it
STOP_WITHIN = 5.0


@pytest.fixture
def host(fake_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """A host serving OLD, which the local tasks act on."""
    monkeypatch.setattr(tasks, "_settings", lambda c: fake_host.settings)
    monkeypatch.setattr(tasks.images, "build_wheelhouse", lambda server_dir, progress: None)
    tasks.Engine(fake_host.runner, fake_host.settings, Progress(quiet=True)).up(OLD)
    yield fake_host


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FABRIC_"))}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**clean, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)


def without_age(description: str) -> str:
    """The lock's description without its age (which moves on between two calls)."""
    return re.sub(r" \(([^()]*)\): ", " (AGE): ", description, count=1)


def manual_lock(host: FakeHost) -> DeployLock:
    held = DeployLock(host.runner, str(host.state_path))
    held.acquire(lock_info("lock", via="fab", reason=REASON))
    return held


# --- messages, not tracebacks ---------------------------------------------------------------------


BAD_INPUT = [
    (["probe", "--duration", "1"], {"http_port": "eighty"}, "config key deploy.http_port", 2),
    (["probe", "--url", "ftp://example.invalid", "--duration", "1"], {}, "probe: base_url must be", 2),
    (["probe", "--duration", "-1"], {}, "--duration: expected seconds above 0", 2),
    (["bench", "--only", "fast"], {}, "--only: expected some of", 2),
    (["bench", "--only", "tcp,fast"], {},
     "--only: expected some of engine, simple, tcp, tcp-reload, swarm, got 'fast'", 2),
    (["bench", "--only", "engine,swarm"], {}, "the swarm sequence needs a swarm: --swarm-lab <its state file>", 2),
    (["bench", "--only", "swarm", "--swarm-lab", "/nonexistent/lab.json"], {},
     "--swarm-lab /nonexistent/lab.json: cannot read it (No such file or directory)", 2),
    (["bench", "--project", "Not A Project"], {}, "project 'Not A Project': expected a compose project name", 2),
    (["local.status"], {"app_port": 70000}, "config key deploy.app_port", 2),
    (["local.status"], {"app_health": "/healthz"}, "config key deploy.app_health ('/healthz') needs", 2),
    (["local.status"], {"replicas": 0}, "config key deploy.replicas", 2),
    (["local.deploy", "--json"], {"app_image": "Not An Image"}, "config key deploy.app_image", 2),
]


def inv_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """What ``inv`` runs (Invoke's own program, this repository's tasks.py), in this process: exit code, stderr."""
    for key in [k for k in os.environ if k.startswith(("INVOKE_", "FABRIC_"))]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT)
    monkeypatch.setitem(sys.modules, "tasks", tasks)  # Invoke loads tasks.py afresh; keep the tests' module
    program = Program(name="Invoke", binary="inv[oke]", binary_names=["invoke", "inv"], version=invoke.__version__)
    code: int | str | None = 0
    capsys.readouterr()
    try:
        program.run(["invoke", *args])
    except SystemExit as done:
        code = done.code
    return int(code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("args", "deploy", "says", "code"), BAD_INPUT)
def test_bad_input_to_a_task_is_a_message(args: list[str], deploy: dict[str, object], says: str, code: int,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "invoke.yaml"
    config.write_text(json.dumps({"deploy": deploy}))  # JSON is YAML
    returncode, stderr = inv_in_process(["-f", str(config), *args], monkeypatch, capsys)
    assert "Traceback" not in stderr
    assert says in stderr and stderr.startswith("error: ")
    assert returncode == code


def test_bad_input_to_the_real_inv_is_a_message(tmp_path: Path) -> None:
    args, deploy, says, code = BAD_INPUT[-1]
    config = tmp_path / "invoke.yaml"
    config.write_text(json.dumps({"deploy": deploy}))
    result = inv("-f", str(config), *args)
    assert "Traceback" not in result.stderr
    assert says in result.stderr and result.stderr.startswith("error: ")
    assert result.returncode == code


def test_a_swarm_lab_whose_manager_does_not_answer_is_a_message_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from handover import swarm_bench

    gone = f"unix://{tmp_path}/manager.sock"  # no engine listens there
    lab = swarm_bench.Lab(prefix="lab", project="lab-swarm", url="http://127.0.0.1:1", nodes={"m": gone},
                          manager="m", app_image="lab-swarm-app", app_tag="lab", proxy_image="lab-swarm-nginx:1",
                          base_image="debian:bookworm-slim")
    (tmp_path / "lab.json").write_text(swarm_bench.lab_json(lab))
    built: list[object] = []
    monkeypatch.setattr(images, "build_wheelhouse", lambda *args: built.append(args))
    returncode, stderr = inv_in_process(["bench", "--only", "swarm", "--swarm-lab", str(tmp_path / "lab.json")],
                                        monkeypatch, capsys)
    assert "Traceback" not in stderr and returncode == 1, stderr
    assert stderr.startswith(f"error: --swarm-lab {tmp_path}/lab.json: the swarm manager m ({gone}) does not answer "
                             "as one: "), stderr
    assert "scripts/swarm_lab.py up" in stderr
    assert built == []  # refused before the first sequence's preparations


def test_a_failed_wheel_download_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("this is not a requirement!!\n")
    with pytest.raises(PreflightError) as info:
        images.build_wheelhouse(tmp_path, Progress(quiet=True))
    message = str(info.value)
    assert "downloading the app's wheels" in message and "pip exited" in message
    assert "nothing was built or deployed" in message
    assert not (tmp_path / "wheelhouse" / "requirements.txt").exists()  # the next run tries again


def test_missing_requirements_is_a_message(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="cannot read the app's requirements"):
        images.build_wheelhouse(tmp_path, Progress(quiet=True))


def test_an_unexpected_error_is_named_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(Exit) as info:
        cli.guarded(broken)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: OSError: [Errno 28] No space left on device")
    assert cli.TRACEBACK_VARIABLE in err


# --- deploy --json --------------------------------------------------------------------------------


def test_a_failed_deploy_prints_its_record_as_json(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    host.fail_build(NEW)
    with pytest.raises(Exit) as info:
        tasks.deploy(host.context(), version=NEW, json=True)
    assert info.value.code == 1
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["result"] == "failed" and record["failed_step"] == "build" and record["version"] == NEW
    assert record["error"] and "error: " in err
    assert record == host.records()[-1] | {"seconds": record["seconds"]}  # the stored record, as is


def test_a_deploy_stopped_before_the_engine_prints_json_too(host: FakeHost, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def no_wheels(server_dir: Path, progress: Progress) -> None:
        raise PreflightError("downloading the app's wheels failed: pip exited 1")

    monkeypatch.setattr(tasks.images, "build_wheelhouse", no_wheels)
    with pytest.raises(Exit) as info:
        tasks.deploy(host.context(), version=NEW, json=True)
    assert info.value.code == 1
    record = json.loads(capsys.readouterr().out)
    assert record["result"] == "failed" and record["failed_step"] == tasks.PREPARE_STEP
    assert record["error"] == "downloading the app's wheels failed: pip exited 1"
    assert record["project"] == host.settings.project and record["version"] == NEW


def test_a_bad_version_under_json_is_json(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exit) as info:
        tasks.deploy(host.context(), version="-bad", json=True)
    assert info.value.code == 2
    record = json.loads(capsys.readouterr().out)
    assert record["result"] == "failed" and "version '-bad'" in record["error"]


# --- the lock as a user sees it -------------------------------------------------------------------


def test_status_shows_the_lock(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    tasks.status(host.context())
    assert "lock: unlocked" in capsys.readouterr().out.splitlines()
    tasks.status(host.context(), json=True)
    assert json.loads(capsys.readouterr().out)["lock"] == {"held": False, "description": "unlocked"}

    manual_lock(host)
    tasks.status(host.context())
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("lock: "))
    assert line.startswith("lock: held by ") and line.endswith(f"s): {REASON}") and "since 20" in line
    tasks.status(host.context(), json=True)
    lock = json.loads(capsys.readouterr().out)["lock"]
    assert lock["held"] is True and lock["reason"] == REASON and lock["action"] == "lock"
    assert without_age(lock["description"]) == without_age(line.removeprefix("lock: "))
    assert lock["age"].endswith(" s")
    assert "token" not in lock and "boot_id" not in lock


def test_a_deploy_refused_by_a_manual_lock_says_why(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    manual_lock(host)
    with pytest.raises(Exit) as info:
        tasks.deploy(host.context(), version=NEW)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: deploys to this host are stopped: the lock at ")
    assert f": {REASON}. Release it with the unlock task" in err
    assert host.live_versions() == {OLD}


def test_unlock_says_what_it_released(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    manual_lock(host)
    tasks.unlock(host.context())
    out = capsys.readouterr().out.strip()
    assert out.startswith("lock released; it was held by ") and out.endswith(f": {REASON}")
    assert "{" not in out
    tasks.unlock(host.context())
    assert capsys.readouterr().out.strip() == "no lock was held"


def test_lock_state_and_unlock_sentence_are_the_lock_description() -> None:
    holder = {"holder": "ann@desk", "since": "2026-01-01T00:00:00+00:00", "action": "deploy", "version": "v7",
              "token": "secretish", "keeper_pid": "77"}
    view = ops.StatusView((), "p", "v1", ops.LockState(holder))
    assert view.lines(host="web1")[1].startswith("web1: lock: held by ann@desk since 2026-01-01T00:00:00+00:00 (")
    assert view.lines(host="web1")[1].endswith("): deploy v7")
    assert ops.unlock_message(holder) == "lock released; it was " + ops.LockState(holder).text
    assert set(view.to_dict()["lock"]) == {"held", "description", "holder", "since", "action", "version",  # type: ignore[arg-type]
                                           "age"}


# --- logs --follow --------------------------------------------------------------------------------


def test_local_follow_ends_on_one_interrupt(tmp_path: Path) -> None:
    """A SIGINT to this process alone (not the command's group) still ends the followed command."""
    pid_file = tmp_path / "pid"
    runner = tasks.FollowLocal(context=Context())
    stop = threading.Event()

    def interrupt_once_it_runs() -> None:  # Ctrl-C once Invoke waits on the running command, not before
        deadline = time.monotonic() + STOP_WITHIN
        while not stop.is_set() and time.monotonic() < deadline:
            threads = list(getattr(runner, "threads", {}).values())
            if pid_file.exists() and threads and all(t.ident for t in threads):
                time.sleep(SETTLE)  # past the last thread start, into the wait
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(POLL)

    watcher = threading.Thread(target=interrupt_once_it_runs, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        runner.run(f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 600", pty=False,
                   in_stream=False, warn=True, hide=True)
    finally:
        stop.set()
        watcher.join()
    assert runner.interrupted and time.monotonic() - started < STOP_WITHIN
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_fab_reports_a_refusal_as_the_lock_words_it(capsys: pytest.CaptureFixture[str]) -> None:
    from fabfile import hostconfig, rollout
    from handover.errors import LockHeld

    section = {**cli.defaults()["deploy"], **cli.defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"]}
    targets = hostconfig.load(section, ["web1"]).targets
    refusal = f"deploys to this host are stopped: the lock at /srv/handover/.state/lock is held by ann: {REASON}"

    def refused(target: hostconfig.Target) -> RunRecord:
        raise LockHeld(refusal)

    [outcome] = rollout.roll(targets, refused, 1, rollout._print_failure)
    assert outcome.state == rollout.FAILED and outcome.error == refusal
    assert capsys.readouterr().err == f"error: [web1] {refusal}\n"
