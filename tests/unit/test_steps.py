"""The step list against the fake Docker host: plan = run, and every failure, Ctrl-C and kill recovers.

Each test starts from a host serving OLD and deploys NEW (or rolls back, or starts from nothing).
A failure, a Ctrl-C or a SIGKILL is put at the start of one step at a time, and the host is then
checked for the invariants: exactly one version serves, nothing is left behind, the lock is free,
and the record says what happened.
"""

from __future__ import annotations

import ast
import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from handover import plans, steps
from handover.engine import DeployOptions, Engine
from handover.errors import HandoverError, LockHeld
from handover.lock import DeployLock
from handover.progress import Progress
from handover.steps import Run, Step

from .fakehost import Behaviour, Command, FakeHost, Killed, compose, docker, fake_settings

OLD, NEW = "v1", "v2"
DEPLOY = [type(step) for step in plans.deploy()]
# A deploy from a clean state (converge has a test of its own: it runs only after an interrupted run).
TAKEN = [cls for cls in DEPLOY if cls is not steps.Converge]
DRAIN_AT = TAKEN.index(steps.Drain)
START_AT = TAKEN.index(steps.Start)
FIRST = [type(step) for step in plans.first_start()]


def engine_for(host: FakeHost) -> Engine:
    return Engine(host.runner, host.settings, Progress(quiet=True))


def serving(host: FakeHost, version: str = OLD) -> Engine:
    engine = engine_for(host)
    assert engine.up(version).result == "success"
    return engine


def snapshot(host: FakeHost) -> tuple[object, ...]:
    path = host.state_path / "nginx" / "upstream.conf"
    upstream = path.read_text() if path.exists() else None
    return ([c.id for c in host.app_containers()], host.live_targets(), host.sockets(), upstream,
            host.nginx_reloads)


def only(host: FakeHost, version: str) -> None:
    """Exactly one version serves, and nothing else of the app is left."""
    (live,) = host.app_containers()
    assert live.version == version and live.status == "running"
    assert host.live_containers() == [live]
    assert host.sockets() == [f"app-{live.short_id}.sock"]
    assert not host.lock_held()


RELEASE_COMMAND = ("python", "-m", "app.migrate")


@pytest.fixture
def host(fake_host: FakeHost) -> FakeHost:
    """The fake host, with a release command configured so that every step of the sequence runs."""
    fake_host.settings = dataclasses.replace(fake_host.settings, release_command=RELEASE_COMMAND)
    return fake_host


def at(monkeypatch: pytest.MonkeyPatch, cls: type[Step], make: type[BaseException] | BaseException,
       host: FakeHost | None = None) -> list[str]:
    """Make ``cls``'s run raise ``make`` before doing anything; return the list that undos append to."""
    undone: list[str] = []
    original_run = cls.run
    fired: list[bool] = []

    def fail(self: Step, run: Run) -> str | None:
        if fired:  # once: a forward step interrupted part-way is finished by running it again
            return original_run(self, run)
        fired.append(True)
        if make is Killed and host is not None:
            host.killed = True
            host._end_background()
        raise make if isinstance(make, BaseException) else make(f"injected at {self.name}")

    monkeypatch.setattr(cls, "run", fail)
    for each in dict.fromkeys([*DEPLOY, *FIRST]):
        original = each.undo

        def undo(self: Step, run: Run, original: object = original) -> None:
            undone.append(self.name)
            original(self, run)  # type: ignore[operator]

        monkeypatch.setattr(each, "undo", undo)
    return undone


# -- plan = run --------------------------------------------------------------------------------------
def _leftover(host: FakeHost) -> Engine:
    """A host serving OLD with a container of NEW left by a killed deploy."""
    engine = serving(host)
    host.kill_on(compose("up", "app"), after=True)
    with pytest.raises(Killed):
        engine.deploy(DeployOptions(version=NEW))
    host.revive()
    return engine_for(host)


def _proxy_down(host: FakeHost) -> Engine:
    engine = serving(host)
    (proxy,) = host.containers_of("nginx")
    host.crash_container(proxy.id)
    return engine


def _rolled_forward(host: FakeHost) -> Engine:
    engine = serving(host)
    assert engine.deploy(DeployOptions(version=NEW)).result == "success"
    return engine


DEPLOY_STEPS = ["lock", "preflight", "proxy config", "build", "release", "start", "health", "switch", "verify",
                "drain", "prune"]
FIRST_START = ["lock", "preflight", "build", "release", "start", "health", "switch", "proxy"]
EXPECTED = {
    "deploy": DEPLOY_STEPS,
    "deploy-after-a-killed-run": [*DEPLOY_STEPS[:2], "converge", *DEPLOY_STEPS[2:]],
    "converge-only": ["lock", "converge"],
    "rollback": [*DEPLOY_STEPS[:3], "image", *DEPLOY_STEPS[5:]],  # no release command
    "first-start": FIRST_START,
    "deploy-on-an-empty-host": FIRST_START,
    "up-with-the-proxy-down": ["lock", "preflight", "build", "proxy"],
    "deploy-with-the-proxy-down": FIRST_START,
    "unchanged": [],
}
SCENARIOS = {
    "deploy": (serving, DeployOptions(version=NEW)),
    "deploy-after-a-killed-run": (_leftover, DeployOptions(version=NEW)),
    "converge-only": (_leftover, DeployOptions(version=OLD)),
    "rollback": (_rolled_forward, DeployOptions(version=OLD, build=False, action="rollback")),
    "first-start": (engine_for, DeployOptions(version=OLD, action="up")),
    "deploy-on-an-empty-host": (engine_for, DeployOptions(version=OLD)),
    "up-with-the-proxy-down": (_proxy_down, DeployOptions(version=OLD, action="up")),
    "deploy-with-the-proxy-down": (_proxy_down, DeployOptions(version=NEW)),
    "unchanged": (serving, DeployOptions(version=OLD)),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dry_run_lists_exactly_the_steps_a_real_run_takes(host: FakeHost, scenario: str) -> None:
    prepare, options = SCENARIOS[scenario]
    engine = prepare(host)
    before = snapshot(host)
    records = len(host.records())

    plan = engine.deploy(dataclasses.replace(options, dry_run=True))

    assert plan.result == "planned" and snapshot(host) == before and len(host.records()) == records
    assert [s.name for s in plan.steps] == EXPECTED[scenario]
    if "build" in EXPECTED[scenario]:
        (build,) = [s.detail for s in plan.steps if s.name == "build"]
        assert build.endswith("and the proxy's image") == (EXPECTED[scenario] is FIRST_START or "proxy" in
                                                            EXPECTED[scenario])
    rec = engine.deploy(options)
    assert [s.name for s in rec.steps] == [s.name for s in plan.steps]
    assert rec.result == ("unchanged" if not plan.steps else "success")
    assert all(s.result == "ok" for s in rec.steps)
    only(host, options.version)


def test_the_plans_read_as_the_sequence() -> None:
    assert [s.name for s in plans.deploy()] == [
        "lock", "preflight", "converge", "proxy config", "build", "release", "start", "health", "switch", "verify",
        "drain", "prune"]
    rollback = [s.name for s in plans.deploy(build=False)]
    assert rollback[4] == "image" and "release" not in rollback
    assert [s.name for s in plans.deploy(source="pull")][4:6] == ["pull", "release"]
    assert [s.name for s in plans.deploy(source="local")][4:6] == ["image", "release"]
    assert [s.name for s in plans.first_start()] == [
        "lock", "preflight", "build", "services", "release", "start", "health", "switch", "proxy"]
    assert [s.name for s in plans.first_start(source="pull")] == [
        "lock", "preflight", "pull", "build", "services", "release", "start", "health", "switch", "proxy"]
    extra, hook = steps.Converge(), steps.Verify()
    assert plans.deploy(after_lock=[extra])[1] is extra
    after = plans.deploy(after_switch=[hook])
    assert after[after.index(hook) - 1].name == "switch" and after[after.index(hook) + 1].name == "verify"
    assert plans.first_start(after_switch=[hook])[-1] is hook  # once the proxy serves the new version


def test_the_sequence_knows_the_proxy_only_through_its_interface() -> None:
    """The engine, its steps and plans neither import the proxy implementation nor name it."""
    import handover

    for module in ("engine.py", "steps.py", "plans.py"):
        source = (Path(handover.__file__).parent / module).read_text()
        tree = ast.parse(source)
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [f"{node.module or ''}.{alias.name}" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) for alias in node.names]
        assert imported and not [name for name in imported if "nginx" in name.lower()], module
        assert "nginx" not in source.lower(), module


# -- a failure at each step --------------------------------------------------------------------------
@pytest.mark.parametrize("cls", TAKEN[:DRAIN_AT], ids=[c.name for c in TAKEN[:DRAIN_AT]])
def test_a_failure_before_the_drain_undoes_every_step_before_it(host: FakeHost, monkeypatch: pytest.MonkeyPatch,
                                                                cls: type[Step]) -> None:
    engine = serving(host)
    (old,) = host.app_containers()
    before = snapshot(host)
    planned = [s.name for s in engine.deploy(DeployOptions(version=NEW, dry_run=True)).steps]
    undone = at(monkeypatch, cls, HandoverError)

    with pytest.raises(HandoverError, match=f"injected at {cls.name}"):
        engine.deploy(DeployOptions(version=NEW))

    done = planned[: planned.index(cls.name) + 1]
    assert undone == list(reversed(done))  # the failing step's own undo first, then each earlier one
    assert snapshot(host) == before  # same containers, links, sockets, upstream; no reload
    only(host, OLD)
    assert host.app_containers()[0].id == old.id
    record = host.records()[-1]
    started = TAKEN.index(cls) > START_AT  # the new container had started and was removed
    assert (record["result"], record["failed_step"]) == ("rolled-back" if started else "failed", cls.name)
    assert record["error"] == f"injected at {cls.name}"
    names = [s["name"] for s in record["steps"]]
    assert names.count(cls.name) == 1
    assert ("rollback" in names) == started  # the new container's removal is a step of the record
    assert ("switch back" in names) == (TAKEN.index(cls) > TAKEN.index(steps.Switch))


@pytest.mark.parametrize("cls", TAKEN[DRAIN_AT:], ids=[c.name for c in TAKEN[DRAIN_AT:]])
def test_a_failure_from_the_drain_on_keeps_the_new_version(host: FakeHost, monkeypatch: pytest.MonkeyPatch,
                                                           cls: type[Step]) -> None:
    engine = serving(host)
    undone = at(monkeypatch, cls, HandoverError)

    with pytest.raises(HandoverError, match=f"injected at {cls.name}"):
        engine.deploy(DeployOptions(version=NEW))

    assert undone == []  # the new version serves: nothing is undone
    assert host.live_versions() == {NEW} and not host.lock_held()
    record = host.records()[-1]
    assert (record["result"], record["failed_step"], record["error"]) == ("failed", cls.name,
                                                                          f"injected at {cls.name}")
    # The next run finishes the job: the old container, if still there, is drained.
    monkeypatch.undo()
    engine_for(host).deploy(DeployOptions(version=NEW))
    only(host, NEW)


@pytest.mark.parametrize("cls", [c for c in FIRST if c.name in FIRST_START], ids=lambda c: c.name)
def test_a_failure_at_each_first_start_step_undoes_every_step_before_it(host: FakeHost,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        cls: type[Step]) -> None:
    engine = engine_for(host)
    planned = [s.name for s in engine.deploy(DeployOptions(version=OLD, action="up", dry_run=True)).steps]
    assert planned == FIRST_START
    undone = at(monkeypatch, cls, HandoverError)

    with pytest.raises(HandoverError, match=f"injected at {cls.name}"):
        engine.up(OLD)

    assert undone == list(reversed(planned[: planned.index(cls.name) + 1]))
    assert host.app_containers() == [] and host.sockets() == [] and not host.lock_held()
    assert len(host.records()) == 1
    record = host.records()[-1]
    assert (record["action"], record["failed_step"], record["error"]) == ("up", cls.name, f"injected at {cls.name}")
    monkeypatch.undo()  # the cause gone, the same start succeeds
    assert engine_for(host).up(OLD).result == "success"
    only(host, OLD)


# -- Ctrl-C at each step -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", TAKEN, ids=[c.name for c in TAKEN])
def test_ctrl_c_at_each_step_leaves_one_whole_version(host: FakeHost, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], cls: type[Step]) -> None:
    engine = serving(host)
    index = TAKEN.index(cls)
    at(monkeypatch, cls, KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        engine.deploy(DeployOptions(version=NEW))

    record = host.records()[-1]
    assert f"! interrupted at {cls.name}" in capsys.readouterr().err if cls is not steps.Drain else True
    if index < DRAIN_AT:
        only(host, OLD)
        assert record["result"] == ("rolled-back" if index > START_AT else "failed")
        assert (record["failed_step"], record["error"]) == (cls.name, "interrupted by the user")
    else:
        only(host, NEW)
        assert record["result"] == "success" and "interrupted by the user" in record["error"]
        if cls is steps.Drain:
            said = capsys.readouterr().err
            assert "interrupted during the drain; the new version serves, finishing the drain of handover-app-1" in said


# -- SIGKILL at each step, then a rerun --------------------------------------------------------------
@pytest.mark.parametrize("cls", TAKEN, ids=[c.name for c in TAKEN])
def test_a_rerun_after_a_kill_at_each_step_converges(host: FakeHost, monkeypatch: pytest.MonkeyPatch,
                                                     cls: type[Step]) -> None:
    engine = serving(host)
    at(monkeypatch, cls, Killed, host)

    with pytest.raises(Killed):
        engine.deploy(DeployOptions(version=NEW))

    monkeypatch.undo()
    host.revive()
    rec = engine_for(host).deploy(DeployOptions(version=NEW))  # a dead holder's lock is taken over
    assert rec.result in ("success", "unchanged")
    only(host, NEW)


def test_a_failure_at_converge_leaves_the_old_version_and_a_rerun_finishes(host: FakeHost,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _leftover(host)
    at(monkeypatch, steps.Converge, HandoverError)

    with pytest.raises(HandoverError, match="injected at converge"):
        engine.deploy(DeployOptions(version=NEW))

    assert host.live_versions() == {OLD} and not host.lock_held()
    assert (host.records()[-1]["result"], host.records()[-1]["failed_step"]) == ("failed", "converge")
    monkeypatch.undo()
    engine.deploy(DeployOptions(version=NEW))
    only(host, NEW)


# -- real failures, each step's own ------------------------------------------------------------------
def _bad_nginx_conf(host: FakeHost) -> None:
    conf = host.root / "deploy" / "nginx" / "nginx.conf"
    conf.write_text(conf.read_text() + "\nbogus_directive on;\n")
    host.nginx_test_error = 'unknown directive "bogus_directive"'


FAILURES = {
    "preflight": (lambda h: h.fail_on(compose("config"), stderr="yaml: line 3: did not find expected key"),
                  "failed", "compose file"),
    "proxy config": (_bad_nginx_conf, "failed", "bogus_directive"),
    "build": (lambda h: h.fail_build(NEW), "failed", "No matching distribution"),
    "start": (lambda h: h.fail_on(compose("up", "app"), stderr="port is already allocated"), "failed",
              "port is already allocated"),
    "health": (lambda h: h.behave(NEW, Behaviour(never_healthy=True)), "rolled-back", "unhealthy"),
    "switch": (lambda h: h.behave(NEW, Behaviour(listens=False)), "rolled-back", "does not listen"),
    "switch (died since its health)": (lambda h: h.behave(NEW, Behaviour(dies_after=1)), "rolled-back",
                                       "right before the switch"),
    "verify": (lambda h: h.behave(NEW, Behaviour(dies_after=2)), "rolled-back", "after the switch"),
}


@pytest.mark.parametrize("step", FAILURES)
def test_each_steps_own_failure_leaves_the_old_version_serving(host: FakeHost, step: str) -> None:
    engine = serving(host)
    before, count = snapshot(host), len(host.records())
    script, result, words = FAILURES[step]
    script(host)

    with pytest.raises(HandoverError, match=words):
        engine.deploy(DeployOptions(version=NEW))

    only(host, OLD)
    if step != "proxy config":
        assert snapshot(host) == before
    assert len(host.records()) == count + 1  # one run, one line
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == (result, step.split(" (")[0])
    assert words in str(record["error"])


def test_a_timed_out_command_is_recovered_like_any_failure(host: FakeHost) -> None:
    engine = serving(host)
    host.timeout_on(compose("up", "app"), after=True)  # the container started, then the command timed out

    with pytest.raises(HandoverError, match="timed out"):
        engine.deploy(DeployOptions(version=NEW))

    only(host, OLD)
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("rolled-back", "start")


def test_an_unexpected_error_is_recovered_and_named(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = serving(host)
    at(monkeypatch, steps.Verify, ValueError("Expecting value: line 1 column 1"))

    with pytest.raises(HandoverError, match="verify failed: ValueError: Expecting value"):
        engine.deploy(DeployOptions(version=NEW))

    only(host, OLD)
    assert host.records()[-1]["result"] == "rolled-back"


def test_a_failing_undo_does_not_stop_the_others(host: FakeHost) -> None:
    engine = serving(host)
    host.behave(NEW, Behaviour(dies_after=2))
    host.fail_on(docker("rm"), stderr="device busy")  # removing the new container fails once

    with pytest.raises(HandoverError, match="after the switch"):
        engine.deploy(DeployOptions(version=NEW))

    assert host.live_versions() == {OLD} and not host.lock_held()  # switched back all the same
    assert host.records()[-1]["result"] == "rolled-back"


@pytest.mark.parametrize(("error", "said"), [
    (HandoverError("device busy\nsecond line"), "device busy"),  # the first line only
    (HandoverError(""), "HandoverError"),  # no words: the error's kind
])
def test_a_failing_undo_is_said_in_one_line(host: FakeHost, monkeypatch: pytest.MonkeyPatch, error: HandoverError,
                                           said: str, capsys: pytest.CaptureFixture[str]) -> None:
    engine = serving(host)
    at(monkeypatch, steps.Start, HandoverError)

    def failing_undo(self: Step, run: Run) -> None:
        raise error

    monkeypatch.setattr(steps.Build, "undo", failing_undo)
    with pytest.raises(HandoverError, match="injected at start"):
        engine.deploy(DeployOptions(version=NEW))
    warned = capsys.readouterr().err
    assert f"! undo of build failed: {said}\n" in warned and "second line" not in warned
    only(host, OLD)


def test_a_rollback_to_a_missing_image_is_refused_before_the_lock(host: FakeHost) -> None:
    engine = serving(host)
    mark = len(host.commands)

    with pytest.raises(HandoverError, match="image handover-app:v0 is not on the host"):
        engine.deploy(DeployOptions(version="v0", build=False, action="rollback"))

    assert not host.matching("mkdir", since=mark) or not host.lock_held()
    assert host.matching(compose("up"), since=mark) == []
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("failed", "image")
    assert [s["name"] for s in record["steps"]] == []  # nothing ran
    only(host, OLD)


def test_a_deploy_refused_by_a_live_lock_leaves_that_lock_alone(host: FakeHost) -> None:
    engine = serving(host)
    other = DeployLock(host.runner, str(host.state_path), notify=lambda _text: None)
    other.acquire({"holder": "someone@else", "since": "2026-01-01T00:00:00+00:00", "action": "deploy",
                   "version": "v9"})
    try:
        with pytest.raises(LockHeld, match="someone@else"):
            engine.deploy(DeployOptions(version=NEW))
        assert host.lock_held()  # still theirs
        assert host.records()[-1]["failed_step"] == "lock"
    finally:
        other.release()
    only(host, OLD)


def test_first_start_failure_leaves_nothing(host: FakeHost) -> None:
    engine = engine_for(host)
    host.behave(OLD, Behaviour(crash=True, listens=False))

    with pytest.raises(HandoverError):
        engine.up(OLD)

    assert host.app_containers() == [] and not host.lock_held()
    record = host.records()[-1]
    assert (record["action"], record["result"], record["failed_step"]) == ("up", "rolled-back", "health")


def test_two_replicas_reload_the_proxy_at_the_switch(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    one = FakeHost(root, fake_settings(root, replicas=1))
    serving(one)
    two = Engine(one.runner, dataclasses.replace(one.settings, replicas=2), Progress(quiet=True))
    reloads = one.nginx_reloads

    rec = two.deploy(DeployOptions(version=NEW))

    names = [s.name for s in rec.steps]
    assert names.index("proxy config") < names.index("build")
    assert one.nginx_reloads == reloads + 1 and [s.detail for s in rec.steps if s.name == "switch"] == [
        "configuration reloaded"]
    assert len(one.running(NEW)) == 2 and set(one.live_targets()) == {0, 1}
    one._end_background()


@pytest.fixture(autouse=True)
def _no_background(host: FakeHost) -> Iterator[None]:
    yield
    host._end_background()


def test_a_new_container_that_dies_during_the_drain_fails_the_run(host: FakeHost) -> None:
    engine = serving(host)

    def crash_the_new_one(command: Command) -> bool:
        if command.argv[:2] == ["docker", "stop"]:
            host.crash_container(host.app_containers()[-1].id)
        return False

    host.fail_on(crash_the_new_one)

    with pytest.raises(HandoverError, match="stopped during the drain"):
        engine.deploy(DeployOptions(version=NEW))

    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("failed", "drain")
    assert not host.lock_held()


def test_an_interrupted_lock_is_not_left_held(host: FakeHost) -> None:
    engine = serving(host)
    lock_dir = str(host.state_path / "lock")
    host.interrupt_on(lambda command: command.argv == ["mkdir", lock_dir], after=True)

    with pytest.raises(KeyboardInterrupt):
        engine.deploy(DeployOptions(version=NEW))

    assert not host.lock_held()
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("failed", "lock")
    only(host, OLD)
    assert engine_for(host).deploy(DeployOptions(version=NEW)).result == "success"


def test_a_changed_proxy_configuration_is_put_back_and_reloaded_back(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    host = FakeHost(root, fake_settings(root, replicas=1))
    serving(host)
    upstream = (host.state_path / "nginx" / "upstream.conf").read_text()
    reloads = host.nginx_reloads
    host.behave(NEW, Behaviour(dies_after=2))
    two = Engine(host.runner, dataclasses.replace(host.settings, replicas=2), Progress(quiet=True))

    with pytest.raises(HandoverError, match="after the switch"):
        two.deploy(DeployOptions(version=NEW))

    assert (host.state_path / "nginx" / "upstream.conf").read_text() == upstream
    assert host.nginx_reloads == reloads + 2  # loaded at the switch, loaded back after the switch back
    only(host, OLD)
    host._end_background()


def test_a_changed_proxy_configuration_is_put_back_without_a_reload_before_the_switch(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    host = FakeHost(root, fake_settings(root, replicas=1))
    serving(host)
    upstream = (host.state_path / "nginx" / "upstream.conf").read_text()
    reloads = host.nginx_reloads
    host.behave(NEW, Behaviour(never_healthy=True))
    two = Engine(host.runner, dataclasses.replace(host.settings, replicas=2), Progress(quiet=True))

    with pytest.raises(HandoverError):
        two.deploy(DeployOptions(version=NEW))

    assert (host.state_path / "nginx" / "upstream.conf").read_text() == upstream
    assert host.nginx_reloads == reloads  # validated only; never loaded
    only(host, OLD)
    host._end_background()


def test_prune_keeps_the_newest_releases_and_what_runs(host: FakeHost) -> None:
    engine = engine_for(host)
    kept = 2
    engine = Engine(host.runner, dataclasses.replace(host.settings, releases_kept=kept), Progress(quiet=True))
    engine.up("r0")
    for n in range(1, 5):
        engine.deploy(DeployOptions(version=f"r{n}"))
    tags = host.image_tags(host.settings.app_image)
    assert "r4" in tags and "r3" in tags  # the live one and the one before it
    assert not {"r0", "r1", "r2"} & set(tags)  # older releases pruned
    rec = engine.deploy(DeployOptions(version="r5"))
    assert [s.detail for s in rec.steps if s.name == "prune"] == ["removed 1"]
    assert engine.prune_images(keep={"r5"}) == []  # nothing more to prune: a rerun converges


@pytest.mark.parametrize(("where", "via", "named"),
                         [("local", "", {}), ("web1", "fab", {"host": "web1", "via": "fab"})])
def test_the_lock_names_the_run_that_holds_it(host: FakeHost, where: str, via: str, named: dict[str, str]) -> None:
    import json

    from handover.record import operator

    engine = serving(host)
    seen: dict[str, str] = {}

    def peek(command: Command) -> bool:  # read the holder file while the new container starts
        if command.argv[:2] == ["docker", "compose"] and "up" in command.argv:
            seen.update(json.loads((host.state_path / "lock" / "holder.json").read_text()))
        return False

    host.fail_on(peek)
    engine.deploy(DeployOptions(version=NEW, host=where, via=via))

    assert (seen["holder"], seen["action"], seen["version"]) == (operator(), "deploy", NEW)
    assert {k: seen[k] for k in ("host", "via") if k in seen} == named


def test_plan_lines_count_the_containers(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    host = FakeHost(root, fake_settings(root, replicas=2))
    engine = serving(host)
    plan = engine.deploy(DeployOptions(version=NEW, dry_run=True))
    lines = {s.name: s.detail for s in plan.steps}
    assert lines["start"] == f"2 new containers of {NEW} beside 2 live"
    assert lines["drain"] == "stop handover-app-1, handover-app-2 (grace 25 s), remove by ID"
    assert lines["build"] == f"image handover-app:{NEW}"
    host._end_background()


# -- what a switch leaves while it is checked, and the words of a few failures ------------------------
def _is_point(command: Command) -> bool:
    return command.argv[:2] == ["sh", "-c"] and "point" in command.argv


def test_the_old_container_is_the_backup_while_the_switch_is_checked(host: FakeHost) -> None:
    engine = serving(host)
    (old,) = host.app_containers()
    seen: list[tuple[dict[int, str], str | None]] = []
    backup = host.state_path / "sockets" / "prev-0.sock"
    mark = len(host.commands)

    def look_while_verifying(command: Command) -> bool:
        if command.argv[:2] == ["docker", "inspect"] and host.matching(_is_point, since=mark) and not seen:
            seen.append((host.live_targets(), str(backup.readlink()) if backup.is_symlink() else None))
        return False

    host.fail_on(look_while_verifying)
    assert engine.deploy(DeployOptions(version=NEW)).result == "success"

    (new,) = host.app_containers()
    assert seen == [({0: f"app-{new.short_id}.sock"}, f"app-{old.short_id}.sock")]
    assert not backup.is_symlink()  # gone once the old container is drained


def test_a_ctrl_c_held_during_the_link_swap_switches_back(host: FakeHost) -> None:
    engine = serving(host)
    host.interrupt_on(_is_point, after=True)  # the links were swapped, then Ctrl-C was raised

    with pytest.raises(KeyboardInterrupt):
        engine.deploy(DeployOptions(version=NEW))

    only(host, OLD)
    record = host.records()[-1]
    assert (record["result"], record["failed_step"]) == ("rolled-back", "switch")
    assert "switch back" in [s["name"] for s in record["steps"]]


def test_a_new_container_removed_during_the_drain_is_named(host: FakeHost) -> None:
    engine = serving(host)

    def remove_the_new_one(command: Command) -> bool:
        if command.argv[:2] == ["docker", "stop"]:
            del host.containers[host.app_containers()[-1].id]
        return False

    host.fail_on(remove_the_new_one)

    with pytest.raises(HandoverError) as failed:
        engine.deploy(DeployOptions(version=NEW))

    assert str(failed.value) == ("the new containers stopped during the drain: handover-app-2; the old version is "
                                 "drained already, nothing may be serving. Deploy again.")


def test_without_a_post_switch_check_there_is_no_verify_step(host: FakeHost) -> None:
    serving(host)
    engine = Engine(host.runner, dataclasses.replace(host.settings, post_switch_check=0.0), Progress(quiet=True))

    plan = engine.deploy(DeployOptions(version=NEW, dry_run=True))
    rec = engine.deploy(DeployOptions(version=NEW))

    assert "verify" not in [s.name for s in plan.steps] and "switch" in [s.name for s in plan.steps]
    assert rec.result == "success" and "verify" not in [s.name for s in rec.steps]


def test_compose_starting_no_container_fails_the_start(host: FakeHost) -> None:
    engine = serving(host)
    host.fail_on(compose("up", "app"), exited=0)  # compose says nothing went wrong, yet nothing started

    with pytest.raises(HandoverError, match=r"^compose started no new app container$"):
        engine.deploy(DeployOptions(version=NEW))

    only(host, OLD)


def _host_with_proxy_base(root: Path, base: str) -> FakeHost:
    """A host whose proxy is built on ``base`` (unlike the app), which the host does not have."""
    host = FakeHost(root, fake_settings(root, proxy_base_image=base))
    del host.images[base]
    return host


def test_a_first_start_pulls_the_proxys_missing_base_image(tmp_path: Path) -> None:
    host = _host_with_proxy_base(tmp_path, "debian:trixie-slim")
    host.registry.add("debian:trixie-slim")

    assert engine_for(host).up(OLD).result == "success"

    assert host.matching(docker("pull")) == [["docker", "pull", "--quiet", "debian:trixie-slim"]]
    host._end_background()


def test_a_proxy_base_image_that_cannot_be_pulled_is_built_on_the_local_one(tmp_path: Path) -> None:
    host = _host_with_proxy_base(tmp_path, "debian:trixie-slim")
    host._add_image("localhost/debian-minbase:trixie")  # made by an earlier run with debootstrap

    assert engine_for(host).up(OLD).result == "success"

    (build,) = [c for c in host.calls if compose("build")(c.command)]
    assert build.command.env["PROXY_BASE_IMAGE"] == "localhost/debian-minbase:trixie"
    assert build.command.env["BASE_IMAGE"] == host.settings.base_image
    host._end_background()


@pytest.mark.parametrize(("serving_first", "words"), [
    (True, "remove the new containers; the old version keeps serving"),
    (False, "remove the new containers"),
])
def test_the_rollback_says_what_keeps_serving(fake_host: FakeHost, serving_first: bool, words: str) -> None:
    engine = serving(fake_host) if serving_first else engine_for(fake_host)
    fake_host.behave(NEW, Behaviour(never_healthy=True))
    progress = io.StringIO()
    engine.progress = Progress(stream=progress)

    with pytest.raises(HandoverError):
        engine.deploy(DeployOptions(version=NEW, action="deploy" if serving_first else "up"))

    assert f"==> rollback: {words}\n" in progress.getvalue()


def test_a_converge_says_what_it_removed(host: FakeHost) -> None:
    engine = _leftover(host)
    rec = engine.deploy(DeployOptions(version=NEW))
    (converge,) = [s for s in rec.steps if s.name == "converge"]
    assert converge.detail == "removed handover-app-2"


def test_the_plan_of_a_first_start_routes_the_proxy(fake_host: FakeHost) -> None:
    plan = engine_for(fake_host).deploy(DeployOptions(version=OLD, action="up", dry_run=True))
    lines = {s.name: s.detail for s in plan.steps}
    assert lines["switch"] == "route the proxy to them"
    assert steps.names([]) == "nothing"
