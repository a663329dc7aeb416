"""The app's secrets file (``deploy.env_file``) on a host: written over SFTP with mode 0600.

The content goes through the SFTP channel only: never on a command line, in a log or in output.
On the host it lives in ``~/.config/handover/<project>.env`` (directory 0700) of the SSH user,
outside the deploy directory, which the proxy container mounts.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

from paramiko import SFTPClient

from handover.errors import HandoverError
from handover.settings import Settings
from handover.shell import run

from .connect import Remote

SECRETS_DIR = ".config/handover"
SECRETS_MODE = 0o600
SECRETS_DIR_MODE = 0o700


def remote_path(remote: Remote, s: Settings) -> str:
    home = run(remote.conn, ["sh", "-c", 'printf "%s" "$HOME"']).stdout.strip()
    if not home.startswith("/"):
        raise HandoverError(f"{remote.name}: the SSH user has no home directory for the secrets file")
    return f"{home.rstrip('/')}/{SECRETS_DIR}/{s.project}.env"


def _ensure_dir(sftp: SFTPClient, path: str, mode: int, enforce: bool) -> None:
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        sftp.mkdir(path, mode)
        attrs = sftp.stat(path)
    if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
        raise NotADirectoryError(path)
    if enforce:
        sftp.chmod(path, mode)


def push(remote: Remote, s: Settings, local: Path) -> str:
    """Write ``local`` to the host (0600, atomically); return its path there."""
    path = remote_path(remote, s)
    sftp = remote.conn.sftp()
    parent = path.rpartition("/")[0]
    _ensure_dir(sftp, parent.rpartition("/")[0], SECRETS_DIR_MODE, enforce=False)
    _ensure_dir(sftp, parent, SECRETS_DIR_MODE, enforce=True)
    tmp = f"{path}.tmp"
    with sftp.open(tmp, "w") as out:
        out.chmod(SECRETS_MODE)  # before any byte is written
        out.write(local.read_bytes())
    sftp.posix_rename(tmp, path)
    sftp.chmod(path, SECRETS_MODE)
    return path


def with_secrets(remote: Remote, s: Settings, upload: bool) -> Settings:
    """``s`` with ``env_file`` set to the host's copy (pushed first when ``upload``)."""
    local = remote.target.env_file
    if local is None:
        return s
    path = push(remote, s, local) if upload else remote_path(remote, s)
    return dataclasses.replace(s, env_file=path)
