"""Get a host ready: Docker engine, Compose v2 and rsync present; the deploy directory in place.

The deploy directory is created (with its ``releases/`` and state directories) mode 0750 and must
belong to the SSH user. Every problem found is reported at once, each with what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from handover.errors import PreflightError
from handover.settings import Settings
from handover.shell import run

from .connect import Remote
from .sync import releases_path

DIR_MODE = "0750"
COMMAND_NOT_FOUND = 127
COMPOSE_MAJOR = "2"
DOCKER_INSTALL_HINT = "install Docker Engine (https://docs.docker.com/engine/install/)"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def check_docker(remote: Remote) -> Check:
    result = run(remote.conn, ["docker", "version", "--format", "{{.Server.Version}}"], check=False)
    if result.exited == COMMAND_NOT_FOUND:
        return Check("docker", False, f"docker is not installed: {DOCKER_INSTALL_HINT}")
    if result.exited != 0:
        why = _first_line(result.stderr or result.stdout)
        return Check("docker", False, f"the Docker engine is not reachable for {remote.conn.user} ({why}): start "
                                      f"dockerd, or add {remote.conn.user} to the docker group")
    return Check("docker", True, f"engine {result.stdout.strip()}")


def check_compose(remote: Remote) -> Check:
    result = run(remote.conn, ["docker", "compose", "version", "--short"], check=False)
    if result.exited == COMMAND_NOT_FOUND:
        return Check("compose", False, "cannot be checked without docker (install Docker Engine first)")
    version = result.stdout.strip().lstrip("v")
    if result.exited != 0 or not version.startswith(COMPOSE_MAJOR):
        return Check("compose", False, "Docker Compose v2 is missing (`docker compose version` failed): install "
                                       "the docker-compose-plugin package")
    return Check("compose", True, f"v{version}")


def check_rsync(remote: Remote) -> Check:
    result = run(remote.conn, ["sh", "-c", "command -v rsync"], check=False)
    if result.exited != 0:
        return Check("rsync", False, "rsync is not installed (e.g. apt-get install rsync)")
    return Check("rsync", True, result.stdout.strip())


def prepare_dirs(remote: Remote, s: Settings) -> Check:
    """Create the deploy, releases and state directories (0750, owned by the SSH user); idempotent."""
    user = str(remote.conn.user)
    root = s.deploy_dir
    made = run(remote.conn, ["mkdir", "-p", "-m", DIR_MODE, root], check=False)
    if made.exited != 0:
        return Check("deploy_dir", False, f"cannot create {root} as {user} ({_first_line(made.stderr)}): create it "
                                          f"once as root: install -d -m {DIR_MODE} -o {user} {root}")
    owner = run(remote.conn, ["stat", "-c", "%U", root], check=False).stdout.strip()
    if owner != user:
        return Check("deploy_dir", False, f"{root} belongs to {owner or 'someone else'}, not {user}: "
                                          f"chown {user} {root}")
    for path in (root, releases_path(s), s.state_path):
        run(remote.conn, ["mkdir", "-p", "-m", DIR_MODE, path])
        run(remote.conn, ["chmod", DIR_MODE, path])
    return Check("deploy_dir", True, f"{root} (mode {DIR_MODE}, owner {user})")


def check_host(remote: Remote, s: Settings) -> list[Check]:
    return [check_docker(remote), check_compose(remote), check_rsync(remote), prepare_dirs(remote, s)]


def require(checks: list[Check], host: str) -> None:
    problems = [c for c in checks if not c.ok]
    if problems:
        lines = "\n".join(f"  - {c.name}: {c.detail}" for c in problems)
        raise PreflightError(f"{host} is not ready:\n{lines}")
