"""Deploys to Docker hosts over SSH: `fab -H web1,web2 setup`, `fab -H web1,web2 deploy --parallel 2`, ...

A task flows one way: executor (-H) -> commands (tasks) -> hostconfig (hosts, settings) -> rollout
(K hosts at a time) -> connect (SSH) -> hostrun / hostready (one host) -> handover.ops, handover.engine.

Settings: config/deploy.yaml, then config/remote.yaml (the host layout and per-host overrides),
then fabric.yaml, FABRIC_DEPLOY_* variables and `fab -f FILE`, as Fabric's configuration merges them.
"""

from __future__ import annotations

from invoke.collection import Collection

from handover import cli

from . import commands
from .hostconfig import REMOTE_DEFAULTS_FILE

ns = Collection(
    commands.setup,
    commands.deploy,
    commands.rollback,
    commands.releases,
    commands.status,
    commands.logs,
    commands.lock,
    commands.unlock,
    commands.down,
    commands.certs,
    commands.front_,
)
ns.configure(cli.defaults())
ns.configure(cli.defaults(REMOTE_DEFAULTS_FILE))
