"""Every run leaves a record: who, what, when, result and per-step timings (JSON lines)."""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from .errors import CommandError
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


# Appends one line with a single printf (one write under O_APPEND). When the log does not end in a
# newline (a run died mid-write), the line starts with one, so the next record is not glued to the
# torn one. ``tail -c 1`` prints nothing for a final newline once $(...) strips it. The state
# directory ($3) is made first, in the same command (one SSH round trip, not two).
_APPEND_SCRIPT = (
    'mkdir -p -- "$3" || exit 1; '
    'if [ -s "$2" ] && [ -n "$(tail -c 1 "$2")" ]; then printf "\\n%s\\n" "$1" >> "$2"; '
    'else printf "%s\\n" "$1" >> "$2"; fi'
)


def append(runner: Runner, state_path: str, record: RunRecord) -> None:
    line = json.dumps(record.to_dict(), sort_keys=True)
    # The line and the paths are arguments of sh: no quoting of the JSON by hand.
    path = f"{state_path}/{RELEASE_LOG}"
    result = run(runner, ["sh", "-c", _APPEND_SCRIPT, "append", line, path, state_path], check=False)
    if result.exited != 0:  # name the file, not the command (it carries the whole record)
        raise CommandError(f"appending to {path}", result.exited, result.stderr or result.stdout)


def _parse_line(line: str) -> dict[str, object] | None:
    """One record, or the whole record that follows a torn one on the same line (a log written
    before appends started a new line after a crash), or None."""
    decoder = json.JSONDecoder()
    text = line.strip()
    start = 0
    while start != -1:
        try:
            item, end = decoder.raw_decode(text, start)
        except ValueError:
            item, end = None, -1
        if end == len(text) and isinstance(item, dict):
            return item
        start = text.find("{", start + 1)
    return None


def history(runner: Runner, state_path: str) -> list[dict[str, object]]:
    """The records of the release log, oldest first; torn lines are skipped."""
    text = read_file(runner, f"{state_path}/{RELEASE_LOG}") or ""
    records = []
    for line in text.splitlines():
        item = _parse_line(line)
        if item is not None:
            records.append(item)
    return records
