"""Roll one action across many hosts, K at a time, stopping at the first failure.

With K = 1 the hosts run one after the other in this thread, so Ctrl-C reaches the deploy in
progress directly (the engine then cleans up and the host's lock is released). With K > 1 up to K
hosts run in worker threads, each on its own SSH connection. After the first failure no further
host is started; hosts already running finish their sequence (stopping one midway would be worse).
The summary says which version each host serves afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from handover.errors import HandoverError
from handover.record import RunRecord

from .hostconfig import Target

DONE = "done"
FAILED = "FAILED"
NOT_STARTED = "not started"
GENERIC_FAILURE = 1


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
        return Outcome(target.name, FAILED, error=str(exc), exit_code=exc.exit_code)
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
