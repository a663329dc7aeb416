"""Faults during `fab` runs against real sshd hosts (127.0.0.5-7; HANDOVER_TEST_SSH_NET moves them),
with the probe running where a stack serves: the old version keeps serving, nothing is lost, no lock
is left, the error names the cause.

127.0.0.5 is an ordinary host. 127.0.0.6 gives its sessions a PATH without docker, and 127.0.0.7 a
`docker` that answers `compose` as a docker without the Compose v2 plugin does (the plugin may sit in
a system directory that no session setting can hide), standing for hosts where those are missing.

Covered in test_remote.py: unknown and changed host keys, a bad value in the config, a lock taken
with `fab lock`, and shell metacharacters in deploy_dir.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from handover.probe import ProbeReport

from .conftest import LAB_PORT_SHIFT, LAB_TAG, ContainerCreations, docker_ready, loopback, probe_for
from .faultlog import first_error, note, probe_line
from .sshd import SshLab, SshServer
from .test_remote import PWNED, ROOT, HostSetup, Lab, fab_env, remove_project

pytestmark = pytest.mark.integration

ADDRESSES = [loopback(5), loopback(6), loopback(7)]
PORT_BASE = 28300 + LAB_PORT_SHIFT
KILL_POINTS = ["==> sync", "==> health", "==> switch", "==> drain"]
TMPFS_SIZE = "5m"
FILLER_BYTES = 6 * 1024 * 1024  # more than the whole tmpfs
BIG_SYNC_BYTES = 96 * 1024 * 1024  # random, so rsync's compression cannot shrink it: a few seconds
ROOMY_TMPFS_SIZE = "160m"  # the first release and the space check's BIG_SYNC_BYTES fit, with room over
FILL_RESERVE_BYTES = 512 * 1024  # left free by the filler: enough for the record, far from the big file
FILL_POLL_SECONDS = 0.02
FAB_KILL_WAIT = 120
BROKEN_CONFIG_REPLICAS = 2  # another count than the host's: the upstream file is rewritten
PROJECT_PARTS = ("handover", "fabfile", "config", "compose", "nginx", "server")


def deploy_under_probe(flab: Lab, config: Path, host: HostSetup, version: str,
                       root: Path) -> tuple[subprocess.CompletedProcess[str], ProbeReport]:
    """`fab deploy` of a copy of the project at ``root``, expected to fail, with the probe running."""
    probe = probe_for(host.url)
    probe.start()
    try:
        result = flab.fab(config, [host], "deploy", "--version", version, check=False, root=root)
    finally:
        report = probe.stop()
    return result, report


def connections(server: SshServer) -> int:
    """How many SSH connections the server has accepted so far (sshd logs each)."""
    return server.log.read_text(errors="replace").count("Connection from")


def app_containers(host: HostSetup) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={host.project}",
         "--filter", "label=com.docker.compose.service=app"], capture_output=True, text=True, check=True,
    ).stdout.split()


def assert_one_healthy_container(host: HostSetup) -> None:
    [cid] = app_containers(host)
    health = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", cid],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert health == "healthy"


def lock_dir(host: HostSetup) -> Path:
    return host.deploy_dir / ".state" / "lock"


def records(host: HostSetup) -> list[dict[str, object]]:
    log = host.deploy_dir / ".state" / "releases.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def current(host: HostSetup) -> str:
    return os.readlink(host.deploy_dir / "current")


def staging_dirs(host: HostSetup) -> list[str]:
    return [p.name for p in (host.deploy_dir / "releases").iterdir() if p.name.startswith(".staging-")]


def nginx_processes(host: HostSetup) -> str:
    [cid] = subprocess.run(["docker", "ps", "--quiet", "--filter", f"label=com.docker.compose.project={host.project}",
                            "--filter", "label=com.docker.compose.service=nginx"],
                           capture_output=True, text=True, check=True).stdout.split()
    return subprocess.run(["docker", "top", cid, "-o", "pid,args"], capture_output=True, text=True,
                          check=True).stdout


def project_copy(where: Path) -> Path:
    """A copy of the project to run `fab` from, so a test can break the files it syncs."""
    for part in PROJECT_PARTS:
        shutil.copytree(ROOT / part, where / part,
                        ignore=shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache"))
    shutil.copy2(ROOT / "fabric.yaml", where / "fabric.yaml")
    return where


def path_without_compose(root: Path) -> str:
    """A PATH whose `docker` is the real one, except that `docker compose` is unknown to it."""
    real = shutil.which("docker")
    assert real is not None
    bin_dir = root / "bin-without-compose"
    bin_dir.mkdir()
    wrapper = bin_dir / "docker"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = compose ]; then echo "docker: \'compose\' is not a docker command." >&2; exit 1; fi\n'
        f'exec {shlex.quote(real)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"


def path_without_docker(root: Path) -> Path:
    """A bin directory with everything of /usr/bin but docker (and its helpers)."""
    bin_dir = root / "bin-without-docker"
    bin_dir.mkdir()
    for entry in Path("/usr/bin").iterdir():
        if not entry.name.startswith("docker"):
            (bin_dir / entry.name).symlink_to(entry)
    return bin_dir


@pytest.fixture(scope="module")
def flab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    docker_ready()
    root = tmp_path_factory.mktemp("remote-faults")
    ssh = SshLab(root / "ssh")
    the_lab = Lab(ssh, root / "work", prefix=f"hrf{LAB_TAG}", port_base=PORT_BASE)
    the_lab.work.mkdir()
    no_plugins = root / "home-without-compose"
    (no_plugins / ".docker" / "cli-plugins").mkdir(parents=True)
    PWNED.unlink(missing_ok=True)
    try:
        ssh.start(ADDRESSES, session_env={
            ADDRESSES[1]: {"PATH": str(path_without_docker(root))},
            ADDRESSES[2]: {"HOME": str(no_plugins), "PATH": path_without_compose(root)},
        })
        yield the_lab
    finally:
        the_lab.close(root)


@pytest.fixture(scope="module")
def web(flab: Lab) -> tuple[Path, HostSetup]:
    """An ordinary host serving r1."""
    [host] = flab.hosts("web", flab.ssh.servers[:1])
    config = flab.config("web", [host])
    flab.fab(config, [host], "setup")
    flab.fab(config, [host], "deploy", "--version", "r1")
    assert host.version() == "r1"
    return config, host


@pytest.mark.parametrize("replicas", [None, BROKEN_CONFIG_REPLICAS])
def test_broken_nginx_config_in_the_sync_changes_nothing(flab: Lab, web: tuple[Path, HostSetup],
                                                         tmp_path: Path, replicas: int | None) -> None:
    """#4: the synced nginx.conf fails `nginx -t`: nothing reloaded or started, `current` as before.
    With a new replica count the upstream file is rewritten first: the previous one comes back."""
    config, host = web
    if replicas is not None:
        config = flab.config(f"web-replicas-{replicas}", [host], replicas=replicas)
    before, link, containers, workers = host.version(), current(host), app_containers(host), nginx_processes(host)
    upstream = host.deploy_dir / ".state" / "nginx" / "upstream.conf"
    upstream_before = upstream.read_bytes()
    count = len(records(host))
    root = project_copy(tmp_path)
    conf = root / "nginx" / "nginx.conf"
    conf.write_text(conf.read_text().replace("server_tokens off;", "server_tokens off;\n    this_is_not_nginx;"))
    with ContainerCreations(host.project) as created:
        result, report = deploy_under_probe(flab, config, host, "broken1", root)
    assert created.ids == []  # no container was ever created
    assert upstream.read_bytes() == upstream_before
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nginx -t failed" in result.stderr and "this_is_not_nginx" in result.stderr, result.stderr
    assert f"current -> {link} again" in result.stdout
    assert report.ok, report.format_table()
    assert current(host) == link
    assert host.version() == before
    assert app_containers(host) == containers  # no container started
    assert nginx_processes(host) == workers  # no reload: the same nginx processes
    assert not lock_dir(host).exists()
    # One run, one line: failed at the proxy config, nginx's words kept, the sync timed.
    assert len(records(host)) == count + 1
    record = records(host)[-1]
    assert (record["version"], record["result"], record["failed_step"]) == ("broken1", "failed", "proxy config")
    assert "this_is_not_nginx" in str(record["error"])
    assert [s["name"] for s in record["steps"]][:3] == ["lock", "sync", "preflight"]  # type: ignore[index]
    nginx_says = next((line.strip() for line in result.stderr.splitlines() if "this_is_not_nginx" in line), "")
    note("#4", f"exit {result.returncode}; {first_error(result.stderr)} {nginx_says}; current -> {current(host)}; "
               f"serves {host.version()}; {probe_line(report)}")


def test_a_killed_sync_is_recorded_and_changes_nothing(flab: Lab, web: tuple[Path, HostSetup],
                                                       tmp_path: Path) -> None:
    """rsync is killed mid-transfer: the sync step fails, nothing else happens, one record says so."""
    config, host = web
    before, link, containers, count = host.version(), current(host), app_containers(host), len(records(host))
    root = project_copy(tmp_path)
    (root / "server" / "static" / "big.bin").write_bytes(os.urandom(BIG_SYNC_BYTES))  # keeps rsync busy
    process = subprocess.Popen(flab.fab_command(config, [host], "deploy", "--version", "ks1"), cwd=root,
                               env=fab_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("==> sync"):
            break
    killed = False
    deadline = time.monotonic() + 30
    while not killed and time.monotonic() < deadline:
        killed = subprocess.run(["pkill", "-KILL", "-f", f"^rsync --archive .*{host.server.address}"],
                                check=False).returncode == 0
        time.sleep(0.05)
    output = "".join(seen) + process.communicate(timeout=FAB_KILL_WAIT)[0]
    assert killed, output
    assert process.returncode == 1, output
    assert "rsync to" in output and "the files in use are unchanged" in output, output
    assert current(host) == link and host.version() == before and app_containers(host) == containers
    assert not lock_dir(host).exists() and staging_dirs(host) == []
    assert len(records(host)) == count + 1
    record = records(host)[-1]
    assert (record["version"], record["result"], record["failed_step"]) == ("ks1", "failed", "sync")
    note("killed sync", f"exit {process.returncode}; record {record['result']} at {record['failed_step']}")


def test_killed_deploy_is_reported_and_a_rerun_converges(flab: Lab, web: tuple[Path, HostSetup]) -> None:
    """#6: the client dies (SIGKILL to fab and its ssh/rsync) at each step in turn."""
    config, host = web
    probe = probe_for(host.url)
    probe.start()
    try:
        for n, kill_at in enumerate(KILL_POINTS):
            version = f"k{n}"
            process = subprocess.Popen(flab.fab_command(config, [host], "deploy", "--version", version), cwd=ROOT,
                                       env=fab_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            assert process.stdout is not None
            seen = []
            for line in process.stdout:
                seen.append(line)
                if line.startswith(kill_at):
                    os.killpg(process.pid, signal.SIGKILL)
                    break
            process.wait(timeout=60)
            process.stdout.close()
            assert process.returncode == -signal.SIGKILL, "".join(seen)
            assert requests.get(f"{host.url}/api/info", timeout=5).status_code == 200

            rerun = flab.fab(config, [host], "deploy", "--version", version)
            assert "took over the deploy lock" in rerun.stderr and f"deploy {version}" in rerun.stderr, \
                f"{kill_at}: {rerun.stderr}"
            assert f"-> {version}" in rerun.stdout, rerun.stdout
            assert host.version() == version, kill_at
            assert_one_healthy_container(host)
            assert not lock_dir(host).exists() and staging_dirs(host) == []
            assert current(host).endswith(f"Z-{version}")
            note(f"#6 {kill_at}", f"killed; the rerun took the dead run's lock over: "
                                  f"serves {host.version()}, 1 container")
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    note("#6", probe_line(report))


def test_invalid_config_names_the_key_before_connecting(flab: Lab) -> None:
    """#5: an unknown key (top level or per host) and a missing -H: exit 2, no connection made."""
    [host] = flab.hosts("badkeys", flab.ssh.servers[:1])
    server = host.server
    config = flab.config("badkeys", [host], colour="blue")
    seen = connections(server)
    result = flab.fab(config, [host], "setup", check=False)
    assert result.returncode == 2 and "unknown config key deploy.colour" in result.stderr, result.stderr

    data = yaml.safe_load(flab.config("badkeys-host", [host]).read_text())
    data["deploy"]["hosts"][server.address]["replica"] = 2
    per_host = flab.work / "badkeys-host.yaml"
    per_host.write_text(yaml.safe_dump(data))
    result = flab.fab(per_host, [host], "deploy", "--version", "x1", check=False)
    assert result.returncode == 2
    assert f"unknown config key deploy.hosts.{server.address}.replica" in result.stderr, result.stderr

    no_host = flab.fab(config, [], "deploy", "--version", "x1", check=False)
    assert no_host.returncode == 2 and "no host given" in no_host.stderr, no_host.stderr
    assert connections(server) == seen
    assert not host.deploy_dir.parent.exists()
    note("#5", f"exit {no_host.returncode}; {first_error(no_host.stderr)}; {first_error(result.stderr)}")


@pytest.mark.parametrize("value", ["v1;touch /tmp/handover-pwned-marker", "$(touch /tmp/handover-pwned-marker)"])
def test_version_with_shell_metacharacters_is_refused(flab: Lab, web: tuple[Path, HostSetup], value: str) -> None:
    """#12: refused before connecting; nothing synced, nothing run."""
    config, host = web
    before, releases, seen = host.version(), sorted((host.deploy_dir / "releases").iterdir()), connections(host.server)
    result = flab.fab(config, [host], "deploy", "--version", value, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: version {value!r}: expected" in result.stderr
    assert connections(host.server) == seen
    assert sorted((host.deploy_dir / "releases").iterdir()) == releases
    assert host.version() == before
    assert not PWNED.exists()
    note("#12 version (fab)", f"exit {result.returncode}; {first_error(result.stderr)}")


def test_project_name_with_shell_metacharacters_is_a_config_error(flab: Lab) -> None:
    """#12: the compose project name is validated and named (here the host's own entry)."""
    [host] = flab.hosts("badproject", flab.ssh.servers[:1])
    data = yaml.safe_load(flab.config("badproject", [host]).read_text())
    data["deploy"]["hosts"][host.server.address]["project"] = f"shop; touch {PWNED}"
    config = flab.work / "badproject.yaml"
    config.write_text(yaml.safe_dump(data))
    seen = connections(host.server)
    result = flab.fab(config, [host], "setup", check=False)
    assert result.returncode == 2
    assert f"config key deploy.hosts.{host.server.address}.project: expected a compose project name" in result.stderr
    assert connections(host.server) == seen
    assert not PWNED.exists()
    note("#12 project (fab)", f"exit {result.returncode}; {first_error(result.stderr)}")


def test_setup_names_a_missing_docker_or_compose_plugin(flab: Lab) -> None:
    """#10: `fab setup` on a host without docker, and on one without the Compose v2 plugin."""
    no_docker, no_compose = flab.hosts("nodocker", flab.ssh.servers[1:2]) + flab.hosts("nocompose",
                                                                                      flab.ssh.servers[2:3])
    result = flab.fab(flab.config("nodocker", [no_docker]), [no_docker], "setup", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{no_docker.server.label} is not ready" in result.stderr
    assert "- docker: docker is not installed" in result.stderr, result.stderr
    assert "- compose: cannot be checked without docker" in result.stderr
    assert "MISSING docker" in result.stdout and "ok      rsync" in result.stdout
    said_no_docker = " | ".join(line.strip() for line in result.stderr.splitlines())
    deploy = flab.fab(flab.config("nodocker", [no_docker]), [no_docker], "deploy", "--version", "n1", check=False)
    assert deploy.returncode == 1 and "- docker: docker is not installed" in deploy.stderr, deploy.stderr
    assert not (no_docker.deploy_dir / "releases").exists() or not any((no_docker.deploy_dir / "releases").iterdir())

    result = flab.fab(flab.config("nocompose", [no_compose]), [no_compose], "setup", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "- compose: Docker Compose v2 is missing" in result.stderr, result.stderr
    assert "- docker:" not in result.stderr
    assert "ok      docker" in result.stdout and "MISSING compose" in result.stdout

    deploy = flab.fab(flab.config("nocompose", [no_compose]), [no_compose], "deploy", "--version", "n1",
                      check=False)
    assert deploy.returncode == 1 and "- compose: Docker Compose v2 is missing" in deploy.stderr, deploy.stderr
    assert not lock_dir(no_compose).exists() and not any((no_compose.deploy_dir / "releases").iterdir())
    said_no_compose = " | ".join(line.strip() for line in result.stderr.splitlines())
    note("#10", f"setup, no docker: exit 1; {said_no_docker}\n      setup, no compose: exit 1; {said_no_compose}\n"
                f"      deploy, no compose: exit {deploy.returncode}; {first_error(deploy.stderr)}")


def mounted_tmpfs(flab: Lab, tag: str, size: str) -> Iterator[HostSetup]:
    """A host whose deploy directory is a tmpfs of ``size``."""
    [host] = flab.hosts(tag, flab.ssh.servers[:1])
    host.deploy_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(host.deploy_dir)], check=True)
    try:
        yield host
    finally:
        remove_project(host.project)
        subprocess.run(["umount", str(host.deploy_dir)], check=False)


@pytest.fixture
def small_disk(flab: Lab) -> Iterator[HostSetup]:
    """A host whose deploy directory is a tmpfs too small for the sync."""
    yield from mounted_tmpfs(flab, "full", TMPFS_SIZE)


@pytest.fixture
def roomy_disk(flab: Lab) -> Iterator[HostSetup]:
    """A host whose deploy directory has room for the sync, until something else fills it."""
    yield from mounted_tmpfs(flab, "fills", ROOMY_TMPFS_SIZE)


def test_disk_full_before_the_sync_is_refused_and_changes_nothing(flab: Lab, small_disk: HostSetup,
                                                                  tmp_path: Path) -> None:
    """#13b: too little space for what the sync sends: refused before rsync starts, nothing changed."""
    host = small_disk
    config = flab.config("full", [host])
    flab.fab(config, [host], "setup")
    flab.fab(config, [host], "deploy", "--version", "d1")
    before, link, containers = host.version(), current(host), app_containers(host)
    count = len(records(host))
    root = project_copy(tmp_path)
    (root / "server" / "static" / "filler.bin").write_bytes(os.urandom(FILLER_BYTES))
    result, report = deploy_under_probe(flab, config, host, "d2", root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rsync to" in result.stderr and "not started: No space left on device" in result.stderr, result.stderr
    assert "the files in use are unchanged" in result.stderr
    assert report.ok, report.format_table()
    assert current(host) == link
    assert host.version() == before
    assert app_containers(host) == containers
    assert not lock_dir(host).exists() and staging_dirs(host) == []
    assert len(records(host)) == count + 1
    record = records(host)[-1]
    assert (record["version"], record["result"], record["failed_step"]) == ("d2", "failed", "sync")
    space = next((line.strip() for line in result.stderr.splitlines() if "No space left" in line), "")
    note("#13b", f"exit {result.returncode}; {first_error(result.stderr)} ... {space}; current -> {current(host)}; "
                 f"serves {host.version()}; {probe_line(report)}")


def fill_while_rsync_runs(host: HostSetup, filler: Path, stop: threading.Event) -> list[int]:
    """Once rsync to ``host`` runs (the space check passed), fill its disk but FILL_RESERVE_BYTES.

    Returns how many bytes it allocated (none if rsync never showed up)."""
    pattern = f"^rsync --archive .*{host.server.address}"
    while not stop.is_set():
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0:
            room = os.statvfs(host.deploy_dir)
            size = room.f_bavail * room.f_frsize - FILL_RESERVE_BYTES
            with filler.open("wb") as out:
                os.posix_fallocate(out.fileno(), 0, size)
            return [size]
        time.sleep(FILL_POLL_SECONDS)
    return []


def test_disk_full_during_the_sync_changes_nothing(flab: Lab, roomy_disk: HostSetup, tmp_path: Path) -> None:
    """#13c: the space check passes, then the disk fills while rsync writes: rsync fails on it, the
    staging directory goes, `current` and the containers are as before, one record says so."""
    host = roomy_disk
    config = flab.config("fills", [host])
    flab.fab(config, [host], "setup")
    flab.fab(config, [host], "deploy", "--version", "f1")
    before, link, count = host.version(), current(host), len(records(host))
    containers = set(app_containers(host))
    root = project_copy(tmp_path)
    (root / "server" / "static" / "big.bin").write_bytes(os.urandom(BIG_SYNC_BYTES))  # keeps rsync busy
    filler = host.deploy_dir / "filler.bin"  # on the same tmpfs, outside what the deploy owns
    stop = threading.Event()
    filled: list[int] = []
    filling = threading.Thread(target=lambda: filled.extend(fill_while_rsync_runs(host, filler, stop)))
    filling.start()
    try:
        with ContainerCreations(host.project) as created:
            result, report = deploy_under_probe(flab, config, host, "f2", root)
    finally:
        stop.set()
        filling.join(timeout=30)
    assert filled, "rsync never ran: the space check refused or the sync was over before the disk filled"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not started" not in result.stderr, result.stderr  # the up-front check passed
    assert "rsync to" in result.stderr and "failed (exit" in result.stderr, result.stderr
    # rsync's own "No space left on device" comes from the far side and may be lost with the
    # connection: not required here (the filler's size shows the disk was full).
    assert "the files in use are unchanged" in result.stderr
    assert report.ok, report.format_table()
    assert staging_dirs(host) == [], staging_dirs(host)
    assert current(host) == link and host.version() == before
    assert set(app_containers(host)) == containers
    assert created.ids == []  # no container was ever created
    assert not lock_dir(host).exists()
    assert len(records(host)) == count + 1
    record = records(host)[-1]
    assert (record["version"], record["result"], record["failed_step"]) == ("f2", "failed", "sync")
    filler.unlink()
    space = next((line.strip() for line in result.stderr.splitlines() if "No space left" in line), "(no ENOSPC line)")
    note("#13c", f"filled {filled[0] // 1024} KiB during rsync; exit {result.returncode}; {space}; "
                 f"current -> {current(host)}; serves {host.version()}; record {record['result']} at "
                 f"{record['failed_step']}; {probe_line(report)}")
