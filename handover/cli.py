"""Shared by the two front doors (tasks.py and the fabfile): config, errors and output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from invoke.exceptions import Exit
from invoke.vendor import yaml

from . import settings as settings_mod
from .errors import HandoverError
from .record import RunRecord
from .settings import DEFAULTS_FILE, PROJECT_ROOT, Settings

T = TypeVar("T")
SERVER_DIR = PROJECT_ROOT / "server"


def defaults(path: Path = DEFAULTS_FILE) -> dict[str, Any]:
    """The defaults file, to be given to ``Collection.configure`` (the lowest config layer)."""
    data = yaml.safe_load(path.read_text())  # type: ignore[no-untyped-call]
    if not isinstance(data, dict):
        raise HandoverError(f"{path}: expected a mapping at the top")
    return data


def settings_from(config: Any, deploy_dir: str | None = None) -> Settings:
    section = config.get("deploy") if hasattr(config, "get") else None
    if section is None:
        raise HandoverError("missing config section 'deploy'")
    return settings_mod.load(dict(section), deploy_dir=deploy_dir)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn engine errors into a clear message and an exit status instead of a traceback."""
    try:
        yield
    except HandoverError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise Exit(code=exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise Exit(code=130) from None


def guarded(fn: Callable[[], T]) -> T:
    with user_errors():
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
