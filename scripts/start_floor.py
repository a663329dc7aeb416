"""The floor of a deploy's latency cost: windows in which only a second app container starts.

Under the probe's load against a running stack, rounds of windows of the same length, interleaved:

- ``idle``: nothing happens (the machine's own noise in a window of that length);
- ``start``: one ``docker run`` of the app's image (a second app process starting, its health
  checks, nothing routed to it, no tool process besides that one Docker client), then it is removed
  after the window;
- ``start-low``: the same with ``--cpu-shares 128`` (a tenth of the default weight), to see whether
  a low CPU weight for the starting container takes its start-up out of the app's way.

Prints each kind's p99 and max over its windows against the steady p99 of the same run::

    python scripts/start_floor.py --url http://127.0.0.1:19101 --image lat-dev-app:src-d66b96406a
"""

from __future__ import annotations

import argparse
import subprocess
import time

from handover.probe import ProbeProcess, ProbeSettings

KINDS = ("idle", "start", "start-low")
LOW_SHARES = 128


def docker_run(image: str, name: str, low: bool) -> None:
    argv = ["docker", "run", "--detach", "--rm", "--name", name, "--env", "UNIX_SOCKET_DIR=", "--read-only",
            "--tmpfs", "/tmp",  # noqa: S108 (a tmpfs inside the container)
            *(["--cpu-shares", str(LOW_SHARES)] if low else []), image]
    subprocess.run(argv, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--name", default="lat-floor")
    args = parser.parse_args()
    probe = ProbeProcess(ProbeSettings(base_url=args.url))
    probe.start()
    try:
        time.sleep(2.0)
        for n in range(args.rounds):
            for kind in KINDS:
                name = f"{args.name}-{n}"
                with probe.window(f"{kind}-{n}"):
                    if kind != "idle":
                        docker_run(args.image, name, kind == "start-low")
                    time.sleep(args.window)
                if kind != "idle":
                    subprocess.run(["docker", "rm", "--force", name], check=False, capture_output=True)
                time.sleep(1.5)
    finally:
        report = probe.stop().to_dict()
    http = report["http"]
    steady = http["steady"]["latency"]["p99_ms"]  # type: ignore[index]
    print(f"steady p99 {steady:.1f} ms")
    for kind in KINDS:
        windows = [w for w in http["windows"] if w["name"].rsplit("-", 1)[0] == kind]  # type: ignore[attr-defined]
        p99s = sorted(w["latency"]["p99_ms"] or 0.0 for w in windows)
        worst = max((w["latency"]["max_ms"] or 0.0) for w in windows)
        failed = sum(w["failure_total"] for w in windows)
        print(f"{kind:<10} window p99 median {p99s[len(p99s) // 2]:.1f} ms (x{p99s[len(p99s) // 2] / steady:.2f}), "
              f"each {', '.join(f'{p:.0f}' for p in p99s)} ms; max {worst:.1f} ms; failed {failed}")


if __name__ == "__main__":
    main()
