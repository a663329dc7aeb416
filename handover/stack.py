"""Facts about the compose stack on a Docker host, and the few operations the engine needs.

Containers are always addressed by ID; the app service is scaled up for a deploy but never down
(compose would remove the newest container, not the old one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import PreflightError
from .ops import compose_argv
from .settings import Settings
from .shell import Runner, run

APP_SERVICE = "app"
PROXY_SERVICE = "nginx"
APP_PORT = 8000
VERSION_LABEL = "io.handover.version"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str
    version: str
    image: str
    status: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, or "" without a health check
    restarts: int
    created: str
    exit_code: int = 0

    def describe(self) -> str:
        """How the container is doing, in words (for error messages)."""
        again = f", restarted {self.restarts} time(s)" if self.restarts else ""
        if self.status in ("exited", "dead", "restarting"):
            return f"{self.name} crashed: exited with status {self.exit_code}{again}"
        if self.restarts:  # running again: Docker no longer reports the exit status of the crash
            return (f"{self.name} crashed: it exited and was restarted {self.restarts} time(s), now "
                    f"{self.health or self.status} (its logs tell why)")
        return f"{self.name} is {self.health or self.status}"

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def is_healthy(self) -> bool:
        return self.status == "running" and self.health == HEALTHY


def _container(raw: Mapping[str, object]) -> Container:
    config = raw.get("Config") or {}
    state = raw.get("State") or {}
    assert isinstance(config, dict) and isinstance(state, dict)
    labels = config.get("Labels") or {}
    health = state.get("Health") or {}
    return Container(
        id=str(raw["Id"]),
        name=str(raw.get("Name", "")).lstrip("/"),
        service=str(labels.get(SERVICE_LABEL, "")),
        version=str(labels.get(VERSION_LABEL, "")),
        image=str(config.get("Image", "")),
        status=str(state.get("Status", "")),
        health=str(health.get("Status", "")) if isinstance(health, dict) else "",
        restarts=int(str(raw.get("RestartCount", 0))),
        created=str(raw.get("Created", "")),
        exit_code=int(str(state.get("ExitCode", 0))),
    )


@dataclass
class Stack:
    """One compose project on one Docker host."""

    runner: Runner
    settings: Settings
    extra_env: dict[str, str] = field(default_factory=dict)

    # -- compose ---------------------------------------------------------------------------------
    def compose_env(self, version: str | None = None) -> dict[str, str]:
        s = self.settings
        env = {
            "HANDOVER_ROOT": s.deploy_dir,
            "HANDOVER_SOURCE_SUBDIR": s.source_subdir or ".",
            "HANDOVER_STATE_DIR": s.state_path,
            "HTTP_BIND": s.http_bind,
            "HTTP_PORT": str(s.http_port),
            "APP_IMAGE": s.app_image,
            "BASE_IMAGE": s.base_image,
            "NGINX_BASE_IMAGE": s.nginx_base_image,
            "DRAIN_TIMEOUT": f"{s.drain_timeout:g}",
            "STOP_GRACE_PERIOD": f"{s.stop_grace_period:g}s",
        }
        if s.env_file:
            env["APP_ENV_FILE"] = s.env_file
        if version is not None:
            env["APP_VERSION"] = version
        env.update(self.extra_env)
        return env

    def compose(self, *args: str, version: str | None = None, timeout: float | None = None) -> str:
        command = compose_argv(self.settings, *args)
        return run(self.runner, command, env=self.compose_env(version), timeout=timeout).stdout

    # -- facts -----------------------------------------------------------------------------------
    def container_ids(self, service: str | None = None) -> list[str]:
        filters = ["--filter", f"label={PROJECT_LABEL}={self.settings.project}"]
        if service is not None:
            filters += ["--filter", f"label={SERVICE_LABEL}={service}"]
        out = run(self.runner, ["docker", "ps", "--all", "--no-trunc", "--quiet", *filters]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def project_containers(self) -> list[Container]:
        return self.inspect(self.container_ids())

    def inspect(self, ids: Iterable[str]) -> list[Container]:
        ids = list(ids)
        if not ids:
            return []
        result = run(self.runner, ["docker", "inspect", *ids], check=False)
        if result.exited != 0:
            # A container vanished between listing and inspecting: inspect the survivors one by one.
            found = []
            for cid in ids:
                one = run(self.runner, ["docker", "inspect", cid], check=False)
                if one.exited == 0:
                    found.extend(json.loads(one.stdout))
            return sorted((_container(raw) for raw in found), key=lambda c: c.created)
        return sorted((_container(raw) for raw in json.loads(result.stdout)), key=lambda c: c.created)

    def app_containers(self) -> list[Container]:
        return self.inspect(self.container_ids(APP_SERVICE))

    def proxy_container(self) -> Container | None:
        running = [c for c in self.inspect(self.container_ids(PROXY_SERVICE)) if c.status == "running"]
        return running[-1] if running else None

    def image_exists(self, image: str) -> bool:
        return run(self.runner, ["docker", "image", "inspect", image], check=False).exited == 0

    # -- operations ------------------------------------------------------------------------------
    def logs(self, container_id: str, tail: int = 50) -> str:
        result = run(self.runner, ["docker", "logs", "--tail", str(tail), container_id], check=False)
        return (result.stdout + result.stderr).strip()

    def stop(self, ids: Iterable[str], grace: float) -> None:
        ids = list(ids)
        if ids:
            # One `docker stop` stops them in parallel, each with its own grace period.
            run(self.runner, ["docker", "stop", "--time", str(int(grace)), *ids], check=False,
                timeout=grace + 60)

    def remove(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            run(self.runner, ["docker", "rm", "--force", "--volumes", *ids], check=False)

    def exec_proxy(self, *args: str, check: bool = True) -> str:
        proxy = self.proxy_container()
        if proxy is None:
            raise PreflightError(f"the nginx container of project {self.settings.project!r} is not running")
        result = run(self.runner, ["docker", "exec", proxy.id, *args], check=check)
        return result.stdout + result.stderr
