"""Command line: run the probe for a fixed duration and print the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .probe import Probe
from .settings import ProbeError, ProbeSettings

MAX_DURATION_SECONDS = 3600.0
EXIT_OK = 0
EXIT_FAILURE = 1
DEFAULTS = ProbeSettings()


def _duration(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_DURATION_SECONDS:
        raise argparse.ArgumentTypeError(f"duration must be in (0, {MAX_DURATION_SECONDS:.0f}] seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m handover.probe",
        description="Load an app over HTTP and WebSockets and report anything lost (exit 1 if so).",
    )
    parser.add_argument("--url", default=DEFAULTS.base_url, help="base URL (default %(default)s)")
    parser.add_argument("--duration", type=_duration, required=True, help="seconds to run (max 3600)")
    parser.add_argument("--rate", type=float, default=DEFAULTS.rate, help="HTTP requests per second")
    parser.add_argument("--ws-clients", type=int, default=DEFAULTS.ws_clients, help="WebSocket clients")
    parser.add_argument("--ws-interval", type=float, default=DEFAULTS.ws_message_interval,
                        help="seconds between messages of each WebSocket client")
    parser.add_argument("--http-path", default=DEFAULTS.http_path)
    parser.add_argument("--ws-path", default=DEFAULTS.ws_path)
    parser.add_argument("--host-header", default="",
                        help="Host header and WebSocket authority, when not the URL's (an app behind a front proxy)")
    parser.add_argument("--settle-timeout", type=float, default=DEFAULTS.settle_timeout)
    parser.add_argument("--ca-file", default="", help="CA certificates (PEM) to verify an https server against")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = ProbeSettings(
            base_url=args.url,
            http_path=args.http_path,
            rate=args.rate,
            ws_path=args.ws_path,
            ws_clients=args.ws_clients,
            ws_message_interval=args.ws_interval,
            settle_timeout=args.settle_timeout,
            ca_file=args.ca_file,
            host_header=args.host_header,
        )
        probe = Probe(settings)
        probe.start()
    except ProbeError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        time.sleep(args.duration)
    except KeyboardInterrupt:
        print("probe: interrupted, stopping early", file=sys.stderr)
    report = probe.stop()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return EXIT_OK if report.ok else EXIT_FAILURE
