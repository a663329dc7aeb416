"""What the tasks share: the host list and config, per-host connections, and the rolling runner."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from fabric import Connection
from invoke.exceptions import Exit

from handover import cli
from handover.errors import ConfigError
from handover.progress import Progress
from handover.record import RunRecord

from . import hostconfig, hostrun, rollout
from .connect import Remote, connected
from .executor import HOSTS_KEY
from .hostconfig import RemoteConfig, Target


def host_specs(c: Any) -> list[str]:
    """The hosts of this run: ``-H`` (via the host-list executor), or the one Connection Fabric made."""
    if isinstance(c, Connection):
        return [f"{c.user}@{c.original_host}:{c.port}"]
    return [str(h) for h in (c.config.get(HOSTS_KEY) or [])]


def remote_config(c: Any, parallel: object = None) -> RemoteConfig:
    """Validate the config for every host (exit 2 on an error) before anything connects."""
    section = c.config.get("deploy")
    if section is None:
        raise ConfigError("missing config section 'deploy'")
    return hostconfig.load(dict(section), host_specs(c), parallel)


def progress_for(rc: RemoteConfig, target: Target, quiet: bool = False) -> Progress:
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
            return hostrun.live_version(remote)
    except Exception:  # the summary must still come out; the reason was printed with the failure
        return "unknown (not reachable)"


def _print_failure(outcome: rollout.Outcome) -> None:
    print(f"error: [{outcome.name}] {outcome.error}", file=sys.stderr, flush=True)


def rolling(c: Any, rc: RemoteConfig, action: str, label: str,
            work: Callable[[Remote, Progress], RunRecord], as_json: bool = False) -> None:
    """Run ``work`` across the hosts, ``rc.parallel`` at a time; exit non-zero after a failure."""

    def per_host(target: Target) -> RunRecord:
        progress = progress_for(rc, target, quiet=as_json)
        with connected(c.config, target, rc.known_hosts) as remote:
            rec = work(remote, progress)
        if not as_json:
            for line in cli.format_record(rec).splitlines():
                progress.say(line)
        return rec

    outcomes = rollout.roll(rc.targets, per_host, rc.parallel, _print_failure)
    by_name = {t.name: t for t in rc.targets}
    for outcome in outcomes:
        outcome.version = rollout.served_version(outcome) or _ask_version(c, rc, by_name[outcome.name])
    if as_json:
        print(json.dumps([{"host": o.name, "result": o.state, "serves": o.version, "error": o.error,
                           "record": o.record.to_dict() if o.record else None} for o in outcomes],
                         indent=2, sort_keys=True), flush=True)
    elif len(outcomes) > 1 or any(o.state != rollout.DONE for o in outcomes):
        print(rollout.format_summary(action, label, outcomes), flush=True)
    failed = [o for o in outcomes if o.state == rollout.FAILED]
    if failed:
        raise Exit(code=failed[0].exit_code or 1)
