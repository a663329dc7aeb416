"""Hooks: real scripts run by both front doors around a deploy on the fake Docker host.

Each hook here appends its ``HANDOVER_*`` variables to a log file, so a test reads which hooks ran,
in which order and with what facts. The local tasks run against the fake host as in
test_front_doors.py; the Fabric tasks with the rollout replaced by a stand-in (no SSH), which
shows what they hand to each host and to the hooks after the last one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

import tasks
from fabfile import commands, rollout
from handover import hooks, images
from handover.engine import Engine
from handover.errors import ConfigError
from handover.hooks import Facts, Hooks, Outcome, hook_env
from handover.progress import Progress
from handover.record import RunRecord, operator

from .fakehost import Behaviour, FakeHost
from .fakehost import Outcome as Answer

OLD, NEW = "v1", "v2"
LOGGER = """#!/bin/sh
# Each run: one JSON line with the hook's HANDOVER_* variables.
python3 -c 'import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("HANDOVER_")}))' \
    >> "$HOOK_LOG"
echo "hook $HANDOVER_HOOK says hello"
"""


def write_hook(directory: Path, name: str, body: str = LOGGER, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    path.chmod(mode)
    return path


def failing(status: int, extra: str = "") -> str:
    return LOGGER + f'{extra}\necho "cannot go on: the build is red" >&2\nexit {status}\n'


def ran(log: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hooks.log"
    monkeypatch.setenv("HOOK_LOG", str(path))
    return path


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    return tmp_path / "hooks"


@pytest.fixture
def host(fake_host: FakeHost, hooks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """A host serving OLD, which the local tasks act on, with hooks from ``hooks_dir``."""
    fake_host.settings = dataclasses.replace(fake_host.settings, hooks_dir=str(hooks_dir), hook_timeout=5.0,
                                             release_command=("python", "-m", "app.migrate"))
    monkeypatch.setattr(tasks, "_settings", lambda c: fake_host.settings)
    monkeypatch.setattr(tasks.images, "build_wheelhouse", lambda server_dir, progress: None)
    # The tasks' engine works on the fake host (its runner), never on this machine's Docker.
    monkeypatch.setattr(tasks, "Engine", lambda c, s, progress=None, **kw: Engine(fake_host.runner, s, progress, **kw))
    Engine(fake_host.runner, fake_host.settings, Progress(quiet=True)).up(OLD)
    yield fake_host


# -- the facts ---------------------------------------------------------------------------------------
def test_the_facts_a_hook_gets() -> None:
    facts = Facts("deploy", "shop", "v7", ("web1", "web2"), performer="ann@desk")
    assert hook_env(hooks.PRE_DEPLOY, facts) == {
        "HANDOVER_HOOK": "pre-deploy", "HANDOVER_ACTION": "deploy", "HANDOVER_PROJECT": "shop",
        "HANDOVER_VERSION": "v7", "HANDOVER_HOSTS": "web1 web2", "HANDOVER_PERFORMER": "ann@desk"}
    outcome = Outcome("failed", "v7", "v6", "health", ("web2",), "new container crashed",
                      (("web1", "success"), ("web2", "rolled-back")))
    assert hook_env(hooks.DEPLOY_FAILED, facts, outcome=outcome) == {
        "HANDOVER_HOOK": "deploy-failed", "HANDOVER_ACTION": "deploy", "HANDOVER_PROJECT": "shop",
        "HANDOVER_VERSION": "v7", "HANDOVER_PREVIOUS_VERSION": "v6", "HANDOVER_HOSTS": "web1 web2",
        "HANDOVER_PERFORMER": "ann@desk", "HANDOVER_RESULT": "failed", "HANDOVER_FAILED_STEP": "health",
        "HANDOVER_FAILED_HOSTS": "web2", "HANDOVER_ERROR": "new container crashed",
        "HANDOVER_HOST_RESULTS": "web1=success web2=rolled-back"}
    assert hook_env(hooks.POST_SWITCH, facts, host="web1", previous_version="v6")["HANDOVER_HOST"] == "web1"


# -- finding them ------------------------------------------------------------------------------------
def settings_with(host: FakeHost, directory: Path) -> Any:
    return dataclasses.replace(host.settings, hooks_dir=str(directory))


def test_a_missing_directory_is_no_hooks_and_other_files_are_ignored(fake_host: FakeHost, tmp_path: Path) -> None:
    assert Hooks.find(settings_with(fake_host, tmp_path / "nowhere")).names() == []
    write_hook(tmp_path / "h", "pre-deploy.sample", mode=0o644)
    write_hook(tmp_path / "h", "post-deploy")
    assert Hooks.find(settings_with(fake_host, tmp_path / "h")).names() == ["post-deploy"]
    assert Hooks.find(dataclasses.replace(fake_host.settings, hooks_dir="")).names() == []


def test_a_hook_that_cannot_run_is_a_config_error(fake_host: FakeHost, tmp_path: Path) -> None:
    path = write_hook(tmp_path / "h", "post-deploy", mode=0o644)
    with pytest.raises(ConfigError, match=f"hook {path} is not executable: `chmod \\+x {path}`"):
        Hooks.find(settings_with(fake_host, tmp_path / "h"))
    path.unlink()
    path.mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        Hooks.find(settings_with(fake_host, tmp_path / "h"))
    (tmp_path / "plain").write_text("")
    with pytest.raises(ConfigError, match=r"deploy.hooks_dir: .* is not a directory"):
        Hooks.find(settings_with(fake_host, tmp_path / "plain"))


# -- the local front door ----------------------------------------------------------------------------
def test_a_deploy_runs_its_hooks_in_order_with_its_facts(host: FakeHost, hooks_dir: Path, log: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for name in hooks.HOOK_NAMES:
        write_hook(hooks_dir, name)

    tasks.deploy(Context(), version=NEW)

    runs = ran(log)
    assert [r["HANDOVER_HOOK"] for r in runs] == ["pre-deploy", "post-switch", "post-deploy"]
    common = {"HANDOVER_ACTION": "deploy", "HANDOVER_PROJECT": host.settings.project, "HANDOVER_VERSION": NEW,
              "HANDOVER_HOSTS": "local", "HANDOVER_PERFORMER": operator()}
    assert all(r.items() >= common.items() for r in runs)
    assert runs[1]["HANDOVER_HOST"] == "local" and runs[1]["HANDOVER_PREVIOUS_VERSION"] == OLD
    assert runs[2]["HANDOVER_RESULT"] == "success" and runs[2]["HANDOVER_HOST_RESULTS"] == "local=success"
    assert not any("SECRET" in k or "ENV_FILE" in k for r in runs for k in r)
    rec = host.records()[-1]
    names = [s["name"] for s in rec["steps"]]
    assert names.index("post-switch hook") == names.index("switch") + 1 == names.index("verify") - 1
    out = capsys.readouterr().out
    assert out.index("==> pre-deploy hook:") < out.index("==> lock:")  # before anything changes
    assert "    | hook post-deploy says hello" in out


def test_a_failing_pre_deploy_hook_stops_everything(host: FakeHost, hooks_dir: Path, log: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write_hook(hooks_dir, "pre-deploy", failing(3))
    write_hook(hooks_dir, "deploy-failed")
    mark, records = len(host.commands), len(host.records())

    with pytest.raises(Exit) as info:
        tasks.deploy(Context(), version=NEW, json=True)

    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert f"error: the pre-deploy hook {path} exited 3; the deploy was not started, nothing was changed" in err
    assert "cannot go on: the build is red" in err  # its output
    assert host.commands_since(mark) == []  # not one command reached the host
    assert len(host.records()) == records and host.live_versions() == {OLD}
    assert [r["HANDOVER_HOOK"] for r in ran(log)] == ["pre-deploy"]  # deploy-failed: the deploy never began
    record = json.loads(out)
    assert (record["result"], record["failed_step"]) == ("failed", "pre-deploy")


def test_a_hanging_pre_deploy_hook_is_killed_at_its_timeout(host: FakeHost, hooks_dir: Path, log: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    host.settings = dataclasses.replace(host.settings, hook_timeout=0.2)
    write_hook(hooks_dir, "pre-deploy", LOGGER + "sleep 30 &\nsleep 30\n")
    mark = len(host.commands)
    with pytest.raises(Exit):
        tasks.deploy(Context(), version=NEW)
    err = capsys.readouterr().err
    assert "did not finish within 0.2 s (deploy.hook_timeout) and was killed" in err
    assert host.commands_since(mark) == []


def test_a_failed_deploy_runs_deploy_failed_with_the_step(host: FakeHost, hooks_dir: Path, log: Path) -> None:
    for name in hooks.HOOK_NAMES:
        write_hook(hooks_dir, name)
    host.behave(NEW, Behaviour(never_healthy=True))

    with pytest.raises(Exit):
        tasks.deploy(Context(), version=NEW)

    runs = ran(log)
    assert [r["HANDOVER_HOOK"] for r in runs] == ["pre-deploy", "deploy-failed"]
    assert runs[1]["HANDOVER_RESULT"] == "rolled-back" and runs[1]["HANDOVER_FAILED_STEP"] == "health"
    assert runs[1]["HANDOVER_FAILED_HOSTS"] == "local" and "unhealthy" in runs[1]["HANDOVER_ERROR"]


def test_a_failed_release_command_is_the_failed_step(host: FakeHost, hooks_dir: Path, log: Path) -> None:
    write_hook(hooks_dir, "deploy-failed")
    host.release_outcome = lambda argv, env: Answer(stderr="relation users does not exist\n", exited=1)
    with pytest.raises(Exit):
        tasks.deploy(Context(), version=NEW)
    (run,) = ran(log)
    assert (run["HANDOVER_RESULT"], run["HANDOVER_FAILED_STEP"]) == ("failed", "release")
    assert host.live_versions() == {OLD}


def test_post_hook_failures_are_reported_and_change_nothing(host: FakeHost, hooks_dir: Path, log: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    post_switch = write_hook(hooks_dir, "post-switch", failing(4))
    post_deploy = write_hook(hooks_dir, "post-deploy", failing(5))

    tasks.deploy(Context(), version=NEW)  # no Exit: the deploy succeeded

    err = capsys.readouterr().err
    assert f"! the post-switch hook {post_switch} exited 4 (the deploy goes on)" in err
    assert f"! the post-deploy hook {post_deploy} exited 5 (the deploy's result stands: success)" in err
    assert host.records()[-1]["result"] == "success" and host.live_versions() == {NEW}


def test_a_non_executable_hook_stops_the_deploy_before_anything(host: FakeHost, hooks_dir: Path, log: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    write_hook(hooks_dir, "pre-deploy")
    path = write_hook(hooks_dir, "deploy-failed", mode=0o644)
    mark = len(host.commands)
    with pytest.raises(Exit) as info:
        tasks.deploy(Context(), version=NEW)
    assert info.value.code == 2
    assert f"error: hook {path} is not executable" in capsys.readouterr().err
    assert host.commands_since(mark) == [] and ran(log) == []  # not even pre-deploy ran


def test_a_dry_run_runs_no_hook(host: FakeHost, hooks_dir: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in hooks.HOOK_NAMES:
        write_hook(hooks_dir, name)
    tasks.deploy(Context(), version=NEW, dry_run=True)
    out = capsys.readouterr().out
    assert ran(log) == []
    assert "hooks in " in out and "(not run in a dry run): pre-deploy, post-switch, post-deploy, deploy-failed" in out
    assert "post-switch hook: run " in out  # the step's plan line


def test_a_local_rollback_runs_the_hooks_with_its_action(host: FakeHost, hooks_dir: Path, log: Path) -> None:
    tasks.deploy(Context(), version=NEW)
    write_hook(hooks_dir, "pre-deploy")
    write_hook(hooks_dir, "post-deploy")
    runs_before = len(host.release_runs)
    tasks.rollback(Context(), version=OLD)
    runs = ran(log)
    assert [(r["HANDOVER_HOOK"], r["HANDOVER_ACTION"], r["HANDOVER_VERSION"]) for r in runs] == [
        ("pre-deploy", "rollback", OLD), ("post-deploy", "rollback", OLD)]
    assert len(host.release_runs) == runs_before  # a rollback runs no release command


# -- the Fabric front door ---------------------------------------------------------------------------
@dataclasses.dataclass
class FakeTarget:
    name: str
    settings: Any


def _record(host: str, result: str, step: str = "") -> RunRecord:
    rec = RunRecord(action="deploy", version=NEW, project="handover", host=host, previous_version=OLD)
    if result == "success":
        rec.finish("success")
    else:
        rec.fail(step, "new container crashed", rolled_back=True)
    return rec


@pytest.mark.parametrize("fails", [False, True], ids=["all-succeed", "second-fails"])
def test_fab_runs_pre_and_post_once_around_all_hosts(fake_host: FakeHost, hooks_dir: Path, log: Path,
                                                     monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    for name in hooks.HOOK_NAMES:
        write_hook(hooks_dir, name)
    s = dataclasses.replace(fake_host.settings, hooks_dir=str(hooks_dir))
    rc = rollout.RemoteConfig(targets=[FakeTarget("web1", s), FakeTarget("web2", s)],  # type: ignore[list-item]
                              parallel=1, known_hosts=Path("/dev/null"))
    monkeypatch.setattr(commands, "remote_config", lambda c, parallel=None: rc)
    monkeypatch.setattr(images, "build_wheelhouse", lambda server_dir, progress: None)
    handed: dict[str, list[str]] = {}

    def deploy(remote: Any, version: str, *, force: bool, progress: Progress, after_switch: Any) -> RunRecord:
        handed[remote.name] = [step.name for step in after_switch]
        return _record(remote.name, "rolled-back" if fails and remote.name == "web2" else "success", "health")

    monkeypatch.setattr(commands.hostrun, "deploy", deploy)

    def rolling(c: Any, rc: Any, action: str, label: str, work: Any, as_json: bool = False,
                finished: Any = None) -> None:
        assert [r["HANDOVER_HOOK"] for r in ran(log)] == ["pre-deploy"]  # once, before the first host
        outcomes = []
        for target in rc.targets:
            rec = work(dataclasses.replace(target), Progress(quiet=True))
            state = rollout.FAILED if rec.result != "success" else rollout.DONE
            outcomes.append(rollout.Outcome(target.name, state, rec, "new container crashed" if rec.failed_step
                                            else ""))
        finished(outcomes)

    monkeypatch.setattr(commands, "rolling", rolling)
    commands.deploy(Context(), version=NEW)

    assert handed == {"web1": ["post-switch hook"], "web2": ["post-switch hook"]}  # one step per host
    runs = ran(log)
    assert [r["HANDOVER_HOOK"] for r in runs] == ["pre-deploy", "deploy-failed" if fails else "post-deploy"]
    assert runs[0]["HANDOVER_HOSTS"] == "web1 web2" and runs[0]["HANDOVER_VERSION"] == NEW
    after = runs[1]
    if fails:
        assert (after["HANDOVER_RESULT"], after["HANDOVER_FAILED_HOSTS"], after["HANDOVER_FAILED_STEP"]) == (
            "failed", "web2", "health")
        assert after["HANDOVER_HOST_RESULTS"] == "web1=success web2=rolled-back"
    else:
        assert after["HANDOVER_RESULT"] == "success" and after["HANDOVER_HOST_RESULTS"] == "web1=success web2=success"


def test_run_outcome_over_hosts() -> None:
    ok, bad = _record("web1", "success"), _record("web2", "rolled-back", "verify")
    outcome = rollout.run_outcome([rollout.Outcome("web1", rollout.DONE, ok),
                                   rollout.Outcome("web2", rollout.FAILED, bad, "after the switch: crashed\nlogs"),
                                   rollout.Outcome("web3", rollout.NOT_STARTED)])
    assert outcome == Outcome("failed", NEW, OLD, "verify", ("web2",), "after the switch: crashed",
                              (("web1", "success"), ("web2", "rolled-back"), ("web3", "not started")))
    unchanged = RunRecord(action="deploy", version=NEW, project="p", host="web1")
    unchanged.finish("unchanged")
    assert rollout.run_outcome([rollout.Outcome("web1", rollout.DONE, unchanged)]).result == "unchanged"


def test_hosts_of_one_run_share_one_hooks_directory(fake_host: FakeHost, tmp_path: Path) -> None:
    a = dataclasses.replace(fake_host.settings, hooks_dir=str(tmp_path / "a"))
    b = dataclasses.replace(fake_host.settings, hooks_dir=str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="differ between the hosts of this run"):
        Hooks.same_for_all([a, b])
    assert Hooks.same_for_all([a, a]).directory == str(tmp_path / "a")


def test_a_hook_gets_this_machines_environment(tmp_path: Path, fake_host: FakeHost, log: Path) -> None:
    write_hook(tmp_path / "h", "post-deploy", '#!/bin/sh\necho "$HOME|$HANDOVER_RESULT"\n')
    found = Hooks.find(settings_with(fake_host, tmp_path / "h"))
    done = found.run(hooks.POST_DEPLOY, {"HANDOVER_RESULT": "success"})
    assert done is not None and done.ok and done.output == f"{os.environ.get('HOME', '')}|success"
