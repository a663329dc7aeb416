"""Real OpenSSH servers on loopback addresses, for driving `fab` end to end.

Each server gets its own generated host key; one generated client key logs in as root
(``PermitRootLogin prohibit-password``). ``known_hosts`` lists every server's key.

Sessions get their own HOME inside the lab directory, as a deploy account on a server would: the
secrets file lands there, and the login shell does not run this machine's own root startup files
(which cost a few hundred milliseconds per command).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
SSH_PORT = 2222
START_TIMEOUT = 10.0
BANNER = b"SSH-2.0-"

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
StrictModes no
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
SetEnv {session_env}
LogLevel VERBOSE
"""


def _link_docker_plugins(home: Path) -> None:
    """Give the sessions' HOME the caller's Docker CLI plugins (compose may be installed per user)."""
    plugins = Path.home() / ".docker" / "cli-plugins"
    if plugins.is_dir():
        (home / ".docker").mkdir(mode=0o700, exist_ok=True)
        link = home / ".docker" / "cli-plugins"
        if not link.exists():
            link.symlink_to(plugins)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def _wait_for_banner(address: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd on {address}:{port} exited {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((address, port), timeout=1) as sock:
                if sock.recv(64).startswith(BANNER):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd on {address}:{port} did not answer within {START_TIMEOUT:g} s:\n{log.read_text()}")


@dataclass
class SshServer:
    address: str
    port: int
    host_key_line: str  # "<type> <base64>" of the server's public host key
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.host_key_line}"

    @property
    def spec(self) -> str:
        """What `fab -H` gets."""
        return f"root@{self.address}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class SshLab:
    root: Path
    servers: list[SshServer] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def home(self) -> Path:
        """The login sessions' HOME (see the module docstring)."""
        return self.root / "home"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def start(self, addresses: list[str], port: int = SSH_PORT,
              session_env: Mapping[str, Mapping[str, str]] | None = None,
              options: Mapping[str, Sequence[str]] | None = None) -> None:
        """Start one sshd per address; ``session_env[address]`` adds to (or replaces) its sessions'
        environment, e.g. another PATH or HOME to stand for a host set up differently.
        ``options[address]``: sshd_config lines that win over the defaults above (sshd keeps the
        first value it reads), e.g. ``AllowTcpForwarding yes`` for a jump host."""
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        _link_docker_plugins(self.home)
        client_pub = _keygen(self.client_key)
        authorized = self.root / "authorized_keys"
        authorized.write_text(client_pub + "\n")
        authorized.chmod(0o600)
        for address in addresses:
            home = self.root / f"sshd-{address}"
            home.mkdir()
            host_key = home / "ssh_host_ed25519_key"
            host_pub = _keygen(host_key)
            config = home / "sshd_config"
            env = {"HOME": str(self.home), **(session_env or {}).get(address, {})}
            first = "".join(f"{line}\n" for line in (options or {}).get(address, ()))
            config.write_text(first + SSHD_CONFIG.format(address=address, port=port, host_key=host_key,
                                                 pid_file=home / "sshd.pid", authorized_keys=authorized,
                                                 session_env=" ".join(f"{k}={v}" for k, v in env.items())))
            log = home / "sshd.log"
            with log.open("wb") as out:
                process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            server = SshServer(address, port, " ".join(host_pub.split()[:2]), process, log)
            self.servers.append(server)
            _wait_for_banner(address, port, process, log)
        self.known_hosts.write_text("".join(s.known_hosts_line + "\n" for s in self.servers))

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.terminate()
                try:
                    server.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
        self.servers.clear()
