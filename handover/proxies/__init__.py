"""The proxy in front of the app: the seam between the deploy sequence and whatever routes traffic.

The sequence asks a proxy for a few things only: get ready (its directories), render and validate
its configuration and load it when it changed, point traffic at a set of instances (with the ones
serving until now as a fallback while the new ones prove themselves), drop that fallback, tell
which instances get traffic now, and start its own service. :func:`make_proxy` picks the
implementation; nothing outside this package knows which one it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..backends import Backend, Instance, StackService
from ..settings import Settings
from ..shell import Runner


class Proxy(Protocol):
    name: str  # what messages call it, e.g. "nginx"
    check_words: str  # how its configuration is validated, as messages say it, e.g. "nginx -t"
    service: str  # the service of the app's definition (compose file) that runs the proxy
    switch_words: str  # how a switch is done, for plans and progress
    source_dirs: tuple[str, ...]  # directories of the checkout the proxy's configuration lives in

    def build_env(self, base_image: str | None = None) -> dict[str, str]:
        """Variables the app's definition needs to build and run the proxy (image names, base image)."""

    @property
    def base_image(self) -> str:
        """The configured base image of the proxy's own image."""

    def prepare(self) -> None:
        """Create what the proxy and the instances share (directories), idempotently."""

    def check(self) -> None:
        """Verify, before anything changes, what its configuration needs (e.g. a TLS certificate and
        key that match and are valid); raise :class:`handover.errors.ConfigError` naming the problem."""

    def live_ids(self) -> set[str]:
        """Short IDs of the instances that get traffic now."""

    def configure(self, slots: int | None = None, *, load: bool = True) -> bool:
        """Render the routes for ``slots`` instances (None: keep them) and validate the configuration
        if it differs from what runs; with ``load``, load it. On a validation failure, put back what
        was there and raise :class:`handover.errors.ProxyConfigInvalid`. Returns whether it differed."""

    def reload(self) -> None:
        """Load the configuration as it is now (already validated)."""

    def route_to_service(self, service: str, port: int) -> None:
        """Route to the app's service by name instead (the well-known sequence the benchmark compares)."""

    def restore(self) -> bool:
        """Put back the routes :meth:`configure` replaced in this run; returns whether it did."""

    def point(self, instances: Sequence[Instance], fallback: Sequence[Instance] = ()) -> None:
        """Send traffic to ``instances``; until :meth:`drop_fallback`, failed requests may retry on ``fallback``."""

    def drop_fallback(self) -> None: ...

    def check_http(self, instance: Instance, path: str) -> str:
        """"" when ``GET path`` on a TCP app's ``instance`` answers 2xx where the proxy runs; else why not."""

    def forget(self, instances: Sequence[Instance]) -> None:
        """Remove what pointed at ``instances`` (they are gone)."""

    def start(self) -> None:
        """Start the proxy's service and load its configuration (first start of the stack)."""

    def running(self) -> Instance | None:
        """The proxy's running instance, if any."""

    def remove_state(self) -> None:
        """Remove the proxy's generated files (the whole stack is being removed)."""


@runtime_checkable
class StackProxy(Protocol):
    """A proxy that runs as a service of a stack the backend rolls as a whole (Swarm)."""

    def stack_service(self) -> StackService:
        """Its service, image and configuration files in the stack."""


def make_proxy(runner: Runner, settings: Settings, backend: Backend) -> Proxy:
    """The proxy this project uses: nginx (:mod:`handover.proxies.nginx`), or nginx as a service of a Swarm
    stack (:mod:`handover.proxies.swarm`)."""
    if settings.swarm:
        from .swarm import SwarmNginx

        return SwarmNginx(runner, settings, backend)
    from .nginx import NginxProxy

    return NginxProxy(runner, settings, backend, files=proxy_files(runner, settings))


def proxy_files(runner: Runner, settings: Settings) -> Runner:
    """Where the proxy's file commands run: ``runner`` (the state directory on the Docker host), or with
    ``deploy.proxy_files: volume``, the files container on the daemon (:mod:`handover.proxies.daemonfiles`)."""
    if not settings.proxy_volumes:
        return runner
    from .. import images
    from ..progress import Progress
    from .daemonfiles import DaemonFiles

    return DaemonFiles(runner, settings,
                       lambda: images.ensure_base_image(runner, settings.proxy_base_image, Progress(quiet=True)))
