"""The release command against the fake Docker host: it runs once, in a one-off container of the new
image with the app's secrets, after the build and before any new container; a failure or a timeout
stops the run with the old version serving, its output shown (secrets hidden) and recorded, and
nothing of the one-off container left behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from handover import settings as settings_mod
from handover.backends.compose import one_off_name, run_once_argv
from handover.cli import defaults
from handover.engine import DeployOptions, Engine
from handover.errors import ConfigError, ReleaseFailed
from handover.progress import Progress

from .fakehost import FakeHost, Killed, Outcome, compose, docker, fake_settings

OLD, NEW = "v1", "v2"
COMMAND = ("python", "-m", "app.migrate", "--to", "head")
SECRET = "s3cr3t-Value-42"  # noqa: S105 - a test value, to be looked for


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """A host serving OLD, with a release command and a secrets file."""
    env_file = tmp_path / "app.env"
    env_file.write_text(f"DATABASE_PASSWORD={SECRET}\n")
    env_file.chmod(0o600)
    host = FakeHost(tmp_path, fake_settings(tmp_path, release_command=COMMAND, release_timeout=7.0,
                                            env_file=str(env_file)))
    assert engine(host).up(OLD).result == "success"
    host.release_runs.clear()
    return host


def engine(host: FakeHost, progress: Progress | None = None) -> Engine:
    return Engine(host.runner, host.settings, progress or Progress(quiet=True))


def only(host: FakeHost, version: str) -> None:
    (live,) = host.app_containers()
    assert live.version == version and live.status == "running" and host.live_versions() == {version}
    assert not host.lock_held()


def test_the_compose_command_is_built_in_one_place(tmp_path: Path) -> None:
    s = fake_settings(tmp_path, release_command=COMMAND)
    assert run_once_argv(s, s.release_command) == [
        "docker", "compose", "--project-name", "handover", "--file", s.compose_path,
        "run", "--rm", "--no-deps", "-T", "--name", "handover-release", "app",
        "python", "-m", "app.migrate", "--to", "head"]
    assert one_off_name(dataclasses.replace(s, project="shop")) == "shop-release"


def test_it_runs_once_with_the_new_image_and_secrets_before_any_new_container(host: FakeHost,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    (old,) = host.app_containers()
    rec = engine(host, Progress()).deploy(DeployOptions(version=NEW))

    assert rec.result == "success"
    (ran,) = host.release_runs
    assert ran.argv == list(COMMAND) and ran.image == f"{host.settings.app_image}:{NEW}"
    assert ran.env["APP_VERSION"] == NEW and ran.env["DATABASE_PASSWORD"] == SECRET
    assert ran.others == [(old.name, OLD, "running")]  # only the old container existed then
    names = [s.name for s in rec.steps]
    assert names.index("build") + 1 == names.index("release") == names.index("start") - 1
    assert [s.detail for s in rec.steps if s.name == "release"] == ["exit 0"]
    out = capsys.readouterr().out
    assert "==> release: run `python -m app.migrate --to head` once in a one-off container of handover-app:v2" in out
    assert "    | release ran" in out  # its output, shown
    assert host.containers_of("app") == host.running(NEW)  # no one-off container left
    only(host, NEW)


@pytest.mark.parametrize("hangs", [False, True], ids=["exit-3", "timeout"])
def test_a_failed_or_hanging_release_leaves_the_old_version_and_nothing_else(host: FakeHost, hangs: bool) -> None:
    (old,) = host.app_containers()
    if hangs:
        host.release_hangs = True
    else:
        host.release_outcome = lambda argv, env: Outcome(
            stdout="applying 0042_add_column\n", stderr=f"error: cannot connect with {env['DATABASE_PASSWORD']}\n",
            exited=3)
    mark = len(host.commands)

    with pytest.raises(ReleaseFailed) as info:
        engine(host).deploy(DeployOptions(version=NEW))

    message = str(info.value)
    assert "the release command `python -m app.migrate --to head`" in message
    assert "no new container was started, the old version keeps serving" in message
    if hangs:
        assert "did not finish within 7 s (deploy.release_timeout); its container was removed" in message
        assert "release: waiting for a lock that never comes" in message  # what it printed, from its log
    else:
        assert "exited 3" in message and "applying 0042_add_column" in message
        assert "error: cannot connect with [hidden]" in message
    assert SECRET not in message
    # Nothing started, nothing left: the old container alone, the one-off removed by name.
    assert [c.id for c in host.app_containers()] == [old.id]
    only(host, OLD)
    assert not host.matching(compose("up"), since=mark)
    assert host.matching(docker("rm", "--force", "--volumes", "handover-release"), since=mark)
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("failed", "release")
    assert record["error"] == message and SECRET not in str(record)


def test_without_a_release_command_nothing_extra_runs(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    assert engine(host).up(OLD).result == "success"
    rec = engine(host).deploy(DeployOptions(version=NEW))
    assert rec.result == "success" and "release" not in [s.name for s in rec.steps]
    assert not host.matching(compose("run")) and not host.release_runs


def test_a_rollback_runs_no_release_command(host: FakeHost) -> None:
    assert engine(host).deploy(DeployOptions(version=NEW)).result == "success"
    runs = len(host.release_runs)
    rec = engine(host).deploy(DeployOptions(version=OLD, build=False, action="rollback"))
    assert rec.result == "success" and len(host.release_runs) == runs
    only(host, OLD)


def test_the_first_start_runs_it_before_starting_anything(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, fake_settings(tmp_path, release_command=COMMAND))
    rec = engine(host).up(OLD)
    assert rec.result == "success"
    (ran,) = host.release_runs
    assert ran.others == [] and ran.image.endswith(f":{OLD}")
    assert engine(host).up(OLD).steps == []  # up again: nothing to do, no release


def test_a_release_container_left_by_a_killed_run_is_cleared_by_the_next(host: FakeHost) -> None:
    host.release_hangs = True
    host.kill_on(docker("logs"))  # killed after the timeout, before its container was removed
    with pytest.raises(Killed):
        engine(host).deploy(DeployOptions(version=NEW))
    host.revive()
    assert [c.name for c in host.app_containers()][-1] == "handover-release"  # left running

    host.release_hangs = False
    rec = engine(host).deploy(DeployOptions(version=NEW))
    assert rec.result == "success"
    only(host, NEW)


@pytest.mark.parametrize(
    ("value", "argv"),
    [("python -m app.migrate", ("python", "-m", "app.migrate")),
     ("sh -c 'flask db upgrade && echo done'", ("sh", "-c", "flask db upgrade && echo done")),
     (["sleep", 5], ("sleep", "5")),
     ("", ()), (None, ()), ([], ())],
)
def test_the_release_command_is_argv_or_a_split_string(value: object, argv: tuple[str, ...]) -> None:
    config = dict(defaults()["deploy"]) | {"release_command": value}
    assert settings_mod.load(config).release_command == argv


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("release_command", "migrate 'unclosed", "No closing quotation"),
     ("release_command", ["-x"], "expected the program first"),
     ("release_command", ["migrate", True], "a list of strings"),
     ("release_command", {"run": "x"}, "a list of strings"),
     ("release_command", ["sh", "-c", "a\nb"], "newline"),
     ("release_timeout", 0, "a number from 1 to 86400"),
     ("hooks_dir", "a\nb", "a path without newlines"),
     ("hook_timeout", "soon", "a number from 1 to 3600")],
)
def test_bad_release_and_hook_settings_name_the_key(key: str, value: object, says: str) -> None:
    config = dict(defaults()["deploy"]) | {key: value}
    with pytest.raises(ConfigError, match=f"config key deploy.{key}") as info:
        settings_mod.load(config)
    assert says in str(info.value)


def test_on_a_first_start_the_app_volumes_exist_before_the_one_off_container(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, fake_settings(tmp_path, release_command=COMMAND))
    sockets = host.state_path / "sockets"
    seen: list[bool] = []
    host.release_outcome = lambda argv, env: seen.append(sockets.is_dir()) or Outcome(stdout="ok\n")
    assert engine(host).up(OLD).result == "success"
    assert seen == [True]  # made by the tool (its user, its mode), not by the engine as root for the mount


def test_ctrl_c_during_the_release_command_removes_its_container(host: FakeHost) -> None:
    host.release_hangs = True  # still running when Ctrl-C arrives
    host.interrupt_on(docker("logs"), after=True)
    with pytest.raises(KeyboardInterrupt):
        engine(host).deploy(DeployOptions(version=NEW))
    assert [c.name for c in host.app_containers()] == ["handover-app-1"]  # the one-off removed all the same
    only(host, OLD)
    record = host.records()[-1]
    assert (record["result"], record["failed_step"], record["error"]) == ("failed", "release",
                                                                          "interrupted by the user")
