"""The deploy engine against the fake Docker host: each outcome of a deploy, in a fraction of a second.

These drive the engine's public entry points (``up``, ``deploy``) and look only at the host: which
containers exist, where the live links point, the release log and the lock. The last tests pin
down the fake itself where a wrong answer would let an engine test pass by accident. Every step's
failure, Ctrl-C and kill are in test_steps.py.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import CommandTimedOut, UnexpectedExit
from invoke.runners import Result

from handover.engine import DeployOptions, Engine
from handover.errors import HealthCheckFailed
from handover.lock import DeployLock, LockHeld
from handover.progress import Progress
from handover.proxies.nginx import link_script
from handover.shell import read_file, write_file

from . import fakeshell
from .fakehost import Behaviour, FakeHost, _bind_socket, docker

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


# -- in-process file commands: the same outcome as the real sh ----------------------------------------
def _tree(root: Path) -> None:
    """A state directory with what the engine meets: links, a socket, logs, a lock, things in the way."""
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a.conf").write_text("a {}\n")
    (root / "d" / "b.conf").write_text("b {}\n")
    (root / "d" / "notes.txt").write_text("not loaded\n")
    (root / "d" / "dir.conf").mkdir()
    (root / "d" / "link.conf").symlink_to("a.conf")
    (root / "n").mkdir()
    (root / "n" / "upstream.conf").write_text("upstream x {}\n")
    (root / "n" / ".loaded").write_text("abc")
    (root / "n" / "modules.main").write_text("load_module x;\n")
    (root / "d" / "handover.js").write_text("export default {};\n")
    t = root / "t"
    t.mkdir()
    for name in ("a.pem", "b.pem", ".hidden.pem", "notes.txt"):
        (t / name).write_text(name)
    (t / "live.pem").symlink_to("a.pem")
    (t / "dir.pem").mkdir()
    s = root / "s"
    s.mkdir()
    _bind_socket(s / "app-1.sock")
    (s / "live-0.sock").symlink_to("app-1.sock")
    (s / "live-1.sock").symlink_to("app-gone.sock")
    (s / "prev-0.sock").symlink_to("app-1.sock")
    (s / "live-x.sock").write_text("a file")
    (s / "other").symlink_to("app-1.sock")
    (s / "prev-dir.sock").mkdir()
    (root / "torn.jsonl").write_bytes(b'{"a": 1}\n{"b"')
    (root / "whole.jsonl").write_bytes(b'{"a": 1}\n')
    (root / "empty").write_bytes(b"")
    (root / "lock").mkdir()
    (root / "lock" / "holder.json").write_text('{"token": "tok123"}')
    (root / "bare").mkdir()
    (root / "cur").symlink_to("d")
    (root / "plain").write_text("plain text\n")
    (root / "with space").write_text("spaced\n")
    os.chmod(root / "plain", 0o640)
    for path in (root / "plain", root / "cur"):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = stat.S_IFMT(info.st_mode)
        body = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), body)
    return out


class _Recorder:
    """A runner that keeps the line a handover helper sends and answers it with nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def run(self, line: str, **kwargs: Any) -> Any:
        self.lines.append(line)
        return Result(command=line, exited=0)


def _line_of(helper: Callable[[_Recorder], object]) -> str:
    recorder = _Recorder()
    helper(recorder)
    (line,) = recorder.lines
    return line


def _sh(script: str, *words: str) -> str:
    return shlex.join(["sh", "-c", script, *words])


# Each line: answered here (True) or left to the real sh for its own words (False).
SHELL_CASES: list[tuple[str, bool]] = [
    ("mkdir -p new", True), ("mkdir -p new/a/b", True), ("mkdir -p d", True), ("mkdir -p cur", True),
    ("mkdir -p n/x n/y", True), ("mkdir -p plain", False), ("mkdir -p plain/x", False),
    ("mkdir -p -m 0750 new/a", True), ("mkdir -p -m 0750 d", True), ("mkdir -p -m 1777 x", True),
    ("mkdir new", True), ("mkdir d", False), ("mkdir no/such", False), ("mkdir -p -m u+x z", False),
    ("chmod 1777 s", True), ("chmod 0750 d", True), ("chmod 0600 plain cur", True), ("chmod 0644 missing", False),
    ("chmod u+x plain", False),
    ("readlink cur", True), ("readlink s/live-1.sock", True), ("readlink plain", False), ("readlink missing", False),
    ("test -d d", True), ("test -d cur", True), ("test -d plain", True), ("test -d missing", True),
    ("rm -rf d", True), ("rm -rf plain missing", True), ("rm -rf cur", True), ("rm -rf s n", True),
    ("stat -c %Y plain", True), ("stat -c %Y cur", True), ("stat -c %U plain", True), ("stat -c %Y missing", False),
    ("mv -T cur cur2", True), ("mv -T plain torn.jsonl", True), ("mv -T plain d", False), ("mv -T missing x", False),
    ("mv -T plain plain", False),
    ("ln -sfn d newlink", True), ("ln -sfn bare cur", True), ("ln -sfn x plain", True), ("ln -sfn x d", False),
    ("ls -1A d", True), ("ls -1A s", True), ("ls -1A bare", True), ("ls -1A missing", False),
    (_sh(fakeshell.LINKS, "links", "s"), True), (_sh(fakeshell.LINKS, "links", "missing"), True),
    (_sh(fakeshell.LINKS, "links", "plain"), True),
    (_sh(fakeshell.LINKS_AND_TARGETS, "routes", "s", "plain"), True),
    (_sh(fakeshell.LINKS_AND_TARGETS, "routes", "missing", "missing"), True),
    (_sh(fakeshell.LINKS_AND_TARGETS, "routes", "s", "d"), True),
    (_sh(fakeshell.CHECK, "check", "s", "app-1.sock", "live-0.sock", "live-1.sock", "live-x.sock", "app-2.sock"),
     True),
    (_sh(fakeshell.CHECK, "check", "s"), True), (_sh(fakeshell.CHECK, "check", "missing", "x"), False),
    (_sh(fakeshell.UNLINK, "unlink", "n"), True), (_sh(fakeshell.UNLINK, "unlink", "missing"), True),
    (_sh(fakeshell.UNLINK, "unlink", "s"), False),  # prev-dir.sock: rm's own words
    (_sh(fakeshell.FORGET, "forget", "s", "app-1.sock", "nothing.sock", "live-0.sock"), True),
    (_sh(fakeshell.FORGET, "forget", "s"), True), (_sh(fakeshell.FORGET, "forget", "missing", "a"), False),
    (_sh(fakeshell.FORGET, "forget", "s", "prev-dir.sock"), False),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "d", "n"), True),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "n", "d"), True),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "d", "d"), True),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "bare", "bare"), True),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "missing", "d"), True),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "d", "n", "missing"), True),
    (_sh(fakeshell.FINGERPRINT, "fingerprint", "cur", "d"), False),
    (_sh(fakeshell.LOADED_AND_FINGERPRINT, "changed", "plain", "d", "n"), True),
    (_sh(fakeshell.LOADED_AND_FINGERPRINT, "changed", "missing", "d", "missing"), True),
    (_sh(fakeshell.LOADED_AND_FINGERPRINT, "changed", "d", "d"), False),
    (_sh(fakeshell.READ_LINK, "live", "cur"), True), (_sh(fakeshell.READ_LINK, "live", "plain"), True),
    (_sh(fakeshell.READ_LINK, "live", "missing"), True),
    (_sh(fakeshell.TLS_LOOK, "look", "t", "0750", "live.pem", "b.pem", "notes.txt", "gone.conf"), True),
    (_sh(fakeshell.TLS_LOOK, "look", "t", "0700", "live.pem", ""), True),
    (_sh(fakeshell.TLS_LOOK, "look", "t", "0750", "nolink.pem", "", "notes.txt"), True),
    (_sh(fakeshell.TLS_LOOK, "look", "new/tls", "0750", "live.pem", "", "listen.conf"), True),
    (_sh(fakeshell.TLS_LOOK, "look", "plain", "0750", "live.pem", ""), False),
    (_sh(fakeshell.TLS_LOOK, "look", "cur", "0750", "live.pem", ""), False),
    (_sh(fakeshell.APPEND, "append", '{"r": 1}', "torn.jsonl", "d"), True),
    (_sh(fakeshell.APPEND, "append", '{"r": 1}', "whole.jsonl", "d"), True),
    (_sh(fakeshell.APPEND, "append", '{"r": "\u00e9 \\n \'q\'"}', "empty", "d"), True),
    (_sh(fakeshell.APPEND, "append", "h\u00e9 \\ $x", "new.jsonl", "d"), True),
    (_sh(fakeshell.APPEND, "append", "x", "fresh/new.jsonl", "fresh"), True),
    (_sh(fakeshell.APPEND, "append", "x", "d", "d"), False),
    (_sh(fakeshell.APPEND, "append", "x", "no/such", "d"), False),
    (_sh(fakeshell.RELEASE, "release", "lock", "tok123"), True),
    (_sh(fakeshell.RELEASE, "release", "lock", "tok999"), True),
    (_sh(fakeshell.RELEASE, "release", "bare", "tok123"), True),
    (_sh(fakeshell.RELEASE, "release", "missing", "tok123"), True),
    (_sh(fakeshell.HALF_MADE, "half-made", "lock", "holder.json"), True),
    (_sh(fakeshell.HALF_MADE, "half-made", "bare", "holder.json"), True),
    (_sh(fakeshell.HALF_MADE, "half-made", "plain", "holder.json"), True),
    (_sh(fakeshell.HALF_MADE, "half-made", "missing", "holder.json"), True),
    (_line_of(lambda r: read_file(r, "plain")), True), (_line_of(lambda r: read_file(r, "n/.loaded")), True),
    (_line_of(lambda r: read_file(r, "missing")), True), (_line_of(lambda r: read_file(r, "d")), True),
    (_line_of(lambda r: read_file(r, "cur")), True), (_line_of(lambda r: read_file(r, "with space")), True),
    (_line_of(lambda r: write_file(r, "w", "h\u00e9llo\n'quoted'\n")), True),
    (_line_of(lambda r: write_file(r, "plain", "over", mode="0600")), True),
    (_line_of(lambda r: write_file(r, "n/upstream.conf", "")), True),
    (_line_of(lambda r: write_file(r, "no/such", "x")), False), (_line_of(lambda r: write_file(r, "d", "x")), False),
    (_sh(link_script([("prev-0.sock", "app-1.sock"), ("live-0.sock", "app-2.sock")]), "point", "s"), True),
    (_sh(link_script([("live-0.sock", "app-1.sock"), ("live-1.sock", "app-1.sock")]), "point", "s"), True),
    (_sh(link_script([("live-0.sock", "app-1.sock")]), "point", "missing"), False),
    (_sh(link_script([("prev-dir.sock", "app-1.sock")]), "point", "s"), False),
    ("sh -c 'echo one'", False), ("echo one", False), ("env A=1 mkdir -p new", False),
]


@pytest.mark.parametrize(("line", "answered"), SHELL_CASES, ids=[line[:60] for line, _ in SHELL_CASES])
def test_file_commands_answered_in_process_do_what_the_real_shell_does(tmp_path: Path, line: str,
                                                                       answered: bool) -> None:
    here, real = tmp_path / "here", tmp_path / "real"
    for root in (here, real):
        root.mkdir()
        _tree(root)
    env = dict(os.environ)

    got = fakeshell.answer(fakeshell.split(line), line, str(here), env)
    done = subprocess.run(["/bin/sh", "-c", line], cwd=real, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)

    assert (got is not None) == answered
    if got is None:
        return
    assert got == (done.stdout, done.stderr, done.returncode)
    assert _snapshot(here) == _snapshot(real)


def test_a_deploy_needs_the_real_shell_for_no_file_command(fake_host: FakeHost) -> None:
    engine = started(fake_host)
    engine.deploy(DeployOptions(version=NEW))

    assert fake_host.shell_lines == []
    fake_host.in_process = False
    assert fake_host.runner.run("mkdir -p x", hide=True).exited == 0 and fake_host.shell_lines == ["mkdir -p x"]


def test_the_lock_keeper_kept_in_process_excludes_real_keepers_as_flock_does(fake_host: FakeHost) -> None:
    state = fake_host.settings.state_path
    info = {"holder": "ann@box", "action": "deploy"}
    real = DeployLock(Context(), state)
    real.acquire(info)
    with pytest.raises(LockHeld, match="ann@box"):  # a real flock process holds it
        DeployLock(fake_host.runner, state).acquire({"holder": "bob@box", "action": "deploy"})
    real.release()

    DeployLock(fake_host.runner, state).acquire(info)
    keeper = fake_host.keepers[-1]
    assert not keeper.process_is_finished and fake_host.lock_held()
    with pytest.raises(LockHeld, match="ann@box"):  # ... and a real one is refused while the fake holds it
        DeployLock(Context(), state).acquire({"holder": "bob@box", "action": "deploy"})
    DeployLock(fake_host.runner, state).release()  # unlock, from another run: it ends the keeper
    assert (keeper.process_is_finished, keeper.exited) == (True, 143) and not fake_host.lock_held()

    again = DeployLock(Context(), state)
    assert again.acquire(info) is None
    again.release()
    assert fake_host.shell_lines == []
