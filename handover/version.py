"""Release versions: given, or derived from the app's source so the same source is the same version."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

SKIP_DIRS = {"wheelhouse", "__pycache__"}
SOURCE_PREFIX = "src-"  # a version named after its sources: the same tag is the same build


def is_source_version(version: str) -> bool:
    """``version`` names the hash of the build directory (see :func:`source_version`)."""
    return version.startswith(SOURCE_PREFIX)


def source_version(server_dir: Path, build_args: Sequence[tuple[str, str]] = ()) -> str:
    """``src-<hash>`` of every file under ``server_dir`` (paths and contents), wheels excluded, and of the
    build arguments when there are any (another base image is another image)."""
    digest = hashlib.sha256()
    for name, value in build_args:
        digest.update(f"--build-arg {name}={value}".encode() + b"\0")
    for path in sorted(p for p in server_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(server_dir)
        if SKIP_DIRS & set(rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{SOURCE_PREFIX}{digest.hexdigest()[:10]}"
