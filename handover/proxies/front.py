"""Several apps on one host: a shared front proxy that routes by host name to each app's own stack.

Each app keeps its whole stack as it is (its compose project, its nginx on its own loopback port,
its lock, release log and rollback under its own state directory); a deploy of one app never
touches the front or another app. One **front** per host (its own compose project, an nginx of the
project's image on host networking) owns the public port and sends each request, by its ``Host``
(``server_name``), to the app's published port: keep-alive connections to the apps, WebSocket
upgrades passed through, a failed connect of an idempotent request tried again.

The front's routes come from a **registry** in the front's directory (``front_dir``, one per host):
one small JSON file per app, ``apps/<project>.json`` (its host names, its port, where the front
listens). ``up``/``deploy`` register the app (:func:`claim`), ``down`` removes it (:func:`release`);
both under the front's own lock. Only when an entry changes is the front's configuration rendered
again, checked with ``nginx -t`` and reloaded. Two apps claiming one host name or one port are
refused before anything changes, naming both (:func:`collisions`); so is a port already published
by another compose project (:func:`published_conflicts`).

Everything that decides (entries, collisions, the nginx and compose files) is a pure function here;
:class:`Front` only reads and writes files and runs docker through the runner.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..backends.compose import PROJECT_LABEL
from ..dockerapi import DockerAPI
from ..errors import ConfigError, HandoverError, LockHeld, PreflightError, ProxyConfigInvalid
from ..lock import DeployLock, lock_info
from ..progress import Progress
from ..settings import PROJECT_ROOT, Settings
from ..shell import Runner, read_file, run, write_file

APPS_DIR = "apps"
NGINX_DIR = "nginx"
CONF_FILE = "nginx.conf"
CANDIDATE_FILE = "candidate.conf"
COMPOSE_FILE = "compose.yml"
IMAGE_DIR = "image"
SERVICE = "front"
CONF_IN_CONTAINER = "/etc/handover-front"
DOCKERFILE = PROJECT_ROOT / "nginx" / "Dockerfile"  # the project's nginx image, reused for the front
IMAGE_SUFFIX = "-nginx"
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (compared with, never bound here)
LOOPBACK = "127.0.0.1"
LOCK_WAIT_SECONDS = 30.0  # another app's registration holds the front's lock for a second or two
LOCK_POLL_SECONDS = 0.25
RELOAD_TIMEOUT = 10.0
RELOAD_POLL_SECONDS = 0.05
START_TIMEOUT = 30.0
BUILD_TIMEOUT = 900.0
# Idle keep-alive connections to an app's nginx are closed by the front before nginx would close
# them (its keepalive_timeout is 65 s), so the front never sends on a connection being closed.
UPSTREAM_KEEPALIVE = 32
UPSTREAM_KEEPALIVE_TIMEOUT = "50s"
# After a reload (an app added, removed or renamed), WebSockets stay on the old workers until they
# close: for up to this long, as long as the apps' own proxies keep them (proxy_read_timeout 3600s).
WORKER_SHUTDOWN_TIMEOUT = "3600s"
_PORT = re.compile(r"(?P<bind>[0-9.]+|\[::\]|::):(?P<port>\d+)(?:-(?P<last>\d+))?->")
# The project of a container: its compose project, or the Swarm stack it is a task of (deploy.backend swarm).
STACK_LABEL = "com.docker.stack.namespace"
PUBLISHED_FORMAT = ('{{.Names}}\t{{.Label "com.docker.compose.project"}}{{.Label "com.docker.stack.namespace"}}'
                    '\t{{.Ports}}')
_ENTRY_NAME = re.compile(r"([a-z0-9][a-z0-9_-]{0,62})\.json")
_LIST_PROCESSES = (
    'for p in /proc/[0-9]*; do t=$(tr "\\0" " " < "$p/cmdline" 2>/dev/null) || continue; '
    'echo "${p#/proc/} $t"; done'
)


# -- pure parts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One app in the registry: its names, the port its own stack publishes, where the front listens."""

    project: str
    hostnames: tuple[str, ...]
    bind: str
    port: int
    front_bind: str
    front_port: int

    @property
    def upstream(self) -> str:
        """Where the front reaches the app: its published port (on loopback when bound to all)."""
        host = LOOPBACK if self.bind == ANY_ADDRESS else self.bind
        return f"{host}:{self.port}"

    @property
    def listen(self) -> str:
        return f"{self.front_bind}:{self.front_port}"

    def to_json(self) -> str:
        data = asdict(self)
        data["hostnames"] = list(self.hostnames)
        return json.dumps(data, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Entry:
        try:
            data = json.loads(text)
            return cls(project=str(data["project"]), hostnames=tuple(str(h) for h in data["hostnames"]),
                       bind=str(data["bind"]), port=int(data["port"]), front_bind=str(data["front_bind"]),
                       front_port=int(data["front_port"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise HandoverError(f"unreadable entry in the front's registry {where}: {exc}; remove it or run "
                                "`up` of that app again") from None


def entry_of(settings: Settings) -> Entry:
    s = settings
    return Entry(s.project, s.hostnames, s.http_bind, s.http_port, s.front_bind, s.front_port)


def _overlaps(bind_a: str, bind_b: str) -> bool:
    return bind_a == bind_b or ANY_ADDRESS in (bind_a, bind_b)


def check_settings(settings: Settings) -> None:
    """What one app's config alone gets wrong about the front."""
    s = settings
    if s.front_project == s.project:
        raise ConfigError(f"config keys deploy.front_project and deploy.project: both are {s.project!r}; the "
                          "front is a compose project of its own, give it another name")
    if s.hostnames and s.front_port == s.http_port and _overlaps(s.front_bind, s.http_bind):
        raise ConfigError(f"config keys deploy.front_port and deploy.http_port: project {s.project!r} publishes "
                          f"its own stack on {s.http_bind}:{s.http_port}, where the front listens "
                          f"({s.front_bind}:{s.front_port}); give the app another http_port")


def collisions(entries: Iterable[Entry], candidate: Entry) -> list[str]:
    """Why ``candidate`` cannot join the apps already registered (other projects): each message
    names both projects and what they both claim. Empty when it can."""
    problems = []
    for other in entries:
        if other.project == candidate.project:
            continue
        both = f"project {other.project!r} and project {candidate.project!r}"
        shared = sorted(set(other.hostnames) & set(candidate.hostnames))
        if shared:
            problems.append(f"host name {shared[0]} is claimed by {both} (deploy.hostnames); each name can route "
                            "to one app only")
        if other.port == candidate.port and _overlaps(other.bind, candidate.bind):
            problems.append(f"port {candidate.bind}:{candidate.port} is claimed by {both} (deploy.http_port: "
                            f"{other.project!r} publishes {other.bind}:{other.port}); give each app its own port")
        if other.listen != candidate.listen:
            problems.append(f"the front listens on {other.listen} for project {other.project!r}, but project "
                            f"{candidate.project!r} says {candidate.listen} (deploy.front_bind, deploy.front_port); "
                            "every app of a host must name the same")
        elif candidate.front_port == other.port and _overlaps(candidate.front_bind, other.bind):
            problems.append(f"port {other.bind}:{other.port} of project {other.project!r} is where the front of "
                            f"project {candidate.project!r} listens ({candidate.listen}); give one another port")
    return problems


def parse_published(listing: str) -> list[tuple[str, str, str, int]]:
    """``docker ps --format '{{.Names}}\t{{.Label "com.docker.compose.project"}}\t{{.Ports}}'``
    as (container, project, address, port) for each host port published (IPv6 "all" as 0.0.0.0)."""
    found = []
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, project, ports = parts
        for match in _PORT.finditer(ports):
            first = int(match.group("port"))
            last = int(match.group("last") or first)
            bind = ANY_ADDRESS if match.group("bind") in ("[::]", "::") else match.group("bind")
            found += [(name, project, bind, port) for port in range(first, last + 1)]
    return found


def published_conflicts(listing: str, settings: Settings) -> list[str]:
    """Containers of another compose project that already publish this app's port."""
    s = settings
    problems = []
    seen = set()
    for name, project, bind, port in parse_published(listing):
        if port != s.http_port or not _overlaps(bind, s.http_bind) or project == s.project:
            continue
        if (project, name) in seen:
            continue
        seen.add((project, name))
        owner = f"project {project!r}" if project else "a container outside any compose project"
        problems.append(f"port {s.http_bind}:{s.http_port} is claimed by {owner} (container {name} publishes "
                        f"{bind}:{port}) and by project {s.project!r} (deploy.http_port); give each app its own port")
    return problems


def render_conf(entries: Sequence[Entry], empty_listen: str = f"{LOOPBACK}:8088") -> str:
    """The front's whole nginx configuration for these apps (sorted, so the same apps give the same
    bytes). With no app it answers 404 to everything on ``empty_listen``. Every entry must listen on
    the same address."""
    listens = {e.listen for e in entries}
    if len(listens) > 1:
        raise ValueError(f"the apps name different front addresses: {', '.join(sorted(listens))}")
    listen = listens.pop() if listens else empty_listen
    apps = sorted(entries, key=lambda e: e.project)
    lines = [
        "# Written by handover (handover/proxies/front.py) from the registry of apps in apps/; do not edit.",
        "worker_processes auto;",
        "pid /run/nginx.pid;",
        "error_log /dev/stderr warn;",
        f"worker_shutdown_timeout {WORKER_SHUTDOWN_TIMEOUT};",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
        "    server_tokens off;",
        "    access_log off;",
        "    tcp_nodelay on;",
        "    keepalive_timeout 65s;",
        "    keepalive_requests 10000;",
        "    client_max_body_size 1m;",
        "    # Only an upgrade to WebSocket is passed on; any other request keeps its upstream connection alive.",
        "    map $http_upgrade $front_upgrade {",
        '        default        "";',
        '        "~*^websocket$" websocket;',
        "    }",
        "    map $front_upgrade $front_connection {",
        "        default upgrade;",
        '        ""      "";',
        "    }",
        "    # Per client, as the apps' own nginx does (behind the front, the apps see the front's address).",
        "    limit_req_zone $binary_remote_addr zone=front_requests:10m rate=1000r/s;",
        "    limit_conn_zone $binary_remote_addr zone=front_connections:10m;",
        "    limit_req_status 429;",
        "    limit_conn_status 429;",
        "    proxy_http_version 1.1;",
        "    proxy_set_header Host $http_host;",
        "    proxy_set_header Upgrade $front_upgrade;",
        "    proxy_set_header Connection $front_connection;",
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header X-Forwarded-Host $http_host;",
        "    proxy_buffering off;",
        "    proxy_connect_timeout 2s;",
        "    proxy_send_timeout 60s;",
        "    # The apps' own nginx bounds plain requests (60 s); WebSockets stay open for their ticks.",
        "    proxy_read_timeout 3600s;",
        "    # An idempotent request that could not be sent (refused connect, a keep-alive connection",
        "    # closed under it) is tried again; nginx never resends a POST that may have arrived.",
        "    proxy_next_upstream error timeout;",
        "    proxy_next_upstream_tries 3;",
        "",
        "    server {",
        f"        listen {listen} default_server;",
        "        server_name _;",
        '        return 404 "no app here\\n";',
        "    }",
    ]
    for e in apps:
        name = upstream_name(e.project)
        lines += [
            "",
            f"    upstream {name} {{",
            f"        server {e.upstream} max_fails=0;",
            f"        keepalive {UPSTREAM_KEEPALIVE};",
            f"        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT};",
            "    }",
            "    server {",
            f"        listen {listen};",
            f"        server_name {' '.join(e.hostnames)};",
            "        limit_req zone=front_requests burst=2000 nodelay;",
            "        limit_conn front_connections 2500;",
            "        location / {",
            f"            proxy_pass http://{name};",
            "        }",
            "    }",
        ]
    lines += ["}", ""]
    return "\n".join(lines)


def upstream_name(project: str) -> str:
    return "app_" + re.sub(r"[^a-z0-9_]", "_", project)


def render_compose(image: str) -> str:
    """The front's compose file: one nginx on host networking (it reaches each app on loopback and
    listens where its configuration says), configured from this directory."""
    return "\n".join([
        "# Written by handover (handover/proxies/front.py): the shared front of this host's apps.",
        "services:",
        f"  {SERVICE}:",
        "    build:",
        f"      context: ./{IMAGE_DIR}",
        "      args:",
        "        BASE_IMAGE: ${PROXY_BASE_IMAGE:-debian:bookworm-slim}",
        f"    image: {image}:1",
        "    network_mode: host",
        "    environment:",
        f"      NGINX_CONF: {CONF_IN_CONTAINER}/{CONF_FILE}",
        "    volumes:",
        f"      - ./{NGINX_DIR}:{CONF_IN_CONTAINER}:ro",
        "    labels:",
        "      io.handover.role: front",
        "    healthcheck:",
        '      test: ["CMD-SHELL", "nginx -t -q -c \\"$$NGINX_CONF\\""]',
        "      interval: 5s",
        "      timeout: 3s",
        "      retries: 3",
        "    stop_grace_period: 35s",
        "    restart: unless-stopped",
        "",
    ])


def front_image(settings: Settings) -> str:
    return f"{settings.front_project}{IMAGE_SUFFIX}"


def active_workers(listing: str) -> set[int]:
    """PIDs of nginx workers that accept new connections (not those finishing old ones)."""
    pids = set()
    for line in listing.splitlines():
        pid, _, title = line.partition(" ")
        title = title.strip()
        if pid.isdigit() and title.startswith("nginx: worker process") and not title.endswith("is shutting down"):
            pids.add(int(pid))
    return pids


# -- the front on a host -----------------------------------------------------------------------------
@dataclass
class Front:
    """The front of the host ``runner`` reaches, as seen from one app's settings."""

    runner: Runner
    settings: Settings
    progress: Progress

    @property
    def path(self) -> str:
        return self.settings.front_path

    @property
    def apps_dir(self) -> str:
        return f"{self.path}/{APPS_DIR}"

    @property
    def nginx_dir(self) -> str:
        return f"{self.path}/{NGINX_DIR}"

    @property
    def listen(self) -> str:
        return f"{self.settings.front_bind}:{self.settings.front_port}"

    def entry_path(self, project: str) -> str:
        return f"{self.apps_dir}/{project}.json"

    def compose(self, *args: str) -> list[str]:
        return ["docker", "compose", "--project-name", self.settings.front_project, "--file",
                f"{self.path}/{COMPOSE_FILE}", *args]

    # -- the registry ----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        script = 'cd "$1" 2>/dev/null || exit 0; for f in *.json; do [ -f "$f" ] && echo "$f"; done; :'
        names = run(self.runner, ["sh", "-c", script, "entries", self.apps_dir]).stdout.split()
        found = []
        for name in names:
            if not _ENTRY_NAME.fullmatch(name):
                continue
            text = read_file(self.runner, f"{self.apps_dir}/{name}")
            if text is not None:
                found.append(Entry.from_json(text, f"{self.apps_dir}/{name}"))
        return found

    def locked(self) -> DeployLock:
        """The front's lock, waited for (another app's registration holds it briefly)."""
        lock = DeployLock(self.runner, self.path, notify=self.progress.warn)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                lock.acquire(lock_info("front", reason=f"registering {self.settings.project}"))
                return lock
            except LockHeld:
                if time.monotonic() > deadline:
                    raise
                time.sleep(LOCK_POLL_SECONDS)

    def check_ports(self) -> None:
        """Refuse a port another compose project publishes already (whether behind the front or not)."""
        api = DockerAPI.for_runner(self.runner)  # on this machine: no docker client started
        if api is not None:
            try:
                text = api.published(PROJECT_LABEL, STACK_LABEL)  # a Swarm stack's tasks are its project's
            except HandoverError:
                return  # the engine's preflight names what is wrong with docker
        else:
            listing = run(self.runner, ["docker", "ps", "--format", PUBLISHED_FORMAT], check=False)
            if listing.exited != 0:
                return  # the engine's preflight names what is wrong with docker
            text = listing.stdout
        problems = published_conflicts(text, self.settings)
        if problems:
            raise ConfigError("; ".join(problems) + "; nothing was changed")

    def claim(self) -> bool:
        """Check this app against the host's other apps and register it (or drop it when it has no
        host names any more). Refused, naming both apps, before anything changes. Returns whether
        the registry changed (then a running front was reloaded)."""
        check_settings(self.settings)
        self.check_ports()
        mine = entry_of(self.settings)
        if not mine.hostnames and read_file(self.runner, self.entry_path(mine.project)) is None:
            return False  # not behind the front, and never was: the front is not even read
        lock = self.locked()
        try:
            entries = self.entries()
            problems = collisions(entries, mine) if mine.hostnames else []
            if problems:
                raise ConfigError("; ".join(problems) + "; nothing was changed")
            before = next((e for e in entries if e.project == mine.project), None)
            if before == mine:
                return False
            others = [e for e in entries if e.project != mine.project]
            wanted = [*others, mine] if mine.hostnames else others
            self._apply(wanted, lambda: self._write_entry(mine) if mine.hostnames else self._drop_entry(mine.project),
                        lambda: self._write_entry(before) if before else self._drop_entry(mine.project))
            what = f"{' '.join(mine.hostnames)} -> {mine.upstream}" if mine.hostnames else "removed"
            self.progress.say(f"==> front {self.settings.front_project}: {mine.project} {what}")
            return True
        finally:
            lock.release()

    def release(self) -> bool:
        """Remove this app from the registry (``down``); a running front stops routing to it."""
        if read_file(self.runner, self.entry_path(self.settings.project)) is None:
            return False
        lock = self.locked()
        try:
            entries = self.entries()
            before = next((e for e in entries if e.project == self.settings.project), None)
            others = [e for e in entries if e.project != self.settings.project]
            self._apply(others, lambda: self._drop_entry(self.settings.project),
                        lambda: self._write_entry(before) if before else None)
            self.progress.say(f"==> front {self.settings.front_project}: {self.settings.project} removed")
            return True
        finally:
            lock.release()

    def _write_entry(self, entry: Entry) -> None:
        run(self.runner, ["mkdir", "-p", self.apps_dir])
        write_file(self.runner, self.entry_path(entry.project), entry.to_json())

    def _drop_entry(self, project: str) -> None:
        run(self.runner, ["rm", "-f", self.entry_path(project)])

    def _apply(self, entries: list[Entry], change: Callable[[], object], undo: Callable[[], object]) -> None:
        """Change the registry, then a running front's configuration (checked, then reloaded); when
        nginx refuses it, the registry and the configuration are put back."""
        change()
        try:
            if self.running() is not None:
                self.configure(entries)
            else:
                self.progress.say(f"    the front ({self.settings.front_project}) is not running: start it with "
                                  "the front task")
        except BaseException:
            undo()
            raise

    # -- the front's container -------------------------------------------------------------------
    def running(self) -> str | None:
        """The front container's ID when it runs."""
        if read_file(self.runner, f"{self.path}/{COMPOSE_FILE}") is None:
            return None
        result = run(self.runner, self.compose("ps", "--quiet", "--status", "running", SERVICE), check=False)
        ids = result.stdout.split() if result.exited == 0 else []
        return ids[0] if ids else None

    def _exec(self, container: str, *argv: str, check: bool = True) -> str:
        result = run(self.runner, ["docker", "exec", container, *argv], check=check)
        return result.stdout + result.stderr

    def configure(self, entries: list[Entry]) -> bool:
        """Render the configuration for ``entries``; when it differs from the loaded one, check it
        with ``nginx -t`` in the running front, then put it in place and reload (waiting until every
        accepting worker runs it). Returns whether it reloaded."""
        container = self.running()
        wanted = render_conf(entries, self.listen)
        loaded = read_file(self.runner, f"{self.nginx_dir}/{CONF_FILE}")
        if container is None or loaded == wanted:
            return False
        write_file(self.runner, f"{self.nginx_dir}/{CANDIDATE_FILE}", wanted)
        test = run(self.runner, ["docker", "exec", container, "nginx", "-t", "-q", "-c",
                                 f"{CONF_IN_CONTAINER}/{CANDIDATE_FILE}"], check=False)
        if test.exited != 0:
            raise ProxyConfigInvalid(f"the front's nginx -t failed; nothing reloaded:\n"
                                     f"{(test.stderr + test.stdout).strip()}")
        before = active_workers(self._exec(container, "sh", "-c", _LIST_PROCESSES))
        run(self.runner, ["mv", "-f", f"{self.nginx_dir}/{CANDIDATE_FILE}", f"{self.nginx_dir}/{CONF_FILE}"])
        try:
            self._exec(container, "nginx", "-s", "reload", "-c", f"{CONF_IN_CONTAINER}/{CONF_FILE}")
            deadline = time.monotonic() + RELOAD_TIMEOUT
            while True:
                now = active_workers(self._exec(container, "sh", "-c", _LIST_PROCESSES))
                if now and not (now & before):
                    return True
                if time.monotonic() > deadline:
                    # e.g. a port nginx -t cannot see is taken: the old workers serve on with the old file
                    logs = run(self.runner, ["docker", "logs", "--tail", "5", container], check=False)
                    raise ProxyConfigInvalid(f"the front's nginx did not take the new configuration within "
                                             f"{RELOAD_TIMEOUT:g} s of the reload; it serves on with the previous "
                                             f"one:\n{(logs.stdout + logs.stderr).strip()}")
                time.sleep(RELOAD_POLL_SECONDS)
        except BaseException:
            if loaded is not None:
                write_file(self.runner, f"{self.nginx_dir}/{CONF_FILE}", loaded)
            raise

    def up(self) -> str:
        """Start the front (building its image the first time), or bring a running one up to date
        with the registry. Returns what it did."""
        from .. import images

        lock = self.locked()
        try:
            entries = self.entries()
            listens = {e.listen for e in entries}
            if len(listens) > 1:
                raise ConfigError(f"the apps of this host name different front addresses "
                                  f"({', '.join(sorted(listens))}): give every app the same deploy.front_bind "
                                  "and deploy.front_port")
            if self.running() is not None:
                reloaded = self.configure(entries)
                return "reloaded with the registry's apps" if reloaded else "already up to date"
            run(self.runner, ["mkdir", "-p", self.nginx_dir, f"{self.path}/{IMAGE_DIR}"])
            write_file(self.runner, f"{self.path}/{IMAGE_DIR}/Dockerfile", Path(DOCKERFILE).read_text())
            write_file(self.runner, f"{self.path}/{COMPOSE_FILE}", render_compose(front_image(self.settings)))
            write_file(self.runner, f"{self.nginx_dir}/{CONF_FILE}", render_conf(entries, self.listen))
            base = images.ensure_base_image(self.runner, self.settings.proxy_base_image, self.progress)
            env = {"PROXY_BASE_IMAGE": base}
            run(self.runner, self.compose("build", SERVICE), env=env, timeout=BUILD_TIMEOUT)
            run(self.runner, self.compose("up", "--detach", "--no-build", SERVICE), env=env, timeout=BUILD_TIMEOUT)
            deadline = time.monotonic() + START_TIMEOUT
            while self.running() is None:
                if time.monotonic() > deadline:
                    logs = run(self.runner, self.compose("logs", "--tail", "20", SERVICE), check=False)
                    raise PreflightError(f"the front did not start:\n{(logs.stdout + logs.stderr).strip()}")
                time.sleep(RELOAD_POLL_SECONDS)
            return "started"
        finally:
            lock.release()

    def down(self) -> bool:
        """Stop and remove the front's container (the registry stays)."""
        if read_file(self.runner, f"{self.path}/{COMPOSE_FILE}") is None:
            return False
        run(self.runner, self.compose("down", "--timeout", "35"), timeout=120)
        return True

    def lines(self) -> list[str]:
        """What the front serves: where it listens, whether it runs, each app's names and port."""
        entries = self.entries()
        state = "running" if self.running() else "not running"
        listen = entries[0].listen if entries else f"{self.settings.front_bind}:{self.settings.front_port}"
        out = [f"front {self.settings.front_project} on {listen}: {state} ({self.path})"]
        out += [f"  {e.project:<20} {' '.join(e.hostnames)} -> {e.upstream}" for e in sorted(entries,
                                                                                          key=lambda e: e.project)]
        return out or ["(no app registered)"]


# -- what the front doors call -------------------------------------------------------------------------
def claim(runner: Runner, settings: Settings, progress: Progress) -> bool:
    """Before ``up``/``deploy``: refuse a host name or port another app claims; register this app."""
    refuse_elsewhere(settings)
    return Front(runner, settings, progress).claim()


def refuse_elsewhere(settings: Settings) -> None:
    """The front runs on host networking with its directory bind-mounted: it needs the Docker daemon
    on the machine whose files it is given, which ``deploy.proxy_files: volume`` says is not so."""
    if settings.hostnames and settings.proxy_volumes:
        raise ConfigError("config key deploy.hostnames: the shared front (host networking, its files bind-mounted) "
                          "needs the Docker daemon on this machine, but deploy.proxy_files is volume (Docker Desktop, "
                          "or DOCKER_HOST elsewhere); leave hostnames \"\" there, or set proxy_files: bind where the "
                          "daemon runs here")


def release(runner: Runner, settings: Settings, progress: Progress) -> bool:
    """After ``down``: the front stops routing to this app."""
    return Front(runner, settings, progress).release()


def front_task(runner: Runner, settings: Settings, progress: Progress, *, stop: bool = False,
               show: bool = False) -> list[str]:
    """The ``front`` task: start or refresh the host's front (``stop``: remove its container;
    ``show``: only say what it serves). Returns the lines to print."""
    refuse_elsewhere(settings)
    front = Front(runner, settings, progress)
    if show:
        return front.lines()
    if stop:
        return [f"front {settings.front_project}: " + ("stopped" if front.down() else "was never started")]
    return [f"front {settings.front_project}: {front.up()}", *front.lines()]
