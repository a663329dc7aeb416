"""Docker-in-Docker hosts for the integration tests: a container from the debootstrap base with its own
dockerd, as a deploy host (``test_ship_dind.py``), a bare host (``test_fresh_host.py``) or a swarm node
(``test_swarm.py``).

``--privileged`` is refused on this machine, so a nested dockerd gets what it needs one by one
(:func:`nested_docker`): every capability but SYS_RESOURCE, no seccomp or AppArmor profile, the
system paths unmasked, the host's cgroup tree, and a volume of its own for /var/lib/docker (overlay2
works there). The images are tagged by their content, so a rerun reuses them.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

RUN_TIMEOUT = 120
BUILD_TIMEOUT = 600
LOAD_TIMEOUT = 300
COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
# This machine's extra CAs (e.g. an HTTPS proxy's) are the test hosts' too, so they reach package
# indexes from inside as from here.
EXTRA_CAS = Path("/usr/local/share/ca-certificates")

# A Docker host: docker.io, sshd, rsync and this machine's Compose v2 plugin.
DOCKER_HOST_DOCKERFILE = """\
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
    """``docker run`` options for a container that runs its own dockerd (``volume``: /var/lib/docker's
    named volume; "" = an anonymous one)."""
    source = f"src={volume}," if volume else ""
    return ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
            "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--mount", f"type=volume,{source}dst=/var/lib/docker"]


def docker(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def copy_cas(context: Path, digest: hashlib._Hash) -> None:
    (context / "cas").mkdir(parents=True, exist_ok=True)
    for ca in sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []:
        (context / "cas" / ca.name).write_bytes(ca.read_bytes())
        digest.update(ca.name.encode() + ca.read_bytes())


def docker_host_image(tmp: Path, base: str, name: str) -> str:
    """The Docker host's image (``name:<content tag>``), built when that tag is not there yet."""
    context = tmp / "image"
    context.mkdir(parents=True)
    files = {"Dockerfile": DOCKER_HOST_DOCKERFILE.format(base=base), "sshd.conf": SSHD_CONF,
             "start-host": START_HOST}
    digest = hashlib.sha256()
    for file, text in files.items():
        (context / file).write_text(text)
        digest.update(file.encode() + text.encode())
    (context / "start-host").chmod(0o755)
    plugin = COMPOSE_PLUGIN.read_bytes()
    (context / "docker-compose").write_bytes(plugin)
    (context / "docker-compose").chmod(0o755)
    digest.update(plugin)
    copy_cas(context, digest)
    image = f"{name}:{digest.hexdigest()[:12]}"
    if docker("image", "inspect", image, check=False).returncode != 0:
        docker("build", "--quiet", "--tag", image, str(context), timeout=BUILD_TIMEOUT)
    return image


def load_images(node: str, *refs: str) -> None:
    """``docker save`` of ``refs`` here, ``docker load`` in ``node``'s own engine (an operator's provisioning)."""
    save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE)
    loaded = subprocess.run(["docker", "exec", "-i", node, "docker", "load", "--quiet"], stdin=save.stdout,
                            capture_output=True, text=True, timeout=LOAD_TIMEOUT, check=False)
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait() == 0 and loaded.returncode == 0, f"loading {refs} into {node}: {loaded.stderr}"


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()
