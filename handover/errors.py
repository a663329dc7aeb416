"""Errors the engine raises. Each names the problem so the front doors can print it as is."""


class HandoverError(Exception):
    """Base class: a failure the user should read, not a traceback."""

    exit_code = 1
    record: object = None  # the run's record, when a run was recorded (set by the engine)


class ConfigError(HandoverError):
    """A configuration value is missing or invalid. Raised before anything runs."""

    exit_code = 2


class CommandError(HandoverError):
    """A command on the Docker host failed."""

    def __init__(self, command: str, exited: int, output: str, stdout: str = "") -> None:
        self.command = command
        self.exited = exited
        self.output = output.strip()
        self.stdout = stdout  # the command's whole stdout, for callers that want more than the message
        detail = f"\n{self.output}" if self.output else ""
        super().__init__(f"command failed (exit {exited}): {command}{detail}")


class BuildFailed(HandoverError):
    """The app image did not build; no container was started or stopped."""


class PreflightError(HandoverError):
    """The host is not ready for a deploy (engine, compose plugin, config, proxy)."""


class DockerHostUnreachable(PreflightError):
    """``DOCKER_HOST`` names a Docker daemon that does not answer: the run's input points nowhere."""

    exit_code = 2


class HealthCheckFailed(HandoverError):
    """New containers did not become healthy; they were removed and the old version keeps serving."""


class ProxyConfigInvalid(HandoverError):
    """The proxy rejected its configuration; what it had before was put back, nothing reloaded."""


class CommandTimeout(HandoverError):
    """A command on the host did not finish in time."""


class LockHeld(HandoverError):
    """Another deploy holds the host's lock."""


class ReleaseFailed(HandoverError):
    """The release command exited non-zero or timed out; no new container was started."""
