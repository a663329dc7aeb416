"""Hooks: the user's own scripts at fixed points of a deploy or rollback, run on the machine that
runs ``fab``/``inv`` (never on a host).

A team wants to stop a deploy by a rule of its own (CI not green, a release freeze) and to tell
someone when one went through or failed, without changing this tool. Kamal and Capistrano do it
with hooks; so does this: executable files with fixed names in ``deploy.hooks_dir``
(``.handover/hooks`` by default, relative to the project root):

* ``pre-deploy`` — before anything changes (before the wheelhouse, the lock, any connection).
  A non-zero exit or its timeout stops the run: nothing was changed.
* ``post-switch`` — on each host, right after traffic reaches the new version (a step of the
  engine, between the switch and the post-switch check; a later failure may still switch back).
* ``post-deploy`` — once, after the run succeeded (on every host).
* ``deploy-failed`` — once, after the run failed (on any host), with the step that failed.

Failures of the last three are reported and change nothing: the deploy's result stands. With
several hosts ``pre-deploy`` runs once before the first host and ``post-deploy``/``deploy-failed``
once after the last. A dry run runs no hook, an interrupted run (Ctrl-C) no later one, and a run
with nothing to do (the version already live) neither ``post-deploy`` nor ``deploy-failed``.

What a hook gets: this process's environment plus the run's facts as ``HANDOVER_*`` variables
(:func:`hook_env`, pure). Never the app's secrets: the secrets file is neither read nor named.
Every hook present is checked before anything runs: a file that is not executable (or not a file)
is a configuration error naming it. Each hook is bounded by ``deploy.hook_timeout``; its whole
process group is killed then (and on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import record
from .errors import ConfigError, HandoverError
from .progress import Progress
from .settings import PROJECT_ROOT, Settings
from .steps import Step

if TYPE_CHECKING:
    from .steps import Run

PRE_DEPLOY, POST_SWITCH, POST_DEPLOY, DEPLOY_FAILED = "pre-deploy", "post-switch", "post-deploy", "deploy-failed"
HOOK_NAMES = (PRE_DEPLOY, POST_SWITCH, POST_DEPLOY, DEPLOY_FAILED)
OUTPUT_LINES = 30  # lines of a hook's output shown (its last ones)
KILL_WAIT_SECONDS = 5.0  # after killing a hook's process group, how long to wait for its output to close
RESULTS_WITH_HOOKS = ("success", "failed", "rolled-back")  # "unchanged": nothing happened, no hook


class HookFailed(HandoverError):
    """The pre-deploy hook exited non-zero or timed out: the run did not start."""


@dataclass(frozen=True)
class Facts:
    """What every hook is told about the run."""

    action: str  # deploy, rollback
    project: str
    version: str  # the version asked for ("" for a rollback to each host's previous one)
    hosts: tuple[str, ...]
    performer: str = field(default_factory=record.operator)


@dataclass(frozen=True)
class Outcome:
    """How the whole run ended, for ``post-deploy`` and ``deploy-failed``."""

    result: str  # success, failed, rolled-back (local: the record's; fab: failed if any host failed)
    version: str = ""  # what was deployed, when every host agrees
    previous_version: str = ""
    failed_step: str = ""
    failed_hosts: tuple[str, ...] = ()
    error: str = ""  # the first line of the error
    host_results: tuple[tuple[str, str], ...] = ()  # (host, result) in the run's order

    @classmethod
    def of_record(cls, rec: record.RunRecord) -> Outcome:
        """One host's (or the local stack's) run."""
        failed = rec.result != "success"
        return cls(result=rec.result, version=rec.version, previous_version=rec.previous_version,
                   failed_step=rec.failed_step, failed_hosts=(rec.host,) if failed else (),
                   error=first_line(rec.error) if failed else "", host_results=((rec.host, rec.result),))


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def hook_env(hook: str, facts: Facts, *, outcome: Outcome | None = None, host: str = "",
             previous_version: str = "") -> dict[str, str]:
    """The ``HANDOVER_*`` variables a hook gets (added to this process's environment)."""
    env = {
        "HANDOVER_HOOK": hook,
        "HANDOVER_ACTION": facts.action,
        "HANDOVER_PROJECT": facts.project,
        "HANDOVER_VERSION": facts.version,
        "HANDOVER_HOSTS": " ".join(facts.hosts),
        "HANDOVER_PERFORMER": facts.performer,
    }
    if host:
        env["HANDOVER_HOST"] = host
    if previous_version:
        env["HANDOVER_PREVIOUS_VERSION"] = previous_version
    if outcome is not None:
        env |= {
            "HANDOVER_RESULT": outcome.result,
            "HANDOVER_FAILED_STEP": outcome.failed_step,
            "HANDOVER_FAILED_HOSTS": " ".join(outcome.failed_hosts),
            "HANDOVER_ERROR": outcome.error,
            "HANDOVER_HOST_RESULTS": " ".join(f"{name}={result}" for name, result in outcome.host_results),
        }
        if outcome.version:
            env["HANDOVER_VERSION"] = outcome.version
        if outcome.previous_version:
            env["HANDOVER_PREVIOUS_VERSION"] = outcome.previous_version
    return env


@dataclass(frozen=True)
class HookRun:
    """How one hook ended: its exit status (``None``: timed out or could not start) and output."""

    name: str
    path: Path
    exited: int | None
    output: str
    seconds: float
    problem: str = ""  # why it has no exit status

    @property
    def ok(self) -> bool:
        return self.exited == 0

    def what(self) -> str:
        if self.exited is None:
            return self.problem
        return f"exited {self.exited}" if self.exited >= 0 else f"was killed by signal {-self.exited}"


def _kill(process: subprocess.Popen[str]) -> None:
    """End the hook and everything it started (its own session, so its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Hooks:
    """The hooks present in ``deploy.hooks_dir``, each checked to be an executable file."""

    directory: str = ""
    timeout: float = 60.0
    scripts: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def find(cls, settings: Settings) -> Hooks:
        """Raises :class:`ConfigError` naming a hook that cannot run; a missing directory is no hooks."""
        directory = settings.hooks_dir
        if not directory:
            return cls(timeout=settings.hook_timeout)
        root = Path(directory)
        if not root.exists():
            return cls(directory, settings.hook_timeout)
        if not root.is_dir():
            raise ConfigError(f"config key deploy.hooks_dir: {root} is not a directory (expected a directory of "
                              f"hooks named {', '.join(HOOK_NAMES)}); nothing was run")
        scripts = {}
        for name in HOOK_NAMES:
            path = root / name
            if not path.exists() and not path.is_symlink():
                continue
            if not path.is_file():
                raise ConfigError(f"hook {path} is not a file (a broken link or a directory); fix or remove it. "
                                  "Nothing was run")
            if not os.access(path, os.X_OK):
                raise ConfigError(f"hook {path} is not executable: `chmod +x {path}`, or remove it. Nothing was run")
            scripts[name] = path
        return cls(directory, settings.hook_timeout, scripts)

    @classmethod
    def same_for_all(cls, settings: Sequence[Settings]) -> Hooks:
        """The hooks of a run over several hosts: they run here, once, so one directory for all."""
        dirs = sorted({(s.hooks_dir, s.hook_timeout) for s in settings})
        if len(dirs) > 1:
            raise ConfigError("config keys deploy.hooks_dir and deploy.hook_timeout differ between the hosts of this "
                              "run; hooks run once on this machine: set them outside deploy.hosts")
        return cls.find(settings[0]) if settings else cls()

    def names(self) -> list[str]:
        return [name for name in HOOK_NAMES if name in self.scripts]

    def run(self, name: str, env: Mapping[str, str]) -> HookRun | None:
        """Run hook ``name`` (None when it is not there) to its end or its timeout. Ctrl-C kills it and
        goes on up."""
        path = self.scripts.get(name)
        if path is None:
            return None
        t0 = time.monotonic()
        try:
            process = subprocess.Popen([str(path)], cwd=PROJECT_ROOT, env={**os.environ, **env},
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", start_new_session=True)
        except OSError as exc:
            return HookRun(name, path, None, "", 0.0, f"could not start ({exc.strerror or exc})")
        problem = ""
        try:
            output, _ = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            problem = f"did not finish within {self.timeout:g} s (deploy.hook_timeout) and was killed"
            try:
                output, _ = process.communicate(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                output = ""  # something it started holds its output open; it is not waited for
        except BaseException:
            _kill(process)
            process.wait()
            raise
        _kill(process)  # what it left running in the background ends with it
        exited = None if problem else process.returncode
        return HookRun(name, path, exited, "\n".join(output.strip("\n").splitlines()[-OUTPUT_LINES:]),
                       round(time.monotonic() - t0, 3), problem)

    def _shown(self, done: HookRun, progress: Progress) -> None:
        for line in done.output.splitlines():
            progress.say(f"    | {line}")
        if done.ok:
            progress.say(f"    ok in {done.seconds:.2f} s")

    def pre_deploy(self, facts: Facts, progress: Progress) -> None:
        """Run ``pre-deploy``; raise :class:`HookFailed` (with its output) when it fails."""
        if PRE_DEPLOY not in self.scripts:
            return
        progress.say(f"==> {PRE_DEPLOY} hook: {self.scripts[PRE_DEPLOY]}")
        done = self.run(PRE_DEPLOY, hook_env(PRE_DEPLOY, facts))
        assert done is not None
        self._shown(done, progress)
        if not done.ok:
            raise HookFailed(f"the {PRE_DEPLOY} hook {done.path} {done.what()}; the {facts.action} was not started, "
                             f"nothing was changed. Its last lines:\n{done.output or '(no output)'}")

    def after(self, facts: Facts, outcome: Outcome, progress: Progress) -> HookRun | None:
        """``post-deploy`` after a success, ``deploy-failed`` after a failure; a failing hook is reported
        and changes nothing (the run's result stands). Nothing after a run that changed nothing."""
        if outcome.result not in RESULTS_WITH_HOOKS:
            return None
        name = POST_DEPLOY if outcome.result == "success" else DEPLOY_FAILED
        return self._reported(name, hook_env(name, facts, outcome=outcome), progress,
                              f"the {facts.action}'s result stands: {outcome.result}")

    def _reported(self, name: str, env: Mapping[str, str], progress: Progress, stands: str) -> HookRun | None:
        if name not in self.scripts:
            return None
        progress.say(f"==> {name} hook: {self.scripts[name]}")
        try:
            done = self.run(name, env)
        except KeyboardInterrupt:
            progress.warn(f"the {name} hook was interrupted and killed ({stands})")
            return None
        assert done is not None
        self._shown(done, progress)
        if not done.ok:
            progress.warn(f"the {name} hook {done.path} {done.what()} ({stands})")
        return done

    def post_switch(self, facts: Facts, host: str) -> list[Step]:
        """The engine step that runs ``post-switch`` on ``host``'s run (none without the hook)."""
        return [PostSwitchHook(self, facts, host)] if POST_SWITCH in self.scripts else []


class PostSwitchHook(Step):
    """``post-switch``, as a step of the engine right after traffic reaches the new version: in the
    plan, the progress and the record like any step, but its failure is only reported."""

    name = "post-switch hook"

    def __init__(self, hooks: Hooks, facts: Facts, host: str) -> None:
        self.hooks, self.facts, self.host = hooks, facts, host

    def describe(self, run: Run) -> str | None:
        path = self.hooks.scripts.get(POST_SWITCH)
        return f"run {path} on this machine (a failure is reported, not fatal)" if path else None

    def run(self, run: Run) -> str:
        env = hook_env(POST_SWITCH, self.facts, host=self.host, previous_version=run.record.previous_version)
        env["HANDOVER_VERSION"] = run.version
        done = self.hooks.run(POST_SWITCH, env)
        assert done is not None
        for line in done.output.splitlines():
            run.engine.progress.say(f"    | {line}")
        if done.ok:
            return "exit 0"
        run.engine.progress.warn(f"the {POST_SWITCH} hook {done.path} {done.what()} (the {run.record.action} goes on)")
        return f"{done.what()}; reported, the {run.record.action} goes on"
