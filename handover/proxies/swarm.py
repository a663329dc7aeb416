"""nginx as a service of a Swarm stack: routed by Swarm's DNS, so a deploy has no switch of its own.

With ``deploy.backend: swarm`` nginx (``nginx/swarm.conf``) resolves ``tasks.app`` at most a second
old, and Swarm adds and removes the app's tasks there as it rolls (see
:mod:`handover.backends.swarm`). So the proxy's part in a run is small: the instances it routes to
are the app's running tasks, its configuration travels in the stack file (a Swarm config named by its
content), and it starts with the stack. What the Compose sequence asks of a proxy besides (point
traffic at chosen instances, a fallback, a reload) a Swarm run never asks; asked anyway, it says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..backends import Backend, Instance, StackService
from ..errors import HandoverError
from ..settings import PROJECT_ROOT, Settings
from ..shell import Runner, run

SERVICE = "nginx"
PORT = 8080  # nginx listens here in its container (nginx/swarm.conf)
CONFIG_KEY = "nginx"
CONFIG_TARGET = "/etc/nginx/handover-swarm.conf"
GRACE = "35s"  # longer than worker_shutdown_timeout in nginx/swarm.conf
SOURCE_DIR = "nginx"  # its image's build context, in the checkout (or the synced release)
TEMPLATE = PROJECT_ROOT / SOURCE_DIR / "swarm.conf"
APP_SERVICE = "app"  # the stack's app service, which nginx reaches as tasks.<it>


def proxy_image(settings: Settings) -> str:
    return f"{settings.project}-nginx:1"


def nginx_config(settings: Settings, template: str | None = None) -> str:
    """nginx's configuration for the stack (``nginx/swarm.conf`` with the app's service and port)."""
    text = template if template is not None else TEMPLATE.read_text()
    return text.replace("@APP_SERVICE@", APP_SERVICE).replace("@APP_PORT@", str(settings.app_port))


def config_name(settings: Settings, config: str) -> str:
    """Swarm configs cannot change: each content gets its own name, so a changed one is a new config."""
    return f"{settings.project}_nginx_{hashlib.sha256(config.encode()).hexdigest()[:12]}"


def stack_service(settings: Settings, template: str | None = None) -> StackService:
    """nginx's service in the stack: on a manager, published in host mode (no routing mesh, which needs
    IPVS), its configuration a Swarm config named by its content."""
    config = nginx_config(settings, template)
    definition = {
        "image": proxy_image(settings),
        "command": ["nginx", "-c", CONFIG_TARGET, "-g", "daemon off;"],
        "configs": [{"source": CONFIG_KEY, "target": CONFIG_TARGET}],
        "ports": [{"target": PORT, "published": settings.http_port, "protocol": "tcp", "mode": "host"}],
        "stop_grace_period": GRACE,
        "deploy": {
            "endpoint_mode": "dnsrr",
            "replicas": 1,
            "labels": {"io.handover.role": "proxy"},
            "placement": {"constraints": ["node.role == manager"]},
            # One node's host-mode port cannot be bound twice: a changed nginx stops before it starts.
            "update_config": {"order": "stop-first"},
        },
    }
    return StackService(name=SERVICE, definition=definition, image=proxy_image(settings), build_dir=SOURCE_DIR,
                        configs={CONFIG_KEY: config}, config_names={CONFIG_KEY: config_name(settings, config)})


class SwarmNginx:
    name: str = "nginx"
    check_words: str = "nginx -t"
    service: str = SERVICE
    switch_words: str = "Swarm's DNS: nginx resolves tasks.app every second; Swarm adds and removes the tasks"
    source_dirs: tuple[str, ...] = (SOURCE_DIR,)

    def __init__(self, runner: Runner, settings: Settings, backend: Backend) -> None:
        self.runner = runner
        self.settings = settings
        self.backend = backend

    def build_env(self, base_image: str | None = None) -> dict[str, str]:
        return {"PROXY_BASE_IMAGE": base_image or self.settings.proxy_base_image}

    @property
    def base_image(self) -> str:
        return self.settings.proxy_base_image

    def stack_service(self) -> StackService:
        """Its service, image and configuration in the stack the backend deploys."""
        return stack_service(self.settings)

    def prepare(self) -> None:
        """Nothing is shared on disk between nginx and the tasks."""

    def check(self) -> None:
        """Its configuration is fixed (``nginx/swarm.conf``); nothing to verify before a run."""

    def live_ids(self) -> set[str]:
        return {t.short_id for t in self.backend.instances() if t.status == "running"}

    def configure(self, slots: int | None = None, *, load: bool = True) -> bool:
        return False

    def reload(self) -> None:
        """The configuration reaches nginx with the stack (a new config, a new nginx task)."""

    def restore(self) -> bool:
        return False

    def _not_here(self, what: str) -> HandoverError:
        return HandoverError(f"{what} is not part of a Swarm deploy (nginx routes by Swarm's DNS)")

    def route_to_service(self, service: str, port: int) -> None:
        raise self._not_here("routing to a service by name")

    def point(self, instances: Sequence[Instance], fallback: Sequence[Instance] = ()) -> None:
        raise self._not_here("pointing nginx at chosen instances")

    def drop_fallback(self) -> None:
        """There is no fallback: Swarm's DNS names every running task."""

    def check_http(self, instance: Instance, path: str) -> str:
        raise self._not_here("checking a task's health path")

    def forget(self, instances: Sequence[Instance]) -> None:
        """Nothing points at chosen tasks."""

    def start(self) -> None:
        """nginx starts with the stack (``docker stack deploy``)."""

    def running(self) -> Instance | None:
        return self.backend.proxy_instance(self.service)

    def remove_state(self) -> None:
        run(self.runner, ["rm", "-rf", f"{self.settings.state_path}/swarm"])
