"""The sync's release directories on a host (here: this machine's files through ``sh``): an unchanged
tree is hard-linked from the release in use instead of sent, any change is sent by rsync, and the
digest that decides it covers what rsync would send."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context

from fabfile import hostconfig, sync
from fabfile.connect import Remote
from handover.progress import Progress

from .fakehost import fake_settings


def tree(root: Path) -> list[str]:
    """A source tree like the sync's: compose/ and server/ with a nested file, a symlink and caches."""
    (root / "compose").mkdir(parents=True)
    (root / "compose" / "docker-compose.yml").write_text("services: {}\n")
    (root / "server" / "static").mkdir(parents=True)
    (root / "server" / "app.py").write_text("print('hi')\n")
    (root / "server" / "static" / "index.html").write_text("<p>hi</p>\n")
    os.symlink("app.py", root / "server" / "main.py")
    return [str(root / "compose"), str(root / "server")]


def test_the_digest_changes_with_every_change_rsync_would_send(tmp_path: Path) -> None:
    dirs = tree(tmp_path / "src")
    server = tmp_path / "src" / "server"
    seen = {sync.tree_digest(dirs)}
    changes = [
        lambda: (server / "app.py").write_text("print('ho')\n"),  # same size, other content
        lambda: (server / "static" / "new.css").write_text(""),  # an empty file added
        lambda: (server / "static" / "new.css").chmod(0o600),  # its mode
        lambda: (server / "static" / "new.css").unlink(),  # removed again: a digest seen before
        lambda: (server / "main.py").unlink() or os.symlink("static/index.html", server / "main.py"),  # a link's target
        lambda: (server / "static").chmod(0o700),  # a directory's mode
        lambda: (server / "empty").mkdir(),  # an empty directory
    ]
    for number, change in enumerate(changes):
        change()
        digest = sync.tree_digest(dirs)
        assert digest is not None
        assert (digest in seen) == (number == 3), number
        seen.add(digest)
    assert sync.tree_digest(dirs[:1]) != sync.tree_digest(dirs)  # which directories go is part of it


def test_the_digest_ignores_what_rsync_excludes_and_modification_times(tmp_path: Path) -> None:
    dirs = tree(tmp_path / "src")
    server = tmp_path / "src" / "server"
    before = sync.tree_digest(dirs)
    (server / "__pycache__").mkdir()
    (server / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (server / "static" / "old.pyc").write_bytes(b"\0")
    (server / ".mypy_cache").mkdir()
    os.utime(server / "app.py", (0, 0))
    assert sync.tree_digest(dirs) == before
    (server / ".hidden").write_text("x")  # a dot file is sent like any other
    assert sync.tree_digest(dirs) != before


def test_a_tree_with_a_fifo_or_an_unreadable_file_has_no_digest(tmp_path: Path) -> None:
    dirs = tree(tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "server" / "pipe")
    assert sync.tree_digest(dirs) is None
    assert sync.tree_digest([str(tmp_path / "missing")]) is None


class Rsync:
    """rsync as the sync runs it, done with a local copy into the staging directory (no SSH here)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert args[0] == "rsync"
        self.calls += 1
        staging = Path(args[-1].rstrip("/"))
        staging.mkdir()
        for source in (a for a in args[1:-1] if a.startswith("/")):
            shutil.copytree(source, staging / Path(source).name, symlinks=True)
        return subprocess.CompletedProcess(args, 0, "Number of regular files transferred: 3\n", "")


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Remote, Rsync]:
    settings = fake_settings(tmp_path, source_subdir=hostconfig.RELEASE_LINK, releases_kept=2)
    rsync = Rsync()
    monkeypatch.setattr(sync.subprocess, "run", rsync)
    monkeypatch.setattr(sync, "rsync_shell", lambda remote: "ssh")
    monkeypatch.setattr(sync, "rsync_destination", lambda remote, path: path)
    target = hostconfig.Target(name="web1", host="web1", user=None, port=None, settings=settings, env_file=None)
    return Remote(target, Context(), tmp_path / "known_hosts"), rsync  # type: ignore[arg-type]


def deploy(remote: Remote, version: str, dirs: list[str]) -> Path:
    s = remote.target.settings
    name = sync.upload(remote, s, version, Progress(quiet=True), dirs)
    sync.activate(remote, s, name)
    return Path(sync.releases_path(s)) / name


def test_an_unchanged_tree_is_hard_linked_on_the_host_and_a_changed_one_sent(
        tmp_path: Path, host: tuple[Remote, Rsync]) -> None:
    remote, rsync = host
    dirs = tree(tmp_path / "src")
    first = deploy(remote, "v1", dirs)
    assert rsync.calls == 1
    assert (first / sync.TREE_FILE).read_text() == f"{sync.tree_digest(dirs)}\n"

    second = deploy(remote, "v2", dirs)
    assert rsync.calls == 1  # nothing sent
    assert second != first and second.name.endswith("Z-v2")
    for rel in ("compose/docker-compose.yml", "server/static/index.html", sync.TREE_FILE):
        assert (second / rel).stat().st_ino == (first / rel).stat().st_ino  # linked, as --link-dest would
    assert os.readlink(second / "server" / "main.py") == "app.py"
    assert os.readlink(Path(sync.current_path(remote.target.settings))) == f"releases/{second.name}"

    (tmp_path / "src" / "server" / "app.py").write_text("print('changed')\n")
    third = deploy(remote, "v3", dirs)
    assert rsync.calls == 2  # the change is sent
    assert (third / "server" / "app.py").read_text() == "print('changed')\n"
    assert (third / sync.TREE_FILE).read_text() == f"{sync.tree_digest(dirs)}\n"
    assert (first / "server" / "app.py").read_text() == "print('hi')\n"  # the earlier releases untouched
    assert not [p for p in Path(sync.releases_path(remote.target.settings)).iterdir()
                if p.name.startswith(sync.STAGING_PREFIX)]


def test_a_release_without_a_digest_or_a_digest_that_differs_is_synced(
        tmp_path: Path, host: tuple[Remote, Rsync]) -> None:
    remote, rsync = host
    dirs = tree(tmp_path / "src")
    first = deploy(remote, "v1", dirs)
    (first / sync.TREE_FILE).unlink()  # a release an earlier version of this tool made
    second = deploy(remote, "v2", dirs)
    assert rsync.calls == 2
    (second / sync.TREE_FILE).write_text("0" * 64 + "\n")
    deploy(remote, "v3", dirs)
    assert rsync.calls == 3
    deploy(remote, "v4", dirs)
    assert rsync.calls == 3


def test_a_failed_hard_link_copy_falls_back_to_rsync(tmp_path: Path, host: tuple[Remote, Rsync],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    remote, rsync = host
    dirs = tree(tmp_path / "src")
    deploy(remote, "v1", dirs)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "cp").write_text("#!/bin/sh\necho 'cp: -l not supported' >&2\nexit 1\n")
    (shim / "cp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    second = deploy(remote, "v2", dirs)
    assert rsync.calls == 2
    assert (second / "server" / "app.py").read_text() == "print('hi')\n"


def test_prune_keeps_the_newest_and_the_release_in_use_and_says_what_is_left(
        tmp_path: Path, host: tuple[Remote, Rsync]) -> None:
    remote, _ = host
    s = remote.target.settings
    dirs = tree(tmp_path / "src")
    made = [deploy(remote, f"v{n}", dirs).name for n in range(1, 6)]
    sync.point_current(remote, s, f"{sync.RELEASES_DIR}/{made[0]}")  # e.g. after a rollback to v1
    pruned = sync.prune(remote, s)
    kept = [made[0], *made[-s.releases_kept:]]
    assert pruned.kept == kept and sync.list_releases(remote, s) == kept
    assert pruned.removed == [n for n in made if n not in kept]
    sync.point_current(remote, s, None)
    assert sync.prune(remote, s).removed == [made[0]]


class Conn:
    """This machine through Invoke, as the SSH user ``user``."""

    def __init__(self, user: str) -> None:
        self.user = user

    def run(self, command: str, **kwargs: Any) -> Any:
        return Context().run(command, **kwargs)


def prepared(tmp_path: Path, user: str, deploy_dir: Path) -> tuple[Any, Any]:
    from dataclasses import replace

    from fabfile import hostready

    settings = replace(fake_settings(tmp_path), deploy_dir=str(deploy_dir))
    target = hostconfig.Target(name="web1", host="web1", user=None, port=None, settings=settings, env_file=None)
    return hostready.prepare_dirs(Remote(target, Conn(user), tmp_path / "kh"), settings), settings  # type: ignore[arg-type]


def test_the_deploy_directories_are_made_private_in_one_go(tmp_path: Path) -> None:
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    root = tmp_path / "srv" / "app"
    check, s = prepared(tmp_path, me, root)
    assert check.ok and check.detail == f"{root} (mode 0750, owner {me})"
    for path in (root, Path(sync.releases_path(s)), Path(s.state_path)):
        assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o750
    (root / "releases").chmod(0o777)
    assert prepared(tmp_path, me, root)[0].ok and (root / "releases").stat().st_mode & 0o777 == 0o750


def test_a_deploy_directory_of_another_user_or_one_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    root = tmp_path / "srv"
    check, _ = prepared(tmp_path, "someone", root)
    assert not check.ok and check.detail == f"{root} belongs to {me}, not someone: chown someone {root}"
    assert not (root / "releases").exists()  # nothing made in a directory that is not the user's
    (tmp_path / "file").write_text("")
    check, _ = prepared(tmp_path, me, tmp_path / "file" / "app")
    assert not check.ok and check.detail.startswith(f"cannot create {tmp_path}/file/app as {me} (mkdir: ")
    assert "install -d -m 0750" in check.detail


def test_the_compose_check_rides_on_the_directories_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a deploy: one command makes the directories and asks `docker compose version`."""
    import pwd

    from fabfile import hostready

    me = pwd.getpwuid(os.getuid()).pw_name
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    settings = replace(fake_settings(tmp_path), deploy_dir=str(tmp_path / "srv"))
    target = hostconfig.Target(name="web1", host="web1", user=None, port=None, settings=settings, env_file=None)
    remote = Remote(target, Conn(me), tmp_path / "kh")  # type: ignore[arg-type]

    docker.write_text('#!/bin/sh\n[ "$*" = "compose version --short" ] && echo v2.40.3\n')
    docker.chmod(0o755)
    dirs, compose = hostready.prepare_dirs_and_compose(remote, settings)
    assert dirs.ok and Path(settings.state_path).is_dir()
    assert compose is not None and compose.ok and compose.detail == "v2.40.3"

    docker.write_text("#!/bin/sh\necho \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n")
    _, compose = hostready.prepare_dirs_and_compose(remote, settings)
    assert compose is not None and not compose.ok and compose.detail.startswith("Docker Compose v2 is missing")

    other = Remote(target, Conn("someone"), tmp_path / "kh")  # type: ignore[arg-type]
    dirs, compose = hostready.prepare_dirs_and_compose(other, settings)
    assert not dirs.ok and "not someone" in dirs.detail and compose is None  # the directories first


@pytest.mark.parametrize(("stdout", "expected"), [
    ("deploy\n2.40.3\n\ncompose-exit 0\n", ("deploy", 0, "2.40.3")),
    ("deploy\n\ncompose-exit 127\n", ("deploy", 127, "")),
    ("deploy\nv1.29.2\nmore\n\ncompose-exit 0\n", ("deploy", 0, "v1.29.2\nmore")),
    ("deploy\n", ("deploy", 1, "")),  # cut off: no exit line, no answer
])
def test_split_compose_reads_the_owner_and_the_compose_answer(stdout: str, expected: tuple[str, int, str]) -> None:
    from fabfile.hostready import split_compose

    assert split_compose(stdout) == expected
