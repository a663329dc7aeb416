"""Fabric tasks: deploy to Docker hosts over SSH (`fab -H web1,web2 deploy`, ...).

Hosts come from ``-H`` (``[user@]host[:port]``, a name from ssh_config, or a name under
``deploy.hosts`` in the config); ``-i``, ``-S`` and ``-t`` work as in any Fabric run. Host keys are
checked on every hop and unknown ones are refused (see :mod:`fabfile.connect` and
:mod:`fabfile.hostkeys`). The configuration is validated for every host before anything connects
(exit 2 on an error).
"""

from __future__ import annotations

import json as jsonlib
from typing import Any

from fabric.runners import Remote as RemoteRunner
from invoke.tasks import task

from handover import cli, hooks, ops
from handover.checks import require
from handover.engine import Engine
from handover.errors import ConfigError, HandoverError
from handover.lock import DeployLock, lock_info
from handover.progress import Progress
from handover.proxies import front
from handover.record import RunRecord, history
from handover.settings import check_version
from handover.shell import command_line

from . import hostinstall, hostready, hostrun
from .connect import Remote
from .hostconfig import RemoteConfig, remote_config
from .rollout import for_each_host, rolling, run_outcome


# No short flags: `-i` is Fabric's key file, and installing system packages should be spelled out.
@task(auto_shortflags=False,
      help={"accept-new": "trust hosts never seen before and record their keys (a changed key is still refused)",
            "install": "install what the host lacks (Docker engine, Compose v2, rsync; Debian/Ubuntu; "
                       "as root or with passwordless sudo), start dockerd, let the SSH user use Docker"})
def setup(c: Any, accept_new: bool = False, install: bool = False) -> None:
    """Check each host (Docker engine, Compose v2, rsync) and create its deploy directory (0750, SSH user's).

    With --install, first install what is missing, the way scripts/bootstrap.sh does, and say what was done.
    """

    def work(remote: Remote, progress: Progress) -> None:
        checks = hostready.check_host(remote, remote.target.settings)
        if install:
            hostinstall.install(remote, remote.target.settings, progress, checks)
            checks = hostready.check_host(remote, remote.target.settings)
        for check in checks:
            progress.say(f"    {'ok' if check.ok else 'MISSING':<7} {check.name:<10} {check.detail}")
        require(checks, remote.name)
        front.claim(remote.conn, remote.target.settings, progress)
        progress.say(f"==> {remote.name} is ready for deploys")

    cli.guarded(lambda: for_each_host(c, remote_config(c), work, accept_new=accept_new))


# No short flags: `fab -f FILE` is a config file, so `-f` must not also mean --force after the task name.
@task(
    auto_shortflags=False,
    help={
        "version": "version to deploy (default: src-<hash> of deploy.app_build; required for a ready-made image)",
        "parallel": "hosts deployed at the same time (default: deploy.parallel, 1)",
        "force": "deploy even if this version is already live",
        "dry-run": "print each host's plan from its real state and change nothing",
        "json": "print the results as JSON (progress goes quiet)",
    }
)
def deploy(c: Any, version: str = "", parallel: int = 0, force: bool = False, dry_run: bool = False,
           json: bool = False) -> None:
    """Sync the sources to each host, build there and deploy with zero downtime; K hosts at a time, stop at a failure.

    A host with no running stack yet (after `setup`) gets the stack started with this version.
    """

    def go() -> None:
        rc = remote_config(c, parallel or None)
        found = hooks.Hooks.same_for_all([t.settings for t in rc.targets])
        first = rc.targets[0].settings
        target_version = cli.target_version(first, version)
        facts = run_facts(rc, "deploy", target_version)
        said = Progress(quiet=json)
        if dry_run and found.names():
            said.say(f"==> hooks in {found.directory} (not run in a dry run): {', '.join(found.names())}")
        if not dry_run:
            found.pre_deploy(facts, said)
            cli.prepare_build(first, said)

        def work(remote: Remote, progress: Progress) -> RunRecord:
            run = hostrun.dry_run if dry_run else hostrun.deploy
            return run(remote, target_version, force=force, progress=progress,
                       after_switch=found.post_switch(facts, remote.name))

        rolling(c, rc, "deploy", target_version, work, as_json=json,
                finished=None if dry_run else lambda outcomes: found.after(facts, run_outcome(outcomes), said))

    cli.guarded(go)


@task(
    auto_shortflags=False,  # as deploy: `-t` is Fabric's connect timeout
    help={
        "to": "version to go back to (default: each host's release before the live one)",
        "parallel": "hosts rolled back at the same time (default: deploy.parallel, 1)",
    }
)
def rollback(c: Any, to: str = "", parallel: int = 0) -> None:
    """Swap each host back to an earlier release's image with the zero-downtime sequence (no sync, no build)."""

    def go() -> None:
        rc = remote_config(c, parallel or None)
        found = hooks.Hooks.same_for_all([t.settings for t in rc.targets])
        target = check_version(to) if to else None
        facts = run_facts(rc, "rollback", target or "")
        said = Progress()
        found.pre_deploy(facts, said)
        rolling(c, rc, "rollback", to or "to the previous release",
                lambda remote, progress: hostrun.rollback(remote, target, progress,
                                                          after_switch=found.post_switch(facts, remote.name)),
                finished=lambda outcomes: found.after(facts, run_outcome(outcomes), said))

    cli.guarded(go)


def run_facts(rc: RemoteConfig, action: str, version: str) -> hooks.Facts:
    """What the hooks of a run over ``rc``'s hosts are told (the project, or each host's in turn)."""
    projects = dict.fromkeys(t.settings.project for t in rc.targets)
    return hooks.Facts(action, " ".join(projects), version, tuple(t.name for t in rc.targets))


@task(help={"count": "how many records per host", "json": "print as JSON lines"})
def releases(c: Any, count: int = ops.RELEASES_SHOWN, json: bool = False) -> None:
    """List each host's recorded runs (who, when, version, result, duration)."""

    def work(remote: Remote, progress: Progress) -> None:
        records = history(remote.conn, remote.target.settings.state_path)
        if json:
            for line in ops.release_json_lines(records, count, host=remote.name):
                print(line)
        else:
            for line in ops.release_lines(records, count):
                progress.say(line)

    def go() -> None:
        rc = remote_config(c)
        ops.check_count(count)
        for_each_host(c, rc, work)

    cli.guarded(go)


@task(help={"json": "print as JSON"})
def status(c: Any, json: bool = False) -> None:
    """Show each host's app containers (live or not, version, health) and the proxy."""

    def work(remote: Remote, progress: Progress) -> None:
        view = ops.status(remote.conn, remote.target.settings)
        if json:
            print(jsonlib.dumps({"host": remote.name, **view.to_dict()}, sort_keys=True))
            return
        for line in view.lines(host=remote.name):
            progress.say(line)

    cli.guarded(lambda: for_each_host(c, remote_config(c), work))


@task(help={"follow": "keep following (one host only)", "tail": "lines per container"})
def logs(c: Any, follow: bool = False, tail: int = ops.LOG_TAIL) -> None:
    """Show the logs of each host's app and proxy containers."""

    def work(remote: Remote, progress: Progress) -> None:
        engine = Engine(remote.conn, remote.target.settings)
        argv, env = engine.backend.logs_command(tail, follow)
        progress.say(f"==> logs of {engine.settings.project} on {remote.name}")
        if follow:
            follow_remote(remote.conn, command_line(argv, env))
            return
        result = remote.conn.run(command_line(argv, env), pty=False, in_stream=False, warn=True)
        if result.exited != 0:
            raise HandoverError(f"{remote.name}: the logs command exited {result.exited}")

    def go() -> None:
        rc = remote_config(c)
        ops.check_tail(tail)
        if follow and len(rc.targets) > 1:
            raise ConfigError("--follow works with one host; give one -H host")
        for_each_host(c, rc, work)

    cli.guarded(go)


class FollowRunner(RemoteRunner):  # type: ignore[misc]
    """Fabric's remote runner for a command that runs until it is interrupted (``logs --follow``).

    The command gets a pty, so the remote side ends with the session: the first Ctrl-C is sent as
    ``^C`` through the pty (SIGINT to the remote command, which exits), a second one closes the
    session, and a session that ends in any way (also a killed ``fab`` or a dropped connection)
    hangs the pty up (SIGHUP). Without a pty, Ctrl-C never reaches the remote command and it keeps
    running on the host after the session is gone.
    """

    interrupted = False

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        if self.interrupted:
            raise interrupt  # ends the session; the pty's hang-up ends the remote command
        self.interrupted = True
        super().send_interrupt(interrupt)


def follow_remote(conn: Any, line: str) -> None:
    """Run ``line`` on ``conn`` until it ends or Ctrl-C (then raise ``KeyboardInterrupt``)."""
    conn.open()
    runner = FollowRunner(context=conn, inline_env=conn.inline_ssh_env)
    result = runner.run(line, pty=True, in_stream=False, warn=True)
    if runner.interrupted:
        raise KeyboardInterrupt
    if result.exited != 0:
        raise HandoverError(f"the logs command exited {result.exited}")


@task(help={"reason": "why deploys are held (shown to whoever is refused)"})
def lock(c: Any, reason: str = "") -> None:
    """Take each host's deploy lock and keep it: deploys and rollbacks are refused until `unlock`."""

    def work(remote: Remote, progress: Progress) -> None:
        held = DeployLock(remote.conn, remote.target.settings.state_path)
        held.acquire(lock_info("lock", via=hostrun.FRONT_DOOR, reason=reason))
        progress.say(f"lock taken on {remote.name} ({held.path}); release it with the unlock task")

    cli.guarded(lambda: for_each_host(c, remote_config(c), work))


@task
def unlock(c: Any) -> None:
    """Release each host's deploy lock (a stale one, or one taken with `lock`); only when no deploy runs."""

    def work(remote: Remote, progress: Progress) -> None:
        held = DeployLock(remote.conn, remote.target.settings.state_path)
        holder = held.holder()
        held.release()
        progress.say(f"{remote.name}: {ops.unlock_message(holder)}")

    cli.guarded(lambda: for_each_host(c, remote_config(c), work))


@task
def certs(c: Any) -> None:
    """Put a renewed TLS certificate and key (deploy.tls_*, local files) live on each host: checked, nginx -t, no
    reload."""

    def work(remote: Remote, progress: Progress) -> None:
        engine = Engine(remote.conn, remote.target.settings, progress)
        reloaded = engine.refresh_proxy()
        renewed = bool(getattr(getattr(engine.proxy, "tls", None), "renewed", False))
        outcome = cli.certs_outcome(remote.target.settings, engine.proxy, renewed=renewed, reloaded=reloaded)
        progress.say(f"{remote.name}: {outcome}")

    cli.guarded(lambda: for_each_host(c, remote_config(c), work))


@task
def down(c: Any) -> None:
    """Stop and remove each host's whole stack (app and proxy containers, network); releases stay."""

    def work(remote: Remote, progress: Progress) -> None:
        Engine(remote.conn, remote.target.settings).down()
        front.release(remote.conn, remote.target.settings, progress)
        progress.say(f"{remote.name}: stack removed")

    cli.guarded(lambda: for_each_host(c, remote_config(c), work))


@task(name="front", help={"stop": "stop and remove the front's container (the registry of apps stays)",
                          "show": "only show where the front listens and which app each host name reaches"})
def front_(c: Any, stop: bool = False, show: bool = False) -> None:
    """Start each host's shared front (several apps on one host, by host name) or bring it up to date."""

    def work(remote: Remote, progress: Progress) -> None:
        for line in front.front_task(remote.conn, remote.target.settings, progress, stop=stop, show=show):
            progress.say(f"{remote.name}: {line}")

    cli.guarded(lambda: for_each_host(c, remote_config(c), work))
