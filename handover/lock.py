"""One deploy at a time per host, and a lock whose holder died does not need a manual unlock.

Two parts, both on the host:

* the lock directory ``<state>/lock`` (an atomic ``mkdir``) with ``holder.json``: who holds it, since
  when, for what (action, version, reason), the holder's pid and machine, the host's boot id;
* an OS lock for the holder's lifetime: a *keeper* process started through the same runner
  (``runner.run(..., asynchronous=True)``) holds ``flock`` on ``<state>/lock.flock`` and waits on its
  stdin. Its stdin closes when :meth:`DeployLock.release` closes it, when this process dies (the local
  pipe closes) or when the SSH connection drops (sshd closes the session's pipes); the keeper then
  exits and the kernel drops the flock.

An acquire takes the flock first (``flock -n``). Busy: a live run holds the lock, refuse and name it.
Free but the directory exists: its holder is gone (killed, connection lost, host rebooted); take the
lock over and say so. The flock file sits beside the directory, not in it, so there is no moment
when the directory exists without its flock held.

A lock taken by hand (the ``lock`` task, action ``lock``) is meant to outlive the process that took
it: it keeps no keeper, is never taken over and stays until ``unlock``. ``unlock`` removes any lock
and ends a keeper left behind (an SSH session left half open keeps its keeper until TCP gives up).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import HandoverError, LockHeld
from .record import now_iso, operator
from .shell import Runner, command_line, read_file, run, write_file

LOCK_DIR = "lock"
HOLDER_FILE = "holder.json"
FLOCK_FILE = "lock.flock"  # in the state directory, beside LOCK_DIR; never removed
MANUAL_ACTION = "lock"  # the action of a lock taken by hand: no keeper, never taken over
KEEPER_NONE = "none"
KEEPER_FLOCK = "flock"
KEEPER_READY = "locked"
KEEPER_BUSY = 75  # flock -E: the flock is held by a live run
KEEPER_START_TIMEOUT = 30.0
KEEPER_STOP_TIMEOUT = 10.0
KEEPER_POLL = 0.005
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
# The keeper ignores Ctrl-C and hang-ups (it shares the terminal's process group when local): only
# the end of its stdin (or unlock's SIGTERM) ends it. flock alone holds the lock (-o: its child does
# not inherit the descriptor). Once locked, the child prints "locked <boot id> <flock's pid>".
KEEPER_SCRIPT = (
    "trap '' INT HUP; exec flock -n -o -E " + str(KEEPER_BUSY) + ' "$1" sh -c '
    + "'printf \"" + KEEPER_READY + " %s %s\\n\" \"$(cat " + BOOT_ID_FILE + " 2>/dev/null)\" \"$PPID\"; "
    + "exec cat >/dev/null'"
)
# unlock ends a keeper that outlived its run (an SSH connection left half open): only the process
# that is still the flock on this lock file, on the boot that started it.
STOP_STALE_KEEPER_SCRIPT = (
    'if [ "$(cat ' + BOOT_ID_FILE + ' 2>/dev/null)" = "$3" ] && [ -r "/proc/$1/cmdline" ] '
    '&& tr "\\000" "\\n" < "/proc/$1/cmdline" | grep -qxF -- "$2"; then kill "$1"; fi'
)


class LockUnavailable(HandoverError):
    """The lock could not be taken for a reason other than another holder (disk, permissions, tools)."""


def lock_info(action: str, version: str = "", via: str = "", host: str = "", reason: str = "") -> dict[str, str]:
    """What the lock's holder file says: who, since when, and the given details that are not empty."""
    info = {"holder": operator(), "since": now_iso(), "action": action}
    details = {"version": version, "via": via, "host": host, "reason": reason}
    info.update({key: value for key, value in details.items() if value})
    return info


def _warn(text: str) -> None:
    print(f"! {text}", file=sys.stderr, flush=True)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days {hours % 24} h"


def holder_age(holder: dict[str, str], now: datetime | None = None) -> str:
    """How long ago the holder took the lock (from its ``since``), as text."""
    try:
        since = datetime.fromisoformat(holder.get("since", ""))
    except ValueError:
        return "age unknown"
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return _age(((now or datetime.now(UTC)) - since).total_seconds())


def describe_holder(holder: dict[str, str] | None) -> str:
    """One line: ``held by WHO since WHEN (AGE): WHAT``."""
    if holder is None:
        return "not held"
    who = holder.get("holder", "unknown")
    since = holder.get("since", "an unknown time")
    reason = holder.get("reason", "")
    action = holder.get("action", "")
    if action == MANUAL_ACTION:
        what = reason or "taken by hand, no reason given"
    else:
        what = " ".join(part for part in (action, holder.get("version", "")) if part) or "unknown run"
        what += f": {reason}" if reason else ""
    return f"held by {who} since {since} ({holder_age(holder)}): {what}"


def _process(holder: dict[str, str]) -> str:
    pid, machine = holder.get("pid"), holder.get("pid_host")
    return f"pid {pid} on {machine}" if pid and machine else "its process"


def _is_manual(holder: dict[str, str]) -> bool:
    return holder.get("keeper") == KEEPER_NONE or holder.get("action") == MANUAL_ACTION


@dataclass
class _Keeper:
    promise: Any  # invoke.runners.Promise
    boot_id: str = ""
    pid: str = ""  # flock's pid on the host


@dataclass
class DeployLock:
    runner: Runner
    state_path: str
    notify: Callable[[str], None] = field(default=_warn, repr=False)  # how a takeover is reported
    # The state directory was made just before by the caller (fab's first command on the host): not
    # made again here (one SSH command less).
    state_made: bool = False
    _keeper: _Keeper | None = field(default=None, init=False, repr=False)
    _token: str = field(default="", init=False, repr=False)

    @property
    def path(self) -> str:
        return f"{self.state_path}/{LOCK_DIR}"

    @property
    def flock_path(self) -> str:
        return f"{self.state_path}/{FLOCK_FILE}"

    def holder(self) -> dict[str, str] | None:
        text = read_file(self.runner, f"{self.path}/{HOLDER_FILE}")
        if text is None:
            if run(self.runner, ["test", "-d", self.path], check=False).exited != 0:
                return None
            return {"holder": "unknown (lock without holder file)", "since": self._dir_time()}
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return {"holder": "unknown (unreadable holder file)", "since": self._dir_time()}
        return {str(k): str(v) for k, v in data.items()}

    def describe(self, holder: dict[str, str] | None = None) -> str:
        """The holder as one line of text (read from the host unless given)."""
        return describe_holder(holder if holder is not None else self.holder())

    def acquire(self, info: dict[str, str]) -> str | None:
        """Take the lock or raise :class:`LockHeld` naming its holder and age.

        A lock taken by hand (``info["action"] == "lock"``) stays after this process ends. Returns
        the takeover notice when a dead holder's lock was taken over (it is also passed to
        ``notify``), else None.
        """
        if self._keeper is not None:
            raise LockUnavailable(f"the lock at {self.path} is already held by this run")
        persistent = info.get("action") == MANUAL_ACTION
        if not self.state_made:
            run(self.runner, ["mkdir", "-p", self.state_path])
        keeper = self._start_keeper()
        created = tried = False
        try:
            tried = True
            made = run(self.runner, ["mkdir", self.path], check=False)
            created = made.exited == 0
            previous = None
            if not created:
                if run(self.runner, ["test", "-d", self.path], check=False).exited != 0:
                    reason = (made.stderr or made.stdout).strip() or f"mkdir exited {made.exited}"
                    raise LockUnavailable(f"cannot create the lock directory {self.path}: {reason}")
                previous = self.holder() or {}
                if _is_manual(previous):
                    raise LockHeld(f"deploys to this host are stopped: the lock at {self.path} is "
                                   f"{describe_holder(previous)}. Release it with the unlock task when that is over.")
            token = uuid.uuid4().hex
            record = {"since": datetime.now(UTC).isoformat(timespec="milliseconds"), **info,
                      "pid": str(os.getpid()), "pid_host": socket.gethostname(), "boot_id": keeper.boot_id,
                      "keeper": KEEPER_NONE if persistent else KEEPER_FLOCK, "token": token}
            if not persistent:
                record["keeper_pid"] = keeper.pid
            write_file(self.runner, f"{self.path}/{HOLDER_FILE}", json.dumps(record, sort_keys=True))
        except BaseException:
            # Interrupted inside the mkdir, we cannot know it succeeded; but while this run holds the
            # flock, a lock directory without a holder file can only be one left half-made: ours.
            if created or (tried and self._half_made()):
                run(self.runner, ["rm", "-rf", self.path], check=False)
            self._stop_keeper(keeper)
            raise
        if persistent:
            self._stop_keeper(keeper)
        else:
            self._keeper, self._token = keeper, token
        if previous is None:
            return None
        notice = self._takeover_notice(previous, keeper.boot_id)
        self.notify(notice)
        return notice

    def _half_made(self) -> bool:
        script = 'test -d "$1" && ! test -e "$1/$2"'
        return run(self.runner, ["sh", "-c", script, "half-made", self.path, HOLDER_FILE], check=False).exited == 0

    def release(self) -> None:
        """Remove the lock and stop the keeper. The run that took the lock removes it only while it is
        still its own (an ``unlock`` and another run may have come between); any other caller
        removes it whoever holds it and ends its keeper if one is left (that is what ``unlock`` does)."""
        keeper, token = self._keeper, self._token
        self._keeper, self._token = None, ""
        if keeper is None:
            held = self.holder() or {}
            if held.get("keeper_pid", "").isdigit() and held.get("boot_id"):
                run(self.runner, ["sh", "-c", STOP_STALE_KEEPER_SCRIPT, "unlock", held["keeper_pid"],
                                  self.flock_path, held["boot_id"]], check=False)
            run(self.runner, ["rm", "-rf", self.path], check=False)
            return
        try:
            script = 'if grep -qF "$2" "$1/' + HOLDER_FILE + '" 2>/dev/null; then rm -rf "$1"; fi'
            run(self.runner, ["sh", "-c", script, "release", self.path, token], check=False)
        finally:
            self._stop_keeper(keeper)

    def _takeover_notice(self, previous: dict[str, str], boot_id: str) -> str:
        rebooted = previous.get("boot_id", "") not in ("", boot_id) and bool(boot_id)
        why = "the host has rebooted since" if rebooted else f"{_process(previous)} no longer holds it"
        return (f"took over the deploy lock at {self.path} from a dead holder ({why}): "
                f"it was {describe_holder(previous)}")

    def _dir_time(self) -> str:
        result = run(self.runner, ["stat", "-c", "%Y", self.path], check=False)
        text = result.stdout.strip()
        if result.exited != 0 or not text.isdigit():
            return "an unknown time"
        return datetime.fromtimestamp(int(text), UTC).isoformat(timespec="seconds")

    def _start_keeper(self) -> _Keeper:
        line = command_line(["sh", "-c", KEEPER_SCRIPT, "keeper", self.flock_path])
        promise = self.runner.run(line, asynchronous=True, hide=True, warn=True, in_stream=False, pty=False)
        try:
            return self._await_keeper(promise)
        except BaseException:  # Ctrl-C while waiting included: the keeper must not outlive the attempt
            if not promise.runner.process_is_finished:
                self._stop_keeper(_Keeper(promise))
            raise

    def _await_keeper(self, promise: Any) -> _Keeper:
        deadline = time.monotonic() + KEEPER_START_TIMEOUT
        while True:
            out = "".join(promise.runner.stdout)
            if out.startswith(KEEPER_READY) and out.endswith("\n"):
                words = [*out.split()[1:], "", ""]
                return _Keeper(promise, boot_id=words[0], pid=words[1] if words[1].isdigit() else "")
            if promise.runner.process_is_finished:
                result = promise.join()
                if result.exited == KEEPER_BUSY:
                    raise self._held_error()
                detail = (result.stderr or result.stdout).strip() or f"exit status {result.exited}"
                raise LockUnavailable(f"cannot take the lock at {self.path}: flock on {self.flock_path} "
                                      f"failed: {detail}")
            if time.monotonic() > deadline:
                raise LockUnavailable(f"cannot take the lock at {self.path}: flock on {self.flock_path} did "
                                      f"not answer within {KEEPER_START_TIMEOUT:g} s")
            time.sleep(KEEPER_POLL)

    def _held_error(self) -> LockHeld:
        held = self.holder()
        if held is None:
            return LockHeld(f"another run is taking the deploy lock at {self.path} right now; try again shortly")
        return LockHeld(f"another deploy holds the lock at {self.path}: {describe_holder(held)} "
                        f"({_process(held)}; its flock is held, so it is still running). Wait for it to finish; "
                        "if it is gone for good (a lost connection), free the lock with the unlock task.")

    @staticmethod
    def _stop_keeper(keeper: _Keeper) -> None:
        runner = keeper.promise.runner
        with contextlib.suppress(Exception):  # the keeper may be gone already; join() below tells
            runner.close_proc_stdin()
        deadline = time.monotonic() + KEEPER_STOP_TIMEOUT
        while not runner.process_is_finished and time.monotonic() < deadline:
            time.sleep(KEEPER_POLL)
        if not runner.process_is_finished:
            runner.kill()
        keeper.promise.join()
