"""The release command on the real stack, with the probe running: it runs in a one-off container of
the new image with the app's env file before any new container starts; a failing or hanging one
stops the deploy with the old version serving, nothing lost and nothing left behind."""

from __future__ import annotations

import dataclasses
import json
import secrets
import shlex
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import ContainerCreations, StackHandle, probe_for
from .faultlog import first_error, note, probe_line
from .test_deploy import assert_one_live_container, assert_unlocked, unique

pytestmark = pytest.mark.integration

MARKER = "release-marker"  # written by the release command into the sockets directory (mounted rw)
HANG_TIMEOUT = 5


def with_release(stack: StackHandle, tmp_path: Path, command: str, timeout: float = 120) -> tuple[StackHandle, str]:
    """``stack`` deploying with ``command`` as its release command and an env file holding a secret."""
    secret = f"rel-{secrets.token_hex(8)}"
    env_file = tmp_path / "app.env"
    env_file.write_text(f"RELEASE_SECRET={secret}\n")
    env_file.chmod(0o600)
    env = {**stack.env, "INVOKE_DEPLOY_RELEASE_COMMAND": command, "INVOKE_DEPLOY_RELEASE_TIMEOUT": str(timeout),
           "INVOKE_DEPLOY_ENV_FILE": str(env_file)}
    return dataclasses.replace(stack, env=env), secret


def one_offs(stack: StackHandle) -> list[str]:
    out = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter", f"name=^/{stack.project}-release$"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def created_at(container: str) -> float:
    out = subprocess.run(["docker", "inspect", "--format", "{{.Created}}", container], capture_output=True, text=True,
                         check=True).stdout.strip()
    whole, _, fraction = out.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


def last_record(stack: StackHandle) -> dict[str, object]:
    record: dict[str, object] = json.loads(stack.inv("local.releases", "--count", "1", "--json").stdout)
    return record


def test_the_release_command_runs_with_the_new_image_and_env_file_before_the_new_containers(
        scratch: StackHandle, tmp_path: Path) -> None:
    token = secrets.token_hex(8)
    (scratch.state_dir.parent / "server" / "static" / "release-proof.txt").write_text(token)  # only the new image
    script = (f'printf "%s %s %s\\n" "$(cat /app/static/release-proof.txt)" "$RELEASE_SECRET" "$(date +%s.%N)" '
              f'> /run/handover/{MARKER} && echo "migrated with $RELEASE_SECRET"')
    deployer, secret = with_release(scratch, tmp_path, shlex.join(["sh", "-c", script]))
    version = unique("release")
    probe = probe_for(scratch.url)
    probe.start()
    try:
        result = deployer.inv("local.deploy", "--version", version, check=False)
    finally:
        report = probe.stop()

    assert result.returncode == 0, result.stdout + result.stderr
    assert report.ok, report.format_table()
    proof, seen_secret, ran_at = (scratch.state_dir / "sockets" / MARKER).read_text().split()
    assert proof == token and seen_secret == secret  # the new image's file, the env file's value
    (new,) = scratch.containers()
    assert float(ran_at) < created_at(new), "the release command ran after the new container was created"
    assert "    | migrated with [hidden]" in result.stdout and secret not in result.stdout + result.stderr
    assert one_offs(scratch) == []
    assert_one_live_container(scratch, version)
    steps = [s["name"] for s in last_record(scratch)["steps"]]  # type: ignore[union-attr]
    assert steps.index("build") < steps.index("release") < steps.index("start")
    note("release", f"exit 0; marker {proof} at {ran_at}, new container created {created_at(new):.3f}; "
                    f"{probe_line(report)}")


@pytest.mark.parametrize("hangs", [False, True], ids=["exit-3", "hangs"])
def test_a_failing_or_hanging_release_command_leaves_the_old_version_serving(scratch: StackHandle, tmp_path: Path,
                                                                             hangs: bool) -> None:
    before = scratch.info()
    containers = scratch.containers()
    if hangs:
        command, timeout = "sh -c 'echo waiting for the database; exec sleep 600'", HANG_TIMEOUT
    else:
        command, timeout = "sh -c 'echo applying 0042; echo \"cannot log in with $RELEASE_SECRET\" >&2; exit 3'", 120
    deployer, secret = with_release(scratch, tmp_path, command, timeout)
    probe = probe_for(scratch.url)
    probe.start()
    try:
        with ContainerCreations(scratch.project) as created:
            result = deployer.inv("local.deploy", "--version", unique("relfail"), check=False)
    finally:
        report = probe.stop()

    assert result.returncode == 1, result.stdout + result.stderr
    assert report.ok, report.format_table()
    if hangs:
        assert f"did not finish within {HANG_TIMEOUT} s (deploy.release_timeout)" in result.stderr, result.stderr
        assert "waiting for the database" in result.stderr  # what it printed before it was stopped
    else:
        assert "exited 3; no new container was started, the old version keeps serving" in result.stderr
        assert "applying 0042" in result.stderr and "cannot log in with [hidden]" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert scratch.info()["server_id"] == before["server_id"]
    assert scratch.containers() == containers and one_offs(scratch) == []  # nothing started, nothing left
    assert len(created.ids) == 1  # the one-off container alone was ever created
    assert_one_live_container(scratch, str(before["version"]))
    assert_unlocked(scratch.state_dir)
    record = last_record(scratch)
    assert (record["result"], record["failed_step"]) == ("failed", "release")
    assert secret not in json.dumps(record)
    (step,) = [s for s in record["steps"] if s["name"] == "release"]  # type: ignore[union-attr]
    if hangs:
        assert HANG_TIMEOUT <= step["seconds"] < HANG_TIMEOUT + 30, step  # bounded by release_timeout
    note("release-" + ("hangs" if hangs else "exit-3"), f"exit {result.returncode}; {first_error(result.stderr)}; "
                                                        f"{probe_line(report)}")
