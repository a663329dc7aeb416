"""What the shared front's extra hop costs: the probe against an app directly and through the front.

Rounds alternate (direct, front, direct, front, ...) in one run, so both see the same machine; each
round is a fresh probe (a process of its own) at the same rate and WebSocket load. With ``--together`` each round runs
both probes at the same time instead (the app then serves both loads), so a busy machine's noise
hits both ways alike. Prints each round's HTTP latency (steady state: no deploy runs) and the
median over the rounds of each way. ``--paired N`` adds N requests each way, one at a time on one
keep-alive connection per way, alternating request by request (no load: the bare hop). Needs the
app and the front running, e.g.::

    INVOKE_DEPLOY_HOSTNAMES=a.test inv local.up local.front
    python scripts/front_hop.py --direct http://127.0.0.1:8080 --front http://127.0.0.1:8088 --host a.test
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time

from handover.probe import ProbeProcess, ProbeSettings

Row = tuple[float, float, int, bool]


def run_probes(targets: list[tuple[str, str]], rate: float, ws_clients: int, seconds: float) -> list[Row]:
    """One probe per (url, host header), all at once; each one's steady p50, p99, count and verdict."""
    probes = [ProbeProcess(ProbeSettings(base_url=url, host_header=host, rate=rate, ws_clients=ws_clients))
              for url, host in targets]
    for probe in probes:
        probe.start()
    time.sleep(seconds)
    rows = []
    for probe in probes:
        report = probe.stop()
        steady = report.http.steady.latency
        assert steady.p50_ms is not None and steady.p99_ms is not None
        rows.append((steady.p50_ms, steady.p99_ms, steady.count, report.ok))
    return rows


def paired(direct: str, front: str, host: str, count: int) -> dict[str, list[float]]:
    """``count`` GETs each way, alternating, each timed alone (ms)."""
    def connection(url: str) -> http.client.HTTPConnection:
        netloc = url.split("//", 1)[1]
        name, _, port = netloc.partition(":")
        return http.client.HTTPConnection(name, int(port or 80), timeout=10)

    ways = {"direct": (connection(direct), direct.split("//", 1)[1]), "front": (connection(front), host)}
    times: dict[str, list[float]] = {"direct": [], "front": []}
    for _ in range(count):
        for way, (conn, host_header) in ways.items():
            t0 = time.perf_counter()
            conn.request("GET", "/api/info", headers={"Host": host_header})
            response = conn.getresponse()
            response.read()
            times[way].append((time.perf_counter() - t0) * 1000)
            if response.status != 200:
                raise SystemExit(f"{way}: HTTP {response.status}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direct", required=True, help="the app's own URL (its http_port)")
    parser.add_argument("--front", required=True, help="the front's URL")
    parser.add_argument("--host", required=True, help="the app's host name at the front")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--ws-clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way")
    parser.add_argument("--together", action="store_true", help="both probes at once in each round")
    parser.add_argument("--paired", type=int, default=0, help="also N unloaded requests each way, alternating")
    args = parser.parse_args()
    if args.paired:
        for way, values in paired(args.direct, args.front, args.host, args.paired).items():
            ordered = sorted(values)
            print(f"paired {way:<6} p50 {statistics.median(ordered):.3f} ms  "
                  f"p99 {ordered[int(len(ordered) * 0.99) - 1]:.3f} ms  ({len(ordered)} requests, one at a time)")
    results: dict[str, list[Row]] = {"direct": [], "front": []}
    ways = [("direct", args.direct, ""), ("front", args.front, args.host)]
    for n in range(args.rounds):
        if args.together:
            rows = run_probes([(url, host) for _, url, host in ways], args.rate, args.ws_clients, args.seconds)
        else:
            rows = [run_probes([(url, host)], args.rate, args.ws_clients, args.seconds)[0] for _, url, host in ways]
        for (way, _, _), result in zip(ways, rows, strict=True):
            results[way].append(result)
            print(f"round {n + 1} {way:<6} p50 {result[0]:6.2f} ms  p99 {result[1]:6.2f} ms  "
                  f"({result[2]} requests{'' if result[3] else ', FAILURES'})", flush=True)
    for way, rows in results.items():
        if not rows:
            continue
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        print(f"{way:<6} median over {len(rows)} rounds: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    ok = all(r[3] for rows in results.values() for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
