"""Strict host-key checking for every SSH hop (Fabric alone auto-adds unknown keys).

Which known_hosts files a host (the target or a ProxyJump hop) is checked against, first rule that
applies wins:

1. ``deploy.known_hosts`` when the config sets it: one file for every host and hop of the run. It
   is this project's own, explicit choice for its deploys, so it beats the user's general settings.
2. ``UserKnownHostsFile`` from ssh_config for that host (``-S FILE`` or ``~/.ssh/config``), which may
   name several files (``none`` entries are skipped); new keys (``--accept-new``) go to the first.
3. ``~/.ssh/known_hosts``.

The files are loaded into the connection's Paramiko client, and a key that is not there refuses
the connection with the steps to verify and add it. A key that differs from the recorded one is
always refused. ``accept_new`` is OpenSSH's ``StrictHostKeyChecking=accept-new``: a host never seen
before is trusted on first use and recorded; a changed key is still refused. A known_hosts line
that cannot be read is an error naming the file and line, not a traceback.
"""

from __future__ import annotations

import getpass
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from paramiko import MissingHostKeyPolicy, PKey, SSHClient
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
from paramiko.ssh_exception import SSHException

from handover.errors import HandoverError

KNOWN_HOSTS_MODE = 0o600
SSH_DIR_MODE = 0o700
DEFAULT_SSH_PORT = 22
NO_FILE = "none"  # UserKnownHostsFile value meaning "no file"
CERT_AUTHORITY = "@cert-authority"  # known_hosts line markers
REVOKED = "@revoked"


class HostKeyRefused(HandoverError):
    """The host's key is unknown or has changed; nothing was sent to the host."""


class KnownHostsUnreadable(HandoverError):
    """A known_hosts file cannot be read or has a line that is not a host key."""


class _Refused(SSHException):
    """Raised inside Paramiko's handshake; turned into :class:`HostKeyRefused` by the caller."""


def host_entry(host: str, port: int) -> str:
    """The name known_hosts uses for ``host``: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def scan_command(host: str, port: int) -> str:
    port_args = ["-p", str(port)] if port != DEFAULT_SSH_PORT else []
    return shlex.join(["ssh-keyscan", *port_args, host])


def unknown_key_message(host: str, port: int, key: PKey, known_hosts: Path, role: str = "") -> str:
    """Why the connection was refused, and commands that work even where ``~/.ssh`` does not exist."""
    scan = scan_command(host, port)
    listed = shlex.quote(str(known_hosts))
    return (
        f"the host key of {host_entry(host, port)}{role} is not in {known_hosts}; refusing to connect.\n"
        f"  The host offered {key.get_name()} {key.fingerprint}.\n"
        "  Verify that fingerprint out of band before trusting it: compare it with the one shown on the\n"
        "  host's own console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) or given by its\n"
        "  administrator; what the network shows now can be forged. If they match, add the key:\n"
        f"      mkdir -p -m 700 {shlex.quote(str(known_hosts.parent))}\n"
        f"      {scan} >> {listed}\n"
        f"      ssh-keygen -lf {listed}    # the fingerprint added must be the one you verified\n"
        "  (or trust it on first use with `fab -H HOST setup --accept-new`)."
    )


def changed_key_message(host: str, port: int, offered: PKey, expected: PKey, known_hosts: Path,
                        role: str = "") -> str:
    entry = host_entry(host, port)
    return (
        f"the host key of {entry}{role} has CHANGED; refusing to connect (someone may be intercepting the\n"
        f"  connection, or the host was reinstalled). Recorded in {known_hosts}: {expected.get_name()} "
        f"{expected.fingerprint};\n  offered now: {offered.get_name()} {offered.fingerprint}.\n"
        "  Only if the host's administrator confirms the new key, remove the old one with\n"
        f"  `ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(str(known_hosts))}` and add the new one as for an "
        "unknown host."
    )


def known_hosts_files(ssh_config_value: str | None, default: Path, host: str = "") -> tuple[Path, ...]:
    """The files ssh_config's ``UserKnownHostsFile`` names (``~``, ``%d``, ``%u``, ``%h`` expanded),
    or ``(default,)`` when it names none."""
    if not ssh_config_value:
        return (default,)
    home = str(Path.home())
    files = []
    for word in _words(ssh_config_value):
        if word.lower() == NO_FILE:
            continue
        expanded = _percent_expand(word, {"d": home, "u": getpass.getuser(), "h": host})
        files.append(Path(os.path.expanduser(expanded)))
    return tuple(files) or (default,)


def _words(value: str) -> list[str]:
    """ssh_config's file names in ``value``. Paramiko has removed one pair of double quotes around the
    whole value (``"a b" "c"`` arrives as ``a b" "c``), so this is a best reading of what was written."""
    if Path(value).expanduser().exists() or not any(quote in value for quote in "\"'"):
        return [value] if Path(value).expanduser().exists() else value.split()
    first = value.find('"')
    stripped = first > 0 and not value[first - 1].isspace() and value[0] != '"' and value[-1] != '"'
    try:
        return shlex.split(f'"{value}"' if stripped else value)
    except ValueError:
        return value.split()


def _percent_expand(text: str, tokens: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text):
            name = text[i + 1]
            out.append("%" if name == "%" else tokens.get(name, f"%{name}"))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def load(client: SSHClient, files: Sequence[Path]) -> None:
    """Load every existing file of ``files`` into ``client``; raise :class:`KnownHostsUnreadable`.

    Read here rather than by Paramiko, which stops at the first bad line with a bare traceback and
    cannot read OpenSSH's ``@cert-authority`` and ``@revoked`` lines. Certificates are not used
    here (a host known only through a CA counts as unknown); a ``@revoked`` key is never trusted.
    """
    entries: list[HostKeyEntry] = []
    revoked: set[str] = set()
    for path in files:
        for number, line in _lines(path):
            marker, _, rest = line.partition(" ") if line.startswith("@") else ("", "", line)
            entry = _entry(path, number, rest.strip())
            if entry is None or marker == CERT_AUTHORITY:
                continue
            if marker == REVOKED:
                revoked.add(entry.key.get_base64())
            elif not marker:
                entries.append(entry)
    keys = client.get_host_keys()
    for entry in entries:
        if entry.key.get_base64() not in revoked:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _lines(path: Path) -> list[tuple[int, str]]:
    """The numbered lines of ``path`` that are neither blank nor comments (none if it is missing)."""
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KnownHostsUnreadable(f"cannot read the known_hosts file {path}: {exc}") from None
    numbered = ((number, line.strip()) for number, line in enumerate(text.splitlines(), 1))
    return [(number, line) for number, line in numbered if line and not line.startswith("#")]


def _entry(path: Path, number: int, line: str) -> HostKeyEntry | None:
    """Paramiko's parse of one line (None for a key type it does not know), or an error naming it:
    a damaged key is reported, not skipped, so that a host whose line it is is not just "unknown"."""
    try:
        entry: HostKeyEntry | None = HostKeyEntry.from_line(line, number)
    except Exception as exc:  # whatever Paramiko's parser raises for this line (it skips some silently)
        reason = exc.exc if isinstance(exc, InvalidHostKey) else exc
        raise KnownHostsUnreadable(
            f"{path} line {number} is not a valid known_hosts entry ({reason}): correct or delete that line "
            f"(e.g. `sed -i '{number}d' {shlex.quote(str(path))}`), then add the host's key again if it was "
            "that host's") from None
    return entry


class RejectUnknown(MissingHostKeyPolicy):
    """Paramiko's ``RejectPolicy``, with a message that says how to verify and add the key."""

    def __init__(self, known_hosts: Path, port: int, role: str = "") -> None:
        self.known_hosts = known_hosts
        self.port = port
        self.role = role

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        raise _Refused(unknown_key_message(_bare(hostname), self.port, key, self.known_hosts, self.role))


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


def harden(client: SSHClient, known_hosts: Path | Sequence[Path], port: int, accept_new: bool = False,
           role: str = "") -> None:
    """Load the known_hosts files into ``client`` and refuse unknown keys (unless ``accept_new``).

    ``role`` follows the host's name in messages, e.g. ``" (jump host on the way to web1)"``.
    """
    files = (known_hosts,) if isinstance(known_hosts, Path) else tuple(known_hosts)
    load(client, files)
    policy: MissingHostKeyPolicy = (AcceptNew(files[0]) if accept_new
                                    else RejectUnknown(files[0], port, role))
    client.set_missing_host_key_policy(policy)


def refused(exc: BaseException) -> str | None:
    """The message for a host-key refusal raised during connect, or None for other errors."""
    return str(exc) if isinstance(exc, _Refused) else None
