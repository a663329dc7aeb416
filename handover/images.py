"""Base images and the Python wheelhouse: what an app image build needs, with or without a registry.

With a registry, the configured public base (``debian:bookworm-slim``) is pulled as usual. Without
one, a base of the same Debian suite is made with ``debootstrap --variant=minbase`` and imported
under its own honest name, ``localhost/debian-minbase:<suite>``.
"""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

from .errors import PreflightError
from .progress import Progress
from .shell import Runner, run

LOCAL_BASE_REPO = "localhost/debian-minbase"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PULL_TIMEOUT = 120.0
DEBOOTSTRAP_TIMEOUT = 900.0
_DEBIAN_IMAGE = re.compile(r"^(?:docker\.io/)?(?:library/)?debian:([a-z]+)(?:-slim)?$")
WHEEL_PLATFORM = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}
CONTAINER_PYTHON = "3.11"  # Debian bookworm's python3
WHEEL_DOWNLOAD_TIMEOUT = 600.0
PIP_LINES_SHOWN = 5  # the end of pip's output, where it says what went wrong


def ensure_base_image(runner: Runner, image: str, progress: Progress) -> str:
    """Return an image reference the build can use for ``image``: itself, pulled, or a local minbase."""
    if run(runner, ["docker", "image", "inspect", image], check=False).exited == 0:
        return image
    pulled = run(runner, ["docker", "pull", "--quiet", image], check=False, timeout=PULL_TIMEOUT)
    if pulled.exited == 0:
        return image
    match = _DEBIAN_IMAGE.match(image)
    if not match:
        raise PreflightError(f"base image {image} is not present and could not be pulled: {pulled.stderr.strip()}")
    suite = match.group(1)
    local = f"{LOCAL_BASE_REPO}:{suite}"
    if run(runner, ["docker", "image", "inspect", local], check=False).exited == 0:
        return local
    if run(runner, ["sh", "-c", "command -v debootstrap"], check=False).exited != 0:
        raise PreflightError(
            f"base image {image} could not be pulled and debootstrap is not installed to make {local} "
            "(apt-get install debootstrap)"
        )
    progress.say(f"    {image} cannot be pulled; making {local} with debootstrap (about a minute)")
    script = (
        'set -e; rootfs=$(mktemp -d); trap \'rm -rf "$rootfs"\' EXIT; '
        f'debootstrap --variant=minbase {shlex.quote(suite)} "$rootfs" {DEBIAN_MIRROR} >/dev/null; '
        'rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*; '
        f'tar -C "$rootfs" -c . | docker import - {shlex.quote(local)} >/dev/null'
    )
    run(runner, ["sh", "-c", script], timeout=DEBOOTSTRAP_TIMEOUT)
    return local


def uses_wheelhouse(build_dir: Path) -> bool:
    """The build directory installs its requirements from ``wheelhouse/`` (as the demo app does)."""
    try:
        dockerfile = (build_dir / "Dockerfile").read_text()
    except OSError:
        return False
    return (build_dir / "requirements.txt").is_file() and "wheelhouse/" in dockerfile


def build_wheelhouse(server_dir: Path, progress: Progress) -> None:
    """Download the app's wheels (for the container's Python) into ``server/wheelhouse``, if stale.

    Raises :class:`PreflightError` naming what failed (a missing requirements file, pip's own
    words when the download fails) before anything on a host changes.
    """
    requirements = server_dir / "requirements.txt"
    wheelhouse = server_dir / "wheelhouse"
    stamp = wheelhouse / "requirements.txt"
    try:
        wanted = requirements.read_text()
    except OSError as exc:
        raise PreflightError(f"cannot read the app's requirements {requirements}: {exc.strerror or exc}") from None
    if stamp.exists() and stamp.read_text() == wanted:
        return
    machine = platform.machine()
    wheel_platform = WHEEL_PLATFORM.get(machine)
    if wheel_platform is None:
        raise PreflightError(f"no wheel platform known for machine type {machine!r}")
    progress.say(f"    downloading wheels for Python {CONTAINER_PYTHON} ({wheel_platform}) into {wheelhouse}")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--platform", wheel_platform, "--python-version", CONTAINER_PYTHON,
            "--implementation", "cp", "--dest", str(wheelhouse), "--requirement", str(requirements)]
    try:
        wheelhouse.mkdir(exist_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WHEEL_DOWNLOAD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise PreflightError(f"downloading the app's wheels into {wheelhouse} took longer than "
                             f"{WHEEL_DOWNLOAD_TIMEOUT:g} s; is the package index reachable?") from None
    except OSError as exc:
        raise PreflightError(f"cannot download the app's wheels into {wheelhouse}: {exc}") from None
    if done.returncode != 0:
        said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-PIP_LINES_SHOWN:])
        raise PreflightError(f"downloading the app's wheels ({requirements}) failed: pip exited {done.returncode}"
                             + (f"\n{said}" if said else "")
                             + "\nnothing was built or deployed; fix the requirements or the network "
                             "(a package index or a proxy for pip) and run again")
    stamp.write_text(wanted)
