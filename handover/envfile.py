"""The app's secrets file (``deploy.env_file``): checked here before Compose ever reads it.

The file holds ``KEY=VALUE`` lines. Compose reads it with ``format: raw`` (see
compose/docker-compose.yml): every value arrives in the container verbatim, ``$``, quotes, ``#``,
spaces and ``=`` included. Compose quotes a line it cannot parse in its error message, which would
put a secret into the output, the ``--json`` record and the release log; so the syntax is checked
here first, and a problem is named by its LINE NUMBER only, never by any of the line's content.

What Compose says anyway (any failing ``docker compose`` command) goes through :func:`scrub` before
it is shown or recorded: every value of the file, and every malformed line, is replaced by
:data:`HIDDEN` (values shorter than :data:`MIN_HIDDEN_LENGTH` excepted), and a line of the output
that names the file itself is cut after its path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError

# Compose's raw format: the name before the first '=' (this tool asks for a portable one).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HIDDEN = "[hidden]"
# Shorter values ("1", "on") are not replaced: every digit of every message would be.
MIN_HIDDEN_LENGTH = 4
WITHHELD = "(the rest of this message is withheld: it may quote the secrets file)"
EXPECTED = "a file of KEY=VALUE lines (mode 0600)"


def _problem(line: str) -> str | None:
    """What is wrong with one line (in words that quote none of it), or None."""
    if "\0" in line:
        return "holds a NUL byte"
    if line.endswith("\r"):
        return "ends with a carriage return (save the file with LF line endings)"
    name, eq, _ = line.partition("=")
    if not eq:
        return "has no '=' (expected KEY=VALUE; a comment starts with '#')"
    if not name:
        return "has no name before '='"
    if not _NAME.fullmatch(name):
        return ("has a name that is not letters, digits and '_' (not starting with a digit), or has "
                "spaces, 'export' or quotes around it")
    return None


def _skipped(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def parse(text: str, where: str) -> dict[str, str]:
    """The variables of ``text``; raises :class:`ConfigError` naming every bad line by number."""
    values: dict[str, str] = {}
    bad: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if _skipped(line):
            continue
        problem = _problem(line)
        if problem:
            bad.append(f"line {number} {problem}")
            continue
        name, _, value = line.partition("=")
        values[name] = value
    if bad:
        raise ConfigError(f"{where}: expected {EXPECTED}; " + "; ".join(bad) + " (the content is not shown)")
    return values


def read(path: Path, key: str) -> dict[str, str]:
    """Check the secrets file at ``path`` (named by config ``key``): it exists, is a readable file
    of well-formed lines. Raises :class:`ConfigError`; returns its variables."""
    where = f"config key {key}: {path}"
    if not path.is_file():
        raise ConfigError(f"{where} is not a file: expected {EXPECTED}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{where}: expected {EXPECTED}; line {line} is not UTF-8 text (the content is not shown)"
                          ) from None
    return parse(text, where)


def resolve(value: str, root: Path) -> Path:
    """A configured path: ``~`` expanded, a relative one taken from ``root`` (the project)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def fragments(text: str) -> set[str]:
    """What must never be shown from a secrets file's ``text``: every value, and every line that
    is not a comment (whole, and each side of its '='), whatever its syntax."""
    found: set[str] = set()
    for line in text.split("\n"):
        if _skipped(line):
            continue
        name, eq, value = line.partition("=")
        pieces = [line, line.strip(), value, value.strip(), value.strip().strip("\"'")]
        if not eq or not _NAME.fullmatch(name):
            pieces += [name, name.strip(), *line.split()]
        found.update(p for p in pieces if len(p) >= MIN_HIDDEN_LENGTH)
    return found


def _withheld(line: str, path: str) -> str:
    at = line.find(path)
    if at < 0:
        return line
    return f"{line[:at + len(path)]}: {WITHHELD}"


def scrub(text: str, secrets: Iterable[str], path: str = "") -> str:
    """``text`` with every secret replaced by :data:`HIDDEN`, longest first; a line that names
    ``path`` (Compose's words about the file, which may quote it) is cut after the path."""
    if path:
        text = "\n".join(_withheld(line, path) for line in text.split("\n"))
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text
