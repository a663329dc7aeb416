"""`inv local.*` against a Docker daemon that does not see this machine's files, as with Docker Desktop on
macOS or Windows (the daemon in a VM) or a ``DOCKER_HOST`` on another machine.

The daemon is a Docker-in-Docker container (tests/integration/dind.py) whose dockerd also listens on TCP,
published on 127.0.0.1 only; ``inv`` runs here with ``DOCKER_HOST=tcp://127.0.0.1:<port>``. Nothing of
this machine is mounted into that container: the checkout, the state directory and the example's sources
exist there only as what the client sends (build contexts) or the deploy writes through the daemon. Its
engine starts with the two base images only (``docker save`` here, ``docker load`` there), as a laptop's
Docker Desktop would have them pulled: the proxy's (the debootstrap minbase) and the example's Python base.

``deploy.proxy_files`` is left at ``auto``, which picks ``volume`` because of the TCP ``DOCKER_HOST``. Before
that mode, nginx's bind mounts resolved inside the daemon's machine, where the deploy's files never were:
nginx could not even start, and a switch written to this machine's targets.json would never have reached
it (502 after a "successful" deploy). Here: ``local.up``, then 3 ``local.deploy`` of the plain example (a
TCP app) under the probe with 0 failed requests, 0 abnormal closes and 0 lost messages, nginx serving each
new version and server right after each deploy, every mount of nginx a named volume, and ``local.down``
leaving no container and no volume of the project.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from invoke.context import Context

from handover import images
from handover.progress import Progress

from .conftest import INV, ROOT, TEST_PORT, TEST_PROJECT, docker_ready, lost_nothing, probe_for
from .dind import docker, host_image, load_images, nested_docker
from .test_examples import BASE_IMAGE, fill_wheels

pytestmark = pytest.mark.integration

NAME = f"{TEST_PROJECT}-vm-daemon"
VOLUME = f"{NAME}-lib"
HOST_IMAGE_REPOSITORY = f"{TEST_PROJECT}-dind-host"  # the same image as test_ship_dind.py's host
DAEMON_PORT = TEST_PORT + 30  # the inner dockerd on TCP, published on 127.0.0.1 only
HTTP_PORT = TEST_PORT + 31  # nginx inside, published through to 127.0.0.1 here
INNER_HTTP_PORT = 8080
PROJECT = f"{TEST_PROJECT}-vm"
EXAMPLE = ROOT / "examples" / "starlette-plain"
MINBASE = "debian:bookworm"  # or the debootstrap minbase made in its stead (handover.images)
VERSIONS = ("v2", "v3", "v4")
START_TIMEOUT = 90.0
RUN_TIMEOUT = 900
PROBE_WS_CLIENTS = 10
WARMUP_SECONDS = 1.5
SETTLE_SECONDS = 1.5
# The inner dockerd, on its unix socket (for `docker exec NAME docker ...`) and on TCP (for this machine).
DOCKERD = ("exec dockerd --storage-driver \"${STORAGE_DRIVER:-overlay2}\" -H unix:///var/run/docker.sock "
           "-H tcp://0.0.0.0:2375 --tls=false >/var/log/dockerd.log 2>&1")


@dataclass
class Daemon:
    """The daemon "in the VM", and this machine's `inv` pointed at it."""

    config: Path
    minbase: str

    @property
    def host(self) -> str:
        return f"tcp://127.0.0.1:{DAEMON_PORT}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{HTTP_PORT}"

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("--host", self.host, *args, check=check)

    def inv(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FABRIC_"))}
        env["DOCKER_HOST"] = self.host
        done = subprocess.run([*INV, "-f", str(self.config), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"inv {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def info(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/info", timeout=5)
        assert response.status_code == 200, f"nginx answered {response.status_code}: {response.text[:200]}"
        data: dict[str, Any] = response.json()
        return data

    def project_containers(self) -> list[str]:
        out = self.docker("ps", "--all", "--format", "{{.Names}}", "--filter",
                          f"label=com.docker.compose.project={PROJECT}").stdout
        return sorted(out.split())

    def project_volumes(self) -> list[str]:
        return sorted(v for v in self.docker("volume", "ls", "--quiet").stdout.split() if v.startswith(f"{PROJECT}_"))


def wait_for_daemon(host: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", DAEMON_PORT), timeout=1):
                pass
        except OSError:
            time.sleep(0.2)
            continue
        if docker("--host", host, "info", check=False).returncode == 0:
            return
        time.sleep(0.2)
    logs = docker("exec", NAME, "tail", "-20", "/var/log/dockerd.log", check=False)
    raise AssertionError(f"the daemon in {NAME} does not answer on {host}:\n{logs.stdout}{logs.stderr}")


def example_config(path: Path, python_base: str, minbase: str) -> Path:
    """The plain example's own handover.yaml, with this test's project, state, port and base images (and a
    short drain, as the probe's clients reconnect at once); proxy_files is not set (``auto``)."""
    own = yaml.safe_load((EXAMPLE / "handover.yaml").read_text())["deploy"]
    assert "proxy_files" not in own
    deploy = {**own, "project": PROJECT, "state_dir": f".state-{PROJECT}", "http_bind": "0.0.0.0",  # noqa: S104 - in the daemon's VM; published to loopback
              "http_port": INNER_HTTP_PORT, "app_build_args": {"PYTHON_IMAGE": python_base},
              "base_image": minbase, "proxy_base_image": minbase, "drain_timeout": 2, "stop_grace_period": 6}
    path.write_text(yaml.safe_dump({"deploy": deploy}))
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    docker_ready()
    tmp = tmp_path_factory.mktemp("vm-daemon")
    minbase = images.ensure_base_image(Context(), MINBASE, Progress(quiet=True))
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", BASE_IMAGE,
           str(ROOT / "examples" / "python-base"), timeout=900)
    fill_wheels(EXAMPLE)
    image = host_image(tmp, minbase, HOST_IMAGE_REPOSITORY)
    config = example_config(tmp / "handover.yaml", BASE_IMAGE, minbase)
    docker("rm", "--force", "--volumes", NAME, check=False)
    docker("volume", "rm", VOLUME, check=False)
    docker("run", "--detach", "--name", NAME, "--hostname", "vm-daemon",
           "--publish", f"127.0.0.1:{DAEMON_PORT}:2375", "--publish", f"127.0.0.1:{HTTP_PORT}:{INNER_HTTP_PORT}",
           *nested_docker(VOLUME), image, "sh", "-c", DOCKERD)
    try:
        found = Daemon(config, minbase)
        wait_for_daemon(found.host)
        load_images(NAME, minbase, BASE_IMAGE)
        yield found
    finally:
        docker("rm", "--force", "--volumes", NAME, check=False)
        docker("volume", "rm", VOLUME, check=False)
        docker("image", "rm", BASE_IMAGE, check=False)
        shutil.rmtree(ROOT / f".state-{PROJECT}", ignore_errors=True)


def test_local_deploys_of_a_tcp_app_to_a_daemon_that_cannot_see_the_checkout(daemon: Daemon) -> None:
    # The daemon's machine has no copy of the checkout: a bind mount of it is an empty directory there.
    seen = daemon.docker("run", "--rm", "--network", "none", "-v", f"{ROOT}:/checkout:ro", daemon.minbase,
                         "sh", "-c", "ls -A /checkout | wc -l")
    assert seen.stdout.strip() == "0", f"the daemon sees files of {ROOT}: {seen.stdout}"
    assert (ROOT / "tasks.py").is_file()

    t0 = time.monotonic()
    daemon.inv("local.up", "--version", "v1")
    print(f"local.up (both images built in the daemon): {time.monotonic() - t0:.1f} s")
    first = daemon.info()
    assert first["version"] == "v1", first
    assert daemon.docker("container", "inspect", "--format", "{{.State.Running}}",
                         f"{PROJECT}-proxy-files-1").stdout.strip() == "true", "auto did not pick proxy_files volume"
    mounts = daemon.docker("container", "inspect", "--format", "{{range .Mounts}}{{.Type}}:{{.Destination}} {{end}}",
                           f"{PROJECT}-nginx-1").stdout.split()
    assert sorted(mounts) == ["volume:/etc/handover", "volume:/etc/nginx/tls", "volume:/etc/nginx/upstream.d",
                              "volume:/run/handover"], mounts

    probe = probe_for(daemon.url, ws_clients=PROBE_WS_CLIENTS)
    servers = [first["server_id"]]
    probe.start()
    try:
        time.sleep(WARMUP_SECONDS)
        for n, version in enumerate(VERSIONS):
            with probe.window(f"deploy-{n}"):
                t0 = time.monotonic()
                out = daemon.inv("local.deploy", "--version", version)
                print(f"deploy {version}: {time.monotonic() - t0:.1f} s")
            assert "deploy success" in out, out
            # Right after the deploy, nginx routes to the new container: the switch went through the
            # daemon (with the targets file on this machine, this answered 502 or the old version).
            now = daemon.info()
            assert now["version"] == version and now["server_id"] not in servers, (now, servers)
            servers.append(now["server_id"])
            time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    print(report.format_table())
    http, _ = lost_nothing(report)
    assert http["completed_ok"] > 0 and report.ok, report.format_table()  # type: ignore[index]

    targets = daemon.docker("exec", f"{PROJECT}-nginx-1", "cat", "/etc/nginx/upstream.d/targets.json").stdout
    live = daemon.docker("ps", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}", "--filter",
                         "label=com.docker.compose.service=app").stdout.split()
    assert len(live) == 1 and live[0][:12] in targets, (live, targets)
    assert not (ROOT / f".state-{PROJECT}" / "nginx").exists(), "nginx's files were written on this machine"

    daemon.inv("local.down")
    assert daemon.project_containers() == [] and daemon.project_volumes() == []
