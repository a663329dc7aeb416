"""Strict host-key checking for Fabric connections (Fabric alone auto-adds unknown keys).

The known_hosts file in use (``~/.ssh/known_hosts`` or ``deploy.known_hosts``) is loaded into the
connection's Paramiko client, and a key that is not there refuses the connection with the steps to
verify and add it. A key that differs from the recorded one is always refused. ``accept_new`` is
OpenSSH's ``StrictHostKeyChecking=accept-new``: a host never seen before is trusted on first use
and recorded; a changed key is still refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from paramiko import MissingHostKeyPolicy, PKey, SSHClient
from paramiko.ssh_exception import SSHException

from handover.errors import HandoverError

KNOWN_HOSTS_MODE = 0o600
SSH_DIR_MODE = 0o700
DEFAULT_SSH_PORT = 22


class HostKeyRefused(HandoverError):
    """The host's key is unknown or has changed; nothing was sent to the host."""


class _Refused(SSHException):
    """Raised inside Paramiko's handshake; turned into :class:`HostKeyRefused` by the caller."""


def host_entry(host: str, port: int) -> str:
    """The name known_hosts uses for ``host``: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def scan_command(host: str, port: int) -> str:
    return f"ssh-keyscan -p {port} {host}" if port != DEFAULT_SSH_PORT else f"ssh-keyscan {host}"


def unknown_key_message(host: str, port: int, key: PKey, known_hosts: Path) -> str:
    scan = scan_command(host, port)
    return (
        f"the host key of {host_entry(host, port)} is not in {known_hosts}; refusing to connect.\n"
        f"  The host offered {key.get_name()} {key.fingerprint}.\n"
        "  Verify it before trusting it: compare that fingerprint with the one printed on the host itself\n"
        "  (on its console: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), or with what\n"
        f"  `{scan} | ssh-keygen -lf -` shows from a network you trust.\n"
        f"  If they match, add it:  {scan} >> {known_hosts}\n"
        "  (or trust it on first use with `fab -H HOST setup --accept-new`)."
    )


def changed_key_message(host: str, port: int, offered: PKey, expected: PKey, known_hosts: Path) -> str:
    entry = host_entry(host, port)
    return (
        f"the host key of {entry} has CHANGED; refusing to connect (someone may be intercepting the\n"
        f"  connection, or the host was reinstalled). Recorded in {known_hosts}: {expected.get_name()} "
        f"{expected.fingerprint};\n  offered now: {offered.get_name()} {offered.fingerprint}.\n"
        "  Only if the host's administrator confirms the new key, remove the old one with\n"
        f"  `ssh-keygen -R '{entry}' -f {known_hosts}` and add the new one as for an unknown host."
    )


class RejectUnknown(MissingHostKeyPolicy):
    """Paramiko's ``RejectPolicy``, with a message that says how to verify and add the key."""

    def __init__(self, known_hosts: Path, port: int) -> None:
        self.known_hosts = known_hosts
        self.port = port

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        raise _Refused(unknown_key_message(_bare(hostname), self.port, key, self.known_hosts))


class AcceptNew(MissingHostKeyPolicy):
    """Trust an unknown host on first use and append its key to the known_hosts file."""

    def __init__(self, known_hosts: Path, announce: bool = True) -> None:
        self.known_hosts = known_hosts
        self.announce = announce

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=SSH_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, KNOWN_HOSTS_MODE)
        with os.fdopen(fd, "a") as out:
            out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        if self.announce:
            print(f"warning: trusted the new host key of {hostname} ({key.get_name()} {key.fingerprint}) "
                  f"and recorded it in {self.known_hosts}", flush=True)


def _bare(hostname: str) -> str:
    """``[host]:port`` -> ``host``."""
    if hostname.startswith("[") and "]:" in hostname:
        return hostname[1:hostname.index("]:")]
    return hostname


def harden(client: SSHClient, known_hosts: Path, port: int, accept_new: bool = False) -> None:
    """Load ``known_hosts`` into ``client`` and refuse unknown keys (unless ``accept_new``)."""
    if known_hosts.is_file():
        client.load_host_keys(str(known_hosts))
    policy: MissingHostKeyPolicy = AcceptNew(known_hosts) if accept_new else RejectUnknown(known_hosts, port)
    client.set_missing_host_key_policy(policy)


def refused(exc: BaseException) -> str | None:
    """The message for a host-key refusal raised during connect, or None for other errors."""
    return str(exc) if isinstance(exc, _Refused) else None
