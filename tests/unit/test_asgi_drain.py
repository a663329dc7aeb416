"""The drain helper (handover/asgi.py) in-process: wrapping, notices, closes, settings; and its copies."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HELPER = ROOT / "handover" / "asgi.py"
# Images are built from their own directories, so the helper travels as a copy; these must not drift.
COPIES = (
    ROOT / "server" / "webapp" / "handover_asgi.py",
    ROOT / "examples" / "starlette-drain" / "handover_asgi.py",
)


def test_copies_of_the_helper_are_identical() -> None:
    original = HELPER.read_bytes()
    for copy in COPIES:
        assert copy.read_bytes() == original, f"{copy} differs from {HELPER}: copy it again (cp {HELPER} {copy})"
