"""Every run leaves a record: who, what, when, result and per-step timings (JSON lines)."""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from .shell import Runner, read_file, run

RELEASE_LOG = "releases.jsonl"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class StepRecord:
    name: str
    seconds: float
    result: str  # ok, failed, skipped, planned
    detail: str = ""


@dataclass
class RunRecord:
    action: str  # deploy, rollback, up
    version: str
    project: str
    host: str
    by: str = field(default_factory=operator)
    started_at: str = field(default_factory=now_iso)
    finished_at: str = ""
    result: str = "running"  # success, failed, rolled-back; unchanged or planned when nothing ran
    failed_step: str = ""
    previous_version: str = ""
    image: str = ""
    old_containers: list[str] = field(default_factory=list)
    new_containers: list[str] = field(default_factory=list)
    error: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    probe: dict[str, object] | None = None
    _t0: float = field(default_factory=time.monotonic, repr=False)

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def finish(self, result: str, error: str = "") -> None:
        self.result, self.error, self.finished_at = result, error, now_iso()

    def fail(self, step: str, error: str, *, rolled_back: bool = False) -> None:
        """The run stopped at ``step``: ``rolled-back`` if the new version had started, else ``failed``."""
        self.failed_step = step
        self.finish("rolled-back" if rolled_back else "failed", error)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("_t0")
        data["seconds"] = self.seconds
        return data


def append(runner: Runner, state_path: str, record: RunRecord) -> None:
    line = json.dumps(record.to_dict(), sort_keys=True)
    run(runner, ["mkdir", "-p", state_path])
    # printf through sh with the line as an argument: no quoting of the JSON by hand.
    run(runner, ["sh", "-c", 'printf "%s\\n" "$1" >> "$2"', "append", line, f"{state_path}/{RELEASE_LOG}"])


def history(runner: Runner, state_path: str) -> list[dict[str, object]]:
    text = read_file(runner, f"{state_path}/{RELEASE_LOG}") or ""
    records = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            records.append(item)
    return records
