"""Invoke tasks: the local stack (`inv local.up`, `inv local.deploy`, ...) and the probe.

Settings come from Invoke's layered config under the `deploy` key: config/deploy.yaml holds the
defaults; invoke.yaml, INVOKE_DEPLOY_* variables and `-f FILE` override them.
"""

from __future__ import annotations

import json
import sys
import time

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from handover import cli, images, ops
from handover.engine import DeployOptions, Engine
from handover.progress import Progress
from handover.record import RunRecord, history
from handover.settings import Settings
from handover.shell import command_line
from handover.version import source_version

PROBE_WARMUP_SECONDS = 2.0  # steady traffic before the deploy, for the comparison
PROBE_SETTLE_SECONDS = 1.0


def _settings(c: Context) -> Settings:
    return cli.settings_from(c.config)


def _engine(c: Context) -> Engine:
    return Engine(c, _settings(c), Progress())


@task(help={"version": "version tag for the app image (default: derived from server/ sources)"})
def up(c: Context, version: str | None = None) -> None:
    """Build and start the stack (proxy + app) and wait until it is healthy; rerunning converges."""

    def go() -> None:
        s = _settings(c)
        progress = Progress()
        t0 = time.monotonic()
        images.build_wheelhouse(cli.SERVER_DIR, progress)
        Engine(c, s, progress).up(version or source_version(cli.SERVER_DIR))
        progress.say(f"==> serving on http://{s.http_bind}:{s.http_port}/  (total {time.monotonic() - t0:.1f} s)")

    cli.guarded(go)


@task(
    help={
        "version": "version to deploy (default: derived from server/ sources)",
        "dry-run": "print the plan from the real state and change nothing",
        "force": "deploy even if this version is already live",
        "probe": "run the load probe during the deploy and report what it saw",
        "json": "print the release record as JSON (progress goes quiet)",
        "quiet": "print only errors and the final report",
        "fault": "start the new version with APP_FAULT set (unhealthy, crash or exit-after:SECONDS), to rehearse "
                 "a rollback",
    }
)
def deploy(
    c: Context,
    version: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    probe: bool = False,
    json: bool = False,
    quiet: bool = False,
    fault: str = "",
) -> None:
    """Zero-downtime deploy on the local stack: start beside, health-gate, switch the proxy, drain, record."""

    def go() -> RunRecord:
        s = _settings(c)
        progress = Progress(quiet=quiet or json)
        if not dry_run:
            images.build_wheelhouse(cli.SERVER_DIR, progress)
        engine = Engine(c, s, progress)
        options = DeployOptions(
            version=version or source_version(cli.SERVER_DIR),
            dry_run=dry_run,
            force=force,
            app_env={"APP_FAULT": fault} if fault else {},
        )
        if not probe:
            return engine.deploy(options)
        from handover.probe import ProbeProcess, ProbeSettings

        load = ProbeProcess(ProbeSettings(base_url=f"http://{s.http_bind}:{s.http_port}"))
        load.start()

        def add_probe(rec: RunRecord) -> None:
            load.close_window()
            time.sleep(PROBE_SETTLE_SECONDS)
            rec.probe = load.stop().to_dict()

        options.before_record = add_probe
        try:
            time.sleep(PROBE_WARMUP_SECONDS)
            load.open_window("deploy")
            rec = engine.deploy(options)
        finally:
            load.close_window()
            report = load.stop()
        if not json:
            print(report.format_table())
        if not report.ok:
            print("error: the probe saw failures during the deploy", file=sys.stderr, flush=True)
            rec.finish("failed", "the probe saw failures during the deploy")
        return rec

    rec = cli.guarded(go)
    cli.print_record(rec, json)
    if rec.result not in ("success", "unchanged", "planned"):
        raise Exit(code=1)


@task(help={"version": "the earlier version to go back to (default: the one before the live one)"})
def rollback(c: Context, version: str | None = None) -> None:
    """Swap back to an earlier release's image with the same zero-downtime sequence (no build)."""

    def go() -> RunRecord:
        engine = _engine(c)
        target = version or ops.previous_version(c, engine.settings)
        return engine.deploy(DeployOptions(version=target, build=False, action="rollback"))

    cli.print_record(cli.guarded(go), False)


@task
def down(c: Context) -> None:
    """Stop and remove the whole local stack (app and proxy containers, network)."""
    cli.guarded(lambda: _engine(c).down())
    print("stack removed")


@task(help={"json": "print as JSON"})
def status(c: Context, json: bool = False) -> None:
    """Show the app containers (live or not, version, health) and the proxy."""

    def go() -> None:
        view = ops.status(c, _settings(c))
        print(_json_dumps(view.to_dict()) if json else "\n".join(view.lines()))

    cli.guarded(go)


def _json_dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


@task(help={"follow": "keep following", "tail": "lines per container"})
def logs(c: Context, follow: bool = False, tail: int = ops.LOG_TAIL) -> None:
    """Show the logs of the app and proxy containers."""
    def go() -> None:
        argv, env = _engine(c).backend.logs_command(ops.check_tail(tail), follow)
        c.run(command_line(argv, env), pty=False, in_stream=False)

    cli.guarded(go)


@task(help={"count": "how many records", "json": "print as JSON lines"})
def releases(c: Context, count: int = ops.RELEASES_SHOWN, json: bool = False) -> None:
    """List the recorded runs (who, when, version, result, duration)."""

    def go() -> None:
        records = history(c, _settings(c).state_path)
        for line in ops.release_json_lines(records, count) if json else ops.release_lines(records, count):
            print(line)

    cli.guarded(go)


@task
def unlock(c: Context) -> None:
    """Release a stale deploy lock (only when no deploy is running)."""

    def go() -> None:
        engine = _engine(c)
        holder = engine.lock.holder()
        engine.lock.release()
        print(f"lock released (was held by {holder})" if holder else "no lock was held")

    cli.guarded(go)


@task(
    help={
        "url": "base URL (default: the local stack)",
        "duration": "seconds to run",
        "rate": "HTTP requests per second (open loop)",
        "ws-clients": "WebSocket clients",
        "json": "print the report as JSON",
    }
)
def probe(c: Context, url: str = "", duration: float = 10.0, rate: float = 200.0, ws_clients: int = 100,
          json: bool = False) -> None:
    """Constant-rate HTTP + WebSocket load that reports every failure (non-zero exit on any)."""
    from handover.probe import Probe, ProbeSettings

    s = _settings(c)
    base = url or f"http://{s.http_bind}:{s.http_port}"
    load = Probe(ProbeSettings(base_url=base, rate=rate, ws_clients=ws_clients))
    load.start()
    try:
        time.sleep(min(max(duration, 0.0), 3600.0))
    finally:
        report = load.stop()
    print(_json_dumps(report.to_dict()) if json else report.format_table())
    if not report.ok:
        raise Exit(code=1)


@task(
    help={
        "deploys": "consecutive deploys per sequence",
        "rate": "HTTP requests per second (open loop)",
        "ws-clients": "WebSocket clients",
        "only": "run just one sequence: engine or simple",
        "port": "port of the benchmark's own stack",
    }
)
def bench(c: Context, deploys: int = 20, rate: float = 200.0, ws_clients: int = 100, only: str = "",
          port: int = 18100) -> None:
    """K deploys under the probe: this engine vs the simple scale/reload/stop sequence, side by side."""
    from dataclasses import replace

    from handover import bench as bench_mod
    from handover.probe import ProbeSettings

    def go() -> list[bench_mod.SequenceResult]:
        s = replace(_settings(c), project="handover-bench", http_port=port, state_dir=".state-bench")
        progress = Progress()
        quiet = Progress(quiet=True)
        images.build_wheelhouse(cli.SERVER_DIR, progress)
        engine = Engine(c, s, progress)
        engine.down()
        engine.up(source_version(cli.SERVER_DIR))
        engine.progress = quiet
        load = ProbeSettings(base_url=f"http://{s.http_bind}:{s.http_port}", rate=rate, ws_clients=ws_clients)
        results = []
        try:
            if only in ("", "engine"):
                progress.say(f"==> {deploys} deploys with this engine")
                results.append(bench_mod.run_sequence("engine", bench_mod.engine_deploy(engine), deploys, load,
                                                      progress.say))
            if only in ("", "simple"):
                progress.say(f"==> {deploys} deploys with the simple sequence (scale 2, reload, stop, scale 1, reload)")
                bench_mod.use_simple_upstream(engine)
                results.append(bench_mod.run_sequence("simple", bench_mod.simple_deploy(engine), deploys, load,
                                                      progress.say))
        finally:
            engine.progress = progress
            engine.down()
        return results

    results = cli.guarded(go)
    print(bench_mod.format_comparison(results, rate, ws_clients))
    for r in results:
        if r.name == "engine" and (r.errors or not (r.report and r.report.ok)):
            raise Exit(code=1)


local = Collection("local", up, deploy, rollback, down, status, logs, releases, unlock)
ns = Collection(local, probe, bench)
ns.configure(cli.defaults())


@task(help={"deploys": "faulted runs (each followed by a clean deploy)", "seed": "replay a run (default: random)"})
def faults(c: Context, deploys: int = 100, seed: int = -1) -> None:
    """Deploys and rollbacks under the probe, one random fault each, invariants checked after every run."""
    import random

    from tests.faultrun import FaultRunError, run_faults

    if deploys < 1:
        raise Exit("error: --deploys must be at least 1", code=2)
    chosen = seed if seed >= 0 else random.SystemRandom().randrange(1 << 32)
    try:
        report = run_faults(chosen, deploys)
    except FaultRunError as exc:
        raise Exit(f"error: {exc}", code=2) from None
    print(report.format())
    if not report.ok:
        raise Exit(code=1)


ns.add_task(faults)
