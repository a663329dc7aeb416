"""The nginx in front of the app: validate, switch the upstream, reload, and confirm the reload took."""

from __future__ import annotations

import time

from .errors import NginxConfigInvalid
from .shell import read_file, run, write_file
from .stack import Stack
from .upstream import UPSTREAM_FILE

ACTIVE_WORKER_TITLE = "nginx: worker process"
SHUTTING_DOWN_SUFFIX = "is shutting down"
RELOAD_POLL_SECONDS = 0.02

# nginx rewrites its argv as a process title; /proc/<pid>/cmdline shows it without needing `ps`.
_LIST_PROCESSES = (
    'for p in /proc/[0-9]*; do t=$(tr "\\0" " " < "$p/cmdline" 2>/dev/null) || continue; '
    'echo "${p#/proc/} $t"; done'
)


def upstream_path(stack: Stack) -> str:
    return f"{stack.settings.state_path}/nginx/{UPSTREAM_FILE}"


def read_upstream(stack: Stack) -> str | None:
    return read_file(stack.runner, upstream_path(stack))


def write_upstream(stack: Stack, text: str) -> None:
    run(stack.runner, ["mkdir", "-p", f"{stack.settings.state_path}/nginx"])
    write_file(stack.runner, upstream_path(stack), text)


def remove_upstream(stack: Stack) -> None:
    run(stack.runner, ["rm", "-f", upstream_path(stack)])


def test_config(stack: Stack) -> None:
    """``nginx -t`` inside the running proxy; raise with nginx's own message when it fails."""
    proxy = stack.proxy_container()
    if proxy is None:
        return  # nothing serves yet; `up` validates when it starts nginx
    result = run(stack.runner, ["docker", "exec", proxy.id, "nginx", "-t", "-q", "-c", stack.settings.nginx_conf], check=False)
    if result.exited != 0:
        raise NginxConfigInvalid(f"nginx -t failed:\n{(result.stderr + result.stdout).strip()}")


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


def switch(stack: Stack, text: str) -> None:
    """Point nginx at a new upstream: write, ``nginx -t``, reload, wait for the new workers.

    A failing ``nginx -t`` puts the previous file back and raises; nothing is reloaded. The call
    returns only when no worker started before the reload still accepts connections, so every new
    request from then on goes to the new upstream.
    """
    previous = read_upstream(stack)
    write_upstream(stack, text)
    try:
        test_config(stack)
    except NginxConfigInvalid:
        if previous is None:
            remove_upstream(stack)
        else:
            write_upstream(stack, previous)
        raise
    reload(stack)


def reload(stack: Stack) -> None:
    before = active_workers(stack)
    stack.exec_proxy("nginx", "-s", "reload", "-c", stack.settings.nginx_conf)
    deadline = time.monotonic() + stack.settings.reload_timeout
    while True:
        now = active_workers(stack)
        if now and not (now & before):
            return
        if time.monotonic() > deadline:
            raise NginxConfigInvalid(
                f"nginx did not start new workers within {stack.settings.reload_timeout:g} s of the reload "
                f"(old workers still accepting: {sorted(now & before)})"
            )
        time.sleep(RELOAD_POLL_SECONDS)
