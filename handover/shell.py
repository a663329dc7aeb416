"""Running commands on the Docker host through anything with ``.run()``.

Every argument is quoted with :func:`shlex.quote`; environment variables are passed inline with
``env`` so the same command line works through a local shell and through SSH (where sshd usually
refuses ``SetEnv``). Nothing here reads the caller's stdin.

Ctrl-C: Invoke's runners catch ``KeyboardInterrupt`` while a command runs and keep waiting for it
(a local command gets the terminal's SIGINT itself; a remote one runs on). Inside
:func:`interruptible`, a Ctrl-C during a command is held until the command returns and then raised
as ``KeyboardInterrupt``, so the caller stops at the next command instead of carrying on (or
mistaking the interrupted command's exit status for a failure of the host).

On this machine (an Invoke ``Context``, not a Fabric ``Connection``; see :func:`runs_here`), a command
without ``echo`` is started directly with :mod:`subprocess`, no shell and no ``env`` in between:
Invoke's runner costs 7-25 ms of wall time per command (its reader threads and polling), and a
deploy runs some thirty commands. The command and its environment are the same, so is the result
(exit status 127 for a program that does not exist, as the shell said).
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from invoke.exceptions import CommandTimedOut

from .errors import CommandError, CommandTimeout


class Result(Protocol):
    stdout: str
    stderr: str
    exited: int


class Runner(Protocol):
    """Invoke's ``Context`` and Fabric's ``Connection`` both fit."""

    def run(self, command: str, **kwargs: Any) -> Any: ...


@dataclass
class Done:
    """How a command started here ended (what Invoke's result gives that the callers read)."""

    stdout: str
    stderr: str
    exited: int


COMMAND_NOT_FOUND = 127
FAST_ENV = "HANDOVER_DIRECT_COMMANDS"  # "0": every local command through Invoke's runner, as before


def runs_here(runner: object) -> bool:
    """Whether ``runner`` runs commands on this machine: exactly Invoke's ``Context`` (a Fabric
    ``Connection`` is a subclass and runs them over SSH; a test's mock is one too)."""
    from invoke.context import Context

    return type(runner) is Context


def _direct(runner: Any) -> bool:
    """A command may be started directly (see the module docstring): on this machine, with nothing of
    Invoke's own that changes it (``cd``/``prefix`` contexts, a ``run.env``, sudo) configured."""
    if not runs_here(runner) or os.environ.get(FAST_ENV, "1") == "0":
        return False
    config = runner.config.get("run", {})
    return not (runner.command_cwds or runner.command_prefixes or config.get("env") or config.get("replace_env"))


def run_here(args: Sequence[str], env: Mapping[str, str] | None, timeout: float | None) -> Done:
    """Start ``args`` on this machine with ``env`` added to this process's environment; stdin is
    empty. A timeout kills it and raises :class:`CommandTimeout` (as Invoke's runner did)."""
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=full_env, text=True, errors="replace")
    except FileNotFoundError:
        return Done("", f"{args[0]}: command not found\n", COMMAND_NOT_FOUND)
    except PermissionError as exc:
        return Done("", f"{args[0]}: {exc.strerror}\n", 126)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CommandTimeout(f"command timed out after {timeout or 0:g} s: {shlex.join(args)}") from None
    except BaseException:  # e.g. a KeyboardInterrupt outside interruptible(): the command does not stay
        proc.kill()
        proc.wait()
        raise
    code = proc.returncode
    return Done(stdout, stderr, code if code >= 0 else 128 - code)  # killed by a signal: 128 + N, as a shell says


class _Interrupts:
    """SIGINT bookkeeping for :func:`interruptible` (the main thread only)."""

    installed = False
    commands_running = 0
    pending = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _Interrupts.commands_running:
        _Interrupts.pending = True  # raised by run() once the command has returned
        return
    raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Make Ctrl-C stop the work at the next command boundary (see the module docstring)."""
    if _Interrupts.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _Interrupts.installed, _Interrupts.pending = True, False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _Interrupts.installed, _Interrupts.pending = False, False


def _raise_pending_interrupt() -> None:
    if _Interrupts.pending and threading.current_thread() is threading.main_thread():
        _Interrupts.pending = False
        raise KeyboardInterrupt


@contextmanager
def holding_interrupts() -> Iterator[None]:
    """Inside, a Ctrl-C is held until the end and raised then (inside :func:`interruptible`), as during
    a command: for the Engine API's requests (:mod:`handover.dockerapi`), which stand for commands."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        _Interrupts.commands_running += 1
    try:
        yield
    finally:
        if main:
            _Interrupts.commands_running -= 1
    _raise_pending_interrupt()


def command_line(args: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Quote ``args`` (and ``env``) into one shell command line."""
    prefix = ["env", *(f"{key}={value}" for key, value in sorted(env.items()))] if env else []
    return shlex.join([*prefix, *args])


def run(
    runner: Runner,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    echo: bool = False,
) -> Result:
    """Run ``args`` through ``runner``; raise :class:`CommandError` on a non-zero exit when ``check``."""
    line = command_line(args, env)
    main = threading.current_thread() is threading.main_thread()
    if main:
        _Interrupts.commands_running += 1
    try:
        if not echo and _direct(runner):
            result: Result = run_here(args, env, timeout)
        else:
            result = runner.run(line, hide=not echo, warn=True, in_stream=False, timeout=timeout)
    except CommandTimedOut:
        # Invoke raises this even with warn=True; its text holds the whole line, environment included.
        raise CommandTimeout(f"command timed out after {timeout or 0:g} s: {shlex.join(args)}") from None
    finally:
        if main:
            _Interrupts.commands_running -= 1
    _raise_pending_interrupt()
    if check and result.exited != 0:
        # The environment is left out of the message: it may hold values the user keeps private.
        raise CommandError(shlex.join(args), result.exited, result.stderr or result.stdout, stdout=result.stdout)
    return result


def write_file(runner: Runner, path: str, content: str, mode: str = "0644") -> None:
    """Atomically replace ``path`` on the host with ``content`` (write a temp file, then rename)."""
    encoded = base64.b64encode(content.encode()).decode()
    tmp = f"{path}.tmp"
    script = (
        f"umask 077 && printf '%s' {shlex.quote(encoded)} | base64 -d > {shlex.quote(tmp)}"
        f" && chmod {shlex.quote(mode)} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(path)}"
    )
    result = run(runner, ["sh", "-c", script], check=False)
    if result.exited != 0:  # name the file, not the command (it carries the whole content)
        raise CommandError(f"writing {path}", result.exited, result.stderr or result.stdout)


def read_file(runner: Runner, path: str) -> str | None:
    """Return the content of ``path`` on the host, or None if it does not exist."""
    result = run(runner, ["sh", "-c", f"if [ -f {shlex.quote(path)} ]; then cat {shlex.quote(path)}; else exit 3; fi"],
                 check=False)
    if result.exited == 3:
        return None
    if result.exited != 0:
        raise CommandError(f"cat {path}", result.exited, result.stderr)
    return result.stdout
