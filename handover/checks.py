"""What a host needs, checked one thing at a time, and reported all at once with what to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import PreflightError


@dataclass(frozen=True)
class Check:
    """One thing a host needs: present or not, and what to do about it when not."""

    name: str
    ok: bool
    detail: str


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def require(checks: Sequence[Check], host: str) -> None:
    """Raise :class:`PreflightError` listing every failed check, when there is one."""
    problems = [c for c in checks if not c.ok]
    if problems:
        lines = "\n".join(f"  - {c.name}: {c.detail}" for c in problems)
        raise PreflightError(f"{host} is not ready:\n{lines}")
