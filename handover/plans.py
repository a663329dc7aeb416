"""Which steps a run takes, in order: the deploy as the README tells it, and the first start.

A front door may add its own steps right after the lock (the Fabric one syncs the files into a
new release first) and right after traffic reaches the new version (the post-switch hook);
everything else is the same for every host.
"""

from __future__ import annotations

from collections.abc import Sequence

from .steps import (
    Build,
    Converge,
    Drain,
    Health,
    Lock,
    Preflight,
    ProxyConfig,
    Prune,
    Pull,
    Release,
    Rollout,
    Services,
    Start,
    StartProxy,
    Step,
    SwarmImages,
    Switch,
    UseImage,
    Verify,
)


def image_step(*, build: bool = True, source: str = "build", ship: Step | None = None) -> Step:
    """How this run gets the app's image: a rollback uses the one on the host; else it is built from
    ``app_build`` (``source`` "build"), pulled from its registry ("pull"), found in this machine's engine
    ("local": ``app_ship`` without a host), or sent from this machine by the front door (``ship``, e.g.
    ``docker save | ssh docker load``)."""
    if not build:
        return UseImage()
    if ship is not None:
        return ship
    return {"pull": Pull, "local": UseImage}.get(source, Build)()


def deploy(*, build: bool = True, after_lock: Sequence[Step] = (), after_switch: Sequence[Step] = (),
           source: str = "build", ship: Step | None = None) -> list[Step]:
    """Start the new version beside the old, wait until healthy, switch, drain the old, prune."""
    return [
        Lock(),
        *after_lock,
        Preflight(),
        Converge(),
        ProxyConfig(),
        image_step(build=build, source=source, ship=ship),
        # A rollback runs no release command: what it changed is not undone, and the older version
        # must already work with it (see the README's "The release command").
        *([Release()] if build else []),
        Start(),
        Health(),
        Switch(),
        *after_switch,
        Verify(),
        Drain(),
        Prune(),
    ]


def converge() -> list[Step]:
    """The version asked for is live already, but an interrupted run left containers behind."""
    return [Lock(), Converge()]


def first_start(*, after_lock: Sequence[Step] = (), after_switch: Sequence[Step] = (), source: str = "build",
                ship: Step | None = None, proxy_first: bool = False) -> list[Step]:
    """Nothing serves yet (or only failed containers are left): build everything and start it, the
    user's other services first.

    ``proxy_first``: a TCP app's health path is checked from inside the proxy, which then starts
    before the app (it answers 502 until the switch, as nothing served before)."""
    ready_made = source != "build" or ship is not None
    return [
        Lock(),
        *after_lock,
        Preflight(),
        *([image_step(source=source, ship=ship)] if ready_made else []),
        Build(with_proxy=True, app=not ready_made),
        Services(),
        Release(fresh=True),
        *([StartProxy()] if proxy_first else []),
        Start(fresh=True),
        Health(fresh=True),
        Switch(fresh=True),
        *([] if proxy_first else [StartProxy()]),
        *after_switch,
    ]


def swarm(*, after_lock: Sequence[Step] = (), after_switch: Sequence[Step] = ()) -> list[Step]:
    """A stack on a swarm (``deploy.backend: swarm``), first start, deploy and rollback alike: Swarm rolls
    the tasks itself (see :mod:`handover.backends.swarm`), so after the images there is one rollout."""
    return [Lock(), *after_lock, Preflight(), SwarmImages(), Rollout(), *after_switch]
