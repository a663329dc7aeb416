"""Benchmark: K deploys under the probe, this engine against the simple sequence, on one stack.

The simple sequence is the well-known one this tool grew from: scale the app to 2, reload nginx
(whose upstream is the plain service name, ``server app:8000``), stop the old container, scale
back to 1, reload again. Both run the same app image and the same nginx on the same machine, in
the same run, under the same constant-rate load.

For an app on a TCP port (``deploy.app_port``) two switches are measured the same way: the one the
engine uses (njs reads the live targets from a file a deploy renames, no reload) and the
well-known one, :class:`ReloadingTcpProxy` (rewrite ``server <ip>:<port>`` and reload nginx).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .backends import Instance, make_backend
from .backends.compose import APP_PORT, APP_SERVICE
from .engine import DeployOptions, Engine
from .errors import HandoverError, HealthCheckFailed
from .probe import ProbeProcess, ProbeReport, ProbeSettings
from .progress import Progress
from .proxies import proxy_files
from .proxies.nginx import FALLBACK_VARIABLE, TARGET_VARIABLE, UPSTREAM_NAME, NginxProxy
from .settings import Settings
from .shell import Runner

TCP_HEALTH_PATH = "/healthz"  # the demo app's health path, when the configuration names none

SETTLE_SECONDS = 1.0  # steady traffic between deploys (outside any window)
WARMUP_SECONDS = 2.0


@dataclass
class DeployTiming:
    wall: float
    # From starting the new container until Docker reports it healthy (a Swarm update: see
    # handover/swarm_bench.py); None when that cannot be told.
    to_healthy: float | None
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step, from the release record

    @property
    def overhead(self) -> float | None:
        return None if self.to_healthy is None else self.wall - self.to_healthy


@dataclass
class SequenceResult:
    name: str
    timings: list[DeployTiming] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    report: ProbeReport | None = None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _known(values: list[float | None]) -> list[float]:
    """The values that were measured (a mean or max over them; "-" when none was)."""
    return [v for v in values if v is not None]


def run_sequence(name: str, deploy: Callable[[str], DeployTiming], deploys: int, settings: ProbeSettings,
                 say: Callable[[str], None], same_version: str = "",
                 versions: Sequence[str] = ()) -> SequenceResult:
    """``deploys`` deploys under the probe, each of a new tag (``bench-<name>-...``: a build from the
    cache each time), or, with ``same_version``, each of that version again (its image is on the host),
    or, with ``versions``, of each of those in turn (made ready before the probe starts)."""
    result = SequenceResult(name)
    probe = ProbeProcess(settings)
    probe.start()
    try:
        time.sleep(WARMUP_SECONDS)
        for n in range(deploys):
            version = versions[n] if versions else same_version or f"bench-{name}-{time.strftime('%H%M%S')}-{n}"
            try:
                with probe.window(f"deploy-{n}"):
                    timing = deploy(version)
            except HandoverError as exc:
                result.errors.append(f"deploy {n}: {str(exc).splitlines()[0]}")
                say(f"    {name} deploy {n + 1}/{deploys}: FAILED {result.errors[-1]}")
                break
            result.timings.append(timing)
            say(f"    {name} deploy {n + 1}/{deploys}: {timing.wall:.2f} s (healthy after {_f(timing.to_healthy)} s)")
            time.sleep(SETTLE_SECONDS)
    finally:
        result.report = probe.stop()
    return result


def engine_deploy(engine: Engine, *, force: bool = False) -> Callable[[str], DeployTiming]:
    """A deploy by the engine (``force``: also of the version that is live, as ``--force``)."""

    def deploy(version: str) -> DeployTiming:
        rec = engine.deploy(DeployOptions(version=version, host="bench", force=force))
        healthy = sum(s.seconds for s in rec.steps if s.name in ("start", "health"))
        steps: dict[str, float] = {}
        for s in rec.steps:
            steps[s.name] = steps.get(s.name, 0.0) + s.seconds
        return DeployTiming(rec.seconds, healthy, steps)

    return deploy


def simple_deploy(engine: Engine) -> Callable[[str], DeployTiming]:
    """scale to 2, reload, stop old, scale to 1, reload."""
    backend, proxy = engine.backend, engine.proxy

    def deploy(version: str) -> DeployTiming:
        t0 = time.monotonic()
        old = [c for c in backend.instances() if c.status == "running"]
        backend.build(version)
        started = time.monotonic()
        new = backend.start(version, 1, {})
        try:
            engine.wait_healthy(new)
        except HealthCheckFailed:
            backend.remove(new)
            raise
        healthy = time.monotonic() - started
        proxy.reload()
        backend.stop(old, engine.settings.stop_grace_period)
        backend.remove(old)
        # The well-known sequence's last move: `--scale app=1` (here a no-op: the old ones are gone).
        backend.start(version, 0, {})
        proxy.reload()
        return DeployTiming(time.monotonic() - t0, healthy)

    return deploy


def render_tcp_servers(live: Sequence[str], fallback: Sequence[str]) -> str:
    """An upstream of ``ip:port`` servers (the old ones as backups) for the reloading TCP switch."""
    lines = [f"upstream {UPSTREAM_NAME} {{"]
    lines += [f"    server {a} max_fails=0;" for a in live] or ["    server 127.0.0.1:1 max_fails=0;"]
    lines += [f"    server {a} max_fails=0 backup;" for a in fallback]
    lines += ["}", f"map $uri {TARGET_VARIABLE} {{ default {UPSTREAM_NAME}; }}",
              f'map $uri {FALLBACK_VARIABLE} {{ default ""; }}', ""]
    return "\n".join(lines)


class ReloadingTcpProxy(NginxProxy):
    """The well-known switch for a TCP app, measured as the baseline: each switch rewrites the
    upstream's ``server <container ip>:<port>`` lines (old containers as backups during the check),
    validates with ``nginx -t`` and reloads nginx. targets.json is still written, for bookkeeping
    (which containers are live); nginx does not read it here."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.switch_words = "rewrite nginx's upstream servers, validate, reload"

    def render(self, slots: int) -> str:
        current = self.targets()
        return render_tcp_servers(current["live"], current["fallback"])

    def load_servers(self) -> None:
        """Write the upstream of the targets now live and reload (also turns a stack over to this switch)."""
        self.write_upstream(self.render(self.settings.replicas))
        if self.running() is not None:
            self.test_config()
            self.reload()

    def point(self, instances: Sequence[Instance], fallback: Sequence[Instance] = ()) -> None:
        super().point(instances, fallback)
        self.load_servers()

    def drop_fallback(self) -> None:
        had = self.targets()["fallback"]
        super().drop_fallback()
        if had:
            self.load_servers()


def tcp_settings(settings: Settings) -> Settings:
    """The benchmark's stack with the demo app as a TCP app (its own port, its health path)."""
    return replace(settings, app_port=settings.app_port or APP_PORT,
                   app_health=settings.app_health or TCP_HEALTH_PATH)


def tcp_engine(runner: Runner, settings: Settings, progress: Progress, *, reload: bool = False) -> Engine:
    """An engine for the TCP stack, with the engine's switch or (``reload``) the reloading one."""
    s = tcp_settings(settings)
    if not reload:
        return Engine(runner, s, progress)
    backend = make_backend(runner, s)
    return Engine(runner, s, progress, backend=backend,
                  proxy=ReloadingTcpProxy(runner, s, backend, files=proxy_files(runner, s)))


def use_simple_upstream(engine: Engine) -> None:
    """Turn the stack into the simple setup: upstream by service name, no socket links."""
    engine.proxy.route_to_service(APP_SERVICE, APP_PORT)


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def format_comparison(results: list[SequenceResult], rate: float, ws_clients: int) -> str:
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fn: Callable[[SequenceResult], object]) -> None:
        rows.append((label, [str(fn(r)) for r in results]))

    def http(r: SequenceResult) -> dict[str, object]:
        assert r.report is not None
        return r.report.to_dict()["http"]  # type: ignore[return-value]

    def ws(r: SequenceResult) -> dict[str, object]:
        assert r.report is not None
        return r.report.to_dict()["ws"]  # type: ignore[return-value]

    def lat(r: SequenceResult, part: str, key: str) -> str:
        return _ms(http(r)[part]["latency"][key])  # type: ignore[index]

    def ratio(r: SequenceResult) -> str:
        steady = http(r)["steady"]["latency"]["p99_ms"]  # type: ignore[index]
        window = http(r)["all_windows"]["latency"]["p99_ms"]  # type: ignore[index]
        return "-" if not steady or window is None else f"{float(window) / float(steady):.2f}x"

    add("deploys completed", lambda r: f"{len(r.timings)}" + (f" ({len(r.errors)} failed)" if r.errors else ""))
    add("HTTP requests", lambda r: http(r)["scheduled"])
    add("HTTP failed", lambda r: http(r)["failure_total"])
    add("  by kind", lambda r: ", ".join(f"{k} {v}" for k, v in http(r)["failures"].items() if v) or "-")  # type: ignore[attr-defined]
    add("steady p50 / p99 ms", lambda r: f"{lat(r, 'steady', 'p50_ms')} / {lat(r, 'steady', 'p99_ms')}")
    add("deploy p50 / p99 ms", lambda r: f"{lat(r, 'all_windows', 'p50_ms')} / {lat(r, 'all_windows', 'p99_ms')}")
    add("deploy p99 / steady p99", ratio)
    add("max latency ms", lambda r: _ms(http(r)["max_latency_ms"]))
    add("WS abnormal closes", lambda r: ws(r)["abnormal_total"])
    add("  by kind", lambda r: ", ".join(f"{k} {v}" for k, v in ws(r)["abnormal_closes"].items() if v) or "-")  # type: ignore[attr-defined]
    add("WS close codes", lambda r: ", ".join(f"{k}: {v}" for k, v in ws(r)["close_codes"].items()) or "-")  # type: ignore[attr-defined]
    add("WS messages lost", lambda r: ws(r)["lost"])
    add("WS reconnect gap p50 / p99 ms", lambda r: f"{_ms(ws(r)['reconnect_gap']['p50_ms'])} / "  # type: ignore[index]
        f"{_ms(ws(r)['reconnect_gap']['p99_ms'])}")  # type: ignore[index]
    add("deploy wall s (mean / max)", lambda r: f"{_f(_mean([t.wall for t in r.timings]))} / "
        f"{_f(max((t.wall for t in r.timings), default=None))}")
    add("to healthy s (mean)", lambda r: _f(_mean(_known([t.to_healthy for t in r.timings]))))
    add("wall - to healthy s (mean / max)", lambda r: f"{_f(_mean(_known([t.overhead for t in r.timings])))} / "
        f"{_f(max(_known([t.overhead for t in r.timings]), default=None))}")
    add("probe max send lag ms", lambda r: _ms(http(r)["max_send_lag_ms"]))
    add("result", lambda r: "OK" if r.report and r.report.ok and not r.errors else "FAIL")
    width = max(len(label) for label, _ in rows)
    cols = [max(len(r.name), *(len(v[i]) for _, v in rows)) for i, r in enumerate(results)]
    head = f"{'':<{width}}  " + "  ".join(f"{r.name:>{w}}" for r, w in zip(results, cols, strict=True))
    lines = [f"load: {rate:g} req/s open loop + {ws_clients} WebSocket clients", head, "-" * len(head)]
    lines += [f"{label:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, cols, strict=True))
              for label, values in rows]
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_per_deploy(results: list[SequenceResult]) -> str:
    """What users felt in each deploy's window against the same run's steady p99, and the tool's time
    per deploy (wall, to healthy, the rest) and per step (means over the deploys, from the records)."""
    lines = []
    for r in results:
        if r.report is None:
            continue
        http: Any = r.report.to_dict()["http"]
        steady = http["steady"]["latency"]["p99_ms"]
        windows = {w["name"]: w for w in http["windows"]}
        lines.append(f"{r.name}: steady p99 {_ms(steady)} ms")
        lines.append(f"  {'deploy':>6}  {'requests':>8}  {'p99 ms':>7}  {'max ms':>7}  {'p99/steady':>10}  "
                     f"{'failed':>6}  {'wall s':>6}  {'healthy s':>9}  {'rest s':>6}")
        for n, timing in enumerate(r.timings):
            w = windows.get(f"deploy-{n}")
            if w is None:
                continue
            lat = w["latency"]
            ratio = f"{lat['p99_ms'] / steady:.2f}x" if steady and lat["p99_ms"] is not None else "-"
            lines.append(f"  {n + 1:>6}  {w['count']:>8}  {_ms(lat['p99_ms']):>7}  {_ms(lat['max_ms']):>7}  "
                         f"{ratio:>10}  {w['failure_total']:>6}  {timing.wall:>6.2f}  {_f(timing.to_healthy):>9}  "
                         f"{_f(timing.overhead):>6}")
        names = list(dict.fromkeys(name for t in r.timings for name in t.steps))
        if names:
            means = [(name, _mean([t.steps.get(name, 0.0) for t in r.timings]) or 0.0) for name in names]
            lines.append("  step means s: " + ", ".join(f"{name} {value:.2f}" for name, value in means))
            tool = [name for name in names if name not in ("start", "health")]
            if len(tool) < len(names):  # (a Swarm update has no such steps: Swarm starts its tasks in the rollout)
                lines.append(f"  tool's steps (all but start and health) s: "
                             f"{sum(value for name, value in means if name in tool):.2f}")
    return "\n".join(lines)
