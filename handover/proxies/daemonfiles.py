"""nginx's files written through the Docker daemon, for a daemon that does not see this machine's files.

With Docker Desktop (macOS, Windows, or Linux with its VM) or a ``DOCKER_HOST`` on another machine, the
daemon resolves a bind mount on its own side: the files a local deploy writes into the state directory
(the routes, a TCP app's ``targets.json``, the TLS pair, the app's sockets) would never reach nginx, and
a switch would report success while nginx answered 502. With ``deploy.proxy_files: volume`` (``auto``
picks it there, see :func:`handover.settings.daemon_elsewhere`) those files live in named Docker volumes
(compose/docker-compose.yml) and every command on them runs in a small container on the daemon, the
compose service ``proxy-files``, which mounts the volumes at the very paths the state directory and the
checkout have on this machine. :class:`DaemonFiles` is a runner: the proxy's code runs the same
commands (a rename for a switch, the link swap for a TLS renewal) as it does on the state directory,
only ``docker exec``-ed into that container. nginx's own sources (``nginx/``) are copied into their
volume at each run, since the daemon cannot see the checkout either.

Nothing of this machine is mounted then, so the same works where the daemon does see it; ``bind`` (the
state directory bind-mounted, one process fewer per command) stays the default where the daemon runs
here. The TLS key travels on the ``docker exec``'s stdin, never on a command line.
"""

from __future__ import annotations

import base64
import io
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.compose import FILES_SERVICE, compose_argv, compose_env
from ..errors import CommandError, HandoverError
from ..settings import Settings
from ..shell import Runner, run

UP_TIMEOUT = 300.0
# Put a file in place from stdin (base64), made with ``mode`` before a byte is written, then renamed.
PUT_SCRIPT = 'umask 077 && base64 -d > "$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"'
# This machine's ``names`` under ``$1`` into the same place in the container ``$2`` (a tar stream).
COPY_SCRIPT = ('src=$1; into=$2; shift 2; COPYFILE_DISABLE=1 tar -C "$src" -cf - -- "$@" '
               '| docker exec -i "$into" tar -C "$src" --no-same-owner -xf -')


def files_container(settings: Settings) -> str:
    """The files container's name (Compose's ``<project>-<service>-1``)."""
    return f"{settings.project}-{FILES_SERVICE}-1"


def exec_line(container: str, command: str) -> str:
    """``command`` (a shell line) run by ``sh -c`` in ``container``."""
    return shlex.join(["docker", "exec", container, "sh", "-c", command])


@dataclass
class DaemonFiles:
    """A runner for the proxy's file commands: each runs in the files container (started on first use).

    ``image`` gives the container's image (the proxy's base image, pulled or made when missing)."""

    runner: Runner
    settings: Settings
    image: Callable[[], str]
    _started: bool = False

    @property
    def container(self) -> str:
        return files_container(self.settings)

    def running(self) -> bool:
        if self._started:
            return True
        result = run(self.runner, ["docker", "container", "inspect", "--format", "{{.State.Running}}",
                                   self.container], check=False)
        self._started = result.exited == 0 and result.stdout.strip() == "true"
        return self._started

    def ensure(self) -> None:
        """Start the files container (and make its volumes) unless it runs."""
        if self.running():
            return
        env = compose_env(self.settings, extra={"PROXY_FILES_IMAGE": self.image()})
        run(self.runner, compose_argv(self.settings, "up", "--detach", "--no-deps", FILES_SERVICE), env=env,
            timeout=UP_TIMEOUT)
        self._started = True

    def run(self, command: str, **kwargs: Any) -> Any:
        self.ensure()
        return self.runner.run(exec_line(self.container, command), **kwargs)

    def put_private(self, path: str, content: bytes, mode: int) -> None:
        """Write ``content`` to ``path`` in the container with ``mode``, from stdin."""
        self.ensure()
        line = shlex.join(["docker", "exec", "-i", self.container, "sh", "-c", PUT_SCRIPT, "put", path, f"{mode:o}"])
        stdin = io.StringIO(base64.b64encode(content).decode())
        result = self.runner.run(line, hide=True, warn=True, in_stream=stdin, echo_stdin=False)
        if result.exited != 0:
            raise HandoverError(f"writing {path} in {self.container}: exit {result.exited} "
                                f"({(result.stderr or '').strip()[:200]}; its content is not shown)")

    def copy_in(self, directory: str, names: Sequence[str]) -> None:
        """Copy ``names`` (below ``directory`` on this machine) to the same paths in the container."""
        self.ensure()
        try:
            run(self.runner, ["sh", "-c", COPY_SCRIPT, "copy", directory, self.container, *names])
        except CommandError as exc:
            raise HandoverError(f"copying {', '.join(names)} from {directory} into {self.container} failed: "
                                f"{exc.output.strip()}") from None
