"""Run a task's work over its hosts: one after the other, or rolled K at a time with a summary.

:func:`for_each_host` connects to each host in turn and stops at the first error (setup, status,
logs, ...). :func:`rolling` runs a deploy or rollback over the hosts, K at a time, stopping at the
first failure. With K = 1 the hosts run one after the other in this thread, so Ctrl-C reaches the
deploy in progress directly (the engine then cleans up and the host's lock is released). With
K > 1 up to K hosts run in worker threads, each on its own SSH connection. After the first failure
no further host is started; hosts already running finish their sequence (stopping one midway would
be worse). The summary says which version each host serves afterwards.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from invoke.exceptions import Exit

from handover import cli, hooks, ops
from handover.errors import HandoverError
from handover.progress import Progress
from handover.record import RunRecord

from .connect import Remote, connected
from .hostconfig import RemoteConfig, Target

DONE = "done"
FAILED = "FAILED"
NOT_STARTED = "not started"
GENERIC_FAILURE = 1
NOTHING_LIVE = "(nothing live)"
NOT_REACHABLE = "unknown (not reachable)"


@dataclass
class Outcome:
    name: str
    state: str
    record: RunRecord | None = None
    error: str = ""
    exit_code: int = 0
    version: str = ""  # what the host serves afterwards


def _attempt(target: Target, work: Callable[[Target], RunRecord]) -> Outcome:
    try:
        return Outcome(target.name, DONE, record=work(target))
    except HandoverError as exc:
        record = exc.record if isinstance(exc.record, RunRecord) else None
        return Outcome(target.name, FAILED, record=record, error=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # an SSH or protocol error must stop the rollout like any other failure
        return Outcome(target.name, FAILED, error=f"{type(exc).__name__}: {exc}", exit_code=GENERIC_FAILURE)


def roll(targets: Sequence[Target], work: Callable[[Target], RunRecord], parallel: int,
         on_failure: Callable[[Outcome], None]) -> list[Outcome]:
    """Run ``work`` for each target, at most ``parallel`` at once, in order; none starts after a failure."""
    outcomes = {t.name: Outcome(t.name, NOT_STARTED) for t in targets}
    if parallel <= 1 or len(targets) <= 1:
        for target in targets:
            outcome = outcomes[target.name] = _attempt(target, work)
            if outcome.state == FAILED:
                on_failure(outcome)
                break
        return [outcomes[t.name] for t in targets]
    pending = list(targets)
    failed = False
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rollout") as pool:
        running: dict[Future[Outcome], Target] = {}
        while running or (pending and not failed):
            while pending and not failed and len(running) < parallel:
                target = pending.pop(0)
                running[pool.submit(_attempt, target, work)] = target
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = outcomes[running.pop(future).name] = future.result()
                if outcome.state == FAILED:
                    failed = True
                    on_failure(outcome)
    return [outcomes[t.name] for t in targets]


def served_version(outcome: Outcome) -> str | None:
    """The version a host serves, when its own run tells (else the caller asks the host)."""
    rec = outcome.record
    if outcome.state == DONE and rec is not None and rec.result in ("success", "unchanged"):
        return rec.version
    return None


def format_summary(action: str, version: str, outcomes: Sequence[Outcome]) -> str:
    done = sum(1 for o in outcomes if o.state == DONE)
    stopped = any(o.state == FAILED for o in outcomes)
    head = f"==> {action} {version}: {done} of {len(outcomes)} host(s) done"
    head += "; stopped at the first failure" if stopped else ""
    width = max(len(o.name) for o in outcomes)
    lines = [head, f"    {'host'.ljust(width)}  {'result':<11}  serves"]
    for o in outcomes:
        note = f"  ({o.error.splitlines()[0]})" if o.error else ""
        lines.append(f"    {o.name.ljust(width)}  {o.state:<11}  {o.version or '?'}{note}")
    return "\n".join(lines)


def progress_for(rc: RemoteConfig, target: Target, quiet: bool = False) -> Progress:
    """Progress lines tagged with the host's name when the run has more than one host."""
    return Progress(quiet=quiet, prefix=target.name if len(rc.targets) > 1 else "")


def for_each_host(c: Any, rc: RemoteConfig, work: Callable[[Remote, Progress], None],
                  accept_new: bool = False, quiet: bool = False) -> None:
    """Run ``work`` on each host in turn (stopping at the first error)."""
    for target in rc.targets:
        with connected(c.config, target, rc.known_hosts, accept_new) as remote:
            work(remote, progress_for(rc, target, quiet))


def _ask_version(c: Any, rc: RemoteConfig, target: Target) -> str:
    try:
        with connected(c.config, target, rc.known_hosts) as remote:
            return ops.live_version(remote.conn, remote.target.settings) or NOTHING_LIVE
    except Exception:  # the summary must still come out; the reason was printed with the failure
        return NOT_REACHABLE


def _print_failure(outcome: Outcome) -> None:
    print(f"error: [{outcome.name}] {outcome.error}", file=sys.stderr, flush=True)


def rolling(c: Any, rc: RemoteConfig, action: str, label: str,
            work: Callable[[Remote, Progress], RunRecord], as_json: bool = False,
            finished: Callable[[list[Outcome]], object] | None = None) -> None:
    """Run ``work`` across the hosts, ``rc.parallel`` at a time; exit non-zero after a failure.
    ``finished`` gets every host's outcome after the summary (the post-deploy or deploy-failed hook)."""

    def per_host(target: Target) -> RunRecord:
        progress = progress_for(rc, target, quiet=as_json)
        with connected(c.config, target, rc.known_hosts) as remote:
            rec = work(remote, progress)
        if not as_json:
            for line in cli.format_record(rec).splitlines():
                progress.say(line)
        return rec

    outcomes = roll(rc.targets, per_host, rc.parallel, _print_failure)
    by_name = {t.name: t for t in rc.targets}
    for outcome in outcomes:
        outcome.version = served_version(outcome) or _ask_version(c, rc, by_name[outcome.name])
    if as_json:
        print(json.dumps([{"host": o.name, "result": o.state, "serves": o.version, "error": o.error,
                           "record": o.record.to_dict() if o.record else None} for o in outcomes],
                         indent=2, sort_keys=True), flush=True)
    elif len(outcomes) > 1 or any(o.state != DONE for o in outcomes):
        print(format_summary(action, label, outcomes), flush=True)
    if finished is not None:
        finished(outcomes)
    failed = [o for o in outcomes if o.state == FAILED]
    if failed:
        raise Exit(code=failed[0].exit_code or GENERIC_FAILURE)


def run_outcome(outcomes: Sequence[Outcome]) -> hooks.Outcome:
    """The hooks' view of a run over several hosts: ``failed`` when any host failed (the first
    failure's step and error), ``success`` when every host ran and at least one changed, else
    ``unchanged``; each host's own result, ``not started`` for those after a failure."""
    results = tuple((o.name, o.record.result if o.record else o.state.lower()) for o in outcomes)
    failed = [o for o in outcomes if o.state == FAILED]
    versions = {o.record.version for o in outcomes if o.record is not None}
    previous = {o.record.previous_version for o in outcomes if o.record is not None}
    common = versions.pop() if len(versions) == 1 else ""
    before = previous.pop() if len(previous) == 1 else ""
    if failed:
        first = failed[0]
        return hooks.Outcome("failed", common, before, first.record.failed_step if first.record else "",
                             tuple(o.name for o in failed), hooks.first_line(first.error), results)
    done = any(o.record is not None and o.record.result == "success" for o in outcomes)
    return hooks.Outcome("success" if done else "unchanged", common, before, host_results=results)
