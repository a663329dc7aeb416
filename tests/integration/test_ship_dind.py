"""`fab deploy` with ``app_ship`` to a host with its own Docker engine and no registry: the image really
travels (``docker save`` here, ``ssh host docker load`` there), three times under the probe.

The host is a container made from the debootstrap base with docker.io, openssh-server, rsync and this
machine's Compose v2 plugin; dockerd runs inside it (tests/integration/dind.py: the capabilities a nested
dockerd needs, since ``--privileged`` is refused here, and a volume of its own for /var/lib/docker). Its sshd and its
published HTTP port are on 127.0.0.1 only; the host key is generated and recorded in a known_hosts
file, so the connection is as strict as to any host. The inner engine starts empty: its provisioning
(``docker save`` of the debootstrap base into it, done here as an operator would with ``docker load``)
gives it the base the proxy's image is built from; everything else the app needs comes with the ship.
The image is tagged by its content, so a rerun reuses it; the container and its volume are removed after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from invoke import Context

from handover import images
from handover.probe import Probe, ProbeSettings
from handover.progress import Progress

from .conftest import LAB_PORT_SHIFT, PROBE_RATE, PROBE_WS_CLIENTS, TEST_PROJECT, docker_ready, lost_nothing
from .dind import BUILD_TIMEOUT, SshKeys, docker, host_image, load_images, nested_docker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
NAME = f"{TEST_PROJECT}-dind-host"
VOLUME = f"{NAME}-lib"
SSH_PORT = 28600 + LAB_PORT_SHIFT
HTTP_PORT = SSH_PORT + 1
INNER_HTTP_PORT = 8080  # nginx's published port inside the host, on 0.0.0.0 there
PROJECT = f"{TEST_PROJECT}-dshop"
APP_IMAGE = f"{PROJECT}-app"
VERSIONS = ("v1", "v2", "v3")
DEPLOY_DIR = "/srv/dshop"
BASE = "debian:bookworm"  # or the local debootstrap minbase made in its stead (handover.images)
FAB_TIMEOUT = 400  # the first deploy builds the proxy's image on the host (apt in the inner engine)
START_TIMEOUT = 60.0
NESTED_DOCKER = nested_docker(VOLUME)


def inner(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``docker`` on the host's own engine."""
    return docker("exec", NAME, "docker", *args, check=check)


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def wait_for_host() -> None:
    """sshd answers on its published port and the inner dockerd takes commands."""
    deadline = time.monotonic() + START_TIMEOUT
    ssh_up = False
    while time.monotonic() < deadline:
        if not ssh_up:
            try:
                with socket.create_connection(("127.0.0.1", SSH_PORT), timeout=1) as sock:
                    ssh_up = sock.recv(64).startswith(b"SSH-2.0-")
            except OSError:
                pass
        if ssh_up and inner("info", check=False).returncode == 0:
            return
        time.sleep(0.2)
    logs = docker("exec", NAME, "tail", "-20", "/var/log/dockerd.log", check=False)
    raise AssertionError(f"{NAME} is not ready (sshd {ssh_up}):\n{logs.stdout}{logs.stderr}")


@dataclass
class DockerHost:
    client_key: Path
    config: Path

    def fab(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
        env["PYTHONPATH"] = str(ROOT)
        argv = [FAB, "-f", str(self.config), "-i", str(self.client_key), "-H", f"root@127.0.0.1:{SSH_PORT}", *args]
        done = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=FAB_TIMEOUT)
        assert done.returncode == 0, f"fab {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    @staticmethod
    def image_id(ref: str) -> str:
        done = inner("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    @staticmethod
    def version() -> str:
        return str(requests.get(f"http://127.0.0.1:{HTTP_PORT}/api/info", timeout=5).json()["version"])


def local_id(ref: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


@pytest.fixture(scope="module")
def minbase() -> str:
    docker_ready()
    return images.ensure_base_image(Context(), BASE, Progress(quiet=True))


@pytest.fixture(scope="module")
def app_images(minbase: str) -> Iterator[dict[str, str]]:
    """The demo app built here, as three versions with three image IDs: version -> image ID."""
    images.build_wheelhouse(ROOT / "server", Progress(quiet=True))
    built = f"{APP_IMAGE}:built"
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", built, str(ROOT / "server"),
           timeout=BUILD_TIMEOUT)
    ids = {}
    try:
        for version in VERSIONS:
            ref = f"{APP_IMAGE}:{version}"
            subprocess.run(["docker", "build", "--quiet", "--tag", ref, "-"], input=f"FROM {built}\nLABEL "
                           f"shop.release={version}\n", text=True, capture_output=True, check=True, timeout=120)
            ids[version] = local_id(ref)
        yield ids
    finally:
        tags = docker("image", "ls", APP_IMAGE, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        if tags:
            docker("image", "rm", *tags, check=False)


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory, minbase: str) -> Iterator[DockerHost]:
    tmp = tmp_path_factory.mktemp("dind-host")
    image = host_image(tmp, minbase, NAME)
    keys = SshKeys.make(tmp, [SSH_PORT])
    config = tmp / "fabric.yaml"
    config.write_text(yaml.safe_dump({"deploy": {
        "known_hosts": str(keys.known_hosts), "deploy_dir": DEPLOY_DIR, "project": PROJECT,
        "app_build": "", "app_ship": True, "app_image": APP_IMAGE,
        "http_bind": "0.0.0.0", "http_port": INNER_HTTP_PORT,  # noqa: S104 - inside the host; published to loopback
        "base_image": minbase, "proxy_base_image": minbase,
        "drain_timeout": 2, "stop_grace_period": 6}}))
    docker("rm", "--force", "--volumes", NAME, check=False)
    docker("volume", "rm", VOLUME, check=False)
    docker("run", "--detach", "--name", NAME, "--hostname", "dind-host", "--publish", f"127.0.0.1:{SSH_PORT}:22",
           "--publish", f"127.0.0.1:{HTTP_PORT}:{INNER_HTTP_PORT}", *NESTED_DOCKER,
           *keys.mounts(),
           image)
    try:
        wait_for_host()
        # The host's provisioning: the debootstrap base the proxy's image is built from (no registry there).
        load_images(NAME, minbase)
        yield DockerHost(keys.client_key, config)
    finally:
        docker("rm", "--force", "--volumes", NAME, check=False)
        docker("volume", "rm", VOLUME, check=False)


def test_fab_ships_the_image_to_a_host_without_it_and_skips_it_when_the_host_has_it(
        app_images: dict[str, str], docker_host: DockerHost) -> None:
    host = docker_host
    v1, v2, v3 = VERSIONS
    assert inner("image", "ls", "--quiet", APP_IMAGE).stdout.strip() == "", "the host has the app's image already"
    assert "is ready for deploys" in host.fab("setup").stdout
    plan = host.fab("deploy", "--version", v1, "--dry-run").stdout
    assert f"ship: {APP_IMAGE}:{v1} from this machine to" in plan, plan
    assert host.image_id(f"{APP_IMAGE}:{v1}") == ""  # a dry run sends nothing

    t0 = time.monotonic()
    first = host.fab("deploy", "--version", v1).stdout
    print(f"first deploy (ship + the proxy's image built on the host): {time.monotonic() - t0:.1f} s")
    assert f"==> ship: {APP_IMAGE}:{v1} from this machine to" in first and "(sent)" in first, first
    assert "==> pull" not in first, first
    assert host.image_id(f"{APP_IMAGE}:{v1}") == app_images[v1]
    assert host.version() == v1

    probe = Probe(ProbeSettings(base_url=f"http://127.0.0.1:{HTTP_PORT}", rate=PROBE_RATE,
                                ws_clients=PROBE_WS_CLIENTS))
    outputs: dict[str, str] = {}
    probe.start()
    try:
        for n, version in enumerate((v2, v3, v1)):
            assert host.image_id(f"{APP_IMAGE}:{version}") == ("" if version != v1 else app_images[v1])
            with probe.window(f"deploy-{n}"):
                t0 = time.monotonic()
                outputs[version] = host.fab("deploy", "--version", version, "--force").stdout
                print(f"deploy {version}: {time.monotonic() - t0:.1f} s")
            assert host.version() == version
            assert host.image_id(f"{APP_IMAGE}:{version}") == app_images[version]
            time.sleep(1.0)
    finally:
        report = probe.stop()
    lost_nothing(report)
    assert report.ok, report.format_table()
    for version in (v2, v3):
        assert "(sent)" in outputs[version] and "on the host already" not in outputs[version], outputs[version]
    # v1 is on the host with the same image ID: nothing travels the second time.
    assert "(on the host already, nothing sent)" in outputs[v1], outputs[v1]
    # The app image was never built or pulled on the host: only the proxy's image was built there.
    built_there = inner("image", "ls", "--format", "{{.Repository}}").stdout.split()
    assert f"{PROJECT}-nginx" in built_there and "localhost/debian-minbase" in built_there, built_there
