"""Plain aligned text tables."""

from __future__ import annotations

from collections.abc import Sequence

COLUMN_GAP = "  "


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """First column left-aligned, the others right-aligned (they hold numbers)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return COLUMN_GAP.join(parts).rstrip()

    rule = COLUMN_GAP.join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_counts(counts: dict[str, int] | dict[int, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counts.items()) or "none"
