"""The app's secrets over `fab` on a real sshd host (127.0.0.11) and the real Docker engine.

The secrets reach the app's environment verbatim (``$``, quotes, ``#``, spaces, ``=``), each release
keeps its own copy (a rollback runs with the secrets it was deployed with), and no value shows in
any output of a failed run: stdout, stderr, ``--json`` and the release log. A malformed local file
stops `fab` before it connects, naming the line by number only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import LAB_PORT_SHIFT, loopback
from .test_remote import HostSetup, Lab, open_lab
from .test_remote_faults import app_containers, project_copy, records

pytestmark = pytest.mark.integration

ADDRESSES = [loopback(11)]
PORT_BASE = 28540 + LAB_PORT_SHIFT  # apart from the other labs (test_fresh_host has 28500)
SECRET = "s3cret-never-shown-9d1e"  # noqa: S105 - a test value, to be looked for
VERBATIM = {
    "APP_SECRET_TOKEN": SECRET,
    "APP_PASS": f"ab$cdef${{HOME}}$${SECRET}",
    "APP_QUOTED": f"\"{SECRET}\" and 'single'",
    "APP_HASHED": f"a # {SECRET}",
    "APP_SPACED": f"  {SECRET}  ",
    "APP_EQUALS": f"a={SECRET}==c",
}


def env_text(values: dict[str, str]) -> str:
    return "# the app's secrets\n" + "".join(f"{k}={v}\n" for k, v in values.items())


def app_env(host: HostSetup, name: str) -> str:
    """``name`` in the running app container's environment, as the app's Python sees it."""
    [cid] = app_containers(host)
    return subprocess.run(["docker", "exec", cid, "/opt/venv/bin/python", "-c",
                           f"import os, sys; sys.stdout.write(os.environ[{name!r}])"],
                          capture_output=True, text=True, check=True).stdout


def secrets_dir(slab: Lab, host: HostSetup) -> Path:
    return slab.ssh.home / ".config" / "handover" / host.project


@pytest.fixture(scope="module")
def slab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory, "remote-secrets", "hrs", ADDRESSES, PORT_BASE) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def web(slab: Lab) -> tuple[Path, HostSetup, Path]:
    """A host serving r1 with the verbatim secrets."""
    [host] = slab.hosts("sec", slab.ssh.servers[:1])
    local = slab.work / "app.env"
    local.write_text(env_text(VERBATIM))
    local.chmod(0o600)
    config = slab.config("sec", [host], env_file=str(local))
    slab.fab(config, [host], "setup")
    first = slab.fab(config, [host], "deploy", "--version", "r1")
    assert SECRET not in first.stdout + first.stderr
    assert host.version() == "r1"
    return config, host, local


def test_secrets_reach_the_app_verbatim(slab: Lab, web: tuple[Path, HostSetup, Path]) -> None:
    _, host, _ = web
    assert {name: app_env(host, name) for name in VERBATIM} == VERBATIM
    release = os.readlink(host.deploy_dir / "current").rpartition("/")[2]
    copy = secrets_dir(slab, host) / f"{release}.env"
    assert copy.read_text() == env_text(VERBATIM)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert not copy.resolve().is_relative_to(host.deploy_dir.resolve())  # nginx mounts deploy_dir


def test_a_failed_run_shows_no_secret_anywhere(slab: Lab, web: tuple[Path, HostSetup, Path], tmp_path: Path) -> None:
    """New containers that never become healthy: the run is rolled back, its error holds the app's
    log lines; no value of the secrets file is in any of it."""
    config, host, _ = web
    root = project_copy(tmp_path)
    (root / "server" / "healthcheck.sh").write_text("exit 1\n")
    result = slab.fab(config, [host], "deploy", "--version", "sick1", "--json", check=False, root=root)
    assert result.returncode == 1, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome[0]["result"] != "success" and outcome[0]["error"]
    record = records(host)[-1]
    assert (record["version"], record["result"], record["failed_step"]) == ("sick1", "rolled-back", "health")
    log = (host.deploy_dir / ".state" / "releases.jsonl").read_text()
    for text in (result.stdout, result.stderr, log):
        assert SECRET not in text
    assert host.version() == "r1"


def test_a_rollback_runs_with_the_secrets_of_its_release(slab: Lab, web: tuple[Path, HostSetup, Path]) -> None:
    config, host, local = web
    assert host.version() == "r1"
    local.write_text(env_text({**VERBATIM, "APP_SECRET_TOKEN": f"{SECRET}-rotated"}))
    slab.fab(config, [host], "deploy", "--version", "r2")
    assert app_env(host, "APP_SECRET_TOKEN") == f"{SECRET}-rotated"
    result = slab.fab(config, [host], "rollback", "--to", "r1")
    assert SECRET not in result.stdout + result.stderr
    assert host.version() == "r1"
    assert app_env(host, "APP_SECRET_TOKEN") == SECRET  # r1's own, not the newest
    kept = {p.name for p in (host.deploy_dir / "releases").iterdir() if not p.name.startswith(".")}
    assert {p.name for p in secrets_dir(slab, host).iterdir()} == {f"{name}.env" for name in kept}


def test_a_malformed_secrets_file_stops_fab_before_connecting(slab: Lab, web: tuple[Path, HostSetup, Path]
                                                              ) -> None:
    _, host, _ = web
    bad = slab.work / "bad.env"
    bad.write_text(f"GOOD=1\n{SECRET}\n")
    config = slab.config("bad-secrets", [host], env_file=str(bad))
    before = len(records(host))
    result = slab.fab(config, [host], "deploy", "--version", "r9", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "deploy.env_file" in result.stderr and "line 2" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert len(records(host)) == before
