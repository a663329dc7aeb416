"""SSH to the targets: Fabric's ``Connection`` with strict host keys and without agent forwarding.

Fabric's own ``-i``, ``-S`` (ssh_config), ``-t`` and login-prompt options apply as usual, because
each connection is made from the run's Fabric configuration. rsync reaches the same host with the
same identity, port, user and known_hosts file through :func:`rsync_shell`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric import Config, Connection
from paramiko.ssh_exception import AuthenticationException, BadHostKeyException, SSHException

from handover.errors import HandoverError

from . import hostkeys
from .hostconfig import Target

SSH_CONNECT_TIMEOUT = 15


@dataclass
class Remote:
    """An open connection to one target."""

    target: Target
    conn: Connection
    known_hosts: Path

    @property
    def name(self) -> str:
        return self.target.name


def _connection(config: Any, target: Target) -> Connection:
    cfg = config.clone(into=Config) if isinstance(config, Config) else Config(overrides=dict(config))
    # Agent forwarding only when asked for on the command line (fab -A), never from ssh_config.
    return Connection(target.host, user=target.user, port=target.port, config=cfg,
                      forward_agent=bool(cfg.get("forward_agent")))


def open_remote(config: Any, target: Target, known_hosts: Path, accept_new: bool = False) -> Remote:
    """Connect to ``target``; raise :class:`HandoverError` with the reason when that is refused."""
    conn = _connection(config, target)
    hostkeys.harden(conn.client, known_hosts, int(conn.port), accept_new)
    where = f"{conn.user}@{hostkeys.host_entry(conn.host, int(conn.port))}"
    try:
        conn.open()
    except BadHostKeyException as exc:
        conn.close()
        raise hostkeys.HostKeyRefused(hostkeys.changed_key_message(
            conn.host, int(conn.port), exc.key, exc.expected_key, known_hosts)) from None
    except AuthenticationException as exc:
        conn.close()
        raise HandoverError(f"SSH login to {where} failed ({exc}); give the key with -i KEY or in ssh_config") from None
    except (TimeoutError, SSHException, OSError) as exc:
        conn.close()
        message = hostkeys.refused(exc)
        if message:
            raise hostkeys.HostKeyRefused(message) from None
        raise HandoverError(f"cannot connect to {where}: {exc}") from None
    return Remote(target, conn, known_hosts)


@contextmanager
def connected(config: Any, target: Target, known_hosts: Path, accept_new: bool = False) -> Iterator[Remote]:
    remote = open_remote(config, target, known_hosts, accept_new)
    try:
        yield remote
    finally:
        remote.conn.close()


def _key_files(conn: Connection) -> list[str]:
    keys = conn.connect_kwargs.get("key_filename") or []
    return [keys] if isinstance(keys, str) else [str(k) for k in keys]


def _ssh_option(name: str, value: str) -> str:
    # ssh splits option values on blanks unless they are double-quoted.
    return f'{name}="{value}"' if any(ch.isspace() for ch in value) else f"{name}={value}"


def rsync_shell(remote: Remote) -> str:
    """The ``rsync -e`` command: OpenSSH with the connection's port, user, keys and host-key policy."""
    conn = remote.conn
    args = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", _ssh_option("UserKnownHostsFile", str(remote.known_hosts)),
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ForwardAgent=no",
        "-o", "ClearAllForwardings=yes",
        "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
        "-p", str(conn.port),
        "-l", str(conn.user),
    ]
    for key in _key_files(conn):
        args += ["-i", key]
    ssh_config = conn.config.get("ssh_config_path")
    if ssh_config:
        args += ["-F", str(ssh_config)]
    return shlex.join(args)


def rsync_destination(remote: Remote, path: str) -> str:
    host = remote.conn.host
    host = f"[{host}]" if ":" in host else host
    return f"{remote.conn.user}@{host}:{path}"
