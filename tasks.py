"""Invoke tasks: the local stack (`inv local.up`, `inv local.deploy`, ...) and the probe.

Settings come from Invoke's layered config under the `deploy` key: config/deploy.yaml holds the
defaults; invoke.yaml, INVOKE_DEPLOY_* variables and `-f FILE` override them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.runners import Local
from invoke.tasks import task

from handover import cli, hooks, images, ops
from handover.engine import DeployOptions, Engine
from handover.errors import ConfigError, HandoverError
from handover.progress import Progress
from handover.proxies import front
from handover.record import RunRecord, history
from handover.settings import Settings, check_project, check_version, default_app_image
from handover.shell import command_line
from handover.steps import Step
from handover.version import source_version

PROBE_WARMUP_SECONDS = 2.0  # steady traffic before the deploy, for the comparison
PROBE_SETTLE_SECONDS = 1.0
PROBE_MAX_SECONDS = 3600.0
LOCAL_HOST = "local"  # the host name in the local stack's records
PREPARE_STEP = "prepare"  # a deploy that stopped before the engine ran (config, version, wheels)
ENGINE_SEQUENCE, SIMPLE_SEQUENCE = "engine", "simple"
TCP_SEQUENCE, TCP_RELOAD_SEQUENCE = "tcp", "tcp-reload"  # the demo app as a TCP app: njs switch, reload switch
SWARM_SEQUENCE = "swarm"  # deploy.backend swarm on a swarm of its own (--swarm-lab)
BENCH_SEQUENCES = (ENGINE_SEQUENCE, SIMPLE_SEQUENCE, TCP_SEQUENCE, TCP_RELOAD_SEQUENCE, SWARM_SEQUENCE)
MAX_PORT = 65535
BENCH_PROJECT = "handover-bench"
BENCH_STATE_DIR = ".state-bench"


def _settings(c: Context) -> Settings:
    return cli.settings_from(c.config)


def _engine(c: Context) -> Engine:
    return Engine(c, _settings(c), Progress())


@task(help={"version": "version tag for the app image (default: src-<hash> of deploy.app_build; required for "
                        "a ready-made image)"})
def up(c: Context, version: str | None = None) -> None:
    """Build and start the stack (proxy + app) and wait until it is healthy; rerunning converges."""

    def go() -> None:
        s = _settings(c)
        progress = Progress()
        t0 = time.monotonic()
        front.claim(c, s, progress)
        target = cli.target_version(s, version)
        cli.prepare_build(s, progress)
        Engine(c, s, progress).up(target)
        progress.say(f"==> serving on {cli.public_url(s)}/  (total {time.monotonic() - t0:.1f} s)")

    cli.guarded(go)


# No short flags: `inv -f FILE` is a config file, so `-f` must not also mean --force after the task name.
@task(
    auto_shortflags=False,
    help={
        "version": "version to deploy (default: src-<hash> of deploy.app_build; required for a ready-made image)",
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

    stored: list[RunRecord] = []  # the engine's record, also when the run fails

    def go() -> RunRecord:
        s = _settings(c)
        progress = Progress(quiet=quiet or json)
        target = cli.target_version(s, version)
        stored.append(RunRecord(action="deploy", version=target, project=s.project, host=LOCAL_HOST))
        facts = hooks.Facts("deploy", s.project, target, (LOCAL_HOST,))
        return with_hooks(hooks.Hooks.find(s), facts, progress, dry_run, stored,
                          lambda after_switch: attempt(s, progress, target, after_switch))

    def attempt(s: Settings, progress: Progress, target: str, after_switch: list[Step]) -> RunRecord:
        if not dry_run:
            front.claim(c, s, progress)
            cli.prepare_build(s, progress)
        engine = Engine(c, s, progress)
        options = DeployOptions(
            version=target,
            dry_run=dry_run,
            force=force,
            app_env={"APP_FAULT": fault} if fault else {},
            before_record=stored.append,
            after_switch=after_switch,
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
            stored.append(rec)

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

    def failed(message: str) -> None:
        if not json:
            return
        rec = stored[-1] if stored else RunRecord(action="deploy", version=version or "", project="",
                                                  host=LOCAL_HOST)
        if rec.result == "running":  # stopped before the engine had a record of its own
            rec.fail(PREPARE_STEP, message)
        cli.print_record(rec, True)

    rec = cli.guarded(go, on_error=failed)
    cli.print_record(rec, json)
    if rec.result not in ("success", "unchanged", "planned"):
        raise Exit(code=1)


@task(auto_shortflags=False,
      help={"version": "the earlier version to go back to (default: the one before the live one)"})
def rollback(c: Context, version: str | None = None) -> None:
    """Swap back to an earlier release's image with the same zero-downtime sequence (no build)."""

    stored: list[RunRecord] = []

    def go() -> RunRecord:
        engine = _engine(c)
        s = engine.settings
        target = check_version(version or ops.previous_version(c, s))
        stored.append(RunRecord(action="rollback", version=target, project=s.project, host=LOCAL_HOST))
        facts = hooks.Facts("rollback", s.project, target, (LOCAL_HOST,))

        def body(after_switch: list[Step]) -> RunRecord:
            return engine.deploy(DeployOptions(version=target, build=False, action="rollback",
                                               before_record=stored.append, after_switch=after_switch))

        return with_hooks(hooks.Hooks.find(s), facts, engine.progress, False, stored, body)

    cli.print_record(cli.guarded(go), False)


def with_hooks(found: hooks.Hooks, facts: hooks.Facts, progress: Progress, dry_run: bool, stored: list[RunRecord],
               body: Callable[[list[Step]], RunRecord]) -> RunRecord:
    """A local deploy or rollback between its hooks: ``pre-deploy`` first (its failure stops the run,
    recorded as failed at that hook in ``stored``), ``body`` with the post-switch hook as a step, then
    ``post-deploy`` or ``deploy-failed`` from the run's record. A dry run runs no hook."""
    if dry_run:
        if found.names():
            progress.say(f"==> hooks in {found.directory} (not run in a dry run): {', '.join(found.names())}")
        return body(found.post_switch(facts, LOCAL_HOST))
    try:
        found.pre_deploy(facts, progress)
    except hooks.HookFailed as exc:
        stored[-1].fail(hooks.PRE_DEPLOY, str(exc))
        raise
    try:
        rec = body(found.post_switch(facts, LOCAL_HOST))
    except Exception as exc:
        rec = stored[-1]
        if rec.result == "running":  # stopped before the engine had a record of its own
            rec.fail(PREPARE_STEP, str(exc) or type(exc).__name__)
        found.after(facts, hooks.Outcome.of_record(rec), progress)
        raise
    found.after(facts, hooks.Outcome.of_record(rec), progress)
    return rec


@task
def down(c: Context) -> None:
    """Stop and remove the whole local stack (app and proxy containers, network); the front stops routing to it."""

    def go() -> None:
        engine = _engine(c)
        engine.down()
        front.release(c, engine.settings, engine.progress)

    cli.guarded(go)
    print("stack removed")


@task(help={"stop": "stop and remove the front's container (the registry of apps stays)",
            "show": "only show where the front listens and which app each host name reaches"})
def front_(c: Context, stop: bool = False, show: bool = False) -> None:
    """Start the shared front (several apps on one host, by host name) or bring it up to date with its apps."""
    for line in cli.guarded(lambda: front.front_task(c, _settings(c), Progress(), stop=stop, show=show)):
        print(line)


@task(help={"json": "print as JSON"})
def status(c: Context, json: bool = False) -> None:
    """Show the app containers (live or not, version, health) and the proxy."""

    def go() -> None:
        view = ops.status(c, _settings(c))
        print(_json_dumps(view.to_dict()) if json else "\n".join(view.lines()))

    cli.guarded(go)


def _json_dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


class FollowLocal(Local):
    """Invoke's local runner that ends the command on Ctrl-C (``logs --follow`` runs until then).

    A terminal's Ctrl-C reaches the command too (same process group), but a SIGINT sent to this
    process alone would not: the first interrupt is passed on as SIGINT, a second one kills it.
    """

    interrupted = False

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        if self.interrupted:
            self.kill()
            return
        self.interrupted = True
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)


@task(help={"follow": "keep following", "tail": "lines per container"})
def logs(c: Context, follow: bool = False, tail: int = ops.LOG_TAIL) -> None:
    """Show the logs of the app and proxy containers."""
    def go() -> None:
        engine = _engine(c)
        argv, env = engine.backend.logs_command(ops.check_tail(tail), follow)
        runner = FollowLocal(context=c)
        result = runner.run(command_line(argv, env), pty=False, in_stream=False, warn=True)
        if runner.interrupted:
            raise KeyboardInterrupt
        if result is not None and result.exited != 0:
            engine.backend.diagnose()  # names an unreachable engine
            raise HandoverError(f"the logs command exited {result.exited}")

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
        print(ops.unlock_message(holder))

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
    from handover.probe import Probe, ProbeReport, ProbeSettings

    def go() -> ProbeReport:
        if not 0 < duration <= PROBE_MAX_SECONDS:
            raise ConfigError(f"--duration: expected seconds above 0, up to {PROBE_MAX_SECONDS:g}, got {duration:g}")
        if url:
            base = url
        else:
            s = _settings(c)
            base = f"http://{s.http_bind}:{s.http_port}"
        load = Probe(ProbeSettings(base_url=base, rate=rate, ws_clients=ws_clients))
        load.start()
        try:
            time.sleep(duration)
        finally:
            report = load.stop()
        return report

    report = cli.guarded(go)
    print(_json_dumps(report.to_dict()) if json else report.format_table())
    if not report.ok:
        raise Exit(code=1)


def bench_settings(s: Settings, port: int, project: str = BENCH_PROJECT) -> Settings:
    """The benchmark's stack: its own project, image name, state and port, so the configured stack
    (and its images) are never touched."""
    return replace(s, project=project, app_image=default_app_image(project), http_port=port,
                   state_dir=f"{BENCH_STATE_DIR}-{project}" if project != BENCH_PROJECT else BENCH_STATE_DIR)


@task(
    help={
        "deploys": "consecutive deploys per sequence",
        "rate": "HTTP requests per second (open loop)",
        "ws-clients": "WebSocket clients",
        "only": "run just these sequences, comma-separated: engine, simple (the app on its unix socket), "
                "tcp, tcp-reload (the app on TCP port 8000: the engine's switch, and nginx reloads), swarm "
                "(Swarm updates of a stack on the swarm of --swarm-lab)",
        "port": "port of the benchmark's own stack",
        "project": "compose project of the benchmark's own stack",
        "same-version": "deploy the live version again each time (--force; its image is on the host, nothing is "
                        "built; swarm: Swarm replaces the tasks all the same), instead of a new tag each time",
        "swarm-lab": "the state file of a swarm (lab.json, from `scripts/swarm_lab.py up`) for the swarm sequence; "
                     "given, the sequences run by default include swarm",
    }
)
def bench(c: Context, deploys: int = 20, rate: float = 200.0, ws_clients: int = 100, only: str = "",
          port: int = 18100, project: str = BENCH_PROJECT, same_version: bool = False, swarm_lab: str = "") -> None:
    """K deploys under the probe per sequence: this engine vs the simple scale/reload/stop sequence
    (the app on its unix socket), then the engine's TCP switch vs reloading nginx (the app on TCP), then
    Swarm updates of a stack on a swarm (--swarm-lab; see handover/swarm_bench.py)."""
    from handover import bench as bench_mod
    from handover import swarm_bench
    from handover.probe import ProbeSettings

    def go() -> list[bench_mod.SequenceResult]:
        every = [n for n in BENCH_SEQUENCES if n != SWARM_SEQUENCE or swarm_lab]
        wanted = [name for name in only.split(",") if name] if only else every
        unknown = [name for name in wanted if name not in BENCH_SEQUENCES]
        if unknown:
            raise ConfigError(f"--only: expected some of {', '.join(BENCH_SEQUENCES)}, got {unknown[0]!r}")
        if deploys < 1:
            raise ConfigError(f"--deploys: expected a whole number of deploys, 1 or more, got {deploys}")
        if not 1 <= port <= MAX_PORT:
            raise ConfigError(f"--port: expected a port from 1 to {MAX_PORT}, got {port}")
        s = bench_settings(_settings(c), port, check_project(project))
        lab = swarm_bench.load_lab(swarm_lab) if SWARM_SEQUENCE in wanted else None
        if lab is not None:
            swarm_bench.check_lab(c, s, lab, swarm_lab)
        progress = Progress()
        quiet = Progress(quiet=True)
        images.build_wheelhouse(cli.SERVER_DIR, progress)
        load = ProbeSettings(base_url=f"http://{s.http_bind}:{s.http_port}", rate=rate, ws_clients=ws_clients)
        results: list[bench_mod.SequenceResult] = []
        socket_runs = [n for n in (ENGINE_SEQUENCE, SIMPLE_SEQUENCE) if n in wanted]
        tcp_runs = [n for n in (TCP_SEQUENCE, TCP_RELOAD_SEQUENCE) if n in wanted]
        version = source_version(cli.SERVER_DIR)
        again = version if same_version else ""
        if socket_runs:
            engine = Engine(c, replace(s, app_port=0, app_health=""), progress)
            engine.down()
            engine.up(version)
            engine.progress = quiet
            try:
                if ENGINE_SEQUENCE in socket_runs:
                    progress.say(f"==> {deploys} deploys with this engine (the app on its unix socket)")
                    results.append(bench_mod.run_sequence(ENGINE_SEQUENCE, bench_mod.engine_deploy(engine, force=True),
                                                          deploys, load, progress.say, again))
                if SIMPLE_SEQUENCE in socket_runs:
                    progress.say(f"==> {deploys} deploys with the simple sequence (scale 2, reload, stop, scale 1, "
                                 "reload)")
                    bench_mod.use_simple_upstream(engine)
                    results.append(bench_mod.run_sequence(SIMPLE_SEQUENCE, bench_mod.simple_deploy(engine), deploys,
                                                          load, progress.say, again))
            finally:
                engine.progress = progress
                engine.down()
        for name in tcp_runs:
            engine = bench_mod.tcp_engine(c, s, progress, reload=name == TCP_RELOAD_SEQUENCE)
            engine.down()
            engine.up(version)
            engine.progress = quiet
            try:
                if isinstance(engine.proxy, bench_mod.ReloadingTcpProxy):
                    engine.proxy.load_servers()
                progress.say(f"==> {deploys} deploys of the app on TCP port {engine.settings.app_port} "
                             f"({engine.proxy.switch_words})")
                results.append(bench_mod.run_sequence(name, bench_mod.engine_deploy(engine, force=True), deploys,
                                                      load, progress.say, again))
            finally:
                engine.progress = progress
                engine.down()
        if lab is not None:
            results.append(swarm_bench.run_swarm(c, s, lab, deploys, load, progress, same_version=same_version))
        return results

    results = cli.guarded(go)
    print(bench_mod.format_comparison(results, rate, ws_clients))
    print()
    print(bench_mod.format_per_deploy(results))
    for r in results:
        if r.name in (ENGINE_SEQUENCE, TCP_SEQUENCE, SWARM_SEQUENCE) and (r.errors or not (r.report and r.report.ok)):
            raise Exit(code=1)


@task
def certs(c: Context) -> None:
    """Install a renewed TLS certificate and key (deploy.tls_*): checked, `nginx -t`, then a reload; no deploy."""

    def go() -> None:
        engine = _engine(c)
        reloaded = engine.refresh_proxy()
        renewed = bool(getattr(getattr(engine.proxy, "tls", None), "renewed", False))
        print(cli.certs_outcome(engine.settings, engine.proxy, renewed=renewed, reloaded=reloaded))

    cli.guarded(go)


local = Collection("local", up, deploy, rollback, down, status, logs, releases, unlock, certs)
local.add_task(front_, name="front")
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
