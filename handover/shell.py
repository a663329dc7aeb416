"""Running commands on the Docker host through anything with ``.run()``.

Every argument is quoted with :func:`shlex.quote`; environment variables are passed inline with
``env`` so the same command line works through a local shell and through SSH (where sshd usually
refuses ``SetEnv``). Nothing here reads the caller's stdin.

Ctrl-C: Invoke's runners catch ``KeyboardInterrupt`` while a command runs and keep waiting for it
(a local command gets the terminal's SIGINT itself; a remote one runs on). Inside
:func:`interruptible`, a Ctrl-C during a command is held until the command returns and then raised
as ``KeyboardInterrupt``, so the caller stops at the next command instead of carrying on (or
mistaking the interrupted command's exit status for a failure of the host).
"""

from __future__ import annotations

import base64
import shlex
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
        result: Result = runner.run(line, hide=not echo, warn=True, in_stream=False, timeout=timeout)
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
