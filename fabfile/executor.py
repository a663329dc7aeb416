"""How `fab` hands hosts to these tasks: the whole ``-H`` list at once, not one call per host.

Fabric's own executor calls a task once per ``-H`` host, in order. That cannot deploy K hosts at a
time, and it cannot print one summary of which host serves which version. This executor (named in
the project's ``fabric.yaml`` as ``tasks.executor_class``) calls each task once and puts the host
list in the configuration under :data:`HOSTS_KEY`; the tasks then read it (:mod:`fabfile.hostconfig`)
and connect to the hosts themselves (:mod:`fabfile.rollout`), with the same ``-i``/``-S``/``-t``
handling as Fabric. Without this executor the tasks still work: each call acts on the one host
Fabric hands it.

It also reads the ``FABRIC_*`` environment before any task runs, so that a variable of the wrong
type ends the run with a message naming it (exit 2) instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fabric import Executor
from invoke.exceptions import Exit, UncastableEnvVar

HOSTS_KEY = "handover_hosts"
ENV_PREFIX = "FABRIC_"
SECTION = "deploy"
CONFIG_ERROR_EXIT = 2


class HostListExecutor(Executor):  # type: ignore[misc]
    def expand_calls(self, calls: Any, apply_hosts: bool = True) -> Any:
        if not apply_hosts or self.core.remainder:
            return super().expand_calls(calls, apply_hosts)
        host_str = self.core[0].args.hosts.value or ""
        self.config[HOSTS_KEY] = [h.strip() for h in host_str.split(",") if h.strip()]
        return super().expand_calls(calls, apply_hosts=False)

    def execute(self, *tasks: Any) -> Any:
        self._check_environment()
        return super().execute(*tasks)

    def _check_environment(self) -> None:
        trial = self.config.clone()
        trial.load_collection(self.collection.configuration())
        try:
            trial.load_shell_env()
        except (ValueError, UncastableEnvVar) as exc:
            defaults = dict(trial.get(SECTION) or {})
            print(f"error: {_culprit(defaults) or exc}", file=sys.stderr, flush=True)
            raise Exit(code=CONFIG_ERROR_EXIT) from None


def _culprit(defaults: dict[str, Any]) -> str | None:
    """Name the ``FABRIC_DEPLOY_*`` variable whose value does not fit its key's type."""
    prefix = f"{ENV_PREFIX}{SECTION.upper()}_"
    for var, value in sorted(os.environ.items()):
        key = var[len(prefix):].lower() if var.startswith(prefix) else ""
        default = defaults.get(key)
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        try:
            type(default)(value)
        except ValueError:
            kind = "a whole number" if isinstance(default, int) else "a number"
            return f"environment variable {var} (config key {SECTION}.{key}): expected {kind}, got {value!r}"
    return None
