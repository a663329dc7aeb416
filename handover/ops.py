"""What the front doors ask of a host besides the deploy sequence, written once for both of them.

``tasks.py`` (the local stack) and the fabfile (hosts over SSH) each parse options, load the config
and print; what they ask of a host is here: the status rows, the releases lines, and the version a
rollback goes back to. The choices and formats are pure functions, so they are tested without a host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .engine import Engine, Facts
from .errors import ConfigError, HandoverError
from .lock import describe_holder, holder_age
from .record import history
from .settings import Settings
from .shell import Runner

LOG_TAIL = 100
RELEASES_SHOWN = 10
NOT_RUNNING = "not running"
NO_VERSION = "-"
SUCCESS = "success"
UNLOCKED = "unlocked"
# What `status --json` tells of a lock's holder (the rest of the holder file is the lock's own business).
LOCK_DETAILS = ("holder", "since", "action", "version", "via", "host", "reason")


# -- status ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusRow:
    """One app container as `status` shows it."""

    name: str
    id: str
    version: str
    status: str
    health: str
    live: bool

    def line(self) -> str:
        return (f"  {'*' if self.live else ' '} {self.name:<24} {self.id}  {self.version:<16} "
                f"{self.status:<10} {self.health}")


@dataclass(frozen=True)
class LockState:
    """The host's deploy lock as `status` shows it: free, or who holds it since when and why."""

    holder: Mapping[str, str] | None  # the holder file (see handover.lock); None when free

    @property
    def text(self) -> str:
        return describe_holder(dict(self.holder)) if self.holder is not None else UNLOCKED

    def to_dict(self) -> dict[str, object]:
        """``held``, ``description`` (the text line) and, when held, the holder's public details."""
        data: dict[str, object] = {"held": self.holder is not None, "description": self.text}
        if self.holder is not None:
            data.update({key: self.holder[key] for key in LOCK_DETAILS if self.holder.get(key)})
            data["age"] = holder_age(dict(self.holder))
        return data


@dataclass(frozen=True)
class StatusView:
    """The app containers (live or not), the proxy's container, the live version and the deploy lock
    of one host."""

    rows: tuple[StatusRow, ...]
    proxy: str | None  # the running proxy container's name
    live_version: str
    lock: LockState | None = None  # None: not read

    @classmethod
    def of(cls, facts: Facts, lock: LockState | None = None) -> StatusView:
        live = {c.id for c in facts.live}
        rows = tuple(StatusRow(c.name, c.short_id, c.version, c.status, c.health, c.id in live)
                     for c in facts.instances)
        return cls(rows, facts.proxy.name if facts.proxy else None, facts.live_version, lock)

    def to_dict(self) -> dict[str, object]:
        """The JSON form: ``app`` (the rows), ``proxy``, ``live_version`` and ``lock`` (when read)."""
        data: dict[str, object] = {"app": [asdict(r) for r in self.rows], "proxy": self.proxy,
                                   "live_version": self.live_version}
        if self.lock is not None:
            data["lock"] = self.lock.to_dict()
        return data

    def lines(self, host: str = "") -> list[str]:
        """The text form; ``host`` names the host in the first lines (for runs over several)."""
        proxy = self.proxy or NOT_RUNNING
        head = f"{host}: proxy {proxy}" if host else f"proxy: {proxy}"
        lock = [f"{host}: " * bool(host) + f"lock: {self.lock.text}"] if self.lock else []
        return [f"{head}   live version: {self.live_version or NO_VERSION}", *lock, *(r.line() for r in self.rows)]


def _facts(runner: Runner, settings: Settings) -> Facts:
    return Engine(runner, settings).facts()


def status(runner: Runner, settings: Settings) -> StatusView:
    """The host's status, its deploy lock included."""
    engine = Engine(runner, settings)
    return StatusView.of(engine.facts(), LockState(engine.lock.holder()))


def live_version(runner: Runner, settings: Settings) -> str:
    """The version(s) the host serves, comma-separated; "" when nothing is live."""
    return _facts(runner, settings).live_version


# -- releases --------------------------------------------------------------------------------------
def check_count(count: int) -> int:
    """``--count`` of the releases tasks; raises :class:`ConfigError` for anything but a number from 1."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--count: expected a whole number of records, 1 or more, got {count!r}")
    return count


def recent(records: Sequence[Mapping[str, object]], count: int) -> list[Mapping[str, object]]:
    """The last ``count`` records (a count below 1 is refused, see :func:`check_count`)."""
    return list(records[-check_count(count):])


def release_line(item: Mapping[str, object]) -> str:
    return (f"{item.get('started_at', '')}  {item.get('action', ''):<8} {item.get('version', ''):<20} "
            f"{item.get('result', ''):<12} {item.get('seconds', '')} s  by {item.get('by', '')}")


def release_lines(records: Sequence[Mapping[str, object]], count: int) -> list[str]:
    """The last ``count`` records as text: when, action, version, result, duration and who."""
    return [release_line(item) for item in recent(records, count)]


def release_json_lines(records: Sequence[Mapping[str, object]], count: int, host: str = "") -> list[str]:
    """The last ``count`` records as JSON lines (with a ``host`` key when ``host`` is given)."""
    extra = {"host": host} if host else {}
    return [json.dumps({**extra, **item}, sort_keys=True) for item in recent(records, count)]


# -- rollback --------------------------------------------------------------------------------------
def choose_previous(records: Sequence[Mapping[str, object]], live: str) -> str | None:
    """The newest successfully deployed version that is not ``live``, or None."""
    for item in reversed(records):
        version = str(item.get("version", ""))
        if item.get("result") == SUCCESS and version and version != live:
            return version
    return None


def previous_version(runner: Runner, settings: Settings) -> str:
    """The version a rollback goes back to; raises :class:`HandoverError` when there is none."""
    chosen = choose_previous(history(runner, settings.state_path), live_version(runner, settings))
    if chosen is None:
        raise HandoverError("no earlier successful release to roll back to")
    return chosen


# -- logs ------------------------------------------------------------------------------------------
def check_tail(tail: int) -> int:
    """``--tail`` of the logs tasks; raises :class:`ConfigError` for anything but a number from 0."""
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
        raise ConfigError(f"--tail: expected a whole number of lines, 0 or more, got {tail!r}")
    return tail



# -- unlock ----------------------------------------------------------------------------------------
def unlock_message(holder: Mapping[str, str] | None) -> str:
    """What `unlock` says about the lock it removed (``holder``: its holder file, None if free)."""
    if holder is None:
        return "no lock was held"
    return f"lock released; it was {describe_holder(dict(holder))}"
