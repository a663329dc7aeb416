"""The app's image from a real registry, the user's other services, how the old version stops, and bad
input about them: on the real Docker engine, nginx and Debian's docker-registry on 127.0.0.1:5000.

One stack of its own (``<test project>-img``): the demo image is built once, tagged as three versions
and pushed to the registry; the stack deploys them by reference (``app_build: ""``), with a compose
file of the user's beside handover's, holding a ``worker`` service that must never be touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from invoke.context import Context

from handover import images
from handover.progress import Progress

from .conftest import INV, ROOT, TEST_PORT, TEST_PROJECT, StackHandle, docker_ready, lost_nothing, probe_for, stack_env

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
PROJECT = f"{TEST_PROJECT}-img"
PORT = TEST_PORT + 2
REPOSITORY = f"{TEST_PROJECT}-shop"  # the registry's repository (names start with the test project's)
IMAGE = f"{REGISTRY}/{REPOSITORY}"
VERSIONS = ("r1", "r2", "r3")
WORKER = "worker"
PROBE_WS_CLIENTS = 10
SETTLE_SECONDS = 1.0
PRE_STOP_TIMEOUT = 2
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json,"
                  "application/vnd.oci.image.manifest.v1+json")


@dataclass
class ImgStack:
    handle: StackHandle
    extra_file: Path
    tmp: Path

    def inv(self, *args: str, env: dict[str, str] | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        run_env = {**self.handle.env, **(env or {})}
        result = subprocess.run([*INV, *args], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def version(self) -> str:
        return str(self.handle.info()["version"])

    def last_record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.inv("local.releases", "--count", "1", "--json").stdout)
        return data

    def records(self) -> int:
        return len(self.inv("local.releases", "--count", "1000", "--json").stdout.splitlines())


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout.strip()


def registry_up() -> None:
    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=3).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"no image registry on {REGISTRY} ({exc}): run scripts/bootstrap.sh (CI does, in .ci/run)")


def forget_in_registry(repository: str, tag: str) -> None:
    """Delete ``repository:tag`` from the registry (its manifest), so nothing of the test stays there."""
    head = requests.head(f"http://{REGISTRY}/v2/{repository}/manifests/{tag}", timeout=5,
                         headers={"Accept": MANIFEST_TYPES})
    digest = head.headers.get("Docker-Content-Digest")
    if head.status_code == 200 and digest:
        requests.delete(f"http://{REGISTRY}/v2/{repository}/manifests/{digest}", timeout=5)


def containers(project: str, service: str) -> list[str]:
    return docker("ps", "--all", "--no-trunc", "--quiet", "--filter", f"label=com.docker.compose.project={project}",
                  "--filter", f"label=com.docker.compose.service={service}").split()


def started_at(cid: str) -> tuple[str, str]:
    return docker("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", cid).split(" ", 1)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImgStack]:
    docker_ready()
    registry_up()
    tmp = tmp_path_factory.mktemp("img")
    runner = Context()
    base = images.ensure_base_image(runner, "debian:bookworm-slim", Progress())
    images.build_wheelhouse(ROOT / "server", Progress())
    # The demo image, built once, tagged and pushed as each version; the local tags are removed so that
    # a deploy has to pull them.
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={base}", "--tag", f"{IMAGE}:built", str(ROOT / "server"))
    for version in VERSIONS:
        docker("tag", f"{IMAGE}:built", f"{IMAGE}:{version}")
        docker("push", "--quiet", f"{IMAGE}:{version}")
        docker("image", "rm", f"{IMAGE}:{version}")
    extra = tmp / "services.yml"
    extra.write_text(f"services:\n  {WORKER}:\n    image: {base}\n    command: [\"sleep\", \"infinity\"]\n"
                     "    init: true\n    restart: unless-stopped\n")
    env = stack_env(PROJECT, PORT, f".state-{PROJECT}")
    env.update({"INVOKE_DEPLOY_APP_BUILD": "", "INVOKE_DEPLOY_APP_IMAGE": IMAGE,
                "INVOKE_DEPLOY_EXTRA_COMPOSE_FILE": str(extra)})
    handle = StackHandle(PROJECT, PORT, ROOT / f".state-{PROJECT}", env)
    stack = ImgStack(handle, extra, tmp)
    stack.inv("local.down", check=False)
    try:
        yield stack
    finally:
        stack.inv("local.down", check=False)
        left = containers(PROJECT, "app") + containers(PROJECT, WORKER) + containers(PROJECT, "nginx")
        tags = docker("image", "ls", IMAGE, "--format", "{{.Repository}}:{{.Tag}}").split()
        tags += docker("image", "ls", f"{PROJECT}-nginx", "--format", "{{.Repository}}:{{.Tag}}").split()
        if tags:
            docker("image", "rm", *tags, check=False)
        for version in (*VERSIONS, "built"):
            forget_in_registry(REPOSITORY, version)
        shutil.rmtree(handle.state_dir, ignore_errors=True)
        assert left == [], "the stack's containers outlived `local.down`"


def test_a_registry_image_is_deployed_by_reference_and_the_worker_is_never_touched(img: ImgStack) -> None:
    """The first start pulls r1 and starts the worker; three deploys under the probe pull r2, r3, r1
    (each a new server, 0 failed, 0 abnormal, 0 lost) and leave the worker's container as it was."""
    up = img.inv("local.up", "--version", VERSIONS[0])
    assert "==> pull" in up.stdout and "==> services" in up.stdout, up.stdout
    assert img.version() == VERSIONS[0]
    (worker,) = containers(PROJECT, WORKER)
    worker_state = started_at(worker)
    plan = img.inv("local.deploy", "--version", VERSIONS[1], "--dry-run").stdout
    assert f"pull: {IMAGE}:{VERSIONS[1]} from its registry" in plan and "build:" not in plan, plan
    probe = probe_for(img.handle.url, PROBE_WS_CLIENTS)
    probe.start()
    servers = [img.handle.info()["server_id"]]
    try:
        for n, version in enumerate((VERSIONS[1], VERSIONS[2], VERSIONS[0])):
            with probe.window(f"deploy-{n}"):
                img.inv("local.deploy", "--version", version, "--force")
            servers.append(img.handle.info()["server_id"])
            assert img.version() == version
            time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    lost_nothing(report)
    assert report.ok, report.format_table()
    assert len(set(servers)) == 4, servers
    assert containers(PROJECT, WORKER) == [worker] and started_at(worker) == worker_state
    (app,) = containers(PROJECT, "app")
    assert docker("inspect", "--format", "{{.Config.StopSignal}}", app) == "SIGTERM"  # app_stop_signal, via compose
    record = img.last_record()
    assert record["result"] == "success" and "pull" in [s["name"] for s in record["steps"]]  # type: ignore[attr-defined]
    assert docker("image", "inspect", "--format", "{{.Id}}", f"{IMAGE}:{VERSIONS[2]}")  # pulled, kept for rollback
    assert not (img.handle.state_dir / "lock").exists()


def test_an_image_that_cannot_be_pulled_changes_nothing(img: ImgStack) -> None:
    before, server = containers(PROJECT, "app"), img.handle.info()["server_id"]
    records = img.records()
    probe = probe_for(img.handle.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        result = img.inv("local.deploy", "--version", "no-such-tag", check=False)
    finally:
        report = probe.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: the image {IMAGE}:no-such-tag cannot be pulled" in result.stderr, result.stderr
    assert "no container was started or stopped" in result.stderr
    assert "==> start" not in result.stdout
    assert report.ok, report.format_table()
    assert containers(PROJECT, "app") == before and img.handle.info()["server_id"] == server
    assert img.records() == records + 1
    record = img.last_record()
    assert (record["result"], record["failed_step"]) == ("failed", "pull")
    assert not (img.handle.state_dir / "lock").exists()


@pytest.mark.parametrize("fault", ["fails", "hangs"])
def test_a_pre_stop_that_fails_or_hangs_is_reported_and_the_old_one_stops_anyway(img: ImgStack, fault: str) -> None:
    command = "echo draining-failed >&2; exit 3" if fault == "fails" else "sleep 30"
    (old,) = containers(PROJECT, "app")
    probe = probe_for(img.handle.url, PROBE_WS_CLIENTS)
    probe.start()
    try:
        t0 = time.monotonic()
        result = img.inv("local.deploy", "--version", VERSIONS[1], "--force",
                         env={"INVOKE_DEPLOY_APP_PRE_STOP": command,
                              "INVOKE_DEPLOY_APP_PRE_STOP_TIMEOUT": str(PRE_STOP_TIMEOUT)})
        seconds = time.monotonic() - t0
    finally:
        report = probe.stop()
    words = ("exited 3: draining-failed" if fault == "fails"
             else f"did not finish within {PRE_STOP_TIMEOUT} s")
    assert f"pre_stop in {PROJECT}-app-" in result.stderr and words in result.stderr, result.stderr
    assert "stopped it anyway" in result.stderr
    assert report.ok, report.format_table()
    assert old not in containers(PROJECT, "app") and len(containers(PROJECT, "app")) == 1
    drain = next(s for s in img.last_record()["steps"] if s["name"] == "drain")  # type: ignore[attr-defined]
    assert words in drain["detail"]
    assert seconds < 60  # the hang was cut at its timeout, not waited out


def test_bad_build_directory_and_colliding_service_are_refused_before_anything(img: ImgStack) -> None:
    before, records = containers(PROJECT, "app"), img.records()
    empty = img.tmp / "no-dockerfile"
    empty.mkdir()
    colliding = img.tmp / "colliding.yml"
    colliding.write_text("services:\n  nginx:\n    image: img-nope\n")
    for env, words in (
        ({"INVOKE_DEPLOY_APP_BUILD": str(empty)}, f"deploy.app_build: the build directory {empty} has no Dockerfile"),
        ({"INVOKE_DEPLOY_EXTRA_COMPOSE_FILE": str(colliding)},
         f"deploy.extra_compose_file: service 'nginx' in {colliding} has the name of handover's own service"),
    ):
        result = img.inv("local.deploy", "--version", VERSIONS[2], env=env, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert containers(PROJECT, "app") == before and img.records() == records
    assert img.version() in VERSIONS
