"""The nginx upstream file and the live socket links it points through.

The upstream names fixed slots, ``/run/handover/live-<n>.sock``. Each slot is a symlink (in the
state directory's ``sockets/``, mounted into nginx and the app containers) to one app container's
own socket, ``app-<short id>.sock``. Switching versions swaps the links; the file only changes when
the number of slots does.

Each slot has a backup, ``prev-<n>.sock``: while a deploy checks the new version after the switch,
it points at the old container of that slot, so a request that cannot reach a new container that
just died (refused connect, or closed before the response began) is retried there by nginx
(``proxy_next_upstream``) instead of failing. Outside that window the backup links do not exist.
"""

from __future__ import annotations

import re

UPSTREAM_NAME = "handover_app"
UPSTREAM_FILE = "upstream.conf"
SOCKET_DIR_IN_CONTAINERS = "/run/handover"
SHORT_ID_LENGTH = 12  # Docker's hostname for a container is its short ID
_LINK = re.compile(r"^live-(\d+)\.sock$")
_TARGET = re.compile(r"^app-([0-9a-f]{12})\.sock$")


def slot_name(slot: int) -> str:
    return f"live-{slot}.sock"


def backup_name(slot: int) -> str:
    return f"prev-{slot}.sock"


def socket_name(container_id: str) -> str:
    return f"app-{container_id[:SHORT_ID_LENGTH]}.sock"


def render(slots: int) -> str:
    if slots < 1:
        raise ValueError("an upstream needs at least one slot")
    lines = [
        "# Written by handover; the live app containers are the targets of these symlinks.",
        f"upstream {UPSTREAM_NAME} {{",
    ]
    # max_fails=0: a live server is never marked down by a passing error.
    lines += [f"    server unix:{SOCKET_DIR_IN_CONTAINERS}/{slot_name(n)} max_fails=0;" for n in range(slots)]
    lines += [f"    server unix:{SOCKET_DIR_IN_CONTAINERS}/{backup_name(n)} max_fails=0 backup;" for n in range(slots)]
    lines += ["}", ""]
    return "\n".join(lines)


def parse_links(listing: str) -> dict[int, str]:
    """``listing`` has lines ``<link name> <target>``; returns slot -> short container ID."""
    links = {}
    for line in listing.splitlines():
        name, _, target = line.strip().partition(" ")
        slot, short = _LINK.match(name), _TARGET.match(target.strip())
        if slot and short:
            links[int(slot.group(1))] = short.group(1)
    return links
