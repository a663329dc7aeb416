"""The nginx upstream file: rendered from the live containers, parsed back to learn which are live."""

from __future__ import annotations

import re
from collections.abc import Sequence

UPSTREAM_NAME = "handover_app"
UPSTREAM_FILE = "upstream.conf"
UPSTREAM_KEEPALIVE = 32
_SERVER_LINE = re.compile(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)\b[^;]*;\s*#\s*id=([0-9a-f]+)\s+version=(\S+)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def render(servers: Sequence[tuple[str, str, str]], port: int) -> str:
    """``servers`` are (container name, container id, version). Names resolve on the compose network."""
    if not servers:
        raise ValueError("an upstream needs at least one server")
    lines = [
        "# Written by handover on every switch; the live app containers. Do not edit by hand.",
        f"upstream {UPSTREAM_NAME} {{",
    ]
    for name, container_id, version in servers:
        if not _NAME.match(name):
            raise ValueError(f"container name {name!r} cannot appear in an nginx upstream")
        # max_fails=0: a single live server must never be marked down by a passing error.
        lines.append(f"    server {name}:{port} max_fails=0;  # id={container_id} version={version}")
    lines += [f"    keepalive {UPSTREAM_KEEPALIVE};", "}", ""]
    return "\n".join(lines)


def live_ids(text: str | None) -> list[str]:
    """Container IDs the upstream file routes to (empty when there is no file)."""
    if not text:
        return []
    return [m.group(3) for m in (_SERVER_LINE.match(line) for line in text.splitlines()) if m]


def live_versions(text: str | None) -> list[str]:
    if not text:
        return []
    return [m.group(4) for m in (_SERVER_LINE.match(line) for line in text.splitlines()) if m]
