"""Deploy settings, read from Invoke/Fabric's layered configuration (the ``deploy`` key).

Defaults live in ``config/deploy.yaml`` and enter as the collection's configuration; a project
``invoke.yaml``/``fabric.yaml``, the user's files, ``INVOKE_DEPLOY_*``/``FABRIC_DEPLOY_*`` environment
variables and ``-f`` runtime files all override them, as Invoke documents. :func:`load` validates
the merged result and names the key at fault.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from . import envfile
from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "config" / "deploy.yaml"
DEMO_APP_DIR = PROJECT_ROOT / "server"  # the demo app: app_build's default
DEFAULT_STOP_SIGNAL = "SIGTERM"
CONTAINER_ROOT = "/etc/handover"

# Every pattern is applied with fullmatch: ``$`` would also match before a trailing newline.
# Compose project names: lowercase letters, digits, dashes and underscores, starting with a letter/digit.
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Image references: registry/repo path segments (no tag; the version is the tag).
_IMAGE_NAME = re.compile(r"[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
_IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
# Docker tags: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SUBDIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# An HTTP path for app_health: '/' then URL path characters (no query spaces, quotes or controls).
_HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,254}")
_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})", re.ASCII)

HSTS_MAX = 63072000  # Strict-Transport-Security max-age: two years, the usual preload value

# What the app needs between SIGTERM and its exit (see server/webapp.py): reconnect notices spread
# over min(DRAIN_SPREAD, drain_timeout / 2), then up to drain_timeout for the WebSocket handlers,
# then uvicorn's graceful HTTP shutdown of ceil(drain_timeout) seconds, then the process exit.
APP_DRAIN_SPREAD = 1.0  # the app's DRAIN_SPREAD default; the deploy does not set DRAIN_SPREAD
APP_EXIT_MARGIN = 1.0  # lifespan shutdown and interpreter exit after the drain
APP_IMAGE_SUFFIX = "-app"  # app_image defaults to <project>-app
# The compose services that are handover's own: the user's compose file must not define them.
OWN_SERVICES = ("app", "nginx")
# What a synced release holds besides the build directory and the user's compose file (each under its
# own name): neither may take these names.
RELEASE_NAMES = ("compose", "nginx")
# Keys only `fab` reads (its hosts and how it reaches them): one config file serves both front doors, so
# `inv` leaves them alone.
FAB_ONLY_KEYS = frozenset({"hosts", "parallel", "known_hosts"})
_SIGNAL = re.compile(r"SIG[A-Z0-9]{2,10}|SIGRTMIN\+[0-9]{1,2}|[0-9]{1,2}")
# A Dockerfile ARG name; the build arguments handover sets itself may not be given in app_build_args.
_BUILD_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
OWN_BUILD_ARGS = {"APP_VERSION": "the version (--version, or src-<hash>)", "BASE_IMAGE": "deploy.base_image"}


@dataclass(frozen=True)
class Settings:
    project: str
    deploy_dir: str
    source_subdir: str
    compose_file: str
    state_dir: str
    http_bind: str
    http_port: int
    replicas: int
    app_image: str
    base_image: str
    proxy_base_image: str
    health_timeout: float
    health_poll_interval: float
    drain_timeout: float
    stop_grace_period: float
    reload_timeout: float
    post_switch_check: float
    releases_kept: int
    env_file: str
    # The release command and hooks (see handover/hooks.py); their defaults keep both off.
    release_command: tuple[str, ...] = ()
    release_timeout: float = 300.0
    hooks_dir: str = ""
    hook_timeout: float = 60.0
    app_port: int = 0  # 0: the app binds its unix socket; else the TCP port it listens on in its container
    app_health: str = ""  # "": the image's Docker HEALTHCHECK; else an HTTP path the engine GETs (2xx = healthy)

    @property
    def tcp(self) -> bool:
        """The app listens on a TCP port (``app_port``) rather than on its unix socket."""
        return self.app_port > 0

    # Where the app's image comes from, its other services and how it stops (see config/deploy.yaml).
    app_build: str = ""  # the build directory, absolute and local; "" = the image comes ready-made
    app_ship: bool = False  # no build: `fab` sends the local image to each host instead of a pull there
    app_stop_signal: str = "SIGTERM"
    app_pre_stop: tuple[str, ...] = ()  # argv run in each old container before it is stopped
    app_pre_stop_timeout: float = 10.0
    extra_compose_file: str = ""  # the user's compose file with their other services, absolute and local
    extra_services: tuple[str, ...] = ()  # the services it defines
    # Build arguments for the app's Dockerfile (docker compose build --build-arg NAME=VALUE), in order.
    app_build_args: tuple[tuple[str, str], ...] = ()
    # Where the app runs (see handover/backends/): "compose" on each host, or "swarm" as a stack of one
    # swarm, rolled by Swarm itself (swarm_parallelism tasks at a time, each watched for swarm_monitor s).
    backend: str = "compose"
    swarm_parallelism: int = 1
    swarm_monitor: float = 5.0

    @property
    def swarm(self) -> bool:
        return self.backend == "swarm"

    @property
    def synced(self) -> bool:
        """The sources are a release synced to a host (``source_subdir``), not the local checkout."""
        return bool(self.source_subdir)

    @property
    def build_dir(self) -> str:
        """The build directory where the compose commands run: the local one, or its synced copy."""
        if not self.app_build:
            return ""
        return _join(self.source_path, PurePosixPath(self.app_build).name) if self.synced else self.app_build

    @property
    def extra_compose_path(self) -> str:
        """The user's compose file where the compose commands run: the local one, or its synced copy."""
        if not self.extra_compose_file:
            return ""
        name = PurePosixPath(self.extra_compose_file).name
        return _join(self.source_path, name) if self.synced else self.extra_compose_file
    # HTTPS (see handover/proxies/tls.py): the pair's local files ('' = plain HTTP), the published HTTPS port
    # and the HSTS max-age (0 = no header).
    tls_certificate: str = ""
    tls_key: str = ""
    https_port: int = 8443
    hsts: int = 0

    @property
    def tls(self) -> bool:
        return bool(self.tls_certificate)
    # Several apps on one host behind a shared front proxy (see handover/proxies/front.py); off when no hostnames.
    hostnames: tuple[str, ...] = ()
    front_project: str = "handover-front"
    front_dir: str = ".state-front"
    front_bind: str = "127.0.0.1"
    front_port: int = 8088
    # Where the proxy's runtime files are (see handover/proxies/daemonfiles.py): "bind" (the state directory,
    # bind-mounted) or "volume" (named Docker volumes written through the Docker daemon); resolved from "auto".
    proxy_files: str = "bind"

    @property
    def proxy_volumes(self) -> bool:
        """The proxy's files live in Docker volumes, written through the daemon (``inv local.*`` only: a
        synced release is on the Docker host itself, where the state directory is bind-mounted)."""
        return self.proxy_files == PROXY_FILES_VOLUME and not self.synced

    @property
    def source_path(self) -> str:
        """Where compose/, the proxy's files and server/ are: the checkout, or a synced release on a host."""
        return _join(self.deploy_dir, self.source_subdir) if self.source_subdir else self.deploy_dir

    @property
    def compose_path(self) -> str:
        return _join(self.source_path, self.compose_file)

    @property
    def state_path(self) -> str:
        return _join(self.deploy_dir, self.state_dir)

    @property
    def front_path(self) -> str:
        """The front's directory (its registry of apps, config, lock): one per host, shared by its apps."""
        return _join(self.deploy_dir, self.front_dir)


def _join(base: str, path: str) -> str:
    return path if path.startswith("/") else f"{base.rstrip('/')}/{path}"


def _expect(key: str, ok: bool, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"config key deploy.{key}: expected {expected}, got {value!r}")


def _number(key: str, value: object, low: float, high: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            ok = False
        else:
            ok, value = low <= number <= high, number
    _expect(key, ok, f"a number from {low:g} to {high:g}", value)
    return float(value)  # type: ignore[arg-type]


def _integer(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _expect(key, ok, f"a whole number from {low} to {high}", value)
    assert isinstance(value, int)
    return value


def _text(key: str, value: object, pattern: re.Pattern[str] | None, expected: str) -> str:
    ok = isinstance(value, str) and value != "" and (pattern is None or bool(pattern.fullmatch(value)))
    ok = ok and "\n" not in str(value) and "\0" not in str(value)
    _expect(key, ok, expected, value)
    return str(value)


def _optional_text(key: str, value: object, pattern: re.Pattern[str] | None, expected: str) -> str:
    return "" if value in (None, "") else _text(key, value, pattern, expected)


def _ipv4(key: str, value: object) -> str:
    match = _IPV4.fullmatch(value) if isinstance(value, str) else None
    _expect(key, bool(match) and all(int(p) <= 255 for p in match.groups()) if match else False,
            "an IPv4 address such as 127.0.0.1", value)
    return str(value)


def _inner_path(key: str, value: object, expected: str) -> str:
    """A path below the deploy directory: relative, no '..', not the directory itself.

    The state directory is made, chmod-ed and partly removed by the tool; anything that could
    resolve outside deploy_dir (``/var/lib``, ``../..``) or to deploy_dir itself is refused.
    """
    text = _text(key, value, None, expected)
    parts = PurePosixPath(text).parts
    ok = not text.startswith("/") and ".." not in parts and any(part != "." for part in parts)
    _expect(key, ok, f"{expected} (not absolute, no '..')", value)
    return text


def default_app_image(project: str) -> str:
    """The app image's name when ``app_image`` is not set: the project's own, so that two projects
    on one Docker host never tag, prune or run each other's images."""
    return f"{project}{APP_IMAGE_SUFFIX}"


def _app_image(value: object, project: str) -> str:
    expected = "an image name without a tag"
    if value not in (None, ""):
        return _text("app_image", value, _IMAGE_NAME, expected)
    derived = default_app_image(project)
    if not _IMAGE_NAME.fullmatch(derived):
        raise ConfigError(f"config key deploy.app_image is not set and its default {derived!r} (from deploy.project) "
                          f"is not an image name; set deploy.app_image to {expected}")
    return derived


def _env_file(key: str, value: object) -> str:
    """The secrets file: optional, but when set it must be a readable file of well-formed lines
    (Compose would otherwise run the app without it, or quote it in an error). A relative path is
    taken from the project root; the absolute one is kept."""
    text = _optional_text(key, value, None, "a path without newlines")
    if not text:
        return ""
    path = envfile.resolve(text, PROJECT_ROOT)
    envfile.read(path, f"deploy.{key}")
    return str(path)


def _app_build(value: object) -> str:
    """The build directory: a directory with a Dockerfile, checked now (before anything changes)."""
    key = "app_build"
    text = _optional_text(key, value, None, "a directory path without newlines, or \"\" for a ready-made image")
    if not text:
        return ""
    path = Path(text).expanduser()
    path = (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
    if not path.is_dir():
        raise ConfigError(f"config key deploy.{key}: the build directory {path} does not exist")
    if not (path / "Dockerfile").is_file():
        raise ConfigError(f"config key deploy.{key}: the build directory {path} has no Dockerfile")
    if path.name in RELEASE_NAMES:
        raise ConfigError(f"config key deploy.{key}: a build directory may not be called {path.name!r} (a synced "
                          f"release keeps {', '.join(RELEASE_NAMES)} of its own there); rename it")
    return str(path)


def _flag(key: str, value: object) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    _expect(key, isinstance(value, bool), "true or false", value)
    return bool(value)


def _pre_stop(key: str, value: object) -> tuple[str, ...]:
    """A shell command (run with ``sh -c`` in the container) or an argv list; empty = none."""
    if value in (None, "", []):
        return ()
    if isinstance(value, str):
        _expect(key, "\n" not in value and "\0" not in value and value.strip() != "",
                "a command on one line, or a list of arguments", value)
        return ("sh", "-c", value)
    ok = isinstance(value, list | tuple) and all(isinstance(a, str) and "\n" not in a and "\0" not in a
                                                  for a in value) and bool(value) and bool(str(value[0]).strip())
    _expect(key, ok, "a command on one line, or a list of arguments", value)
    assert isinstance(value, list | tuple)
    return tuple(str(a) for a in value)


def _extra_compose(key: str, value: object) -> tuple[str, tuple[str, ...]]:
    """The user's compose file: a readable compose file whose services are not handover's own."""
    from invoke.vendor import yaml

    text = _optional_text(key, value, None, "a path without newlines")
    if not text:
        return "", ()
    path = Path(text).expanduser()
    path = (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
    try:
        data = yaml.safe_load(path.read_text())  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise ConfigError(f"config key deploy.{key}: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config key deploy.{key}: {path} is not valid YAML: {exc}") from None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not services:
        raise ConfigError(f"config key deploy.{key}: {path} defines no services (expected a compose file with "
                          "a `services:` mapping)")
    names = tuple(str(name) for name in services)
    for name in names:
        if name in OWN_SERVICES:
            raise ConfigError(f"config key deploy.{key}: service {name!r} in {path} has the name of handover's own "
                              f"service {name!r} ({' and '.join(OWN_SERVICES)} are taken); rename it in that file")
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
            raise ConfigError(f"config key deploy.{key}: {name!r} in {path} is not a compose service name")
    return str(path), names


def _build_args(key: str, value: object, app_build: str) -> tuple[tuple[str, str], ...]:
    """The build arguments: a mapping of Dockerfile ARG names to values (strings, or numbers YAML did
    not quote). They are not secret: Docker keeps them in the image's history (``docker history``)."""
    if value in (None, "", {}):
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key deploy.{key}: expected a mapping of build argument names to values, such as "
                          f"{{PYTHON_IMAGE: python:3.11-slim}}, got {value!r}")
    if not app_build:
        raise ConfigError(f"config key deploy.{key}: build arguments need a build directory, but deploy.app_build "
                          "is \"\" (the image is ready-made); remove the build arguments or set app_build")
    args = []
    for name, arg in value.items():
        if not isinstance(name, str) or not _BUILD_ARG_NAME.fullmatch(name):
            raise ConfigError(f"config key deploy.{key}: {name!r} is not a build argument name (letters, digits and "
                              "'_', not starting with a digit)")
        if name in OWN_BUILD_ARGS:
            raise ConfigError(f"config key deploy.{key}: {name} is set by handover from {OWN_BUILD_ARGS[name]}; "
                              "set that instead")
        ok = isinstance(arg, str | int | float) and not isinstance(arg, bool)
        text = str(arg) if ok else ""
        if not ok or any(c in text for c in "\n\r\0"):
            raise ConfigError(f"config key deploy.{key}.{name}: expected a value on one line (a string or a "
                              f"number), got {arg!r}")
        args.append((name, text))
    return tuple(args)


def app_stop_seconds(drain_timeout: float) -> float:
    """The longest the app may take to exit after SIGTERM (see the constants above)."""
    spread = min(APP_DRAIN_SPREAD, drain_timeout / 2)
    return spread + drain_timeout + math.ceil(drain_timeout) + APP_EXIT_MARGIN


def _check_drain_budget(drain: float, grace: float) -> None:
    """Docker must not kill the app before its drain ends. ``docker stop --time`` takes whole
    seconds, so a fractional grace period gives only its whole part."""
    waits = math.floor(grace)
    needed = app_stop_seconds(drain)
    if waits < needed:
        raise ConfigError(
            f"config keys deploy.stop_grace_period and deploy.drain_timeout: with drain_timeout {drain:g} the app "
            f"needs up to {needed:g} s to stop ({min(APP_DRAIN_SPREAD, drain / 2):g} s reconnect notices + "
            f"{drain:g} s WebSockets + {math.ceil(drain):g} s HTTP + {APP_EXIT_MARGIN:g} s margin), but "
            f"stop_grace_period {grace:g} lets Docker wait only {waits} s (whole seconds): set "
            f"stop_grace_period to at least {math.ceil(needed)} or lower drain_timeout"
        )


def _app_endpoint(config: Mapping[str, Any]) -> dict[str, Any]:
    """``app_port`` and ``app_health``: an HTTP health path is checked over the app's TCP port only."""
    port = config.get("app_port")
    port = _integer("app_port", 0 if port is None else port, 0, 65535)
    health = _optional_text("app_health", config.get("app_health"), _HEALTH_PATH,
                            "an HTTP path starting with '/' such as /healthz (\"\" = the image's HEALTHCHECK)")
    if health and not port:
        raise ConfigError(f"config key deploy.app_health ({health!r}) needs deploy.app_port: the engine checks the "
                          "path over the app's TCP port; with app_port 0 (unix socket) leave app_health \"\"")
    return {"app_port": port, "app_health": health}


def load(config: Mapping[str, Any], *, deploy_dir: str | None = None) -> Settings:
    """Validate the ``deploy`` section of an Invoke/Fabric config. Raises :class:`ConfigError`."""
    known = {f.name for f in fields(Settings)} - {"extra_services"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"unknown config key deploy.{unknown[0]} (known keys: {', '.join(sorted(known))})")
    optional = {"deploy_dir", "source_subdir", "env_file", "app_image", "app_port", "app_health",
                *RELEASE_AND_HOOK_DEFAULTS, "app_build", "app_ship", "app_stop_signal", "app_pre_stop",
                "app_pre_stop_timeout", "extra_compose_file", "app_build_args", *TLS_KEYS,
                *FRONT_DEFAULTS, "proxy_files", *BACKEND_DEFAULTS}
    missing = sorted(name for name in known - optional if config.get(name) is None)
    if missing:
        raise ConfigError(f"missing config key deploy.{missing[0]}")
    raw_dir = deploy_dir if deploy_dir is not None else config.get("deploy_dir") or str(PROJECT_ROOT)
    path_expected = "a path without newlines"
    drain = _number("drain_timeout", config["drain_timeout"], 1, 600)
    grace = _number("stop_grace_period", config["stop_grace_period"], 1, 3600)
    _check_drain_budget(drain, grace)
    project = _text("project", config["project"], _PROJECT_NAME,
                    "a compose project name: lowercase letters, digits, '-' or '_'")
    app_build = _app_build(config.get("app_build"))
    app_ship = _flag("app_ship", config.get("app_ship", False))
    if app_ship and app_build:
        raise ConfigError(f"config keys deploy.app_ship and deploy.app_build: app_ship sends a ready-made image to "
                          f"the hosts, but app_build is set ({app_build}); set app_build to \"\" to ship "
                          "<app_image>:<version> from this machine, or app_ship to false to build on the hosts")
    extra_file, extra_services = _extra_compose("extra_compose_file", config.get("extra_compose_file"))
    if extra_file and (Path(extra_file).name in RELEASE_NAMES or Path(extra_file).name == Path(app_build).name):
        raise ConfigError(f"config key deploy.extra_compose_file: {extra_file} would take the name of a directory "
                          "of the synced release (compose/, nginx/, the build directory); rename the file")
    http_port = _integer("http_port", config["http_port"], 1, 65535)
    settings = Settings(
        project=project,
        deploy_dir=_text("deploy_dir", raw_dir, None, path_expected),
        source_subdir=_optional_text("source_subdir", config.get("source_subdir"), _SUBDIR,
                                     "a relative directory name such as 'current'"),
        compose_file=_inner_path("compose_file", config["compose_file"],
                                 "a relative path inside the source tree such as compose/docker-compose.yml"),
        state_dir=_inner_path("state_dir", config["state_dir"],
                              "a relative directory inside deploy_dir such as .state"),
        http_bind=_ipv4("http_bind", config["http_bind"]),
        http_port=http_port,
        replicas=_integer("replicas", config["replicas"], 1, 16),
        app_image=_app_image(config.get("app_image"), project),
        base_image=_text("base_image", config["base_image"], _IMAGE_REF, "an image reference"),
        proxy_base_image=_text("proxy_base_image", config["proxy_base_image"], _IMAGE_REF, "an image reference"),
        health_timeout=_number("health_timeout", config["health_timeout"], 1, 3600),
        health_poll_interval=_number("health_poll_interval", config["health_poll_interval"], 0.05, 10),
        drain_timeout=drain,
        stop_grace_period=grace,
        reload_timeout=_number("reload_timeout", config["reload_timeout"], 1, 600),
        post_switch_check=_number("post_switch_check", config["post_switch_check"], 0, 600),
        releases_kept=_integer("releases_kept", config["releases_kept"], 1, 100),
        env_file=_env_file("env_file", config.get("env_file")),
        **_release_and_hooks(config),
        **_app_endpoint(config),
        app_build=app_build,
        app_ship=app_ship,
        app_stop_signal=_text("app_stop_signal", config.get("app_stop_signal") or DEFAULT_STOP_SIGNAL, _SIGNAL,
                              "a signal name such as SIGTERM or SIGQUIT"),
        app_pre_stop=_pre_stop("app_pre_stop", config.get("app_pre_stop")),
        app_pre_stop_timeout=_number("app_pre_stop_timeout", config.get("app_pre_stop_timeout", 10), 1, 600),
        extra_compose_file=extra_file,
        extra_services=extra_services,
        app_build_args=_build_args("app_build_args", config.get("app_build_args"), app_build),
        **_tls(config, http_port),
        **_front(config),
        proxy_files=_proxy_files("proxy_files", config.get("proxy_files")),
        **_backend(config),
    )
    if settings.swarm:
        _check_swarm(settings)
    return settings


# Where the app runs: optional keys, Compose when absent.
BACKENDS = ("compose", "swarm")
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 - what a host-mode published port of a Swarm service binds
BACKEND_DEFAULTS: dict[str, Any] = {"backend": "compose", "swarm_parallelism": 1, "swarm_monitor": 5}


def _backend(config: Mapping[str, Any]) -> dict[str, Any]:
    def get(key: str) -> Any:
        value = config.get(key)
        return BACKEND_DEFAULTS[key] if value is None else value

    backend = get("backend")
    _expect("backend", isinstance(backend, str) and backend in BACKENDS, " or ".join(BACKENDS), backend)
    return {"backend": backend,
            "swarm_parallelism": _integer("swarm_parallelism", get("swarm_parallelism"), 1, 16),
            "swarm_monitor": _number("swarm_monitor", get("swarm_monitor"), 0, 600)}


# What a Swarm stack cannot do yet (or ever: a unix socket does not cross nodes), each with the way out.
SWARM_UNSUPPORTED = (
    ("app_port", lambda s: not s.tcp, "the app must listen on a TCP port (deploy.app_port, e.g. 8000): nginx "
     "reaches its tasks on other nodes by Swarm DNS, a unix socket does not cross nodes"),
    ("app_build", lambda s: bool(s.app_build), "Swarm runs a ready-made image on every node: set deploy.app_build "
     "to \"\" and give the image <app_image>:<version> to every node (a registry every node reaches, or "
     "docker save | docker load on each)"),
    ("app_health", lambda s: bool(s.app_health), "Swarm gates on the image's own Docker HEALTHCHECK: give the "
     "image one and set deploy.app_health to \"\""),
    ("http_bind", lambda s: s.http_bind != ALL_ADDRESSES, "Swarm publishes nginx's port in host mode on every address "
     "of the manager that runs it (it takes no bind address): set deploy.http_bind to 0.0.0.0 and keep the port "
     "behind the node's firewall where it must not be public"),
    ("env_file", lambda s: bool(s.env_file), "not with backend swarm yet (Swarm secrets are the way there)"),
    ("app_ship", lambda s: s.app_ship, "not with backend swarm yet: load the image on every node"),
    ("release_command", lambda s: bool(s.release_command), "not with backend swarm yet"),
    ("app_pre_stop", lambda s: bool(s.app_pre_stop), "not with backend swarm yet (Swarm sends the stop signal)"),
    ("extra_compose_file", lambda s: bool(s.extra_compose_file), "not with backend swarm yet"),
    ("tls_certificate", lambda s: s.tls, "not with backend swarm yet: plain HTTP only"),
    ("hostnames", lambda s: bool(s.hostnames), "not with backend swarm yet: no shared front"),
)


def _check_swarm(settings: Settings) -> None:
    """Refuse, naming the key, what the Swarm backend does not do."""
    for key, bad, why in SWARM_UNSUPPORTED:
        if bad(settings):
            raise ConfigError(f"config key deploy.{key} with deploy.backend swarm: {why}")


PROXY_FILES_BIND, PROXY_FILES_VOLUME, PROXY_FILES_AUTO = "bind", "volume", "auto"
PROXY_FILES_CHOICES = (PROXY_FILES_AUTO, PROXY_FILES_BIND, PROXY_FILES_VOLUME)


def daemon_elsewhere(environ: Mapping[str, str], platform: str, docker_config: str | None) -> str:
    """Why the Docker daemon may not see this machine's files ("" = it runs here, as far as can be
    told without asking it): macOS and Windows (Docker Desktop runs it in a VM), ``DOCKER_HOST`` with
    a scheme other than ``unix://``, or a Docker context other than the default one (``DOCKER_CONTEXT``,
    or ``currentContext`` in ``docker_config``, the text of ~/.docker/config.json): Docker Desktop on
    Linux is one, in a VM too."""
    if platform in ("darwin", "win32", "cygwin"):
        return f"this is {platform} (Docker Desktop runs the daemon in a VM)"
    host = environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return f"DOCKER_HOST is {host}"
    context = environ.get("DOCKER_CONTEXT", "")
    if not context and docker_config:
        try:
            data = json.loads(docker_config)
        except ValueError:
            data = {}
        context = str(data.get("currentContext") or "") if isinstance(data, dict) else ""
    if context and context != "default":
        return f"the Docker context is {context!r}"
    return ""


def _docker_config_text() -> str | None:
    path = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _proxy_files(key: str, value: object) -> str:
    """``bind``, ``volume``, or ``auto`` (the default): ``volume`` when :func:`daemon_elsewhere` finds a
    reason, else ``bind``."""
    text = PROXY_FILES_AUTO if value in (None, "") else value
    _expect(key, isinstance(text, str) and text in PROXY_FILES_CHOICES, " or ".join(PROXY_FILES_CHOICES), value)
    if text != PROXY_FILES_AUTO:
        return str(text)
    far = daemon_elsewhere(os.environ, sys.platform, _docker_config_text())
    return PROXY_FILES_VOLUME if far else PROXY_FILES_BIND


# The release command and hooks: optional keys, off when absent.
RELEASE_AND_HOOK_DEFAULTS: dict[str, Any] = {"release_command": "", "release_timeout": 300, "hooks_dir": "",
                                             "hook_timeout": 60}
_RELEASE_EXPECTED = ("a command as a list of strings (argv) or one string split like a shell would (no shell "
                     "features: use [sh, -c, '...'] for those); \"\" for none")


def _release_command(key: str, value: object) -> tuple[str, ...]:
    """The release command as argv: a list (each item a string, or a number YAML did not quote) or a
    string split with :func:`shlex.split`. Never run through a shell here; ``()`` when not set."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"config key deploy.{key}: expected {_RELEASE_EXPECTED}, got {value!r} ({exc})"
                              ) from None
    elif isinstance(value, list | tuple):
        ok = all(isinstance(item, str | int | float) and not isinstance(item, bool) for item in value)
        _expect(key, ok, _RELEASE_EXPECTED, value)
        argv = [str(item) for item in value]
    else:
        argv = []
    _expect(key, bool(argv) and argv[0] != "", _RELEASE_EXPECTED, value)
    for item in argv:
        if "\n" in item or "\r" in item or "\0" in item:
            raise ConfigError(f"config key deploy.{key}: an argument holds a newline, carriage return or NUL byte "
                              f"({item!r}); put a longer script into the image and run that")
    if argv[0].startswith("-"):
        raise ConfigError(f"config key deploy.{key}: expected the program first, got {argv[0]!r} (it starts "
                          "with '-')")
    return tuple(argv)


def _hooks_dir(key: str, value: object) -> str:
    """Where the hooks are (on the machine that runs fab/inv): a relative path is taken from the
    project root; "" turns hooks off. A directory that does not exist means no hooks."""
    text = _optional_text(key, value, None, "a path without newlines, or \"\" for no hooks")
    return str(envfile.resolve(text, PROJECT_ROOT)) if text else ""


def _release_and_hooks(config: Mapping[str, Any]) -> dict[str, Any]:
    def get(key: str) -> Any:
        value = config.get(key)
        return RELEASE_AND_HOOK_DEFAULTS[key] if value is None else value

    return {
        "release_command": _release_command("release_command", get("release_command")),
        "release_timeout": _number("release_timeout", get("release_timeout"), 1, 86400),
        "hooks_dir": _hooks_dir("hooks_dir", get("hooks_dir")),
        "hook_timeout": _number("hook_timeout", get("hook_timeout"), 1, 3600),
    }


TLS_KEYS = ("tls_certificate", "tls_key", "https_port", "hsts")


def _tls(config: Mapping[str, Any], http_port: int) -> dict[str, Any]:
    """The HTTPS keys: both files or neither. The pair itself (readable, matching, valid) is checked
    by every run that installs it, before anything changes (:meth:`handover.proxies.Proxy.check`), so
    `status`, `logs` or `down` still work with an expired certificate configured."""
    paths = {key: _optional_text(key, config.get(key), None, "a path without newlines")
             for key in ("tls_certificate", "tls_key")}
    https_port = _integer("https_port", config.get("https_port", 8443), 1, 65535)
    hsts = _integer("hsts", config.get("hsts", 0), 0, HSTS_MAX)
    if bool(paths["tls_certificate"]) != bool(paths["tls_key"]):
        given, empty = sorted(paths, key=lambda key: not paths[key])
        raise ConfigError(f"config key deploy.{empty}: deploy.{given} is set, so deploy.{empty} must be too "
                          "(both files, or neither for plain HTTP)")
    if paths["tls_certificate"]:
        paths = {key: str(envfile.resolve(value, PROJECT_ROOT)) for key, value in paths.items()}
        if https_port == http_port:
            raise ConfigError(f"config key deploy.https_port: {https_port} is deploy.http_port too; with TLS on, "
                              "http_port redirects to https_port, so they must differ")
    return {**paths, "https_port": https_port, "hsts": hsts}
# Several apps per host behind one front (handover/proxies/front.py): optional keys; no hostnames = not behind it.
FRONT_DEFAULTS: dict[str, Any] = {"hostnames": "", "front_project": "handover-front", "front_dir": ".state-front",
                                  "front_bind": "127.0.0.1", "front_port": 8088}
# A server name nginx matches exactly (lowercase DNS labels), or with one leading "*." wildcard label.
_HOSTNAME = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
                       re.ASCII)
_HOSTNAMES_EXPECTED = ("a list of host names such as [shop.example.com, www.shop.example.com] (lowercase letters, "
                       "digits, '-' and '.', an optional leading '*.'), or \"\" for none")


def _hostnames(key: str, value: object) -> tuple[str, ...]:
    """The app's server names behind the front: a list, or one string of names split on commas or
    spaces (for INVOKE_DEPLOY_HOSTNAMES); each checked, duplicates refused."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):
        names = [name for name in re.split(r"[,\s]+", value) if name]
    elif isinstance(value, list | tuple) and all(isinstance(name, str) for name in value):
        names = list(value)
    else:
        names = []
    _expect(key, bool(names), _HOSTNAMES_EXPECTED, value)
    for name in names:
        ok = len(name) <= 253 and bool(_HOSTNAME.fullmatch(name))
        _expect(key, ok, _HOSTNAMES_EXPECTED, name)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"config key deploy.{key}: {repeated[0]!r} is listed twice")
    return tuple(names)


def _front(config: Mapping[str, Any]) -> dict[str, Any]:
    def get(key: str) -> Any:
        value = config.get(key)
        return FRONT_DEFAULTS[key] if value is None else value

    return {
        "hostnames": _hostnames("hostnames", get("hostnames")),
        "front_project": _text("front_project", get("front_project"), _PROJECT_NAME,
                               "a compose project name: lowercase letters, digits, '-' or '_'"),
        "front_dir": _text("front_dir", get("front_dir"), None, "a path without newlines"),
        "front_bind": _ipv4("front_bind", get("front_bind")),
        "front_port": _integer("front_port", get("front_port"), 1, 65535),
    }


def check_version(version: str) -> str:
    """A release version becomes an image tag: refuse anything Docker would not accept."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ConfigError(
            f"version {version!r}: expected 1-128 characters of letters, digits, '_', '.', '-' "
            "(not starting with '.' or '-')"
        )
    return version


def check_project(name: str) -> str:
    """A compose project name given on a command line (``inv bench --project``)."""
    if not _PROJECT_NAME.fullmatch(name):
        raise ConfigError(f"project {name!r}: expected a compose project name: lowercase letters, digits, '-' or '_'")
    return name
