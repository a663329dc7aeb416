"""nginx in front of the app: live socket links, the upstream file, and validated reloads.

Switching versions does not reload nginx. The upstream names fixed slots,
``/run/handover/live-<n>.sock``; each slot is a symlink (in the state directory's ``sockets/``,
mounted into nginx and the app containers) to one app container's own socket,
``app-<short id>.sock``. A switch swaps the links with ``rename(2)``, so the very next upstream
connection reaches the new container and no client connection is closed. The upstream file only
changes when the number of slots does; nginx is reloaded (after ``nginx -t``) only when its
configuration files change, and a reload waits until every worker that accepts connections runs
the new configuration.

Each slot has a backup, ``prev-<n>.sock``: while a deploy checks the new version after the
switch, it points at the old container of that slot, so a request that cannot reach a new
container that just died (refused connect, or closed before the response began) is retried there
by nginx (``proxy_next_upstream``) instead of failing. Outside that window the backup links do
not exist.

A TCP app (``deploy.app_port``) has no socket to link to. There nginx's njs module reads the live
targets, ``<container IP>:<port>``, from ``targets.json`` in the upstream directory on every request
(``nginx/handover.js``), and a switch replaces that file with one ``rename(2)``: again no reload, and
the next request reaches the new container. During the post-switch check the file also lists the
old containers as the fallback, which nginx tries when a new one cannot answer (``error_page 502``).
This was chosen by measurement against rewriting ``server <ip>:<port>`` and reloading nginx (see
BENCHMARK.md, "Switching a TCP app"). The engine checks a TCP app's ``app_health`` path from inside
the nginx container, where the app's address is reachable on any Docker host.

Every command on these files runs through ``files``: the runner itself (the state directory on the
Docker host, bind-mounted into nginx), or, with ``deploy.proxy_files: volume`` (a daemon that does not
see this machine's files: Docker Desktop), a :class:`~handover.proxies.daemonfiles.DaemonFiles`, which
runs the same commands on the same paths inside a container that mounts the proxy's named volumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..backends import Backend, Instance
from ..backends.compose import volume_names
from ..errors import CommandError, ConfigError, HandoverError, PreflightError, ProxyConfigInvalid
from ..settings import CONTAINER_ROOT, Settings
from ..shell import Runner, read_file, run, write_file
from .daemonfiles import DaemonFiles
from .tls import HTTPS_PORT_IN_CONTAINER, WORKER_UID, TlsFiles

SERVICE = "nginx"
UPSTREAM_NAME = "handover_app"
UPSTREAM_FILE = "upstream.conf"
MODULES_FILE = "modules.main"  # included in nginx's main context (load_module), for a TCP app only
TARGETS_FILE = "targets.json"  # a TCP app's live and fallback targets, read by handover.js
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"  # Debian's libnginx-mod-http-js
TARGET_VARIABLE = "$handover_target"
FALLBACK_VARIABLE = "$handover_fallback"
HEALTH_CHECK_SECONDS = 2  # one GET of a TCP app's health path (connect + status line)
PORT_CHECK_SECONDS = 2
EXIT_REFUSED = 7  # the health script: the TCP connect failed
EXIT_TIMED_OUT = 124  # timeout(1)
SOCKET_DIR_IN_CONTAINERS = "/run/handover"
UPSTREAM_DIR_IN_CONTAINER = "/etc/nginx/upstream.d"  # the state directory's nginx/, or its volume
SHORT_ID_LENGTH = 12  # Docker's hostname for a container is its short ID
ACTIVE_WORKER_TITLE = "nginx: worker process"
SHUTTING_DOWN_SUFFIX = "is shutting down"
RELOAD_POLL_SECONDS = 0.02
START_POLL_SECONDS = 0.05
START_TIMEOUT = 30.0
START_LOG_LINES = 30
LOADED_FINGERPRINT = ".loaded"
# The live-N.sock links of the sockets directory ($1), one "name target" line each.
_LINKS = ('cd "$1" 2>/dev/null || exit 0; '
          'for f in live-*.sock; do [ -L "$f" ] && echo "$f $(readlink "$f")"; done; :')
# Those links, a line of their own, then a TCP app's targets.json ($2) when there is one (exit 5: it
# cannot be read).
_TARGETS_MARK = "--- targets"
_LINKS_AND_TARGETS = ('(' + _LINKS + '); printf "%s\\n" "' + _TARGETS_MARK + '"; '
                      'if [ -f "$2" ]; then cat -- "$2" || exit 5; fi')
# The files nginx loads, concatenated in name order (their digest is the fingerprint).
_FINGERPRINT = ('find "$@" -maxdepth 1 \\( -name "*.conf" -o -name "*.main" -o -name "*.js" \\) -type f '
                '-print0 2>/dev/null | sort -z | xargs -0 cat')
# The fingerprint nginx loaded last ($1, one line, empty when there is none), then the same files.
_LOADED_AND_FINGERPRINT = 'printf "%s\\n" "$(cat -- "$1" 2>/dev/null | head -n 1)"; shift; ' + _FINGERPRINT
SOCKET_DIR_MODE = "1777"  # app containers (their own uid) create sockets; sticky: none removes another's
_LINK = re.compile(r"live-(\d+)\.sock")
_TARGET = re.compile(r"app-([0-9a-f]{12})\.sock")

# nginx rewrites its argv as a process title; /proc/<pid>/cmdline shows it without needing `ps`.
_LIST_PROCESSES = (
    'for p in /proc/[0-9]*; do t=$(tr "\\0" " " < "$p/cmdline" 2>/dev/null) || continue; '
    'echo "${p#/proc/} $t"; done'
)


# -- pure parts ------------------------------------------------------------------------------------
def slot_name(slot: int) -> str:
    return f"live-{slot}.sock"


def backup_name(slot: int) -> str:
    return f"prev-{slot}.sock"


def socket_name(container_id: str) -> str:
    return f"app-{container_id[:SHORT_ID_LENGTH]}.sock"


def render_upstream(slots: int) -> str:
    if slots < 1:
        raise ValueError("an upstream needs at least one slot")
    lines = [
        "# Written by handover; the live app containers are the targets of these symlinks.",
        f"upstream {UPSTREAM_NAME} {{",
    ]
    # max_fails=0: a live server is never marked down by a passing error.
    lines += [f"    server unix:{SOCKET_DIR_IN_CONTAINERS}/{slot_name(n)} max_fails=0;" for n in range(slots)]
    lines += [f"    server unix:{SOCKET_DIR_IN_CONTAINERS}/{backup_name(n)} max_fails=0 backup;" for n in range(slots)]
    lines += ["}", f"map $uri {TARGET_VARIABLE} {{ default {UPSTREAM_NAME}; }}",
              f'map $uri {FALLBACK_VARIABLE} {{ default ""; }}', ""]
    return "\n".join(lines)


def render_tcp_upstream(script: str) -> str:
    """The routes of a TCP app: njs reads the targets on each request (``script`` is handover.js)."""
    return "\n".join([
        "# Written by handover; a TCP app: handover.js reads the live containers from targets.json.",
        f"js_import handover from {script};",
        f"js_set {TARGET_VARIABLE} handover.target;",
        f"js_set {FALLBACK_VARIABLE} handover.fallback;",
        "# What nginx could not get an answer for goes to @http_fallback or @websocket_fallback (nginx.conf).",
        "error_page 502 504 = @${proxy_kind}_fallback;",
        "",
    ])


def render_modules() -> str:
    return f"# Written by handover for a TCP app: njs reads its live targets.\nload_module {NJS_MODULE};\n"


def render_targets(instances: Sequence[Instance], fallback: Sequence[Instance], port: int) -> str:
    """targets.json: ``live``/``fallback`` addresses for handover.js, and the containers' short IDs."""
    return json.dumps({
        "live": [f"{c.address}:{port}" for c in instances],
        "fallback": [f"{c.address}:{port}" for c in fallback],
        "live_ids": [c.short_id for c in instances],
        "fallback_ids": [c.short_id for c in fallback],
    }, indent=1) + "\n"


def parse_targets(text: str | None) -> dict[str, list[str]]:
    """targets.json as written by :func:`render_targets` (empty lists for anything unreadable)."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    keys = ("live", "fallback", "live_ids", "fallback_ids")
    return {k: [str(v) for v in data.get(k) or [] if isinstance(v, str)] for k in keys}


# Run in the nginx container: GET $3 from $1:$2 and print the status line (exit 7: no connection).
HEALTH_SCRIPT = (
    'exec 3<>"/dev/tcp/$1/$2" 2>/dev/null || exit 7; '
    'printf "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: handover-health\r\nConnection: close\r\n\r\n" '
    '"$3" "$1" >&3; IFS= read -r line <&3; printf "%s\n" "$line"'
)
# Run in the nginx container: print each "ip:port" argument that refuses a TCP connection.
PORT_SCRIPT = 'for a; do (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null || echo "$a"; done'


def health_argv(address: str, port: int, path: str) -> list[str]:
    return ["timeout", str(HEALTH_CHECK_SECONDS), "bash", "-c", HEALTH_SCRIPT, "health", address, str(port), path]


def port_argv(addresses: Sequence[str]) -> list[str]:
    return ["timeout", str(PORT_CHECK_SECONDS), "bash", "-c", PORT_SCRIPT, "ports", *addresses]


def health_verdict(exited: int, output: str, url: str) -> str:
    """"" when the health GET answered 2xx, else what went wrong, naming ``url``."""
    if exited == EXIT_REFUSED:
        return f"GET {url}: connection refused (does the app listen on deploy.app_port?)"
    if exited == EXIT_TIMED_OUT:
        return f"GET {url}: no answer within {HEALTH_CHECK_SECONDS} s"
    status = re.match(r"HTTP/\d(?:\.\d)? (\d{3})", output.strip())
    if exited != 0 or status is None:
        return f"GET {url}: no HTTP answer ({output.strip()[:80] or f'exit {exited}'})"
    code = int(status.group(1))
    return "" if 200 <= code < 300 else f"GET {url} answered {code} (deploy.app_health wants 2xx)"


def parse_links(listing: str) -> dict[int, str]:
    """``listing`` has lines ``<link name> <target>``; returns slot -> short container ID."""
    links = {}
    for line in listing.splitlines():
        name, _, target = line.strip().partition(" ")
        slot, short = _LINK.fullmatch(name), _TARGET.fullmatch(target.strip())
        if slot and short:
            links[int(slot.group(1))] = short.group(1)
    return links


def active_workers(listing: str) -> set[int]:
    """PIDs of nginx workers that accept new connections (not those finishing old ones)."""
    pids = set()
    for line in listing.splitlines():
        pid, _, title = line.partition(" ")
        title = title.strip()
        if pid.isdigit() and title.startswith(ACTIVE_WORKER_TITLE) and not title.endswith(SHUTTING_DOWN_SUFFIX):
            pids.add(int(pid))
    return pids


def link_script(links: Sequence[tuple[str, str]]) -> str:
    """A shell script that makes each ``(link, target)`` symlink with one rename(2) each."""
    swaps = " && ".join(
        f"ln -sfn {shlex.quote(target)} .{link}.tmp && mv -fT .{link}.tmp {link}" for link, target in links
    )
    return f'cd "$1" && {swaps}'


@dataclass
class NginxProxy:
    """nginx as the compose service ``nginx``, routing to the app through socket links."""

    runner: Runner
    settings: Settings
    backend: Backend
    name: str = "nginx"
    check_words: str = "nginx -t"
    service: str = SERVICE
    switch_words: str = "atomic swap of nginx's live socket links; no reload"
    source_dirs: tuple[str, ...] = ("nginx",)
    _replaced_upstream: str | None = None
    _replaced_modules: str | None = None
    _wrote_upstream: bool = False
    # Where the file commands run: ``runner`` itself (the state directory on the Docker host), or, with
    # deploy.proxy_files volume, a :class:`DaemonFiles` (the volumes, through the daemon).
    files: Runner = None  # type: ignore[assignment]
    tls: TlsFiles = field(init=False)
    _sources_copied: bool = False

    def __post_init__(self) -> None:
        s = self.settings
        if self.files is None:
            self.files = self.runner
        self.tls = TlsFiles(self.files, self.tls_dir, s.tls_certificate, s.tls_key, s.https_port, s.hsts,
                            give_to_workers=self._give_to_workers, validate=self._validate_pair)
        if s.tcp:
            self.switch_words = "atomic rename of nginx's targets file, read by njs; no reload"

    # -- where things are ------------------------------------------------------------------------
    @property
    def nginx_dir(self) -> str:
        return f"{self.settings.state_path}/nginx"

    @property
    def sockets_dir(self) -> str:
        return f"{self.settings.state_path}/sockets"

    @property
    def tls_dir(self) -> str:
        """The certificate, key and listen/redirect includes (mounted read-only at /etc/nginx/tls)."""
        return f"{self.settings.state_path}/tls"

    @property
    def upstream_path(self) -> str:
        return f"{self.nginx_dir}/{UPSTREAM_FILE}"

    @property
    def modules_path(self) -> str:
        return f"{self.nginx_dir}/{MODULES_FILE}"

    @property
    def targets_path(self) -> str:
        return f"{self.nginx_dir}/{TARGETS_FILE}"

    @property
    def script_in_container(self) -> str:
        return f"{CONTAINER_ROOT}/{self.settings.source_subdir or '.'}/nginx/handover.js"

    def render(self, slots: int) -> str:
        """The generated upstream file: socket links' upstream, or a TCP app's njs routes."""
        return render_tcp_upstream(self.script_in_container) if self.settings.tcp else render_upstream(slots)

    @property
    def conf_in_container(self) -> str:
        """nginx.conf as the nginx container sees it (the deploy root is mounted at /etc/handover)."""
        return f"{CONTAINER_ROOT}/{self.settings.source_subdir or '.'}/nginx/nginx.conf"

    @property
    def base_image(self) -> str:
        return self.settings.proxy_base_image

    def build_env(self, base_image: str | None = None) -> dict[str, str]:
        env = {"PROXY_BASE_IMAGE": base_image or self.settings.proxy_base_image,
               "PROXY_IMAGE": f"{self.settings.project}-nginx"}
        if self.settings.tls:
            env["HTTPS_PORT"] = str(self.settings.https_port)
        return env

    @property
    def daemon_files(self) -> DaemonFiles | None:
        return self.files if isinstance(self.files, DaemonFiles) else None

    def copy_sources(self) -> None:
        """With the files in Docker volumes: nginx's sources (``nginx/``) into theirs, once per run (nginx
        loads them at its start and at a validated reload only)."""
        daemon = self.daemon_files
        if daemon is not None and not self._sources_copied:
            daemon.copy_in(self.settings.source_path, self.source_dirs)
            self._sources_copied = True

    def prepare(self) -> None:
        self.copy_sources()
        run(self.files, ["mkdir", "-p", self.nginx_dir, self.sockets_dir])
        run(self.files, ["chmod", SOCKET_DIR_MODE, self.sockets_dir])
        self.tls.prepare()

    def check(self) -> None:
        pair, _ = self.tls.wanted()
        proxy = self.running() if pair is not None or self.daemon_files is not None else None
        if proxy is None:
            return
        self._check_mounts(proxy)
        if pair is None:
            return
        # The HTTPS port is published when nginx's container is made (compose/docker-compose.yml).
        bind, port = self.settings.http_bind, self.settings.https_port
        published = run(self.runner, ["docker", "port", proxy.id, f"{HTTPS_PORT_IN_CONTAINER}/tcp"], check=False)
        if f"{bind}:{port}" not in published.stdout.split():
            raise ConfigError(
                f"config key deploy.https_port: nginx's container {proxy.name} does not publish {bind}:{port} "
                f"(it was made with TLS off or another port); make it again once: `inv local.down && inv local.up` "
                "(on a host: `fab down`, then `fab deploy`)")

    def _check_mounts(self, proxy: Instance) -> None:
        """nginx's container reads its files where deploy.proxy_files now writes them: a container made in
        the other mode would never see a switch (a deploy reporting success while nginx routes to the old
        version). Made again once, it follows the setting."""
        wanted, other = ("volume", "bind") if self.daemon_files is not None else ("bind", "volume")
        if f"{other}:{UPSTREAM_DIR_IN_CONTAINER}" in proxy.mounts:
            raise ConfigError(
                f"config key deploy.proxy_files: it is {self.settings.proxy_files} ({wanted} mounts), but nginx's "
                f"container {proxy.name} was made with {other} mounts, so it would not see this run's files; make "
                "it again once: `inv local.down && inv local.up` (see README, Docker Desktop)")

    def _give_to_workers(self, path: str) -> None:
        """nginx's workers read the pair at each handshake: the file becomes theirs (mode 0600). As
        root here, a chown; otherwise (a host reached over SSH, a user in the docker group) the chown
        runs in a throwaway container of the proxy's image, with no network."""
        if self.daemon_files is not None:  # in the files container, as root
            run(self.files, ["chown", f"{WORKER_UID}:{WORKER_UID}", path])
            return
        if not callable(getattr(self.runner, "sftp", None)) and os.geteuid() == 0:
            os.chown(path, WORKER_UID, WORKER_UID)
            return
        name = path.rpartition("/")[2]
        run(self.runner, ["docker", "run", "--rm", "--network", "none", "--user", "0", "--volume",
                          f"{self.tls_dir}:/tls", "--entrypoint", "chown", f"{self.settings.project}-nginx:1",
                          f"{WORKER_UID}:{WORKER_UID}", f"/tls/{name}"])

    def _validate_pair(self, check_conf: str) -> None:
        """``nginx -t`` on a configuration that loads the new pair (nothing else), in the running proxy."""
        proxy = self.running()
        if proxy is None:
            return  # first start: the pair was checked (match, dates) before anything ran
        result = self.backend.exec(proxy, ["nginx", "-t", "-q", "-c", check_conf], check=False)
        if result.exited != 0:
            raise ProxyConfigInvalid("nginx -t refused the new certificate and key (nothing changed):\n"
                                     f"{(result.stderr + result.stdout).strip()}")

    def running(self) -> Instance | None:
        return self.backend.proxy_instance(self.service)

    def _exec(self, *argv: str) -> str:
        proxy = self.running()
        if proxy is None:
            raise PreflightError(f"the nginx container of project {self.settings.project!r} is not running")
        result = self.backend.exec(proxy, argv)
        return result.stdout + result.stderr

    # -- live links ------------------------------------------------------------------------------
    def live_links(self) -> dict[int, str]:
        """slot -> short ID of the container the slot's symlink points to."""
        return parse_links(run(self.files, ["sh", "-c", _LINKS, "links", self.sockets_dir]).stdout)

    def _links_and_targets(self) -> tuple[dict[int, str], dict[str, list[str]]]:
        """:meth:`live_links` and :meth:`targets` in one command (one SSH round trip)."""
        done = run(self.files, ["sh", "-c", _LINKS_AND_TARGETS, "routes", self.sockets_dir, self.targets_path],
                   check=False)
        if done.exited != 0:  # targets.json there but unreadable: said as reading it alone says it
            raise CommandError(f"cat {self.targets_path}", done.exited, done.stderr)
        links, _, targets = done.stdout.partition(f"{_TARGETS_MARK}\n")
        return parse_links(links), parse_targets(targets if targets.strip() else None)

    def live_ids(self) -> set[str]:
        """What the proxy routes to. When the configured mode routes to nothing while the other one
        does, ``app_port`` was changed under a serving stack: refused, as that switch would not be
        zero-downtime (the old version has no route in the new mode to fall back to)."""
        daemon = self.daemon_files
        if daemon is not None and not daemon.running() and self.running() is None:
            return set()  # the stack is down (its files container too): nothing routes, nothing to start
        found_links, found_targets = self._links_and_targets()
        links, targets = set(found_links.values()), set(found_targets["live_ids"])
        mine, other = (targets, links) if self.settings.tcp else (links, targets)
        if not mine and other:
            was, now = ("a unix socket (0)", "a TCP port") if self.settings.tcp else ("a TCP port", "a unix socket (0)")
            raise PreflightError(
                f"config key deploy.app_port says the app listens on {now}, but the running stack of project "
                f"{self.settings.project!r} reaches it on {was}; a deploy cannot change that without downtime: "
                "run `down` and then `up` (or set app_port back)")
        return mine

    # -- a TCP app's targets ---------------------------------------------------------------------
    def targets(self) -> dict[str, list[str]]:
        return parse_targets(read_file(self.files, self.targets_path))

    def write_targets(self, instances: Sequence[Instance], fallback: Sequence[Instance]) -> None:
        self.prepare()
        write_file(self.files, self.targets_path, render_targets(instances, fallback, self.settings.app_port))

    def check_http(self, instance: Instance, path: str) -> str:
        """"" when ``GET path`` on a TCP app's ``instance`` answers 2xx from inside nginx; else why not."""
        url = f"http://{instance.address or '?'}:{self.settings.app_port}{path}"
        if not instance.address:
            return f"GET {url}: {instance.name} has no address on the app's network"
        proxy = self.running()
        if proxy is None:
            return f"GET {url}: the nginx container (where the check runs) is not running"
        result = self.backend.exec(proxy, health_argv(instance.address, self.settings.app_port, path), check=False)
        return health_verdict(result.exited, result.stdout, url)

    def _point_tcp(self, instances: Sequence[Instance], fallback: Sequence[Instance]) -> None:
        port = self.settings.app_port
        nowhere = [c.name for c in instances if not c.address]
        if nowhere:
            raise HandoverError(f"the new app has no address on the project's network: {', '.join(nowhere)}")
        proxy = self.running()
        if proxy is not None:
            addresses = [f"{c.address}:{port}" for c in instances]
            refused = self.backend.exec(proxy, port_argv(addresses), check=False).stdout.split()
            if refused:
                raise HandoverError(f"the new app does not listen on TCP port {port} (deploy.app_port): "
                                    f"{', '.join(refused)} refused a connection from nginx")
        self.write_targets(instances, fallback)

    def point(self, instances: Sequence[Instance], fallback: Sequence[Instance] = ()) -> None:
        """Atomically point slot n at ``instances[n]``'s socket (which must exist); backups first.
        A TCP app: replace targets.json (the new containers must accept connections on the port)."""
        if self.settings.tcp:
            self._point_tcp(instances, fallback)
            return
        names = [socket_name(c.id) for c in instances]
        missing = run(self.files, ["sh", "-c", 'cd "$1" && shift && for s; do [ -S "$s" ] || echo "$s"; done',
                                    "check", self.sockets_dir, *names]).stdout.split()
        if missing:
            raise HandoverError(
                f"the new app does not listen on its unix socket ({', '.join(missing)} missing in "
                f"{self.sockets_dir}); the app must honour UNIX_SOCKET_DIR"
            )
        backups = [(backup_name(n), socket_name(c.id)) for n, c in enumerate(fallback)]
        links = backups + [(slot_name(n), name) for n, name in enumerate(names)]
        run(self.files, ["sh", "-c", link_script(links), "point", self.sockets_dir])
        if not fallback:
            self.drop_fallback()

    def drop_fallback(self) -> None:
        if self.settings.tcp:
            current = self.targets()
            if current["fallback"]:
                write_file(self.files, self.targets_path,
                           json.dumps({**current, "fallback": [], "fallback_ids": []}, indent=1) + "\n")
            return
        run(self.files, ["sh", "-c", 'cd "$1" 2>/dev/null || exit 0; rm -f -- prev-*.sock', "unlink",
                          self.sockets_dir], check=False)

    def forget(self, instances: Sequence[Instance]) -> None:
        if self.settings.tcp:
            gone = {c.short_id for c in instances}
            current = self.targets()
            if gone & set(current["fallback_ids"]):
                kept = [(a, i) for a, i in zip(current["fallback"], current["fallback_ids"], strict=False)
                        if i not in gone]
                current.update(fallback=[a for a, _ in kept], fallback_ids=[i for _, i in kept])
                write_file(self.files, self.targets_path, json.dumps(current, indent=1) + "\n")
            return
        names = [socket_name(c.id) for c in instances]
        if names:
            run(self.files, ["sh", "-c", 'cd "$1" && shift && rm -f -- "$@"', "forget", self.sockets_dir, *names],
                check=False)

    # -- configuration and reloads ---------------------------------------------------------------
    def read_upstream(self) -> str | None:
        return read_file(self.files, self.upstream_path)

    def write_upstream(self, text: str) -> None:
        self.prepare()
        write_file(self.files, self.upstream_path, text)

    def remove_state(self) -> None:
        if self.daemon_files is not None:  # `down` removed the files container: its volumes go too
            run(self.runner, ["docker", "volume", "rm", "--force", *volume_names(self.settings)], check=False)
            return
        run(self.files, ["rm", "-rf", self.nginx_dir, self.sockets_dir, self.tls_dir])

    def test_config(self) -> None:
        """``nginx -t`` inside the running proxy; raise with nginx's own message when it fails."""
        proxy = self.running()
        if proxy is None:
            return  # nothing serves yet; `start` validates when it starts nginx
        result = self.backend.exec(proxy, ["nginx", "-t", "-q", "-c", self.conf_in_container], check=False)
        if result.exited != 0:
            raise ProxyConfigInvalid(f"nginx -t failed:\n{(result.stderr + result.stdout).strip()}")

    def fingerprint(self) -> str:
        """A digest of the files nginx loads (its nginx/ directory, the generated files and the TLS
        includes, which name the certificate and key by a digest of their content)."""
        self.copy_sources()
        text = run(self.files, ["sh", "-c", _FINGERPRINT, "fingerprint", *self._loaded_dirs()]).stdout
        return hashlib.sha256(text.encode()).hexdigest()

    def _loaded_dirs(self) -> list[str]:
        return [f"{self.settings.source_path}/nginx", self.nginx_dir, self.tls_dir]

    def config_changed(self) -> bool:
        """Whether the files differ from what nginx loaded last (its ``.loaded`` fingerprint): the
        fingerprint file and the files read in one command."""
        self.copy_sources()
        out = run(self.files, ["sh", "-c", _LOADED_AND_FINGERPRINT, "changed",
                               f"{self.nginx_dir}/{LOADED_FINGERPRINT}", *self._loaded_dirs()]).stdout
        loaded, _, text = out.partition("\n")
        return loaded.strip() != hashlib.sha256(text.encode()).hexdigest()

    def write_modules(self) -> bool:
        """modules.main for a TCP app (njs), none otherwise; returns whether it changed."""
        current = read_file(self.files, self.modules_path)
        if self.settings.tcp and current != render_modules():
            write_file(self.files, self.modules_path, render_modules())
            return True
        if not self.settings.tcp and current is not None:
            run(self.files, ["rm", "-f", self.modules_path])
            return True
        return False

    def configure(self, slots: int | None = None, *, load: bool = True) -> bool:
        previous = self.read_upstream()
        wanted = self.render(slots) if slots is not None else None
        if wanted is not None and wanted != previous:
            self.prepare()
            self._replaced_modules = read_file(self.files, self.modules_path)
            self.write_modules()
            self.write_upstream(wanted)
            self._replaced_upstream, self._wrote_upstream = previous, True
        if slots is not None:  # a deploy (not a recovery, which loads what restore() put back)
            self.tls.install()
        if not self.config_changed():
            return False
        try:
            self.test_config()
        except ProxyConfigInvalid:
            self.restore()
            raise
        if load:
            self.reload()
        return True

    def restore(self) -> bool:
        restored_tls = self.tls.restore()
        if not self._wrote_upstream:
            return restored_tls
        if self._replaced_upstream is not None:
            self.write_upstream(self._replaced_upstream)
        if self._replaced_modules is not None:
            write_file(self.files, self.modules_path, self._replaced_modules)
        else:
            run(self.files, ["rm", "-f", self.modules_path])
        self._replaced_upstream, self._replaced_modules, self._wrote_upstream = None, None, False
        return True

    def route_to_service(self, service: str, port: int) -> None:
        self.write_upstream(f"upstream {UPSTREAM_NAME} {{\n    server {service}:{port};\n}}\n"
                            f"map $uri {TARGET_VARIABLE} {{ default {UPSTREAM_NAME}; }}\n"
                            f'map $uri {FALLBACK_VARIABLE} {{ default ""; }}\n')
        self.test_config()
        self.reload()

    def mark_loaded(self) -> None:
        write_file(self.files, f"{self.nginx_dir}/{LOADED_FINGERPRINT}", self.fingerprint())

    def workers(self) -> set[int]:
        return active_workers(self._exec("sh", "-c", _LIST_PROCESSES))

    def reload(self) -> None:
        """``nginx -s reload`` and wait until no worker from before the reload accepts connections."""
        before = self.workers()
        self._exec("nginx", "-s", "reload", "-c", self.conf_in_container)
        timeout = self.settings.reload_timeout
        deadline = time.monotonic() + timeout
        while True:
            now = self.workers()
            if now and not (now & before):
                self.mark_loaded()
                return
            if time.monotonic() > deadline:
                raise ProxyConfigInvalid(
                    f"nginx did not start new workers within {timeout:g} s of the reload "
                    f"(old workers still accepting: {sorted(now & before)})"
                )
            time.sleep(RELOAD_POLL_SECONDS)

    def start(self) -> None:
        """Start the nginx service with the current upstream and wait until it runs; record what it loaded."""
        self.prepare()
        self.write_modules()
        self.write_upstream(self.render(self.settings.replicas))
        self.tls.install()
        self.backend.start_proxy(self.service)
        deadline = time.monotonic() + START_TIMEOUT
        while self.running() is None:
            if time.monotonic() > deadline:
                raise PreflightError("nginx did not start (see `logs`): its container is not running")
            time.sleep(START_POLL_SECONDS)
        self.configure()
        self.tls.commit()
