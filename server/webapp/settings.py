"""Runtime configuration from environment variables, read and validated once at startup.

A bad value becomes a ConfigError naming the variable, so the process can refuse to start with a
one-line message instead of failing later mid-request. An empty value counts as unset.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from .faults import Fault, FaultSpecError, parse_fault

DEFAULT_VERSION = "dev"
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - the app listens inside its container
DEFAULT_PORT = 8000
DEFAULT_DRAIN_TIMEOUT = 10.0
# Reconnect notices go out spread over this long, so the clients do not all land on the new
# server in the same instant (a burst of handshakes would delay its HTTP requests; measured in
# BENCHMARK.md, "Reconnects: what is left of the deploy window").
DEFAULT_DRAIN_SPREAD = 1.0
DEFAULT_TICK_INTERVAL = 1.0
DEFAULT_WS_MAX_MESSAGE = 64 * 1024
MIN_PORT = 1
MAX_PORT = 65535
# TCP peers whose X-Forwarded-For / X-Forwarded-Proto are believed. nginx reaches the app over
# its unix socket (always trusted: only processes that can open the socket file get there); on TCP
# only the container's own loopback is, so a client reaching the port directly cannot pick its IP.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"
# uvicorn answers 503 beyond this many open connections plus running tasks. It is a backstop
# against floods, far above a deploy under load (the probe's 100 WebSockets and, even if every
# request stalled up to its 10 s timeout, 2000 HTTP requests at 200 req/s).
DEFAULT_LIMIT_CONCURRENCY = 4096
MIN_LIMIT_CONCURRENCY = 1

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """An environment variable holds a value the app cannot run with."""


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = _env_value(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _env_seconds(env: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False) -> float:
    raw = _env_value(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "zero or a positive" if allow_zero else "a positive finite"
        raise ConfigError(f"{name} must be {kind} number of seconds, got {raw!r}")
    return value


def _env_fault(env: Mapping[str, str]) -> tuple[Fault, float]:
    """APP_FAULT: the fault and, for ``exit-after:<seconds>``, the seconds (else 0)."""
    raw = _env_value(env, "APP_FAULT")
    if raw is None:
        return Fault.NONE, 0.0
    try:
        return parse_fault(raw)
    except FaultSpecError as exc:
        raise ConfigError(str(exc)) from None


def parse_networks(name: str, raw: str) -> tuple[IpNetwork, ...]:
    """A comma-separated list of IP addresses or networks (``10.0.0.0/8``); ConfigError otherwise."""
    networks: list[IpNetwork] = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks separated by commas, got {item!r} in {raw!r}"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; each field names the variable it comes from in ``from_env``."""

    version: str = DEFAULT_VERSION
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    drain_spread: float = DEFAULT_DRAIN_SPREAD
    tick_interval: float = DEFAULT_TICK_INTERVAL
    fault: Fault = Fault.NONE
    fault_after: float = 0.0  # seconds, for Fault.EXIT_AFTER
    ws_max_message: int = DEFAULT_WS_MAX_MESSAGE
    # With a directory set, the app also listens on <dir>/app-<hostname>.sock: the deploy points
    # nginx at that socket by an atomic symlink swap (see the README on why no reload is needed).
    unix_socket_dir: str | None = None
    forwarded_allow_ips: tuple[IpNetwork, ...] = parse_networks("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS)
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY

    @property
    def unix_socket_path(self) -> str | None:
        if self.unix_socket_dir is None:
            return None
        return os.path.join(self.unix_socket_dir, f"app-{socket.gethostname()}.sock")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; raise ConfigError on a bad value."""
        fault, fault_after = _env_fault(env)
        forwarded = _env_value(env, "FORWARDED_ALLOW_IPS") or DEFAULT_FORWARDED_ALLOW_IPS
        return cls(
            version=_env_value(env, "APP_VERSION") or DEFAULT_VERSION,
            host=_env_value(env, "HOST") or DEFAULT_HOST,
            port=_env_int(env, "PORT", DEFAULT_PORT, MIN_PORT, MAX_PORT),
            drain_timeout=_env_seconds(env, "DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT),
            drain_spread=_env_seconds(env, "DRAIN_SPREAD", DEFAULT_DRAIN_SPREAD, allow_zero=True),
            tick_interval=_env_seconds(env, "TICK_INTERVAL", DEFAULT_TICK_INTERVAL),
            fault=fault,
            fault_after=fault_after,
            ws_max_message=_env_int(env, "WS_MAX_MESSAGE", DEFAULT_WS_MAX_MESSAGE, 1, sys.maxsize),
            unix_socket_dir=_env_value(env, "UNIX_SOCKET_DIR"),
            forwarded_allow_ips=parse_networks("FORWARDED_ALLOW_IPS", forwarded),
            limit_concurrency=_env_int(
                env, "LIMIT_CONCURRENCY", DEFAULT_LIMIT_CONCURRENCY, MIN_LIMIT_CONCURRENCY, sys.maxsize
            ),
        )
