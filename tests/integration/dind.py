"""A Docker engine inside a container (Docker-in-Docker), shared by the tests that need a daemon that is not
this machine's: a host reached over SSH (test_ship_dind.py), a laptop's Docker Desktop VM
(test_daemon_elsewhere.py), and the options a bare host needs to run one later (test_fresh_host.py).

The image is the debootstrap base with docker.io, openssh-server, rsync and this machine's Compose v2
plugin, tagged by its content (a rerun reuses it). ``--privileged`` is refused on this machine, so the
container gets what a nested dockerd needs instead (:func:`nested_docker`) and a volume of its own for
/var/lib/docker. Its engine starts empty: :func:`load_images` gives it images as an operator would
(``docker save`` here, ``docker load`` there). :func:`run_node` and :func:`form_swarm` make a swarm of
such nodes (test_swarm.py, and scripts/swarm_lab.py for the benchmark).
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BUILD_TIMEOUT = 600
LOAD_TIMEOUT = 600
ENGINE_START_TIMEOUT = 90.0
COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
EXTRA_CAS = Path("/usr/local/share/ca-certificates")

DOCKERFILE = """\
FROM {base}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io openssh-server rsync \\
    ca-certificates iptables procps >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
COPY cas/ /usr/local/share/ca-certificates/
COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY sshd.conf /etc/ssh/sshd_config.d/test.conf
COPY start-host /usr/local/bin/start-host
RUN update-ca-certificates >/dev/null && mkdir -p /run/sshd
CMD ["/usr/local/bin/start-host"]
"""
SSHD_CONF = """\
HostKey /etc/ssh/test_host_key
AuthorizedKeysFile /etc/ssh/test_authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
"""
# overlay2 works on the volume; STORAGE_DRIVER=vfs is the fallback where it does not.
START_HOST = """\
#!/bin/sh
set -e
dockerd --storage-driver "${STORAGE_DRIVER:-overlay2}" >/var/log/dockerd.log 2>&1 &
exec /usr/sbin/sshd -D -e
"""


def nested_docker(volume: str = "") -> list[str]:
    """``docker run`` options for a nested dockerd without --privileged (which this machine refuses), with
    /var/lib/docker on ``volume`` (an anonymous one when "")."""
    source = f"src={volume}," if volume else ""
    return ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
            "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--mount", f"type=volume,{source}dst=/var/lib/docker"]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def host_image(tmp: Path, base: str, repository: str) -> str:
    """The Docker host's image as ``repository:<content digest>``, built when that tag is not there yet."""
    context = tmp / "image"
    (context / "cas").mkdir(parents=True)
    files = {"Dockerfile": DOCKERFILE.format(base=base), "sshd.conf": SSHD_CONF, "start-host": START_HOST}
    digest = hashlib.sha256()
    for name, text in files.items():
        (context / name).write_text(text)
        digest.update(name.encode() + text.encode())
    (context / "start-host").chmod(0o755)
    plugin = COMPOSE_PLUGIN.read_bytes()
    (context / "docker-compose").write_bytes(plugin)
    (context / "docker-compose").chmod(0o755)
    digest.update(plugin)
    for ca in sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []:
        (context / "cas" / ca.name).write_bytes(ca.read_bytes())
        digest.update(ca.name.encode() + ca.read_bytes())
    image = f"{repository}:{digest.hexdigest()[:12]}"
    if docker("image", "inspect", image, check=False).returncode != 0:
        docker("build", "--quiet", "--tag", image, str(context), timeout=BUILD_TIMEOUT)
    return image


def load_images(container: str, *refs: str) -> None:
    """``docker save`` of ``refs`` here, ``docker load`` by the engine inside ``container``."""
    save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE)
    loaded = subprocess.run(["docker", "exec", "-i", container, "docker", "load", "--quiet"], stdin=save.stdout,
                            capture_output=True, text=True, timeout=LOAD_TIMEOUT, check=False)
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait() == 0 and loaded.returncode == 0, loaded.stderr


def keygen(path: Path) -> str:
    """An ed25519 key pair at ``path`` (and ``path.pub``); the public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


@dataclass(frozen=True)
class SshKeys:
    """The key material of sshd hosts in containers: their host key, the client's key, the
    authorized_keys file (both mounted into the containers, see :meth:`mounts`) and a known_hosts
    that names each host by its published port on 127.0.0.1."""

    host_key: Path
    client_key: Path
    authorized: Path
    known_hosts: Path

    @classmethod
    def make(cls, tmp: Path, ports: Iterable[int]) -> SshKeys:
        host_pub = keygen(tmp / "host_key")
        authorized = tmp / "authorized_keys"
        authorized.write_text(keygen(tmp / "id_ed25519") + "\n")
        authorized.chmod(0o644)
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text("".join(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n" for port in ports))
        return cls(tmp / "host_key", tmp / "id_ed25519", authorized, known_hosts)

    def mounts(self) -> list[str]:
        """``docker run`` options that give a host container this host key and authorized_keys."""
        return ["-v", f"{self.host_key}:/etc/ssh/test_host_key:ro",
                "-v", f"{self.authorized}:/etc/ssh/test_authorized_keys:ro"]


def run_node(node: str, network: str, image: str, extra: Sequence[str] = (), *, dockerd_flags: Sequence[str] = (),
             outer_socket: str = "", sshd: bool = False) -> None:
    """Start ``node`` (container and host name) on ``network``: a nested dockerd (overlay2, ``dockerd_flags``),
    listening also on ``outer_socket`` when given (a path in the container on a directory mounted from here,
    for an engine client here), and sshd in the foreground when ``sshd``. ``extra``: more ``docker run``
    options (mounts, published ports)."""
    listen = ["-H", "unix:///var/run/docker.sock", *(["-H", f"unix://{outer_socket}"] if outer_socket else [])]
    dockerd = shlex.join(["dockerd", "--storage-driver", "overlay2", *dockerd_flags, *listen])
    clear = f"rm -f {shlex.quote(outer_socket)}; " if outer_socket else ""
    docker("run", "--detach", "--name", node, "--hostname", node, "--network", network, *nested_docker(f"{node}-lib"),
           *extra, image, "sh", "-c",
           f"{clear}{dockerd} >/var/log/dockerd.log 2>&1 & " + ("exec /usr/sbin/sshd -D -e" if sshd else "wait"))


def wait_for_engines(nodes: Sequence[str], timeout: float = ENGINE_START_TIMEOUT) -> None:
    """Until the engine inside each of ``nodes`` answers; its log's end in the failure when one does not."""
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while waiting and time.monotonic() < deadline:
        waiting = [n for n in waiting if docker("exec", n, "docker", "info", check=False).returncode != 0]
        time.sleep(0.3)
    assert not waiting, f"dockerd did not start in {waiting}: " + "".join(
        docker("exec", n, "tail", "-5", "/var/log/dockerd.log", check=False).stdout for n in waiting)


def form_swarm(nodes: Sequence[str], network: str) -> None:
    """The first of ``nodes`` inits a swarm (advertising its address on ``network``), the others join it as
    workers, once every engine answers."""
    wait_for_engines(nodes)
    manager, workers = nodes[0], nodes[1:]
    address = docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
                     manager).stdout.strip()
    docker("exec", manager, "docker", "swarm", "init", "--advertise-addr", address)
    token = docker("exec", manager, "docker", "swarm", "join-token", "--quiet", "worker").stdout.strip()
    for node in workers:
        docker("exec", node, "docker", "swarm", "join", "--token", token, f"{address}:2377")
