"""`fab` with a ready-made image: pulled by the host from the registry on 127.0.0.1:5000, or shipped from
this machine (``docker save | ssh docker load``); the user's compose file synced with the release.

A real sshd on its own loopback address (HANDOVER_TEST_SSH_NET moves it), rsync, the real Docker engine.
The lab's "host" shares this machine's Docker engine, so a ship there finds the image ID present and
sends nothing (as it must); the stream itself is driven once through the real sshd as well.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from invoke.context import Context

from fabfile import hostconfig
from fabfile.connect import open_remote
from fabfile.hostrun import stream_image
from handover import images
from handover.errors import HandoverError
from handover.probe import Probe, ProbeSettings
from handover.progress import Progress
from handover.settings import load as load_settings

from .conftest import LAB_PORT_SHIFT, LAB_TAG, ROOT, TEST_PROJECT, docker_ready, loopback, lost_nothing
from .test_image_source import docker, forget_in_registry, registry_up
from .test_remote import HostSetup, Lab, open_lab

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
REPOSITORY = f"{TEST_PROJECT}-rshop"
IMAGE = f"{REGISTRY}/{REPOSITORY}"
VERSIONS = ("r1", "r2", "r3")
WORKER = "worker"
ADDRESS = loopback(8)


@pytest.fixture(scope="module")
def built() -> Iterator[str]:
    """The demo image, built here once: its reference."""
    docker_ready()
    registry_up()
    base = images.ensure_base_image(Context(), "debian:bookworm-slim", Progress())
    images.build_wheelhouse(ROOT / "server", Progress())
    ref = f"{IMAGE}:built"
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={base}", "--tag", ref, str(ROOT / "server"))
    yield base
    tags = docker("image", "ls", IMAGE, "--format", "{{.Repository}}:{{.Tag}}").split()
    if tags:
        docker("image", "rm", *tags, check=False)
    for version in (*VERSIONS, "built"):
        forget_in_registry(REPOSITORY, version)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory, "remote-img", f"img{LAB_TAG}r", [ADDRESS], 28160 + LAB_PORT_SHIFT) as the_lab:
        yield the_lab
    for project in the_lab.projects:  # the lab's compose projects are down by now
        tags = docker("image", "ls", f"{project}-nginx", "--format", "{{.Repository}}:{{.Tag}}").split()
        if tags:
            docker("image", "rm", *tags, check=False)


def config_for(lab: Lab, name: str, host: HostSetup, **deploy: object) -> Path:
    path = lab.config(name, [host])
    data = yaml.safe_load(path.read_text())
    data["deploy"].update(deploy)
    data["deploy"]["hosts"][host.server.address].pop("app_image")
    path.write_text(yaml.safe_dump(data))
    return path


def worker_state(project: str) -> list[str]:
    ids = docker("ps", "--all", "--no-trunc", "--quiet", "--filter", f"label=com.docker.compose.project={project}",
                 "--filter", f"label=com.docker.compose.service={WORKER}").split()
    return [docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}", cid) for cid in ids]


def test_fab_deploys_a_registry_image_by_reference_and_leaves_the_worker_alone(built: str, lab: Lab) -> None:
    for version in VERSIONS:
        docker("tag", f"{IMAGE}:built", f"{IMAGE}:{version}")
        docker("push", "--quiet", f"{IMAGE}:{version}")
        docker("image", "rm", f"{IMAGE}:{version}")
    [host] = lab.hosts("reg", lab.ssh.servers)
    extra = lab.work / "services.yml"
    extra.write_text(f"services:\n  {WORKER}:\n    image: {built}\n    command: [\"sleep\", \"infinity\"]\n"
                     "    init: true\n")
    config = config_for(lab, "reg", host, app_build="", app_image=IMAGE, extra_compose_file=str(extra))
    assert "is ready for deploys" in lab.fab(config, [host], "setup").stdout
    first = lab.fab(config, [host], "deploy", "--version", VERSIONS[0])
    assert "==> pull" in first.stdout and "==> services" in first.stdout, first.stdout
    assert "compose/, nginx/, services.yml" in first.stdout  # the sync took the user's compose file along
    assert (host.deploy_dir / "current" / "services.yml").read_text() == extra.read_text()
    assert not (host.deploy_dir / "current" / "server").exists()  # nothing to build: no build directory
    assert host.version() == VERSIONS[0]
    worker = worker_state(host.project)
    assert len(worker) == 1
    probe = Probe(ProbeSettings(base_url=host.url, rate=50, ws_clients=10))
    probe.start()
    try:
        for n, version in enumerate((VERSIONS[1], VERSIONS[2], VERSIONS[0])):
            with probe.window(f"deploy-{n}"):
                result = lab.fab(config, [host], "deploy", "--version", version, "--force")
            assert f"==> pull: {IMAGE}:{version} from its registry" in result.stdout, result.stdout
            assert host.version() == version
            time.sleep(1.0)
    finally:
        report = probe.stop()
    lost_nothing(report)
    assert report.ok, report.format_table()
    assert worker_state(host.project) == worker
    missing = lab.fab(config, [host], "deploy", "--version", "no-such-tag", check=False)
    assert missing.returncode == 1 and f"the image {IMAGE}:no-such-tag cannot be pulled" in missing.stderr, (
        missing.stdout + missing.stderr)
    assert host.version() == VERSIONS[0] and worker_state(host.project) == worker


def test_fab_ship_finds_the_image_on_the_host_and_the_stream_goes_through_sshd(built: str, lab: Lab) -> None:
    [host] = lab.hosts("ship", lab.ssh.servers)
    local_image = f"{host.project}-app"
    docker("tag", f"{IMAGE}:built", f"{local_image}:s1")
    config = config_for(lab, "ship", host, app_build="", app_ship=True, app_image=local_image)
    lab.fab(config, [host], "setup")
    plan = lab.fab(config, [host], "deploy", "--version", "s1", "--dry-run").stdout
    assert f"ship: {local_image}:s1 is on {host.server.label} already" in plan, plan
    result = lab.fab(config, [host], "deploy", "--version", "s1")
    assert "==> ship" in result.stdout and "(on the host already, nothing sent)" in result.stdout, result.stdout
    assert "==> build: the proxy's image" in result.stdout and "==> pull" not in result.stdout
    assert host.version() == "s1"
    lacking = lab.fab(config, [host], "deploy", "--version", "s9", check=False)
    assert lacking.returncode == 1 and f"image {local_image}:s9 is not in this machine's Docker" in lacking.stderr
    assert host.version() == "s1"

    # The stream itself, through the real sshd with its strict host key: save here, load there.
    target = hostconfig.Target(name=host.server.label, host=ADDRESS, user="root", port=host.server.port,
                               settings=load_settings(yaml.safe_load((ROOT / "config" / "deploy.yaml").read_text())
                                                      ["deploy"]), env_file=None)
    remote = open_remote({"connect_kwargs": {"key_filename": [str(lab.ssh.client_key)]}, "load_ssh_configs": False},
                         target, lab.ssh.known_hosts)
    try:
        t0 = time.monotonic()
        stream_image(remote, f"{local_image}:s1")
        assert time.monotonic() - t0 < 120
        with pytest.raises(HandoverError, match=rf"sending {local_image}:s0 to {host.server.label} failed "
                                                r"\(docker save exited 1\)"):
            stream_image(remote, f"{local_image}:s0")
    finally:
        remote.conn.close()
    assert subprocess.run(["docker", "image", "inspect", f"{local_image}:s1"], capture_output=True).returncode == 0


def test_fab_syncs_and_builds_a_directory_outside_the_checkout(built: str, lab: Lab) -> None:
    [host] = lab.hosts("dir", lab.ssh.servers)
    app_dir = lab.work / "shopapp"  # anywhere on disk, under its own name
    shutil.copytree(ROOT / "server", app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    config = config_for(lab, "dir", host, app_build=str(app_dir), app_image=f"{host.project}-app",
                        base_image=built)
    lab.fab(config, [host], "setup")
    plan = lab.fab(config, [host], "deploy", "--version", "d1", "--dry-run").stdout
    assert "sync: compose/, nginx/, shopapp/ ->" in plan and f"build: image {host.project}-app:d1 from {app_dir}" \
        in plan, plan
    lab.fab(config, [host], "deploy", "--version", "d1")
    assert (host.deploy_dir / "current" / "shopapp" / "Dockerfile").is_file()
    assert not (host.deploy_dir / "current" / "server").exists()
    assert host.version() == "d1"
    # The synced copy is what the host builds: a change in the directory reaches the next version.
    (app_dir / "static" / "marker.txt").write_text("d2\n")
    lab.fab(config, [host], "deploy", "--version", "d2")
    assert (host.deploy_dir / "current" / "shopapp" / "static" / "marker.txt").read_text() == "d2\n"
    assert host.version() == "d2"
    empty = lab.work / "nodockerfile"
    empty.mkdir()
    refused = lab.fab(config_for(lab, "dir-bad", host, app_build=str(empty)), [host], "deploy", "--version", "d3",
                      check=False)
    assert refused.returncode == 2 and f"the build directory {empty} has no Dockerfile" in refused.stderr, (
        refused.stdout + refused.stderr)
    assert host.version() == "d2"
