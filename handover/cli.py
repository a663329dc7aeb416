"""Shared by the two front doors (tasks.py and the fabfile): config, errors and output."""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from invoke.exceptions import Exit, Failure, ParseError
from invoke.vendor import yaml

from . import settings as settings_mod
from .errors import ConfigError, HandoverError
from .progress import Progress
from .record import RunRecord
from .settings import DEFAULTS_FILE, PROJECT_ROOT, Settings, check_version
from .version import source_version

if TYPE_CHECKING:
    from .proxies import Proxy

T = TypeVar("T")
SERVER_DIR = PROJECT_ROOT / "server"
INTERRUPTED = "interrupted"
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a job ended by Ctrl-C
TRACEBACK_VARIABLE = "HANDOVER_TRACEBACK"
PROBE_SETTINGS_MODULE = "handover.probe.settings"


def defaults(path: Path = DEFAULTS_FILE) -> dict[str, Any]:
    """The defaults file, to be given to ``Collection.configure`` (the lowest config layer).

    Each version of the file (its size and modification time) is parsed once; every caller gets a
    copy of its own.
    """
    found = path.stat()
    return copy.deepcopy(_parsed_defaults(path, found.st_mtime_ns, found.st_size))


@functools.lru_cache(maxsize=8)
def _parsed_defaults(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())  # type: ignore[no-untyped-call]
    if not isinstance(data, dict):
        raise HandoverError(f"{path}: expected a mapping at the top")
    return data


def settings_from(config: Any, deploy_dir: str | None = None) -> Settings:
    section = config.get("deploy") if hasattr(config, "get") else None
    if section is None:
        raise HandoverError("missing config section 'deploy'")
    # The host list and SSH keys of a config file shared with `fab` are not the local stack's business.
    local = {key: value for key, value in dict(section).items() if key not in settings_mod.FAB_ONLY_KEYS}
    return settings_mod.load(local, deploy_dir=deploy_dir)


def target_version(s: Settings, version: str | None) -> str:
    """The version to deploy: given, or ``src-<hash>`` of the build directory. A ready-made image
    (``app_build`` empty) has no sources to derive it from: its tag must be given."""
    if version:
        return check_version(version)
    if not s.app_build:
        raise ConfigError(f"deploy.app_build is empty, so {s.app_image}:<version> is ready-made: give --version, "
                          "the tag of the image to deploy")
    return check_version(source_version(Path(s.app_build), s.app_build_args))


def prepare_build(s: Settings, progress: Progress) -> None:
    """What a build needs before anything runs: the wheels of a build directory that installs its Python
    dependencies from ``wheelhouse/`` (the demo app's way, so hosts need no package index). Any other
    app installs its dependencies in its own Dockerfile."""
    from . import images

    if s.app_build and images.uses_wheelhouse(Path(s.app_build)):
        images.build_wheelhouse(Path(s.app_build), progress)


@contextmanager
def user_errors(on_error: Callable[[str], None] | None = None) -> Iterator[None]:
    """Turn errors into a clear message and an exit status instead of a traceback.

    ``on_error`` gets the message first (e.g. to print the run's record as JSON). An error this
    project does not raise itself (a lost connection, a disk error) is named by its type; set
    :data:`TRACEBACK_VARIABLE` to see where it came from.
    """
    try:
        yield
    except (Exit, Failure, ParseError):
        raise  # Invoke's own: it prints them and exits with their status
    except KeyboardInterrupt:
        _fail(INTERRUPTED, INTERRUPTED_EXIT, on_error)
    except HandoverError as exc:
        _fail(str(exc), exc.exit_code, on_error)
    except Exception as exc:
        if _is_probe_error(exc):
            _fail(f"probe: {exc}", ConfigError.exit_code, on_error)
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        _fail(f"{type(exc).__name__}: {exc} (unexpected; run with {TRACEBACK_VARIABLE}=1 for the traceback)",
              HandoverError.exit_code, on_error)


def _is_probe_error(exc: Exception) -> bool:
    # The probe is imported only by the tasks that use it (it is slow to import); when it was not,
    # the error cannot be its own.
    module = sys.modules.get(PROBE_SETTINGS_MODULE)
    return module is not None and isinstance(exc, module.ProbeError)


def _fail(message: str, code: int, on_error: Callable[[str], None] | None) -> NoReturn:
    if on_error is not None:
        on_error(message)
    print(message if message == INTERRUPTED else f"error: {message}", file=sys.stderr, flush=True)
    raise Exit(code=code) from None


def public_url(s: Settings) -> str:
    """Where the stack answers: HTTPS on https_port when TLS is on, else HTTP on http_port."""
    return f"https://{s.http_bind}:{s.https_port}" if s.tls else f"http://{s.http_bind}:{s.http_port}"


def certs_outcome(s: Settings, proxy: Proxy, *, renewed: bool, reloaded: bool) -> str:
    """What `certs` did, in one line (never the pair's content or digest)."""
    if not s.tls:
        return "TLS is off (deploy.tls_certificate is empty)" + (f"; {proxy.name} reloaded" if reloaded
                                                                  else "; nothing to do")
    parts = []
    if renewed:
        parts.append(f"new certificate and key live ({proxy.check_words} passed; new TLS connections get them, "
                     "no reload)")
    if reloaded:
        parts.append(f"TLS configuration changed ({proxy.check_words} passed, {proxy.name} reloaded)")
    return "; ".join(parts) if parts else "certificate and key unchanged; nothing done"


def guarded(fn: Callable[[], T], on_error: Callable[[str], None] | None = None) -> T:
    with user_errors(on_error):
        return fn()


def print_record(rec: RunRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rec.to_dict(), indent=2, sort_keys=True))
        return
    print(format_record(rec))


def format_record(rec: RunRecord) -> str:
    width = max([len(s.name) for s in rec.steps] + [8])
    lines = [
        f"{rec.action} {rec.result}: {rec.previous_version or '(none)'} -> {rec.version}"
        f" on {rec.host} ({rec.project}) in {rec.seconds:.2f} s",
        f"  {'step'.ljust(width)}  {'seconds':>8}  result",
    ]
    if rec.result != "planned":  # a plan's steps were printed with their lines already
        lines += [f"  {s.name.ljust(width)}  {s.seconds:8.2f}  {s.result}" for s in rec.steps]
    if rec.old_containers or rec.new_containers:
        lines.append(f"  containers: {', '.join(rec.old_containers) or '-'} -> {', '.join(rec.new_containers) or '-'}")
    if rec.error:
        lines.append(f"  error: {rec.error.splitlines()[0]}")
    return "\n".join(lines)
