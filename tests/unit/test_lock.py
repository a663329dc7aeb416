"""The deploy lock with real processes: a SIGKILLed holder is taken over, a live one refuses,
a lock taken by hand stays, and a failing mkdir says why."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from invoke import Context

from handover.errors import LockHeld
from handover.lock import FLOCK_FILE, HOLDER_FILE, DeployLock, LockUnavailable, describe_holder, holder_age

from .fakehost import FakeHost

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
TAKEOVER_TIMEOUT = 10.0
LONG_AGO = "2026-01-01T00:00:00.000+00:00"

# A deploy in its own process: takes the lock through a local Invoke Context, says so, then waits.
HOLDER_SCRIPT = """
import json, signal, sys, time
from invoke import Context
from handover.lock import DeployLock
DeployLock(Context(), sys.argv[1]).acquire(json.loads(sys.argv[2]))
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the deploy holds Ctrl-C until a command boundary
print("acquired", flush=True)
time.sleep(600)
"""


def start_holder(state: Path, info: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(state), json.dumps(info)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, env=env, cwd=ROOT, start_new_session=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "acquired":
        child.kill()
        raise AssertionError(f"the holder did not take the lock: {line!r} {child.communicate()[1]}")
    return child


@pytest.fixture
def holder_process(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    state = tmp_path / "state"
    child = start_holder(state, {"holder": "victim@box", "since": LONG_AGO, "action": "deploy", "version": "v7"})
    try:
        yield state, child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()


def acquire_retrying(lock: DeployLock, info: dict[str, str]) -> str | None:
    """The keeper of a killed holder ends within milliseconds; allow the kernel that long."""
    deadline = time.monotonic() + TAKEOVER_TIMEOUT
    while True:
        try:
            return lock.acquire(info)
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_sigkilled_holder_is_taken_over_and_named(holder_process: tuple[Path, subprocess.Popen[str]]) -> None:
    state, child = holder_process
    child.send_signal(signal.SIGKILL)
    child.wait()
    notices: list[str] = []
    lock = DeployLock(Context(), str(state), notify=notices.append)
    notice = acquire_retrying(lock, {"holder": "next@box", "action": "deploy", "version": "v8"})
    try:
        assert notice is not None and notices == [notice]
        assert "took over" in notice and "victim@box" in notice and "deploy v7" in notice
        assert f"pid {child.pid}" in notice
        assert "days" in notice  # the dead holder's age
        assert json.loads((state / "lock" / HOLDER_FILE).read_text())["holder"] == "next@box"
    finally:
        lock.release()
    assert not (state / "lock").exists()


def test_a_live_holder_is_refused_with_its_name_and_age(holder_process: tuple[Path, subprocess.Popen[str]]) -> None:
    state, child = holder_process
    lock = DeployLock(Context(), str(state))
    with pytest.raises(LockHeld) as caught:
        lock.acquire({"holder": "next@box", "action": "deploy", "version": "v8"})
    message = str(caught.value)
    assert "victim@box" in message and "deploy v7" in message and f"pid {child.pid}" in message
    assert f"since {LONG_AGO} (" in message and "days" in message
    assert child.poll() is None
    # The refused acquire left the holder's lock as it was.
    assert json.loads((state / "lock" / HOLDER_FILE).read_text())["holder"] == "victim@box"


def test_ctrl_c_on_the_terminal_does_not_free_a_live_holders_lock(
        holder_process: tuple[Path, subprocess.Popen[str]]) -> None:
    state, child = holder_process
    os.killpg(child.pid, signal.SIGINT)  # what the terminal sends to the whole foreground group
    time.sleep(0.3)
    assert child.poll() is None
    with pytest.raises(LockHeld, match="victim@box"):
        DeployLock(Context(), str(state)).acquire({"holder": "next@box", "action": "deploy", "version": "v8"})


def test_unlock_frees_a_lock_whose_keeper_outlived_its_run(
        holder_process: tuple[Path, subprocess.Popen[str]]) -> None:
    # A holder whose SSH connection is left half open keeps its keeper; unlock must still free the lock.
    state, child = holder_process
    DeployLock(Context(), str(state)).release()  # what the unlock task does
    assert not (state / "lock").exists()
    lock = DeployLock(Context(), str(state), notify=lambda text: pytest.fail(text))
    assert acquire_retrying(lock, {"holder": "next@box", "action": "deploy", "version": "v8"}) is None
    lock.release()
    assert child.poll() is None  # the run itself is not killed, only its keeper


def test_release_ends_the_keeper_and_a_new_run_gets_the_lock(tmp_path: Path) -> None:
    first = DeployLock(Context(), str(tmp_path))
    assert first.acquire({"holder": "a", "action": "deploy", "version": "v1"}) is None
    first.release()
    assert not (tmp_path / "lock").exists() and (tmp_path / FLOCK_FILE).exists()
    second = DeployLock(Context(), str(tmp_path), notify=lambda text: pytest.fail(text))
    assert second.acquire({"holder": "b", "action": "deploy", "version": "v2"}) is None  # not a takeover
    second.release()


def test_a_lock_taken_by_hand_outlives_its_process_and_reads_as_held(tmp_path: Path) -> None:
    state = tmp_path / "state"
    child = start_holder(state, {"holder": "ops@box", "since": LONG_AGO, "action": "lock", "reason": "db migration"})
    child.kill()
    child.communicate()
    lock = DeployLock(Context(), str(state))
    with pytest.raises(LockHeld) as caught:
        lock.acquire({"holder": "next@box", "action": "deploy", "version": "v8"})
    message = str(caught.value)
    assert re.search(rf"held by ops@box since {re.escape(LONG_AGO)} \(\d+ days \d+ h\): db migration\.", message)
    assert "another deploy holds the lock" not in message
    assert lock.describe().startswith(f"held by ops@box since {LONG_AGO} (")
    lock.release()  # what unlock does
    assert lock.holder() is None


def test_a_lock_path_that_is_not_a_directory_gives_the_real_reason(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("not a lock")
    with pytest.raises(LockUnavailable, match=r"cannot create the lock directory .*File exists"):
        DeployLock(Context(), str(tmp_path)).acquire({"holder": "a", "action": "deploy"})


@contextmanager
def read_only(state: Path, flock_file: bool) -> Iterator[str]:
    """Make ``state`` a directory where nothing can be created (by mode, or as root a read-only
    mount), with or without the flock file in it; yield the error text the OS gives."""
    state.mkdir()
    if os.geteuid() != 0:
        if flock_file:
            (state / FLOCK_FILE).touch()
        state.chmod(0o555)
        try:
            yield "Permission denied"
        finally:
            state.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(state)], capture_output=True).returncode != 0:
        pytest.skip("root without the right to mount: no read-only directory to test with")
    try:
        if flock_file:
            (state / FLOCK_FILE).touch()
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        yield "Read-only file system"
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_mkdir_on_a_read_only_directory_gives_the_real_reason(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with read_only(state, flock_file=True) as reason, pytest.raises(LockUnavailable) as caught:
        DeployLock(Context(), str(state)).acquire({"holder": "a", "action": "deploy"})
    message = str(caught.value)
    assert reason in message and "cannot create the lock directory" in message
    assert "another" not in message


def test_a_flock_file_that_cannot_be_created_gives_the_real_reason(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with read_only(state, flock_file=False) as reason, pytest.raises(LockUnavailable) as caught:
        DeployLock(Context(), str(state)).acquire({"holder": "a", "action": "deploy"})
    message = str(caught.value)
    assert reason in message and f"flock on {state / FLOCK_FILE} failed" in message
    assert "another" not in message


def test_describe_reads_as_one_line() -> None:
    held = {"holder": "alice@laptop", "since": LONG_AGO, "action": "deploy", "version": "v3", "reason": "hotfix"}
    text = describe_holder(held)
    assert text.startswith(f"held by alice@laptop since {LONG_AGO} (") and text.endswith("): deploy v3: hotfix")
    assert "\n" not in text
    assert describe_holder({"holder": "x", "since": "garbled"}) == "held by x since garbled (age unknown): unknown run"


# -- what the lock says, on the fake host -------------------------------------------------------------
NOW = datetime(2026, 1, 3, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "words"), [
    (-5, "0 s"), (0, "0 s"), (59, "59 s"), (60, "1 min 0 s"), (3599, "59 min 59 s"), (3600, "1 h 0 min"),
    (48 * 3600 - 60, "47 h 59 min"), (48 * 3600, "2 days 0 h"), (3 * 86400 + 5 * 3600 + 59, "3 days 5 h"),
])
def test_the_age_of_a_lock_reads_in_the_largest_units(seconds: int, words: str) -> None:
    since = (NOW - timedelta(seconds=seconds)).isoformat()
    assert holder_age({"since": since}, now=NOW) == words


def test_an_age_without_a_zone_is_utc_and_a_bad_one_is_unknown() -> None:
    assert holder_age({"since": "2026-01-03T11:59:00"}, now=NOW) == "1 min 0 s"
    assert holder_age({"since": "yesterday"}, now=NOW) == "age unknown"
    assert holder_age({}, now=NOW) == "age unknown"
    assert holder_age({"since": datetime.now(UTC).isoformat()}) == "0 s"


def test_every_kind_of_holder_reads_as_one_line() -> None:
    assert describe_holder(None) == "not held"
    manual = {"holder": "ops", "since": "garbled", "action": "lock"}
    assert describe_holder(manual) == "held by ops since garbled (age unknown): taken by hand, no reason given"
    assert describe_holder({**manual, "reason": "migration"}).endswith("(age unknown): migration")
    assert describe_holder({"action": "rollback"}) == "held by unknown since an unknown time (age unknown): rollback"
    assert describe_holder({"version": "v2", "reason": "why"}).endswith("(age unknown): v2: why")


def _lock(host: FakeHost, **kwargs: object) -> DeployLock:
    return DeployLock(host.runner, host.settings.state_path, **kwargs)  # type: ignore[arg-type]


def test_a_lock_without_a_readable_holder_file_still_reads_as_held(fake_host: FakeHost) -> None:
    lock_dir = fake_host.state_path / "lock"
    lock_dir.mkdir(parents=True)
    os.utime(lock_dir, (1_767_225_600, 1_767_225_600))  # 2026-01-01T00:00:00Z
    assert _lock(fake_host).holder() == {"holder": "unknown (lock without holder file)",
                                         "since": "2026-01-01T00:00:00+00:00"}
    for text in ("{not json", "[1, 2]"):
        (lock_dir / HOLDER_FILE).write_text(text)
        os.utime(lock_dir, (1_767_225_600, 1_767_225_600))
        assert _lock(fake_host).holder() == {"holder": "unknown (unreadable holder file)",
                                             "since": "2026-01-01T00:00:00+00:00"}
    (lock_dir / HOLDER_FILE).write_text('{"holder": "ann", "pid": 12}')
    assert _lock(fake_host).holder() == {"holder": "ann", "pid": "12"}
    assert _lock(fake_host).describe().startswith("held by ann since an unknown time")


def test_a_lock_directory_whose_time_cannot_be_read_has_an_unknown_time(fake_host: FakeHost) -> None:
    (fake_host.state_path / "lock").mkdir(parents=True)
    fake_host.fail_on(lambda c: c.argv[:1] == ["stat"], exited=1, stderr="stat: permission denied")
    assert _lock(fake_host).holder() == {"holder": "unknown (lock without holder file)", "since": "an unknown time"}


def test_a_takeover_names_the_dead_holder_and_why(fake_host: FakeHost) -> None:
    lock_dir = fake_host.state_path / "lock"
    lock_dir.mkdir(parents=True)
    dead = {"holder": "ann@box", "since": LONG_AGO, "action": "deploy", "version": "v1", "pid": "4242",
            "pid_host": "box", "boot_id": "some-other-boot", "keeper": "flock"}
    (lock_dir / HOLDER_FILE).write_text(json.dumps(dead))
    notices: list[str] = []

    notice = _lock(fake_host, notify=notices.append).acquire({"holder": "bob@box", "action": "deploy"})

    assert notice == notices[0]
    assert notice is not None and notice.startswith(f"took over the deploy lock at {lock_dir} from a dead holder "
                                                    "(the host has rebooted since): it was held by ann@box since ")
    _lock(fake_host).release()

    lock_dir.mkdir()
    (lock_dir / HOLDER_FILE).write_text(json.dumps({**dead, "boot_id": ""}))
    notice = _lock(fake_host, notify=notices.append).acquire({"holder": "bob@box", "action": "deploy"})
    assert notice is not None and "(pid 4242 on box no longer holds it)" in notice
    _lock(fake_host).release()

    lock_dir.mkdir()
    (lock_dir / HOLDER_FILE).write_text(json.dumps({"holder": "ann@box", "action": "deploy"}))
    notice = _lock(fake_host, notify=notices.append).acquire({"holder": "bob@box", "action": "deploy"})
    assert notice is not None and "(its process no longer holds it)" in notice
    assert len(notices) == 3
    _lock(fake_host).release()


def test_a_lock_is_taken_once_per_run_and_its_holder_file_says_who(fake_host: FakeHost) -> None:
    lock = _lock(fake_host, notify=lambda text: pytest.fail(text))
    assert lock.acquire({"holder": "ann@box", "action": "deploy", "version": "v2"}) is None
    with pytest.raises(LockUnavailable, match="already held by this run"):
        lock.acquire({"holder": "ann@box", "action": "deploy"})
    held = lock.holder()
    assert held is not None
    keeper = fake_host.keepers[-1]
    assert {k: held[k] for k in ("holder", "action", "version", "keeper", "keeper_pid", "boot_id", "pid")} == {
        "holder": "ann@box", "action": "deploy", "version": "v2", "keeper": "flock", "keeper_pid": keeper.pid,
        "boot_id": keeper.boot_id, "pid": str(os.getpid())}
    assert len(held["token"]) == 32
    lock.release()
    assert keeper.process_is_finished and not fake_host.lock_held()
    lock.release()  # a second release of a lock no longer held changes nothing
    assert not fake_host.lock_held()


def test_a_state_directory_made_by_the_caller_is_not_made_again(fake_host: FakeHost) -> None:
    fake_host.state_path.mkdir(parents=True, exist_ok=True)
    mkdirs = ["mkdir", "-p", str(fake_host.state_path)]
    lock = _lock(fake_host, state_made=True)
    lock.acquire({"holder": "ann@box", "action": "deploy"})
    assert fake_host.lock_held() and mkdirs not in fake_host.commands
    lock.release()
    again = _lock(fake_host)
    again.acquire({"holder": "ann@box", "action": "deploy"})
    assert mkdirs in fake_host.commands  # without the hint it is made as always
    again.release()


def test_a_lock_taken_by_hand_keeps_no_keeper(fake_host: FakeHost) -> None:
    lock = _lock(fake_host)
    assert lock.acquire({"holder": "ops", "action": "lock", "reason": "migration"}) is None
    held = lock.holder()
    assert held is not None and held["keeper"] == "none" and "keeper_pid" not in held
    assert all(k.process_is_finished for k in fake_host.keepers)
    with pytest.raises(LockHeld, match=r"deploys to this host are stopped: .*: migration. Release it with the unlock"):
        _lock(fake_host).acquire({"holder": "bob", "action": "deploy"})
    assert fake_host.lock_held()


def test_a_busy_flock_without_a_holder_file_is_a_run_taking_the_lock(fake_host: FakeHost) -> None:
    first = _lock(fake_host)
    first.acquire({"holder": "ann", "action": "deploy"})
    (fake_host.state_path / "lock" / HOLDER_FILE).unlink()
    (fake_host.state_path / "lock").rmdir()
    with pytest.raises(LockHeld, match=r"^another run is taking the deploy lock at .* right now; try again shortly$"):
        _lock(fake_host).acquire({"holder": "bob", "action": "deploy"})
    first.release()


@pytest.mark.parametrize("holder", [
    {"holder": "ops", "action": "lock", "reason": "migration"},  # written before holder files named a keeper
    {"holder": "ops", "action": "deploy", "keeper": "none", "reason": "migration"},  # a holder that keeps none
], ids=["by-hand-without-keeper-field", "keeper-none"])
def test_a_lock_kept_by_no_process_is_never_taken_over(fake_host: FakeHost, holder: dict[str, str]) -> None:
    lock_dir = fake_host.state_path / "lock"
    lock_dir.mkdir(parents=True)
    (lock_dir / HOLDER_FILE).write_text(json.dumps(holder))

    with pytest.raises(LockHeld, match=r"^deploys to this host are stopped: "):
        _lock(fake_host, notify=lambda text: pytest.fail(text)).acquire({"holder": "bob", "action": "deploy"})

    assert json.loads((lock_dir / HOLDER_FILE).read_text()) == holder


def test_a_dead_holder_without_its_machine_is_its_process(fake_host: FakeHost) -> None:
    lock_dir = fake_host.state_path / "lock"
    lock_dir.mkdir(parents=True)
    (lock_dir / HOLDER_FILE).write_text(json.dumps({"holder": "ann", "action": "deploy", "pid": "4242"}))
    notice = _lock(fake_host, notify=lambda text: None).acquire({"holder": "bob", "action": "deploy"})
    assert notice is not None and "(its process no longer holds it)" in notice
    _lock(fake_host).release()


def test_a_takeover_is_said_on_stderr_by_default(fake_host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    lock_dir = fake_host.state_path / "lock"
    lock_dir.mkdir(parents=True)
    (lock_dir / HOLDER_FILE).write_text(json.dumps({"holder": "ann", "action": "deploy"}))
    lock = _lock(fake_host)

    notice = lock.acquire({"holder": "bob", "action": "deploy"})

    assert capsys.readouterr().err == f"! {notice}\n"
    lock.release()


def test_a_live_holder_is_named_with_what_to_do(fake_host: FakeHost) -> None:
    first = _lock(fake_host)
    first.acquire({"holder": "ann@box", "since": LONG_AGO, "action": "deploy", "version": "v3"})
    try:
        with pytest.raises(LockHeld) as refused:
            _lock(fake_host).acquire({"holder": "bob", "action": "deploy"})
    finally:
        first.release()
    message = str(refused.value)
    assert message.startswith(f"another deploy holds the lock at {fake_host.state_path}/lock: held by ann@box since "
                              f"{LONG_AGO} (")
    assert message.endswith(f"): deploy v3 (pid {os.getpid()} on {socket.gethostname()}; its flock is held, so it "
                            "is still running). Wait for it to finish; if it is gone for good (a lost connection), "
                            "free the lock with the unlock task.")


def test_describe_reads_the_holder_it_is_given(fake_host: FakeHost) -> None:
    given = {"holder": "ann", "since": LONG_AGO, "action": "rollback"}
    assert _lock(fake_host).describe(given) == describe_holder(given) != _lock(fake_host).describe()
    assert _lock(fake_host).describe() == "not held"


def test_the_holder_file_says_since_when_in_utc(fake_host: FakeHost) -> None:
    lock = _lock(fake_host)
    lock.acquire({"holder": "ann", "action": "deploy"})
    held = lock.holder()
    lock.release()
    assert held is not None and held["since"].endswith("+00:00") and holder_age(held) == "0 s"


def test_an_acquire_interrupted_at_its_mkdir_leaves_a_dead_holders_lock_alone(fake_host: FakeHost) -> None:
    lock_dir = fake_host.state_path / "lock"
    lock_dir.mkdir(parents=True)
    dead = {"holder": "ann", "action": "deploy", "version": "v1"}
    (lock_dir / HOLDER_FILE).write_text(json.dumps(dead))
    fake_host.interrupt_on(lambda c: c.argv == ["mkdir", str(lock_dir)])

    with pytest.raises(KeyboardInterrupt):
        _lock(fake_host).acquire({"holder": "bob", "action": "deploy"})

    assert json.loads((lock_dir / HOLDER_FILE).read_text()) == dead
    assert all(k.process_is_finished for k in fake_host.keepers)


def test_the_keeper_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = DeployLock(Context(), str(tmp_path))
    lock.acquire({"holder": "a", "action": "deploy"})
    lock.release()
    assert capsys.readouterr() == ("", "")
