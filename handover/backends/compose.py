"""The Compose backend: the app's instances are containers of one compose project on one Docker host.

Containers are always addressed by ID. The app service is scaled up for a deploy but never down
(compose would remove the newest container, not the old one): old containers are stopped and
removed by ID. The ``docker compose`` command line is built in one place, :func:`compose_argv`,
and its environment in :func:`compose_env`, both pure.

The user's own compose file (``extra_compose_file``, their database, redis, workers) is a second
``--file`` of every command; only the first start names its services (``up --no-recreate``), every
other ``up`` names the app's service alone with ``--no-deps``, so a deploy never restarts, recreates
or scales them.

The app's secrets file reaches the containers through Compose only (``APP_ENV_FILE``). What a
failing ``docker compose`` says is scrubbed of the file's values before anyone sees it
(:meth:`ComposeBackend.compose`): Compose quotes the file's lines in some of its errors. The
release command's output is scrubbed the same way (:meth:`ComposeBackend.run_once`): it runs with
those values and may print them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .. import envfile
from ..checks import Check, first_line, require
from ..dockerapi import DockerAPI
from ..errors import BuildFailed, CommandError, CommandTimeout, DockerHostUnreachable, HandoverError, PreflightError
from ..settings import Settings
from ..shell import Result, Runner, read_file, run
from . import Instance, OneOff

APP_SERVICE = "app"
APP_PORT = 8000
VERSION_LABEL = "io.handover.version"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
BUILD_TIMEOUT = 1800.0
UP_TIMEOUT = 300.0
DOWN_EXTRA_SECONDS = 120.0
STOP_EXTRA_SECONDS = 60.0
BUILD_LOG_LINES = 30
PULL_TIMEOUT = 900.0
PULL_LOG_LINES = 5
COMPOSE_MAJOR = "2"
COMPOSE_MINIMUM = (2, 30)  # env_file `format: raw`
ENV_FILE_VARIABLE = "APP_ENV_FILE"  # the secrets file, read by Compose with `format: raw`
COMMAND_NOT_FOUND = 127
CONFIG_STAMP = "compose-checked"  # in the state directory: config_stamp() of the last passing preflight
# Where the docker CLI looks for its plugins besides ~/.docker/cli-plugins.
PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")
_READS_OTHER_FILES = re.compile(rb"^\s*(include|extends)\s*:", re.MULTILINE)
ONE_OFF_SUFFIX = "-release"  # the one-off container of the release command: <project>-release
ONE_OFF_LINES = 30  # lines of its output kept (stdout, then stderr)
DOCKER_INSTALL_HINT = "install Docker Engine (https://docs.docker.com/engine/install/)"
COMPOSE_INSTALL_HINT = ("install the docker-compose-plugin package (or the docker-compose v2 binary in "
                        "~/.docker/cli-plugins/)")


def _user(runner: Runner) -> str:
    result = run(runner, ["id", "-un"], check=False)
    return result.stdout.strip() if result.exited == 0 and result.stdout.strip() else "this user"


def local_docker_host(runner: Runner) -> str:
    """``DOCKER_HOST`` of this process when ``runner`` runs commands here (not over SSH), else ""."""
    return "" if callable(getattr(runner, "sftp", None)) else os.environ.get("DOCKER_HOST", "")


def check_docker(runner: Runner, docker_host: str = "") -> Check:
    """The engine answers; ``docker_host``: the ``DOCKER_HOST`` the client uses, named when it does not."""
    result = run(runner, ["docker", "version", "--format", "{{.Server.Version}}"], check=False)
    if result.exited == COMMAND_NOT_FOUND:
        return Check("docker", False, f"docker is not installed: {DOCKER_INSTALL_HINT}")
    if result.exited != 0:
        why = first_line(result.stderr or result.stdout)
        if docker_host:
            return Check("docker", False, f"no Docker daemon answers at DOCKER_HOST={docker_host} ({why}): start "
                                          "it (Docker Desktop: open the app), or set DOCKER_HOST to one that runs "
                                          "(unset: this machine's)")
        user = _user(runner)
        return Check("docker", False, f"the Docker engine is not reachable for {user} ({why}): start "
                                      f"dockerd, or add {user} to the docker group")
    return Check("docker", True, f"engine {result.stdout.strip()}")


COMPOSE_VERSION_ARGV = ("docker", "compose", "version", "--short")


def check_compose(runner: Runner) -> Check:
    result = run(runner, list(COMPOSE_VERSION_ARGV), check=False)
    return compose_check(result.exited, result.stdout)


def compose_check(exited: int, stdout: str) -> Check:
    """What ``docker compose version --short`` ending with ``exited`` and printing ``stdout`` says."""
    if exited == COMMAND_NOT_FOUND:
        return Check("compose", False, "cannot be checked without docker (install Docker Engine first)")
    version = stdout.strip().lstrip("v")
    if exited != 0 or not version.startswith(COMPOSE_MAJOR):
        return Check("compose", False, f"Docker Compose v{COMPOSE_MAJOR} is missing (`docker compose version` "
                                       f"failed): {COMPOSE_INSTALL_HINT}")
    return Check("compose", True, f"v{version}")


# deploy.proxy_files volume: the variables that put nginx's files and the app's sockets into the compose
# file's named volumes, and the profile of the container they are written through (handover.proxies.daemonfiles).
FILES_SERVICE = "proxy-files"
PROXY_VOLUMES = {"PROXY_SOURCES": "proxy-sources", "PROXY_UPSTREAM": "proxy-upstream", "PROXY_TLS": "proxy-tls",
                 "PROXY_SOCKETS": "sockets"}
PROXY_VOLUME_ENV = {**PROXY_VOLUMES, "COMPOSE_PROFILES": "proxy-volumes"}


def volume_names(settings: Settings) -> list[str]:
    """The Docker names of the compose file's volumes for the proxy's files (Compose's ``<project>_<name>``)."""
    return [f"{settings.project}_{name}" for name in PROXY_VOLUMES.values()]


def compose_argv(settings: Settings, *args: str) -> list[str]:
    """``docker compose`` for this project and compose file (and the user's own, with their other
    services, when set), followed by ``args``."""
    extra = ["--file", settings.extra_compose_path] if settings.extra_compose_path else []
    return ["docker", "compose", "--project-name", settings.project, "--file", settings.compose_path, *extra, *args]


def compose_env(settings: Settings, version: str | None = None,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the compose file reads (see compose/docker-compose.yml)."""
    s = settings
    env = {
        "HANDOVER_ROOT": s.deploy_dir,
        "HANDOVER_SOURCE_SUBDIR": s.source_subdir or ".",
        "HANDOVER_STATE_DIR": s.state_path,
        "HTTP_BIND": s.http_bind,
        "HTTP_PORT": str(s.http_port),
        "APP_IMAGE": s.app_image,
        "BASE_IMAGE": s.base_image,
        "DRAIN_TIMEOUT": f"{s.drain_timeout:g}",
        "STOP_GRACE_PERIOD": f"{s.stop_grace_period:g}s",
        "APP_STOP_SIGNAL": s.app_stop_signal,
        # A TCP app: its port, and no unix socket directory (the demo app then listens on PORT).
        "APP_PORT": str(s.app_port or APP_PORT),
        "APP_SOCKET_DIR": "" if s.tcp else "/run/handover",
    }
    if s.proxy_volumes:
        env.update(PROXY_VOLUME_ENV)
    if s.build_dir:
        env["APP_BUILD_DIR"] = s.build_dir
    if s.env_file:
        env[ENV_FILE_VARIABLE] = s.env_file
    if version is not None:
        env["APP_VERSION"] = version
    env.update(extra or {})
    return env


def build_args(settings: Settings, services: Sequence[str]) -> list[str]:
    """What follows ``docker compose ...`` to build ``services``: ``build``, the app's build arguments
    (``app_build_args``, each ``--build-arg=NAME=VALUE``) when the app is built alone, the services.
    Another service's Dockerfile never sees them (see :meth:`ComposeBackend.build`)."""
    own = list(services) == [APP_SERVICE]
    return ["build", *(f"--build-arg={name}={value}" for name, value in settings.app_build_args if own), *services]


def one_off_name(settings: Settings) -> str:
    """The release command's container: one name per project (the deploy lock makes it one at a
    time), so a run can always find and remove it, also one left by a killed run."""
    return f"{settings.project}{ONE_OFF_SUFFIX}"


def run_once_argv(settings: Settings, argv: Sequence[str]) -> list[str]:
    """``docker compose run`` of the app service with ``argv`` as its command: no dependencies, no
    tty, removed when it ends, under :func:`one_off_name`. Compose gives it the app's environment
    and secrets file, its image (the version in ``APP_VERSION``/``APP_IMAGE``) and its volumes; the
    words after the service name are the command, never read as compose options."""
    return compose_argv(settings, "run", "--rm", "--no-deps", "-T", "--name", one_off_name(settings),
                        APP_SERVICE, *argv)


def last_lines(text: str, count: int = ONE_OFF_LINES) -> str:
    return "\n".join(text.strip("\n").splitlines()[-count:])


def container_address(raw: Mapping[str, object], network: str = "") -> str:
    """The container's IPv4 address on ``network`` (the project's default network), else on the first
    network that gives it one; "" when it has none (stopped, or no network)."""
    settings = raw.get("NetworkSettings") or {}
    networks = settings.get("Networks") if isinstance(settings, dict) else None
    if not isinstance(networks, dict):
        return ""
    ordered = [networks[network]] if network in networks else []
    ordered += [v for k, v in sorted(networks.items()) if k != network]
    for item in ordered:
        address = item.get("IPAddress") if isinstance(item, dict) else None
        if isinstance(address, str) and address:
            return address
    return ""


def default_network(settings: Settings) -> str:
    """The network Compose makes for the project, which the app and nginx share."""
    return f"{settings.project}_default"


def config_stamp(settings: Settings, env: Mapping[str, str]) -> str:
    """What ``compose config`` read when it passed, as one digest: the compose files' bytes, the size and
    time of the secrets file and of a ``.env`` beside the compose file (never their content), the
    variables, and the docker CLI and compose plugins (path, size, time: an upgrade is checked again).
    "" (always check) when a compose file may read other files (``include``, ``extends``) or cannot
    be read."""
    parts = [json.dumps(sorted(env.items()))]
    for name in (settings.compose_path, settings.extra_compose_path):
        if not name:
            continue
        try:
            data = Path(name).read_bytes()
        except OSError:
            return ""
        if _READS_OTHER_FILES.search(data):
            return ""
        parts.append(f"{name} {hashlib.sha256(data).hexdigest()}")
    docker = shutil.which("docker") or ""
    home = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    dotenv = str(Path(settings.compose_path).parent / ".env")  # compose reads it for its variables
    for name in (settings.env_file, dotenv, docker, *(f"{d}/docker-compose" for d in (f"{home}/cli-plugins",
                                                                                        *PLUGIN_DIRS))):
        with suppress(OSError):
            st = os.stat(name) if name else None
            parts.append(f"{name} {st.st_size} {st.st_mtime_ns}" if st else "")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def parse_container(raw: Mapping[str, object], network: str = "") -> Instance:
    """One element of ``docker inspect``'s JSON as an :class:`Instance`."""
    config = raw.get("Config") or {}
    state = raw.get("State") or {}
    assert isinstance(config, dict) and isinstance(state, dict)
    labels = config.get("Labels") or {}
    health = state.get("Health") or {}
    return Instance(
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
        address=container_address(raw, network),
        mounts=container_mounts(raw),
    )


def container_mounts(raw: Mapping[str, object]) -> tuple[str, ...]:
    """``<type>:<destination>`` of each of the container's mounts, as ``docker inspect`` lists them."""
    mounts = raw.get("Mounts")
    if not isinstance(mounts, list):
        return ()
    return tuple(f"{m.get('Type', '')}:{m.get('Destination', '')}" for m in mounts if isinstance(m, dict))


def _parse_inspect(text: str) -> list[dict[str, object]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CommandError("docker inspect", 0, f"unreadable output from docker inspect: {exc}") from None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


@dataclass
class ComposeBackend:
    """One compose project on one Docker host (see :class:`handover.backend.Backend`)."""

    runner: Runner
    settings: Settings
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the base images the build uses
    # The engine's API on this machine for the frequent calls (see handover.dockerapi); None: the CLI.
    api: DockerAPI | None = None
    # The runner runs commands on this machine: its files can be read here (the preflight's stamp).
    local: bool = False
    _look: list[Instance] | None = None  # inside one_look(): every container of the project, seen once

    # -- compose ---------------------------------------------------------------------------------
    def set_env(self, env: Mapping[str, str]) -> None:
        self.extra_env.update(env)

    def env(self, version: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return compose_env(self.settings, version, {**self.extra_env, **(extra or {})})

    def compose(self, *args: str, version: str | None = None, extra: Mapping[str, str] | None = None,
                timeout: float | None = None) -> str:
        command = compose_argv(self.settings, *args)
        env = self.env(version, extra)
        try:
            return run(self.runner, command, env=env, timeout=timeout).stdout
        except CommandError as exc:
            raise self._scrubbed(exc, env.get(ENV_FILE_VARIABLE, "")) from None

    def _secrets(self, path: str) -> set[str]:
        """What must never be shown of the secrets file at ``path`` (see :func:`envfile.fragments`)."""
        if not path:
            return set()
        try:
            text = read_file(self.runner, path) or ""
        except HandoverError:
            text = ""  # unreadable here: what names the file is still cut off
        return envfile.fragments(text)

    def _scrubbed(self, exc: CommandError, path: str) -> CommandError:
        """``exc`` without anything of the secrets file at ``path`` that Compose may have quoted."""
        if not path:
            return exc
        secrets = self._secrets(path)
        return CommandError(exc.command, exc.exited, envfile.scrub(exc.output, secrets, path),
                            stdout=envfile.scrub(exc.stdout, secrets, path))

    def check(self) -> None:
        """``compose config`` proves the compose v2 plugin and the file. On this machine (``local``) it is
        not run again while nothing it reads changed since it last passed (see :func:`config_stamp`):
        a Go program start of 100-140 ms of CPU saved on every deploy."""
        stamp = config_stamp(self.settings, self.env()) if self.local else ""
        stamp_file = Path(self.settings.state_path) / CONFIG_STAMP
        if stamp and _read_text(stamp_file) == stamp:
            return
        try:
            # One call proves the engine, the compose v2 plugin and the file; diagnose only on failure.
            self.compose("config", "--quiet")
        except CommandError as exc:
            self.diagnose()
            raise PreflightError(f"the compose file {self.settings.compose_path} is invalid:\n{exc.output}"
                                 f"{self._too_old()}") from exc
        if stamp:
            with suppress(OSError):  # not remembered: checked again next time
                stamp_file.write_text(stamp)

    def _too_old(self) -> str:
        """A hint when Compose is older than the compose file needs (asked only after a failure)."""
        found = run(self.runner, ["docker", "compose", "version", "--short"], check=False).stdout.strip().lstrip("v")
        parts = tuple(int(p) for p in re.findall(r"\d+", found)[:2])
        if len(parts) == 2 and parts < COMPOSE_MINIMUM:
            return (f"\nDocker Compose v{'.'.join(map(str, COMPOSE_MINIMUM))} or newer is needed (the app's secrets "
                    f"file is read with `format: raw`); this host has v{found}: {COMPOSE_INSTALL_HINT}")
        return ""

    def host_checks(self, compose: Check | None = None) -> list[Check]:
        """The Docker engine reachable and Compose v2 present, each with what to do when not. With the
        Engine API the engine answered it already: its version comes from there, no client started.
        ``compose``: the Compose check made already (in one command with others, see fabfile.hostready)."""
        if self.api is not None:
            with suppress(HandoverError):
                docker = Check("docker", True, f"engine {self.api.version()}")
                return [docker, compose if compose is not None else check_compose(self.runner)]
        return [check_docker(self.runner, local_docker_host(self.runner)),
                compose if compose is not None else check_compose(self.runner)]

    def diagnose(self) -> None:
        """Raise :class:`PreflightError` naming what is missing, if the engine or Compose v2 is (exit 2,
        :class:`DockerHostUnreachable`, when it is the daemon ``DOCKER_HOST`` names)."""
        checks = self.host_checks()
        docker = checks[0]
        if not docker.ok and local_docker_host(self.runner) and "DOCKER_HOST=" in docker.detail:
            raise DockerHostUnreachable(f"{docker.detail}; no container was started or stopped")
        require(checks, "the host")

    # -- facts -----------------------------------------------------------------------------------
    def container_ids(self, service: str | None = None) -> list[str]:
        labels = [f"{PROJECT_LABEL}={self.settings.project}"]
        if service is not None:
            labels.append(f"{SERVICE_LABEL}={service}")
        if self.api is not None:
            return self.api.container_ids(labels)
        filters = [word for label in labels for word in ("--filter", f"label={label}")]
        out = run(self.runner, ["docker", "ps", "--all", "--no-trunc", "--quiet", *filters]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def inspect(self, ids: Iterable[str]) -> list[Instance]:
        ids = list(ids)
        if not ids:
            return []
        net = default_network(self.settings)
        if self.api is not None:
            found = [raw for raw in (self.api.inspect(cid) for cid in ids) if raw is not None]
            return sorted((parse_container(raw, net) for raw in found), key=lambda c: c.created)
        result = run(self.runner, ["docker", "inspect", *ids], check=False)
        if result.exited != 0:
            # A container vanished between listing and inspecting: inspect the survivors one by one.
            found = []
            for cid in ids:
                one = run(self.runner, ["docker", "inspect", cid], check=False)
                if one.exited == 0:
                    found.extend(_parse_inspect(one.stdout))
            return sorted((parse_container(raw, net) for raw in found), key=lambda c: c.created)
        return sorted((parse_container(raw, net) for raw in _parse_inspect(result.stdout)), key=lambda c: c.created)

    @contextmanager
    def one_look(self) -> Iterator[None]:
        """Inside, the app's and the proxy's containers come from one ``docker ps`` and one ``docker
        inspect`` of the whole project: one consistent view, and two Docker clients started instead
        of four (each is a Go program start, some 20 ms of CPU)."""
        self._look = self.inspect(self.container_ids())
        try:
            yield
        finally:
            self._look = None

    def _of_service(self, service: str) -> list[Instance]:
        if self._look is not None:
            return [c for c in self._look if c.service == service]
        return self.inspect(self.container_ids(service))

    def instances(self) -> list[Instance]:
        return self._of_service(APP_SERVICE)

    def refresh(self, instances: Sequence[Instance]) -> list[Instance]:
        return self.inspect(c.id for c in instances)

    def proxy_instance(self, service: str) -> Instance | None:
        running = [c for c in self._of_service(service) if c.status == "running"]
        return running[-1] if running else None

    def has_image(self, version: str) -> bool:
        return bool(self.image_id(version))

    def image_id(self, version: str) -> str:
        image = f"{self.settings.app_image}:{version}"
        if self.api is not None:
            return self.api.image_id(image)
        result = run(self.runner, ["docker", "image", "inspect", "--format", "{{.Id}}", image], check=False)
        return result.stdout.strip() if result.exited == 0 else ""

    def pull(self, version: str) -> None:
        image = f"{self.settings.app_image}:{version}"
        try:
            run(self.runner, ["docker", "pull", "--quiet", image], timeout=PULL_TIMEOUT)
        except CommandError as exc:
            said = "\n".join(f"{exc.stdout}\n{exc.output}".strip().splitlines()[-PULL_LOG_LINES:])
            raise BuildFailed(f"the image {image} cannot be pulled (exit {exc.exited}); no container was started "
                              f"or stopped:\n{said}") from None
        except CommandTimeout:
            raise BuildFailed(f"the pull of {image} took longer than {PULL_TIMEOUT:g} s; no container was started "
                              "or stopped") from None

    def image_versions(self) -> set[str]:
        if self.api is not None:
            return self.api.image_tags(self.settings.app_image)
        out = run(self.runner, ["docker", "image", "ls", self.settings.app_image, "--format", "{{.Tag}}"]).stdout
        return set(out.split())

    def remove_images(self, versions: Sequence[str]) -> None:
        if versions and self.api is not None:
            with suppress(CommandError):  # as the CLI's check=False: an image in use stays, said by no one
                self.api.remove_images([f"{self.settings.app_image}:{v}" for v in versions])
        elif versions:
            run(self.runner, ["docker", "image", "rm", *(f"{self.settings.app_image}:{v}" for v in versions)],
                check=False)

    # -- operations ------------------------------------------------------------------------------
    def build(self, version: str, *, proxy: str = "", app: bool = True) -> None:
        # Named, never "all": the user's own services (deploy.extra_compose_file) are not built here.
        services = ([APP_SERVICE] if app else []) + ([proxy] if proxy else [])
        if not services:
            return
        # The app apart from the proxy when it has build arguments: they are the app's alone.
        batches = [[s] for s in services] if self.settings.app_build_args and APP_SERVICE in services else [services]
        try:
            for batch in batches:
                self.compose(*build_args(self.settings, batch), version=version, timeout=BUILD_TIMEOUT)
        except CommandError as exc:
            # The builder's own words (e.g. pip's) may be on stdout (classic builder) or stderr (BuildKit).
            log = "\n".join(f"{exc.stdout}\n{exc.output}".strip().splitlines()[-BUILD_LOG_LINES:])
            raise BuildFailed(f"the build of {self.settings.app_image}:{version} failed (exit {exc.exited}); "
                              f"no container was started or stopped. Last lines of the build:\n{log}") from None

    def start(self, version: str, count: int, env: Mapping[str, str]) -> list[Instance]:
        before = {c.id for c in self.instances()}
        target = len(before) + count  # compose counts every container of the service, running or not
        self.compose("up", "--detach", "--no-build", "--no-recreate", "--no-deps",
                     "--scale", f"{APP_SERVICE}={target}", APP_SERVICE, version=version, extra=env,
                     timeout=UP_TIMEOUT)
        return self.started_since(before)

    def started_since(self, known: Iterable[str]) -> list[Instance]:
        """The app containers that are not among ``known`` IDs (what a start created)."""
        seen = set(known)
        return [c for c in self.instances() if c.id not in seen]

    def pre_stop(self, instance: Instance, argv: Sequence[str], timeout: float) -> str:
        try:
            result = run(self.runner, ["docker", "exec", instance.id, *argv], check=False, timeout=timeout)
        except CommandTimeout:
            return f"did not finish within {timeout:g} s"
        if result.exited == 0:
            return ""
        said = first_line(result.stderr or result.stdout)
        return f"exited {result.exited}" + (f": {said}" if said else "")

    def start_services(self, services: Sequence[str]) -> None:
        if services:
            # --no-recreate: a running service stays as it is, whatever changed in its definition.
            self.compose("up", "--detach", "--no-recreate", *services, timeout=UP_TIMEOUT)

    def stop(self, instances: Sequence[Instance], grace: float) -> None:
        ids = [c.id for c in instances]
        if ids and self.api is not None:
            # As the CLI's check=False: what did not stop is seen by the look after the drain. A timeout raises.
            with suppress(CommandError):
                self.api.stop(ids, grace)
        elif ids:
            # One `docker stop` stops them in parallel, each with its own grace period.
            run(self.runner, ["docker", "stop", "--time", str(int(grace)), *ids], check=False,
                timeout=grace + STOP_EXTRA_SECONDS)

    def remove(self, instances: Sequence[Instance]) -> None:
        ids = [c.id for c in instances]
        if ids and self.api is not None:
            with suppress(CommandError):  # as the CLI's check=False
                self.api.remove(ids)
        elif ids:
            run(self.runner, ["docker", "rm", "--force", "--volumes", *ids], check=False)

    def mark(self) -> float:
        """A point in time for :meth:`wait_change`: take it before looking at the instances."""
        return time.time()

    def wait_change(self, instances: Sequence[Instance], since: float, seconds: float) -> None:
        """Wait ``seconds``, or less when the engine reports a change of ``instances`` (health, exit,
        restart) since ``since`` (:meth:`mark`): a health wait then ends as soon as Docker says healthy
        rather than at the next poll. Without the API, a plain sleep."""
        if self.api is not None and instances:
            self.api.wait_event([c.id for c in instances], since, seconds)
        elif seconds > 0:
            time.sleep(seconds)

    def logs(self, instance: Instance, tail: int) -> str:
        result = run(self.runner, ["docker", "logs", "--tail", str(tail), instance.id], check=False)
        return (result.stdout + result.stderr).strip()

    def logs_command(self, tail: int, follow: bool) -> tuple[list[str], dict[str, str]]:
        return compose_argv(self.settings, "logs", "--tail", str(tail), *(["--follow"] if follow else [])), self.env()

    def start_proxy(self, service: str) -> None:
        self.compose("up", "--detach", "--no-build", "--no-deps", service, timeout=UP_TIMEOUT)

    def exec(self, instance: Instance, argv: Sequence[str], *, check: bool = True) -> Result:
        return run(self.runner, ["docker", "exec", instance.id, *argv], check=check)

    def run_once(self, version: str, argv: Sequence[str], timeout: float) -> OneOff:
        """See :meth:`handover.backends.Backend.run_once`. A timed-out or interrupted ``compose run``
        may leave its container running (compose is only its client): it is removed by name, and
        what it printed so far is read from its log first."""
        env = self.env(version)
        path = env.get(ENV_FILE_VARIABLE, "")
        self._remove_one_off()  # left by a run that was killed
        try:
            try:
                result = run(self.runner, run_once_argv(self.settings, argv), env=env, check=False, timeout=timeout)
            except CommandTimeout:
                log = run(self.runner, ["docker", "logs", "--tail", str(ONE_OFF_LINES), one_off_name(self.settings)],
                          check=False)
                output = f"{log.stdout}\n{log.stderr}"
                exited = None
            else:
                output, exited = f"{last_lines(result.stdout)}\n{last_lines(result.stderr)}", result.exited
        finally:
            self._remove_one_off()
        return OneOff(exited, envfile.scrub(last_lines(output, 2 * ONE_OFF_LINES), self._secrets(path), path))

    def _remove_one_off(self) -> None:
        run(self.runner, ["docker", "rm", "--force", "--volumes", one_off_name(self.settings)], check=False)

    def down(self, grace: float) -> None:
        self.compose("down", "--remove-orphans", "--timeout", str(int(grace)), timeout=grace + DOWN_EXTRA_SECONDS)
