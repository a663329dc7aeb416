"""The release command and the hooks over `fab`: two real sshd hosts (HANDOVER_TEST_SSH_NET .31 and
.32) on the real Docker engine, hooks in a local directory.

The release command runs on each host in a one-off container of the new image with that release's
copy of the secrets file, before the host's new containers; a failing one stops the rollout at the
first host with its old version serving. The hooks run here, on the machine that runs `fab`:
``pre-deploy`` once before the first host, ``post-switch`` once per host, ``post-deploy`` or
``deploy-failed`` once after the last.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handover.probe import Probe, ProbeSettings

from .conftest import LAB_PORT_SHIFT, loopback
from .test_remote import HostSetup, Lab, assert_one_healthy_app, open_lab

pytestmark = pytest.mark.integration

ADDRESSES = [loopback(31), loopback(32)]
PORT_BASE = 18010 + LAB_PORT_SHIFT  # the hosts' http ports follow it
SECRET = "release-secret-never-shown-5c2a"  # noqa: S105 - a test value, to be looked for
MARKER = "release-marker"
HEALTH_GRACE_SECONDS = 30
HOOKS = ("pre-deploy", "post-switch", "post-deploy", "deploy-failed")


@pytest.fixture(scope="module")
def rlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory, "remote-release", "rel-lab", ADDRESSES, PORT_BASE) as the_lab:
        yield the_lab


def write_hooks(directory: Path, log: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in HOOKS:
        path = directory / name
        path.write_text("#!/bin/sh\npython3 -c 'import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
                        f"if k.startswith(\"HANDOVER_\")}}))' >> {shlex.quote(str(log))}\n")
        path.chmod(0o755)


def hook_runs(log: Path) -> list[dict[str, str]]:
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return runs


def one_healthy_app(host: HostSetup, version: str) -> None:
    """One app container of ``version``, healthy (given a few seconds: on a loaded machine a health
    probe of 1.5 s may time out once)."""
    deadline = time.monotonic() + HEALTH_GRACE_SECONDS
    while True:
        try:
            assert_one_healthy_app(host, version)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def marker(host: HostSetup) -> list[str]:
    return (host.deploy_dir / ".state" / "sockets" / MARKER).read_text().split()


def test_release_command_and_hooks_over_two_hosts(rlab: Lab) -> None:
    hosts = rlab.hosts("rel", rlab.ssh.servers)
    secrets = rlab.work / "app.env"
    secrets.write_text(f"RELEASE_SECRET={SECRET}\n")
    secrets.chmod(0o600)
    hooks_dir, log = rlab.work / "hooks", rlab.work / "hooks.log"
    write_hooks(hooks_dir, log)
    script = (f'printf "%s %s %s\\n" "$APP_VERSION" "$RELEASE_SECRET" "$(ls /run/handover | grep -c "^app-")" '
              f'> /run/handover/{MARKER}; echo "migrated with $RELEASE_SECRET"')
    config = rlab.config("rel", hosts, env_file=str(secrets), hooks_dir=str(hooks_dir),
                         release_command=["sh", "-c", script])
    rlab.fab(config, hosts, "setup")
    first = rlab.fab(config, hosts, "deploy", "--version", "r1")
    assert [r["HANDOVER_HOOK"] for r in hook_runs(log)] == ["pre-deploy", "post-switch", "post-switch",
                                                            "post-deploy"]
    assert SECRET not in first.stdout + first.stderr
    for host in hosts:
        assert marker(host) == ["r1", SECRET, "0"]  # the first start: no app socket yet

    # r2 under load on the first host: the release runs before each host's new container.
    probe = Probe(ProbeSettings(base_url=hosts[0].url, rate=50, ws_clients=10))
    probe.start()
    try:
        second = rlab.fab(config, hosts, "deploy", "--version", "r2")
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    for host in hosts:
        assert marker(host) == ["r2", SECRET, "1"]  # only the old container's socket existed then
        assert host.version() == "r2"
        one_healthy_app(host, "r2")
    assert SECRET not in second.stdout + second.stderr and "| migrated with [hidden]" in second.stdout
    runs = hook_runs(log)
    assert [(r["HANDOVER_HOOK"], r.get("HANDOVER_HOST", "")) for r in runs] == [
        ("pre-deploy", ""), ("post-switch", hosts[0].server.label), ("post-switch", hosts[1].server.label),
        ("post-deploy", "")]
    labels = " ".join(h.server.label for h in hosts)
    assert all(r["HANDOVER_HOSTS"] == labels and r["HANDOVER_VERSION"] == "r2" for r in runs)
    assert runs[-1]["HANDOVER_RESULT"] == "success" and runs[-1]["HANDOVER_PREVIOUS_VERSION"] == "r1"
    assert not any(SECRET in json.dumps(r) for r in runs)

    # A failing release command: the first host stops at it, serving r2; the second is not started.
    failing = rlab.config("rel-fail", hosts, env_file=str(secrets), hooks_dir=str(hooks_dir),
                          release_command=["sh", "-c", 'echo "no database at $RELEASE_SECRET" >&2; exit 5'])
    third = rlab.fab(failing, hosts, "deploy", "--version", "r3", check=False)
    assert third.returncode == 1, third.stdout + third.stderr
    assert "exited 5; no new container was started, the old version keeps serving" in third.stderr
    assert "no database at [hidden]" in third.stderr and SECRET not in third.stdout + third.stderr
    for host in hosts:
        assert host.version() == "r2"
        one_healthy_app(host, "r2")
    runs = hook_runs(log)
    assert [r["HANDOVER_HOOK"] for r in runs] == ["pre-deploy", "deploy-failed"]
    failed = runs[-1]
    assert (failed["HANDOVER_RESULT"], failed["HANDOVER_FAILED_STEP"], failed["HANDOVER_FAILED_HOSTS"]) == (
        "failed", "release", hosts[0].server.label)
    assert failed["HANDOVER_HOST_RESULTS"] == f"{hosts[0].server.label}=failed {hosts[1].server.label}=not started"
    record = json.loads((hosts[0].deploy_dir / ".state" / "releases.jsonl").read_text().splitlines()[-1])
    assert (record["result"], record["failed_step"]) == ("failed", "release")
    leftovers = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter", f"name={hosts[0].project}-release"],
                               capture_output=True, text=True, check=True).stdout.split()
    assert leftovers == []
    assert os.readlink(hosts[0].deploy_dir / "current").endswith("Z-r2")  # the sync was undone
