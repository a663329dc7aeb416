"""The hosts of a `fab` run and their configuration, validated for every host before any connection.

The hosts are the ``-H`` list (handed over whole by :mod:`fabfile.executor`), or the one host
Fabric's own executor calls a task with. The engine's keys are validated by
:func:`handover.settings.load` once per host, after the host's entry under ``deploy.hosts`` is
merged over ``deploy``. The keys only the Fabric front door knows
(``hosts``, ``parallel``, ``known_hosts``) are taken out first. Any error names the key (with the
host's entry when it came from there) and ends the run with exit status 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fabric import Connection

from handover import envfile
from handover import settings as settings_mod
from handover.errors import ConfigError
from handover.settings import PROJECT_ROOT, Settings

from .executor import HOSTS_KEY

REMOTE_DEFAULTS_FILE = PROJECT_ROOT / "config" / "remote.yaml"
REMOTE_KEYS = settings_mod.FAB_ONLY_KEYS
CONNECTION_KEYS = frozenset({"hostname", "user", "port"})
RELEASE_LINK = "current"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
MAX_PARALLEL = 64
# Applied with fullmatch ('$' would let a trailing newline through). A leading '-' is refused: ssh
# and rsync would read such a host or user as an option.
_HOST_NAME = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9_.:-]*")  # names, IPv4, bare IPv6
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
DEPLOY_ROOT = "/srv"  # deploy_dir defaults to /srv/<project>
_PROJECT_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one path component, no '..' or '/'


@dataclass(frozen=True)
class Target:
    """One host to act on: how to reach it and its validated settings."""

    name: str  # the host as given to -H, without user@ (":port" kept when given)
    host: str  # what the SSH connection resolves (the name, or deploy.hosts.<name>.hostname)
    user: str | None
    port: int | None
    settings: Settings  # env_file is "" here: the secrets file is local (env_file below)
    env_file: Path | None
    # The names under deploy.hosts, to suggest one when -H names a host that does not resolve.
    configured_hosts: tuple[str, ...] = ()
    # deploy.known_hosts was set: it wins over ssh_config's UserKnownHostsFile (see fabfile.hostkeys).
    known_hosts_set: bool = False


@dataclass(frozen=True)
class RemoteConfig:
    targets: list[Target]
    parallel: int
    known_hosts: Path


def _split_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` -> (user, host, port); raises ConfigError."""
    user, _, rest = spec.rpartition("@")
    host, port_text = rest, ""
    if rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    if not host or not _HOST_NAME.fullmatch(host) or (user and not _USER.fullmatch(user)):
        raise ConfigError(f"host {spec!r}: expected [user@]host[:port]")
    port = None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"host {spec!r}: expected a port from 1 to 65535 after ':'")
        port = int(port_text)
    return user or None, host, port


def _mapping(key: str, value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
    return value


def _parallel(value: object) -> int:
    number = int(value) if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_PARALLEL:
        raise ConfigError(f"config key deploy.parallel (or --parallel): expected a whole number from 1 to "
                          f"{MAX_PARALLEL}, got {value!r}")
    return number


def _deploy_dir(key: str, value: object) -> None:
    expected = "an absolute directory on the host such as /srv/handover"
    if value in (None, ""):
        raise ConfigError(f"missing config key {key}: expected {expected}")
    path = PurePosixPath(str(value))
    if not isinstance(value, str) or not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ConfigError(f"config key {key}: expected {expected} (no '..', not '/'), got {value!r}")


def _env_file(key: str, value: object) -> Path | None:
    """The local secrets file, checked whole (readable, every line well-formed) before any
    connection; a relative path is taken from the project root."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or "\n" in value or "\0" in value:
        raise ConfigError(f"config key {key}: expected a path without newlines, got {value!r}")
    path = envfile.resolve(value, PROJECT_ROOT)
    envfile.read(path, key)
    return path


def _connection(name: str, entry: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    prefix = f"deploy.hosts.{name}"
    hostname, user, port = entry.get("hostname"), entry.get("user"), entry.get("port")
    if hostname is not None and not (isinstance(hostname, str) and _HOST_NAME.fullmatch(hostname)):
        raise ConfigError(f"config key {prefix}.hostname: expected a host name or address, got {hostname!r}")
    if user is not None and not (isinstance(user, str) and _USER.fullmatch(user)):
        raise ConfigError(f"config key {prefix}.user: expected a user name, got {user!r}")
    if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535):
        raise ConfigError(f"config key {prefix}.port: expected a whole number from 1 to 65535, got {port!r}")
    return hostname, user, port


def default_deploy_dir(project: object) -> str | None:
    """``deploy_dir`` when it is not set: ``/srv/<project>``, so that two projects on one host keep
    their releases, state and lock apart (None for a project name that cannot be a directory name;
    the project's own check names it)."""
    if not isinstance(project, str) or not _PROJECT_DIR.fullmatch(project):
        return None
    return f"{DEPLOY_ROOT}/{project}"


def _host_settings(base: Mapping[str, Any], entry_name: str | None, entry: Mapping[str, Any]) -> Settings:
    overrides = {k: v for k, v in entry.items() if k not in CONNECTION_KEYS}
    known = set(base) | CONNECTION_KEYS
    for key in overrides:
        if key not in known or key in REMOTE_KEYS:
            raise ConfigError(f"unknown config key deploy.hosts.{entry_name}.{key} "
                              f"(known keys: {', '.join(sorted(known - REMOTE_KEYS))})")
    merged = {**base, **overrides}

    def where(key: str) -> str:
        return f"deploy.hosts.{entry_name}.{key}" if key in overrides else f"deploy.{key}"

    merged["source_subdir"] = RELEASE_LINK
    merged["env_file"] = ""
    try:
        if merged.get("deploy_dir") in (None, ""):
            merged["deploy_dir"] = default_deploy_dir(merged.get("project"))
            if merged["deploy_dir"] is None:  # the project's name is at fault: say so
                settings_mod.load({**merged, "deploy_dir": DEPLOY_ROOT})
        _deploy_dir(where("deploy_dir"), merged.get("deploy_dir"))
        return settings_mod.load(merged)
    except ConfigError as exc:
        message = str(exc)
        for key in overrides:
            message = message.replace(f"deploy.{key}:", f"{where(key)}:").replace(f"deploy.{key} ", f"{where(key)} ")
        raise ConfigError(message) from None


def load(section: Mapping[str, Any], host_specs: Sequence[str], parallel: object = None) -> RemoteConfig:
    """Validate everything for ``host_specs`` (the -H list). Raises :class:`ConfigError`."""
    if not host_specs:
        raise ConfigError("no host given: name the hosts with -H host[,host...] (e.g. fab -H web1,web2 deploy)")
    base = {k: v for k, v in section.items() if k not in REMOTE_KEYS}
    entries = _mapping("deploy.hosts", section.get("hosts"))
    known_hosts = Path(str(section.get("known_hosts") or DEFAULT_KNOWN_HOSTS)).expanduser()
    targets = []
    seen: set[str] = set()
    for spec in host_specs:
        user, name, port = _split_spec(spec.strip())
        label = f"{name}:{port}" if port else name
        if label in seen:
            raise ConfigError(f"host {label} is given twice")
        seen.add(label)
        entry_name = next((key for key in (label, name) if key in entries), None)
        entry = _mapping(f"deploy.hosts.{entry_name}", entries[entry_name]) if entry_name else {}
        hostname, entry_user, entry_port = _connection(str(entry_name), entry)
        env_key = f"deploy.hosts.{entry_name}.env_file" if "env_file" in entry else "deploy.env_file"
        targets.append(Target(
            name=label,
            host=hostname or name,
            user=user or entry_user,
            port=port or entry_port,
            settings=_host_settings(base, entry_name, entry),
            env_file=_env_file(env_key, entry.get("env_file", base.get("env_file"))),
            configured_hosts=tuple(str(key) for key in entries),
            known_hosts_set=bool(section.get("known_hosts")),
        ))
    return RemoteConfig(targets, _parallel(section.get("parallel") if parallel is None else parallel), known_hosts)


def host_specs(c: Any) -> list[str]:
    """The hosts of this run: ``-H`` (via the host-list executor), or the one Connection Fabric made."""
    if isinstance(c, Connection):
        return [f"{c.user}@{c.original_host}:{c.port}"]
    return [str(h) for h in (c.config.get(HOSTS_KEY) or [])]


def remote_config(c: Any, parallel: object = None) -> RemoteConfig:
    """The validated config of every host of the task's run (``c``); raises :class:`ConfigError`."""
    section = c.config.get("deploy")
    if section is None:
        raise ConfigError("missing config section 'deploy'")
    return load(dict(section), host_specs(c), parallel)
