"""SSH to the targets: Fabric's ``Connection`` with strict host keys on every hop, bounded waits and
no agent forwarding.

Fabric's own ``-i``, ``-S`` (ssh_config), ``-t`` and login-prompt options apply as usual, because
each connection is made from the run's Fabric configuration. What Fabric leaves open is closed here:

* ProxyJump hops (from ssh_config) are built by :class:`HardenedConnection` and checked against
  known_hosts exactly like the target (see :mod:`fabfile.hostkeys` for which file): Fabric's own
  hops would trust any key. A ``ProxyCommand`` (ssh_config, or Fabric's ``gateway`` setting) is
  run as given; checking the hosts it reaches is that command's business.
* Every connection and hop has a connect timeout, also used for the SSH greeting and for opening
  the channel through a hop: ``-t`` (Fabric's ``timeouts.connect``) when given, else ssh_config's
  ``ConnectTimeout``, else :data:`SSH_CONNECT_TIMEOUT`.
* A failure is a message naming the host (and the hop at fault): unknown or changed key, a name
  that does not resolve (with the hosts under ``deploy.hosts``, closest first), a login with no
  usable key (with the key files tried), no answer in time.

rsync reaches the same host the same way through :func:`rsync_shell`: OpenSSH with the same port,
user, keys, known_hosts files and timeout, and the same hops, each one its own strict
``ssh -W`` in a ``ProxyCommand`` (OpenSSH's own ``-J`` would not pass these options to the hops).
"""

from __future__ import annotations

import difflib
import os
import shlex
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric import Config, Connection
from fabric.connection import derive_shorthand
from paramiko import Transport
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    SSHException,
)

from handover.errors import HandoverError

from . import hostkeys
from .hostconfig import DEFAULT_KNOWN_HOSTS, Target

SSH_CONNECT_TIMEOUT = 15
DEFAULT_KEY_FILES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")  # what Paramiko looks for
CLOSE_MATCH = 0.6  # difflib ratio from which a configured host is offered as "did you mean"
NO_PROXY = "none"
_NO_AUTH_METHODS = "No authentication methods available"
HANDSHAKE_GRACE = 1
_SILENT = ("Error reading SSH protocol banner", "No existing session", "Timeout opening channel")


class HardenedConnection(Connection):  # type: ignore[misc]
    """A Fabric ``Connection`` whose ProxyJump hops are of this class too, with timeouts on the hop.

    :func:`open_remote` loads the known_hosts files into each one's client (``known_hosts_files``).
    """

    known_hosts_files: tuple[Path, ...] = ()

    def get_gateway(self) -> Any:
        """ssh_config's ``ProxyJump hop1,hop2`` as OpenSSH reads it: hop1 is reached directly (or by its
        own ssh_config), hop2 through hop1, this host through hop2. (Fabric's own reading reverses it.)"""
        jump = str(self.ssh_config.get("proxyjump", "")).strip()
        if not jump:
            return super().get_gateway()
        if jump.lower() == NO_PROXY:
            return None
        previous: HardenedConnection | None = None
        for hop in [h.strip() for h in jump.split(",") if h.strip()]:
            if derive_shorthand(hop)["host"] in (self.host, self.original_host):  # `Host *` naming this host
                return None
            previous = HardenedConnection(hop, config=self.config.clone(), gateway=previous, forward_agent=False)
        return previous

    def open_gateway(self) -> Any:
        gateway = self.gateway
        if not isinstance(gateway, Connection):
            return super().open_gateway()
        try:
            gateway.open()
        except HopFailed:
            raise
        except Exception as exc:
            raise HopFailed(gateway, exc) from exc
        try:
            return gateway.transport.open_channel("direct-tcpip", dest_addr=(self.host, int(self.port)),
                                                  src_addr=("", 0), timeout=self.connect_timeout)
        except Exception as exc:
            raise HopFailed(gateway, exc, reaching=self) from exc

    def close(self) -> None:
        super().close()
        if isinstance(self.gateway, Connection):
            self.gateway.close()


class HopFailed(Exception):
    """Opening a ProxyJump hop (or the channel through it to ``reaching``) failed with ``cause``."""

    def __init__(self, hop: Connection, cause: BaseException, reaching: Connection | None = None) -> None:
        super().__init__(str(cause))
        self.hop = hop
        self.cause = cause
        self.reaching = reaching


@dataclass
class Remote:
    """An open connection to one target."""

    target: Target
    conn: Connection
    known_hosts: Path  # the target's (first) known_hosts file

    @property
    def name(self) -> str:
        return self.target.name


def chain(conn: Connection) -> Iterator[Connection]:
    """``conn``, then its ProxyJump hops from the nearest to the farthest."""
    hop: Any = conn
    while isinstance(hop, Connection):
        yield hop
        hop = hop.gateway


def connect_timeout(config: Any, ssh_config: Any) -> int:
    """``-t`` (``timeouts.connect``), else ssh_config's ``ConnectTimeout``, else the default."""
    given = (config.get("timeouts") or {}).get("connect")
    from_ssh = str(ssh_config.get("connecttimeout", ""))
    if given:
        return int(given)
    return int(from_ssh) if from_ssh.isdigit() and int(from_ssh) > 0 else SSH_CONNECT_TIMEOUT


def _known_hosts(conn: Connection, target: Target, default: Path) -> tuple[Path, ...]:
    if target.known_hosts_set:
        return (default,)
    return hostkeys.known_hosts_files(conn.ssh_config.get("userknownhostsfile"), default, conn.host)


def _role(conn: Connection, remote_conn: Connection, target: Target) -> str:
    return "" if conn is remote_conn else f" (jump host on the way to {target.name})"


def hardened_connection(config: Any, target: Target, known_hosts: Path, accept_new: bool = False
                        ) -> HardenedConnection:
    """The connection to ``target`` and its hops, each with its known_hosts files and timeout, not opened."""
    cfg = config.clone(into=Config) if isinstance(config, Config) else Config(overrides=dict(config))
    # Agent forwarding only when asked for on the command line (fab -A), never from ssh_config.
    conn = HardenedConnection(target.host, user=target.user, port=target.port, config=cfg,
                              forward_agent=bool(cfg.get("forward_agent")))
    timeout = connect_timeout(cfg, conn.ssh_config)
    for hop in chain(conn):
        hop.connect_kwargs = dict(hop.connect_kwargs)  # its own, not the shared configuration's
        if "timeout" not in hop.connect_kwargs:  # else Paramiko's own connect_kwargs.timeout is used
            hop.connect_timeout = timeout
        hop.connect_kwargs.setdefault("banner_timeout", timeout)
        hop.connect_kwargs.setdefault("transport_factory", _transport_factory(timeout))
        hop.known_hosts_files = _known_hosts(hop, target, known_hosts)
        hostkeys.harden(hop.client, hop.known_hosts_files, int(hop.port), accept_new, _role(hop, conn, target))
    return conn


def _transport_factory(timeout: int) -> Callable[..., Transport]:
    """Paramiko's Transport, its key exchange given as long as the connect (it has 15 s of its own).

    The extra second lets the connect timeout, with its clearer error, come first."""

    def make(sock: Any, **kwargs: Any) -> Transport:
        transport = Transport(sock, **kwargs)
        transport.handshake_timeout = timeout + HANDSHAKE_GRACE
        return transport

    return make


def open_remote(config: Any, target: Target, known_hosts: Path, accept_new: bool = False) -> Remote:
    """Connect to ``target``; raise :class:`HandoverError` with the reason when that is refused.

    ``known_hosts`` is ``deploy.known_hosts`` or, when that is not set, the file to use when
    ssh_config names none (see :mod:`fabfile.hostkeys`).
    """
    conn = hardened_connection(config, target, known_hosts, accept_new)
    try:
        conn.open()
    except HopFailed as failed:
        conn.close()
        raise _failure(failed.hop, failed.cause, conn, target, failed.reaching) from None
    except (SSHException, OSError, EOFError) as exc:
        conn.close()
        raise _failure(conn, exc, conn, target) from None
    return Remote(target, conn, conn.known_hosts_files[0])


def _failure(at: Connection, exc: BaseException, conn: Connection, target: Target,
             reaching: Connection | None = None) -> HandoverError:
    """The message for ``exc``, raised while connecting to ``at`` (the target or one of its hops)."""
    port = int(at.port)
    role = _role(at, conn, target)
    where = f"{at.user}@{hostkeys.host_entry(at.host, port)}{role}"
    files = getattr(at, "known_hosts_files", ()) or (Path(DEFAULT_KNOWN_HOSTS).expanduser(),)
    timeout = at.connect_timeout or SSH_CONNECT_TIMEOUT
    said = str(exc) or type(exc).__name__
    message = hostkeys.refused(exc)
    if message:
        return hostkeys.HostKeyRefused(message)
    if isinstance(exc, BadHostKeyException):
        return hostkeys.HostKeyRefused(hostkeys.changed_key_message(
            at.host, port, exc.key, exc.expected_key, files[0], role))
    if reaching is not None:
        return HandoverError(f"the jump host {where} could not open a connection to "
                             f"{hostkeys.host_entry(reaching.host, int(reaching.port))} ({said}); "
                             "is that host up, and is the name or address right as the jump host sees it?")
    if isinstance(exc, AuthenticationException) or str(exc) == _NO_AUTH_METHODS:
        return HandoverError(f"SSH login to {where} failed ({exc}): {auth_hint(at)}")
    if isinstance(exc, FileNotFoundError) and exc.filename in key_files(at):
        return HandoverError(f"SSH login to {where}: the key file {exc.filename} does not exist "
                             "(given with -i or IdentityFile in ssh_config)")
    if isinstance(exc, socket.gaierror):
        given, names = (target.name, target.configured_hosts) if at is conn else (str(at.original_host), ())
        return HandoverError(f"cannot connect to {where}: "
                             f"{unresolved_message(given, at.host, exc.strerror or str(exc), names)}")
    if isinstance(exc, NoValidConnectionsError):
        return HandoverError(f"cannot connect to {where}: connection refused ({exc.strerror}); "
                             f"is sshd running there, and is {port} its SSH port?")
    if isinstance(exc, EOFError):
        return HandoverError(f"cannot connect to {where}: the connection closed before the SSH handshake finished "
                             f"(the host closed it, or gave no SSH answer within {timeout} s)")
    if isinstance(exc, TimeoutError) or str(exc).startswith(_SILENT):
        return HandoverError(f"cannot connect to {where}: no SSH answer within {timeout} s ({said}); "
                             f"is the host up and is {port} its SSH port? (wait longer with fab -t SECONDS)")
    return HandoverError(f"cannot connect to {where}: {exc}")


def unresolved_message(given: str, host: str, reason: str, configured: Sequence[str]) -> str:
    """Why ``host`` (what ``-H given`` resolved to) was not reached; when ``given`` is not among
    ``configured`` (deploy.hosts), list those, closest first."""
    name = given.rpartition(":")[0] if given.count(":") == 1 else given  # without :port
    of = "" if host == name else f" (for {given})"
    message = f"the host name {host!r}{of} does not resolve ({reason})"
    if not configured or given in configured or name in configured:
        return message
    known = list(configured)
    ordered = difflib.get_close_matches(name, known, n=len(known), cutoff=0.0)
    ordered += [k for k in known if k not in ordered]
    guess = ordered[0] if difflib.SequenceMatcher(None, name, ordered[0]).ratio() >= CLOSE_MATCH else ""
    return (message + f"; {name} is not one of the hosts configured under deploy.hosts: {', '.join(ordered)}"
            + (f" (did you mean -H {guess}?)" if guess else ""))


def key_files(conn: Connection) -> list[str]:
    """The key files given to ``conn`` (``-i``, Fabric's ``key_filename`` and ssh_config's IdentityFile)."""
    keys = conn.connect_kwargs.get("key_filename") or []
    return [keys] if isinstance(keys, str) else [str(k) for k in keys]


def auth_hint(conn: Connection) -> str:
    """Which keys a login tried, and how to give one."""
    kwargs = conn.connect_kwargs
    tried = [k if Path(k).expanduser().is_file() else f"{k} (missing)" for k in key_files(conn)]
    if kwargs.get("look_for_keys", True):
        tried += [k for k in DEFAULT_KEY_FILES if Path(k).expanduser().is_file()]
    agent = bool(kwargs.get("allow_agent", True) and os.environ.get("SSH_AUTH_SOCK"))
    if agent:
        tried.append("the keys of the SSH agent (SSH_AUTH_SOCK)")
    if tried:
        found = f"the keys tried were {', '.join(tried)}"
    else:
        found = (f"no key was found (none given with -i or IdentityFile, none of {', '.join(DEFAULT_KEY_FILES)} "
                 "exists, and no SSH agent is running: SSH_AUTH_SOCK is not set)")
    return (f"{found}; give the key with -i KEY, an IdentityFile line for this host in ssh_config "
            "(~/.ssh/config, or the file given with -S), or add it to an ssh-agent")


@contextmanager
def connected(config: Any, target: Target, known_hosts: Path, accept_new: bool = False) -> Iterator[Remote]:
    remote = open_remote(config, target, known_hosts, accept_new)
    try:
        yield remote
    finally:
        remote.conn.close()


def _ssh_literal(value: str) -> str:
    """``value`` as one word of an ssh option, with ssh's %-tokens escaped."""
    value = value.replace("%", "%%")
    # ssh splits option values on blanks unless they are double-quoted.
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def _ssh_args(conn: Connection, known_hosts: Sequence[Path]) -> list[str]:
    """OpenSSH options that reach ``conn`` as Paramiko does: same port, user, keys, known_hosts,
    timeout and hops, strict host keys on each."""
    files = getattr(conn, "known_hosts_files", ()) or tuple(known_hosts)
    args = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=" + " ".join(_ssh_literal(str(f)) for f in files),
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ForwardAgent=no",
        "-o", "ClearAllForwardings=yes",
        "-o", f"ConnectTimeout={conn.connect_timeout or SSH_CONNECT_TIMEOUT}",
        "-o", f"ProxyCommand={_proxy_command(conn, files)}",
        "-p", str(conn.port),
        "-l", str(conn.user),
    ]
    for key in key_files(conn):
        args += ["-i", key.replace("%", "%%")]
    return args + _ssh_config_args(conn.config)


def _ssh_config_args(config: Any) -> list[str]:
    """The ssh_config Fabric read: ``-S FILE`` or ``ssh_config_path`` alone, or none at all."""
    path = config.get("ssh_config_path") or getattr(config, "_runtime_ssh_path", None)
    if path:
        return ["-F", str(path)]
    return [] if config.get("load_ssh_configs", True) else ["-F", os.devnull]


def _proxy_command(conn: Connection, known_hosts: Sequence[Path]) -> str:
    """How ssh reaches ``conn``: through its hop (a strict ``ssh -W``), its ProxyCommand, or directly."""
    gateway = conn.gateway
    if isinstance(gateway, Connection):
        host = f"[{conn.host}]" if ":" in conn.host else conn.host
        hop = [*_ssh_args(gateway, known_hosts), "-W", f"{host}:{conn.port}", str(gateway.host)]
        # ssh expands %-tokens in a ProxyCommand once: each level of hops escapes its own.
        return shlex.join(hop).replace("%", "%%")
    if isinstance(gateway, str) and gateway:
        return gateway
    return NO_PROXY  # also keeps a ProxyJump that ssh_config gives for the resolved name from applying


def rsync_shell(remote: Remote) -> str:
    """The ``rsync -e`` command: OpenSSH with the connection's port, user, keys, hops and host-key policy."""
    return shlex.join(_ssh_args(remote.conn, (remote.known_hosts,)))


def ssh_command(remote: Remote, argv: Sequence[str]) -> list[str]:
    """OpenSSH (as :func:`rsync_shell`) running ``argv`` on the host; the remote shell gets it quoted."""
    return [*_ssh_args(remote.conn, (remote.known_hosts,)), "--", str(remote.conn.host), shlex.join(argv)]


def rsync_destination(remote: Remote, path: str) -> str:
    host = remote.conn.host
    host = f"[{host}]" if ":" in host else host
    return f"{remote.conn.user}@{host}:{path}"
