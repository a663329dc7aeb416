"""Benchmark: K deploys under the probe, this engine against the simple sequence, on one stack.

The simple sequence is the well-known one this tool grew from: scale the app to 2, reload nginx
(whose upstream is the plain service name, ``server app:8000``), stop the old container, scale
back to 1, reload again. Both run the same app image and the same nginx on the same machine, in
the same run, under the same constant-rate load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backends.compose import APP_PORT, APP_SERVICE
from .engine import DeployOptions, Engine
from .errors import HandoverError, HealthCheckFailed
from .probe import ProbeProcess, ProbeReport, ProbeSettings

SETTLE_SECONDS = 1.0  # steady traffic between deploys (outside any window)
WARMUP_SECONDS = 2.0


@dataclass
class DeployTiming:
    wall: float
    to_healthy: float  # from starting the new container until Docker reports it healthy

    @property
    def overhead(self) -> float:
        return self.wall - self.to_healthy


@dataclass
class SequenceResult:
    name: str
    timings: list[DeployTiming] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    report: ProbeReport | None = None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_sequence(name: str, deploy: Callable[[str], DeployTiming], deploys: int, settings: ProbeSettings,
                 say: Callable[[str], None]) -> SequenceResult:
    result = SequenceResult(name)
    probe = ProbeProcess(settings)
    probe.start()
    try:
        time.sleep(WARMUP_SECONDS)
        for n in range(deploys):
            version = f"bench-{name}-{time.strftime('%H%M%S')}-{n}"
            try:
                with probe.window(f"deploy-{n}"):
                    timing = deploy(version)
            except HandoverError as exc:
                result.errors.append(f"deploy {n}: {str(exc).splitlines()[0]}")
                say(f"    {name} deploy {n + 1}/{deploys}: FAILED {result.errors[-1]}")
                break
            result.timings.append(timing)
            say(f"    {name} deploy {n + 1}/{deploys}: {timing.wall:.2f} s (healthy after {timing.to_healthy:.2f} s)")
            time.sleep(SETTLE_SECONDS)
    finally:
        result.report = probe.stop()
    return result


def engine_deploy(engine: Engine) -> Callable[[str], DeployTiming]:
    def deploy(version: str) -> DeployTiming:
        rec = engine.deploy(DeployOptions(version=version, host="bench"))
        healthy = sum(s.seconds for s in rec.steps if s.name in ("start", "health"))
        return DeployTiming(rec.seconds, healthy)

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
    add("to healthy s (mean)", lambda r: _f(_mean([t.to_healthy for t in r.timings])))
    add("wall - to healthy s (mean / max)", lambda r: f"{_f(_mean([t.overhead for t in r.timings]))} / "
        f"{_f(max((t.overhead for t in r.timings), default=None))}")
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
