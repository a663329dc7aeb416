"""nginx in front of the app: the live socket links, and validated reloads when its config changes.

Switching versions does not reload nginx: the upstream names fixed unix-socket slots whose symlinks
are swapped with ``rename(2)``, so the very next upstream connection reaches the new container and
no client connection is closed. nginx is reloaded (after ``nginx -t``) only when its configuration
files change, and a reload waits until every worker that accepts connections runs the new config.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Sequence

from . import upstream
from .errors import HandoverError, NginxConfigInvalid
from .shell import read_file, run, write_file
from .stack import Container, Stack

ACTIVE_WORKER_TITLE = "nginx: worker process"
SHUTTING_DOWN_SUFFIX = "is shutting down"
RELOAD_POLL_SECONDS = 0.02
LOADED_FINGERPRINT = ".loaded"
SOCKET_DIR_MODE = "1777"  # app containers (their own uid) create sockets; sticky: none removes another's

# nginx rewrites its argv as a process title; /proc/<pid>/cmdline shows it without needing `ps`.
_LIST_PROCESSES = (
    'for p in /proc/[0-9]*; do t=$(tr "\\0" " " < "$p/cmdline" 2>/dev/null) || continue; '
    'echo "${p#/proc/} $t"; done'
)


def nginx_dir(stack: Stack) -> str:
    return f"{stack.settings.state_path}/nginx"


def sockets_dir(stack: Stack) -> str:
    return f"{stack.settings.state_path}/sockets"


def upstream_path(stack: Stack) -> str:
    return f"{nginx_dir(stack)}/{upstream.UPSTREAM_FILE}"


def ensure_dirs(stack: Stack) -> None:
    run(stack.runner, ["mkdir", "-p", nginx_dir(stack), sockets_dir(stack)])
    run(stack.runner, ["chmod", SOCKET_DIR_MODE, sockets_dir(stack)])


# -- live links ------------------------------------------------------------------------------------
def live_links(stack: Stack) -> dict[int, str]:
    """slot -> short ID of the container the slot's symlink points to."""
    script = ('cd "$1" 2>/dev/null || exit 0; '
              'for f in live-*.sock; do [ -L "$f" ] && echo "$f $(readlink "$f")"; done; :')
    return upstream.parse_links(run(stack.runner, ["sh", "-c", script, "links", sockets_dir(stack)]).stdout)


def point(stack: Stack, containers: Sequence[Container], fallback: Sequence[Container] = ()) -> None:
    """Atomically point slot n at ``containers[n]``'s socket (which must exist).

    The backup links point at ``fallback`` (the containers serving until now) first, so nginx can
    retry a request there while they run; without ``fallback`` the backup links are removed.
    """
    directory = sockets_dir(stack)
    names = [upstream.socket_name(c.id) for c in containers]
    missing = run(stack.runner, ["sh", "-c", 'cd "$1" && shift && for s; do [ -S "$s" ] || echo "$s"; done',
                                 "check", directory, *names]).stdout.split()
    if missing:
        raise HandoverError(
            f"the new app does not listen on its unix socket ({', '.join(missing)} missing in {directory}); "
            "the app must honour UNIX_SOCKET_DIR"
        )
    backups = [(upstream.backup_name(n), upstream.socket_name(c.id)) for n, c in enumerate(fallback)]
    _link(stack, backups + [(upstream.slot_name(n), name) for n, name in enumerate(names)])  # backups first
    if not fallback:
        forget_fallback(stack)


def _link(stack: Stack, links: Sequence[tuple[str, str]]) -> None:
    """Make each ``(link, target)`` symlink in the sockets directory with one rename(2) each."""
    swaps = " && ".join(
        f"ln -sfn {shlex.quote(target)} .{link}.tmp && mv -fT .{link}.tmp {link}" for link, target in links
    )
    run(stack.runner, ["sh", "-c", f'cd "$1" && {swaps}', "point", sockets_dir(stack)])


def forget_fallback(stack: Stack) -> None:
    """Remove the backup links (once the containers they point at are gone or live again)."""
    run(stack.runner, ["sh", "-c", 'cd "$1" 2>/dev/null || exit 0; rm -f -- prev-*.sock', "unlink",
                       sockets_dir(stack)], check=False)


def forget_sockets(stack: Stack, containers: Sequence[Container]) -> None:
    names = [upstream.socket_name(c.id) for c in containers]
    if names:
        run(stack.runner, ["sh", "-c", 'cd "$1" && shift && rm -f -- "$@"', "forget", sockets_dir(stack), *names],
            check=False)


# -- configuration and reloads ---------------------------------------------------------------------
def read_upstream(stack: Stack) -> str | None:
    return read_file(stack.runner, upstream_path(stack))


def write_upstream(stack: Stack, text: str) -> None:
    ensure_dirs(stack)
    write_file(stack.runner, upstream_path(stack), text)


def remove_state(stack: Stack) -> None:
    run(stack.runner, ["rm", "-rf", nginx_dir(stack), sockets_dir(stack)])


def test_config(stack: Stack, conf: str | None = None) -> None:
    """``nginx -t`` inside the running proxy; raise with nginx's own message when it fails."""
    proxy = stack.proxy_container()
    if proxy is None:
        return  # nothing serves yet; `up` validates when it starts nginx
    command = ["docker", "exec", proxy.id, "nginx", "-t", "-q", "-c", conf or stack.settings.nginx_conf]
    result = run(stack.runner, command, check=False)
    if result.exited != 0:
        raise NginxConfigInvalid(f"nginx -t failed:\n{(result.stderr + result.stdout).strip()}")


def fingerprint(stack: Stack) -> str:
    """A digest of the files nginx loads (its nginx/ directory and the upstream file)."""
    s = stack.settings
    files = f"{s.source_path}/nginx"
    script = 'find "$1" "$2" -maxdepth 1 -name "*.conf" -type f -print0 | sort -z | xargs -0 cat'
    text = run(stack.runner, ["sh", "-c", script, "fingerprint", files, nginx_dir(stack)]).stdout
    return hashlib.sha256(text.encode()).hexdigest()


def config_changed(stack: Stack) -> bool:
    loaded = read_file(stack.runner, f"{nginx_dir(stack)}/{LOADED_FINGERPRINT}")
    return (loaded or "").strip() != fingerprint(stack)


def apply_config(stack: Stack, new_upstream: str | None = None) -> bool:
    """Validate and load nginx's configuration if it differs from what was last loaded.

    With ``new_upstream``, that upstream file is written first and put back as it was if
    ``nginx -t`` fails; nothing is reloaded then. Returns whether nginx was reloaded.
    """
    previous = read_upstream(stack)
    if new_upstream is not None and new_upstream != previous:
        write_upstream(stack, new_upstream)
    if not config_changed(stack):
        return False
    try:
        test_config(stack)
    except NginxConfigInvalid:
        if new_upstream is not None and previous is not None:
            write_upstream(stack, previous)
        raise
    reload(stack)
    return True


def mark_loaded(stack: Stack) -> None:
    write_file(stack.runner, f"{nginx_dir(stack)}/{LOADED_FINGERPRINT}", fingerprint(stack))


def active_workers(stack: Stack) -> set[int]:
    """PIDs of nginx workers that accept new connections (not those finishing old ones)."""
    out = stack.exec_proxy("sh", "-c", _LIST_PROCESSES)
    pids = set()
    for line in out.splitlines():
        pid, _, title = line.partition(" ")
        title = title.strip()
        if title.startswith(ACTIVE_WORKER_TITLE) and not title.endswith(SHUTTING_DOWN_SUFFIX):
            pids.add(int(pid))
    return pids


def reload(stack: Stack) -> None:
    """``nginx -s reload`` and wait until no worker from before the reload accepts connections."""
    before = active_workers(stack)
    stack.exec_proxy("nginx", "-s", "reload", "-c", stack.settings.nginx_conf)
    deadline = time.monotonic() + stack.settings.reload_timeout
    while True:
        now = active_workers(stack)
        if now and not (now & before):
            mark_loaded(stack)
            return
        if time.monotonic() > deadline:
            raise NginxConfigInvalid(
                f"nginx did not start new workers within {stack.settings.reload_timeout:g} s of the reload "
                f"(old workers still accepting: {sorted(now & before)})"
            )
        time.sleep(RELOAD_POLL_SECONDS)
