"""The app's secrets file: checked before Compose reads it, verbatim in the app, never in any output.

The engine runs against the fake Docker host (tests/unit/fakehost.py), which reads the compose
``env_file`` into each app container's environment. The ``fab`` path runs the real Sync and Files
steps on it: the sources' rsync is replaced by a local copy and SFTP by local file calls
(:class:`LocalSftp`), the rest (symlink swaps, the engine) is the real thing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke.exceptions import Exit

from fabfile import hostconfig, hostrun, secrets, sync
from fabfile.connect import Remote
from handover import cli, envfile
from handover import settings as settings_mod
from handover.engine import DeployOptions, Engine
from handover.errors import ConfigError, HandoverError
from handover.progress import Progress
from handover.settings import PROJECT_ROOT

from .fakehost import Behaviour, FakeHost, compose, fake_settings

SECRET = "SUPERSECRET-b7f3e1"  # noqa: S105 - a test value, to be looked for
# Every character Compose's default format would expand, unquote or cut: $, quotes, #, spaces, '='.
VERBATIM = {
    "PASS": "ab$cdef${HOME}$$",
    "QUOTED": "\"double\" and 'single'",
    "HASHED": "a # not a comment",
    "SPACED": "  spaced  out  ",
    "EQUALS": "a=b==c",
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _config(**overrides: Any) -> dict[str, Any]:
    return {**cli.defaults()["deploy"], **overrides}


# -- the file's syntax, checked by this tool ------------------------------------------------------------
@pytest.mark.parametrize("line", [
    f"={SECRET}",  # no name
    f"TOKEN {SECRET}=1",  # a space in the name
    SECRET,  # no '='
    f"export TOKEN={SECRET}",  # a shell file
    f"TOKEN={SECRET}\r",  # CRLF
    f'"TOKEN"={SECRET}',  # a quoted name
])
def test_a_malformed_line_is_named_by_number_never_by_content(tmp_path: Path, line: str) -> None:
    path = _write(tmp_path / "app.env", f"# the app's secrets\nGOOD=1\n\n{line}\nALSO=fine\n")
    with pytest.raises(ConfigError) as caught:
        settings_mod.load(_config(env_file=str(path)))
    message = str(caught.value)
    assert "deploy.env_file" in message and str(path) in message and "line 4" in message
    assert SECRET not in message and "TOKEN" not in message


def test_every_bad_line_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "app.env", f"A=1\n{SECRET}\nB=2\n={SECRET}\n")
    with pytest.raises(ConfigError, match=r"line 2 .*; line 4 ") as caught:
        settings_mod.load(_config(env_file=str(path)))
    assert SECRET not in str(caught.value)


def test_not_utf8_is_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_bytes(b"A=1\nB=\xff" + SECRET.encode() + b"\n")
    with pytest.raises(ConfigError, match="line 2 is not UTF-8") as caught:
        settings_mod.load(_config(env_file=str(path)))
    assert SECRET not in str(caught.value)


def test_values_are_kept_verbatim() -> None:
    text = "".join(f"{k}={v}\n" for k, v in VERBATIM.items()) + "# comment\n   # indented comment\n\n"
    assert envfile.parse(text, "x") == VERBATIM


# -- a configured file must be there -------------------------------------------------------------------
def test_missing_env_file_is_a_config_error_naming_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError) as caught:
        settings_mod.load(_config(env_file=str(missing)))
    assert "deploy.env_file" in str(caught.value) and str(missing) in str(caught.value)


def test_a_directory_is_not_an_env_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deploy\.env_file: .* is not a file"):
        settings_mod.load(_config(env_file=str(tmp_path)))


def test_an_unreadable_env_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "app.env", "A=1\n")
    path.chmod(0)

    def refuse(self: Path) -> bytes:  # as for any user but root, who reads a mode 0 file
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=r"deploy\.env_file: .* cannot be read"):
        settings_mod.load(_config(env_file=str(path)))


def test_relative_env_file_is_taken_from_the_project_root(tmp_path: Path) -> None:
    path = _write(tmp_path / "app.env", "A=1\n")
    relative = os.path.relpath(path, PROJECT_ROOT)
    s = settings_mod.load(_config(env_file=relative))
    assert Path(s.env_file).is_absolute() and Path(s.env_file).resolve() == path.resolve()
    # Not from the compose file's directory, where Compose would look for a relative one.
    assert not (PROJECT_ROOT / "compose" / relative).is_file()


def test_the_local_front_door_refuses_a_missing_env_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from invoke.config import Config

    missing = tmp_path / "nope.env"
    config = Config(overrides={"deploy": _config(env_file=str(missing))})
    with pytest.raises(Exit) as caught:
        cli.guarded(lambda: cli.settings_from(config))
    assert caught.value.code == 2
    assert f"deploy.env_file: {missing} is not a file" in capsys.readouterr().err


def test_fab_refuses_a_malformed_env_file_before_connecting(tmp_path: Path) -> None:
    path = _write(tmp_path / "app.env", f"OK=1\nTOKEN {SECRET}\n")
    section = {**yaml.safe_load(hostconfig.REMOTE_DEFAULTS_FILE.read_text())["deploy"], "env_file": str(path)}
    with pytest.raises(ConfigError) as caught:
        hostconfig.load({**cli.defaults()["deploy"], **section}, ["web1"])
    assert "deploy.env_file" in str(caught.value) and "line 2" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- the compose file ------------------------------------------------------------------------------------
def _env_file_entry() -> dict[str, Any]:
    data = yaml.safe_load((PROJECT_ROOT / "compose" / "docker-compose.yml").read_text())
    (entry,) = data["services"]["app"]["env_file"]
    assert isinstance(entry, dict)
    return entry


def test_compose_reads_the_env_file_raw_and_requires_it() -> None:
    entry = _env_file_entry()
    assert entry["format"] == "raw"  # no $ expansion, no quote or '#' processing
    assert entry["required"] is True  # a configured file that is missing stops the run
    assert entry["path"] == "${APP_ENV_FILE:-/dev/null}"


def _compose_config(env_file: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APP_ENV_FILE": env_file, "HANDOVER_ROOT": str(tmp_path),
           "HANDOVER_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run(["docker", "compose", "--project-name", "handover-envtest", "--file",
                           str(PROJECT_ROOT / "compose" / "docker-compose.yml"), "config", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not installed")
def test_real_compose_passes_values_verbatim_and_refuses_a_missing_file(tmp_path: Path) -> None:
    """`docker compose config` reads no daemon: the compose file as Compose itself resolves it."""
    version = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True,
                             check=False).stdout.strip()
    if not version:
        pytest.skip("the compose plugin is not installed")
    path = _write(tmp_path / "app.env", "".join(f"{k}={v}\n" for k, v in VERBATIM.items()))
    done = _compose_config(str(path), tmp_path)
    assert done.returncode == 0, done.stderr
    environment = json.loads(done.stdout)["services"]["app"]["environment"]
    # `config` prints a lone '$' as '$$' (its own escape for the output file); the container gets '$'.
    assert {k: environment[k].replace("$$", "$") for k in VERBATIM} == VERBATIM
    missing = _compose_config(str(tmp_path / "nope.env"), tmp_path)
    assert missing.returncode != 0 and "nope.env" in missing.stderr


# -- Compose's words, scrubbed --------------------------------------------------------------------------
def _secret_settings(host: FakeHost, tmp_path: Path, text: str) -> Engine:
    path = _write(tmp_path / "app.env", text)
    # Past the tool's own check (as a file changed after it, or a Compose that words things otherwise).
    s = dataclasses.replace(host.settings, env_file=str(path))
    return Engine(host.runner, s, Progress(quiet=True))


def _all_output(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    log = (host.state_path / "releases.jsonl").read_text() if (host.state_path / "releases.jsonl").exists() else ""
    return out.out + out.err + log


def test_compose_config_quoting_the_env_file_never_shows_a_value(fake_host: FakeHost, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    engine = _secret_settings(fake_host, tmp_path, f"TOKEN={SECRET}\nOTHER=\"{SECRET}2\n")
    path = engine.settings.env_file
    fake_host.fail_on(compose("config"), exited=1,
                      stderr=f"failed to parse env_file {path}: unterminated quoted value \"{SECRET}2\n"
                             f"warning: {SECRET} looks odd\n")
    with pytest.raises(Exit):
        cli.guarded(lambda: engine.deploy(DeployOptions(version="v1")))
    (record,) = fake_host.records()
    assert record["result"] == "failed" and record["failed_step"] == "preflight"
    assert f"{path}: {envfile.WITHHELD}" in record["error"] and envfile.HIDDEN in record["error"]
    everything = _all_output(fake_host, capsys)
    assert "compose file" in everything  # the error was shown ...
    assert SECRET not in everything  # ... without the value


def test_a_failed_build_quoting_a_value_never_shows_it(fake_host: FakeHost, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    engine = _secret_settings(fake_host, tmp_path, f"TOKEN={SECRET}\n")
    fake_host.fail_on(compose("build"), exited=1, stdout=f"Step 3/9 : echo {SECRET}\n", stderr="failed to solve\n")
    with pytest.raises(Exit):
        cli.guarded(lambda: engine.deploy(DeployOptions(version="v1")))
    (record,) = fake_host.records()
    assert record["failed_step"] == "build" and "Step 3/9 : echo [hidden]" in record["error"]
    assert SECRET not in _all_output(fake_host, capsys)


def test_an_old_compose_is_named_when_the_compose_file_is_refused(fake_host: FakeHost) -> None:
    # The fake host answers as Compose v2.29.7, which has no env_file `format: raw`.
    fake_host.fail_on(compose("config"), exited=15,
                      stderr="validating docker-compose.yml: services.app.env_file.0 Additional property format "
                             "is not allowed\n")
    with pytest.raises(HandoverError, match=r"Compose v2\.30 or newer is needed .* this host has v2\.29\.7"):
        Engine(fake_host.runner, fake_host.settings, Progress(quiet=True)).deploy(DeployOptions(version="v1"))


def test_scrub_leaves_short_values_and_other_text() -> None:
    secrets_ = envfile.fragments(f"A=1\nTOKEN={SECRET}\n# {SECRET}-comment\n")
    assert envfile.scrub(f"exit 1: {SECRET} at /x", secrets_) == f"exit 1: {envfile.HIDDEN} at /x"


def test_a_secret_reaches_the_app_and_no_output_of_a_failed_run(fake_host: FakeHost, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "app.env", f"TOKEN={SECRET}\n")
    engine = Engine(fake_host.runner, dataclasses.replace(fake_host.settings, env_file=str(path)), Progress())
    assert engine.up("v1").result == "success"
    (app,) = fake_host.app_containers()
    assert app.env["TOKEN"] == SECRET
    fake_host.behave("v2", Behaviour(never_healthy=True))
    with pytest.raises(Exit):
        cli.guarded(lambda: engine.deploy(DeployOptions(version="v2")))
    assert fake_host.records()[-1]["result"] == "rolled-back"
    everything = _all_output(fake_host, capsys)
    assert "==> start" in everything and "error: " in everything  # progress and the error were shown
    assert SECRET not in everything


# -- fab: one copy per release ---------------------------------------------------------------------------
class _File:
    def __init__(self, path: str) -> None:
        self.path = path
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by __exit__

    def chmod(self, mode: int) -> None:
        os.chmod(self.path, mode)

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


class LocalSftp:
    """The SFTP calls fabfile.secrets makes, on local files."""

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(path, mode)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def open(self, path: str, mode: str) -> _File:
        assert mode == "w"
        return _File(path)

    def posix_rename(self, old: str, new: str) -> None:
        os.rename(old, new)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def remove(self, path: str) -> None:
        os.remove(path)


@dataclasses.dataclass
class LocalConn:
    host: FakeHost
    user: str = pwd.getpwuid(os.getuid()).pw_name

    def run(self, command: str, **kwargs: Any) -> Any:
        return self.host.runner.run(command, **kwargs)

    def sftp(self) -> LocalSftp:
        return LocalSftp()


@pytest.fixture
def fab_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeHost, Remote, Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    settings = fake_settings(tmp_path, source_subdir=hostconfig.RELEASE_LINK, releases_kept=2)
    host = FakeHost(tmp_path, settings)
    deploy = Path(settings.deploy_dir)

    def upload(remote: Remote, s: Any, version: str, progress: Any, dirs: Any) -> str:
        name = sync.release_name(version)
        for part in ("compose", "nginx"):
            shutil.copytree(deploy / part, deploy / sync.RELEASES_DIR / name / part)
        return name

    monkeypatch.setattr(sync, "upload", upload)
    local = _write(tmp_path / "app.env", f"TOKEN={SECRET}-one\n")
    target = hostconfig.Target(name="web1", host="web1", user=None, port=None, settings=settings, env_file=local)
    return host, Remote(target, LocalConn(host), tmp_path / "known_hosts"), home


def _secrets_dir(home: Path, remote: Remote) -> Path:
    return home / secrets.SECRETS_DIR / remote.target.settings.project


def test_fab_secrets_go_with_their_release_and_a_rollback_uses_its_own(
        fab_host: tuple[FakeHost, Remote, Path], capsys: pytest.CaptureFixture[str]) -> None:
    host, remote, home = fab_host
    local = remote.target.env_file
    assert local is not None
    quiet = Progress(quiet=True)
    legacy = _secrets_dir(home, remote).with_suffix(".env")  # the one shared copy of earlier versions
    legacy.parent.mkdir(parents=True)
    _write(legacy, f"TOKEN={SECRET}-old\n")
    assert hostrun.deploy(remote, "v1", force=False, progress=quiet).result == "success"
    assert [c.env["TOKEN"] for c in host.app_containers()] == [f"{SECRET}-one"]
    assert not legacy.exists()
    _write(local, f"TOKEN={SECRET}-two\n")
    assert hostrun.deploy(remote, "v2", force=False, progress=quiet).result == "success"
    assert [c.env["TOKEN"] for c in host.app_containers()] == [f"{SECRET}-two"]

    rec = hostrun.rollback(remote, "v1", quiet)
    assert rec.result == "success"
    (app,) = host.app_containers()
    assert (app.version, app.env["TOKEN"]) == ("v1", f"{SECRET}-one")  # the secrets v1 was deployed with

    directory = _secrets_dir(home, remote)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    files = sorted(directory.iterdir())
    assert [f.name for f in files] == [f"{n}.env" for n in sync.list_releases(remote, remote.target.settings)]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert not directory.resolve().is_relative_to(Path(remote.target.settings.deploy_dir).resolve())

    # A third release prunes the oldest directory (releases_kept 2) and its secrets with it.
    _write(local, f"TOKEN={SECRET}-three\n")
    assert hostrun.deploy(remote, "v3", force=False, progress=quiet).result == "success"
    kept = sync.list_releases(remote, remote.target.settings)
    assert len(kept) == 2
    assert sorted(f.name for f in directory.iterdir()) == [f"{n}.env" for n in kept]
    assert [c.env["TOKEN"] for c in host.app_containers()] == [f"{SECRET}-three"]
    # The content never went on a command line.
    assert not any(SECRET in " ".join(argv) for argv in host.commands)
    assert SECRET not in capsys.readouterr().out


def test_fab_rollback_without_the_releases_secrets_changes_nothing(
        fab_host: tuple[FakeHost, Remote, Path]) -> None:
    host, remote, home = fab_host
    quiet = Progress(quiet=True)
    assert hostrun.deploy(remote, "v1", force=False, progress=quiet).result == "success"
    assert hostrun.deploy(remote, "v2", force=False, progress=quiet).result == "success"
    (v1_release,) = [n for n in sync.list_releases(remote, remote.target.settings) if n.endswith("-v1")]
    (_secrets_dir(home, remote) / f"{v1_release}.env").unlink()
    with pytest.raises(HandoverError, match=f"the secrets file of release {v1_release} is not on the host"):
        hostrun.rollback(remote, "v1", quiet)
    assert host.live_versions() == {"v2"}
    assert host.records()[-1]["failed_step"] == "files"


def test_fab_sync_whose_secrets_cannot_be_written_leaves_no_release(
        fab_host: tuple[FakeHost, Remote, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host, remote, _ = fab_host
    quiet = Progress(quiet=True)
    assert hostrun.deploy(remote, "v1", force=False, progress=quiet).result == "success"
    before = sync.list_releases(remote, remote.target.settings)

    def refuse(self: LocalSftp, path: str, mode: str) -> _File:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(LocalSftp, "open", refuse)
    with pytest.raises(HandoverError):
        hostrun.deploy(remote, "v2", force=False, progress=quiet)
    assert sync.list_releases(remote, remote.target.settings) == before
    assert host.live_versions() == {"v1"} and host.records()[-1]["failed_step"] == "sync"
