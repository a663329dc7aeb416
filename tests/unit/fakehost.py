"""A fast, exact fake of one Docker host, for unit tests of the deploy engine.

The engine reaches a host only through a runner (anything with ``.run(line, **kwargs)``, as Invoke's
``Context`` and Fabric's ``Connection``). :class:`FakeHost` gives it one, ``host.runner``, that:

* carries out every command that is not ``docker ...`` for real in the test's ``tmp_path``: the
  state directory, the live socket links, the deploy lock and the release log are real files there.
  The plain file commands and the engine's own file scripts (``mkdir -p``, ``chmod``, the link
  swaps, the release log append, the holder file...) are done in this process by
  :mod:`tests.unit.fakeshell`, which test_fakehost.py holds to the real shell's outcome; anything
  else runs with ``sh -c <line>`` (``host.shell_lines`` lists those; ``host.in_process = False``
  sends every command to the real shell). The lock's keeper (``flock``) is kept in this process
  too (:class:`FakeKeeper`, the same ``flock(2)`` on the same file);
* answers ``docker ...`` (after an ``env K=V ...`` prefix, whose variables count) from an in-memory
  model of images and containers (IDs, names ``<project>-<service>-<n>``, compose labels, status,
  health, restart count, creation order, exit code), shaped as Docker and Compose v2 answer;
* makes a real AF_UNIX socket file ``<state>/sockets/app-<short id>.sock`` when an app container
  starts listening, so the engine's ``[ -S ... ]`` checks and link swaps meet the real thing;
* gives each container an address on ``<project>_default`` (``docker inspect``'s NetworkSettings) and,
  for a TCP app (compose env ``APP_SOCKET_DIR`` empty), answers the proxy's bash ``/dev/tcp`` clients
  (the health GET, the port check) run with ``docker exec`` in the nginx container;
* fails loudly (``AssertionError`` naming the command, also kept in ``host.unknown``) on any docker
  command or option it does not model, so a test never passes by accident.

Time in the model is counted in inspections, never in seconds: a container's health moves on each
time ``docker inspect`` reports it, and nginx's workers move on each time the proxy's processes are
listed. Tests stay fast by giving the engine tiny poll intervals (:func:`fake_settings` does).

Scripting, in short::

    host = FakeHost(tmp_path)                      # host.settings: a deploy tree inside tmp_path
    engine = Engine(host.runner, host.settings, Progress(quiet=True))
    host.behave("v2", Behaviour(never_healthy=True))   # or Behaviour(crash=True), (dies_after=1),
                                                   # (listens=False), (healthy_after=None): stuck,
                                                   # a TCP app: (fixed_port=9000), (http_status=404)
    host.fail_build("v3")                          # compose build of v3 exits 1 with pip's words
    host.nginx_test_error = 'unknown directive "x"'  # nginx -t (and -s reload) fail with it
    host.nginx_reload_delay = None                 # a reload never brings new workers
    host.fail_on(docker("stop"), exited=1, stderr="boom")     # matched by predicate or substring
    host.timeout_on(" up --detach")                # invoke.exceptions.CommandTimedOut
    host.interrupt_on(compose("up"), after=True)   # Ctrl-C held until the command returned
    rule = host.kill_on(docker("rm"))              # SIGKILL of the tool: every later command
    ...                                            # raises Killed without effect ...
    host.revive()                                  # ... until the tool is started again

The release command (``compose run --rm --no-deps -T --name N app ARGV``) makes a one-off
container of the version's image with the app's environment, records it in ``host.release_runs``
(argv, the container's env, image, and the app containers there at that moment) and ends with
``host.release_outcome(argv, env)`` (default: prints ``release ran``, exit 0);
``host.release_hangs = True`` leaves it running and raises Invoke's ``CommandTimedOut`` instead.

Other knobs: ``host.default_behaviour`` (versions without their own), ``host.docker_installed``,
``host.daemon_running``, ``host.compose_installed`` (preflight diagnoses),
``host.crash_container(ref)`` (a container dies between two runs), ``host.registry`` (what
``docker pull`` can fetch; the settings' base images are present from the start). ``APP_FAULT``
values: ``unhealthy``, ``crash`` (exit 3, no socket), ``exit-after:S`` (dies on the first report
after its first healthy one, whatever S), anything else (exit 2, as the app's config error).

Each fault rule takes ``nth`` (the first matching command that fires it) and ``times`` (how many
it fires, ``None`` for always), and counts ``rule.fired`` so a test can prove the fault was hit.
Queries: ``host.commands`` (argv lists), ``host.calls`` (with env and outcome),
``host.matching(match, since=len_before)``, ``host.app_containers()``, ``host.live_targets()``,
``host.live_containers()``, ``host.live_versions()``, ``host.running(version)``,
``host.sockets()``, ``host.tcp_targets()``, ``host.health_gets``, ``host.records()``,
``host.lock_held()``, ``host.image_tags()``, ``host.nginx_reloads``. ``APP_FAULT`` in a compose
command's environment overrides a version's behaviour, as the real app obeys it.

Compose commands may carry more ``--file``s: the services of the later ones (the user's own compose
file) are modelled too, each one container of its image, without sockets or health scripts.
``docker exec`` in an app container (a ``pre_stop``) is kept in ``container.execs`` and succeeds
unless a rule says otherwise; ``container.stop_signal`` is the ``APP_STOP_SIGNAL`` it was created with.

Other settings: ``FakeHost(tmp_path, fake_settings(tmp_path, replicas=2))``. The engine runs
``nginx -t`` only when nginx's files change: edit ``tmp_path/deploy/nginx/nginx.conf`` for that.

The runner honours Invoke's ``hide``, ``warn`` (``UnexpectedExit`` without it), ``in_stream``,
``timeout``, ``env``, ``pty`` and ``echo``; any other option (``asynchronous``...) fails loudly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import CommandTimedOut, UnexpectedExit
from invoke.runners import Result, normalize_hide

from handover import lock
from handover import settings as settings_mod
from handover.cli import defaults
from handover.proxies import front
from handover.settings import PROJECT_ROOT, Settings

from . import fakeshell

DOCKER_VERSION = "27.3.1"
COMPOSE_VERSION = "2.29.7"
DEFAULT_HEALTHY_AFTER = 2  # inspections reporting "starting" before "healthy"
DEFAULT_DIES_AFTER = 2  # for APP_FAULT=exit-after: inspections after the first healthy one (the switch reads one)
DEFAULT_RELOAD_DELAY = 1  # process listings after a reload before the new workers show
DRAINING_LISTINGS = 2  # listings an old worker stays "shutting down" after new ones appear
NGINX_WORKERS = 2
EXIT_CRASH = 3  # the app's exit status for APP_FAULT=crash
EXIT_EXIT_AFTER = 4  # ... and for APP_FAULT=exit-after
EXIT_CONFIG_ERROR = 2  # ... and for an APP_FAULT it does not know
EXIT_NOT_FOUND = 127
SHIM_EXIT = 97  # the docker stand-in on PATH for real shell commands exits with this
SHIM_MARK = "fakehost: a real shell command called docker"
TIMED_OUT_EXIT = -1
TERMINATED_EXIT = 143  # a process ended by SIGTERM, as its shell reports it
KILLED_EXIT = 137  # ... by SIGKILL
SHELL = "/bin/sh"  # POSIX sh (dash on Debian): fast to start, and it catches bashisms
CREATED_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
APP, PROXY = "app", "nginx"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
VERSION_LABEL = "io.handover.version"
ROLE_LABEL = "io.handover.role"
CONTAINER_ROOT = "/etc/handover"
SOCKET_DIR_IN_CONTAINER = "/run/handover"
SOCKET_PATH_LIMIT = 100  # AF_UNIX paths hold 108 bytes; longer ones are bound through the directory's fd
SHORT_ID = 12
# A fast engine: it polls without waiting, and gives up soon if a test scripts a stuck container.
FAST_TIMINGS: dict[str, Any] = {
    "health_poll_interval": 0.001,
    "health_timeout": 2.0,
    "post_switch_check": 0.01,
    "reload_timeout": 1.0,
}
BUILD_FAILURE_STDOUT = (
    "Step 7/12 : RUN pip install --no-index --find-links /wheels -r requirements.txt\n"
    "Looking in links: /wheels\n"
    "ERROR: Could not find a version that satisfies the requirement nosuchpackage==9.9 (from versions: none)\n"
    "ERROR: No matching distribution found for nosuchpackage==9.9\n"
)
DAEMON_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"


class _Hang(Exception):
    """A modelled command that never ends: the runner turns it into Invoke's ``CommandTimedOut``."""


@dataclass(frozen=True)
class ReleaseRun:
    """One ``compose run`` of the release command, as the host saw it."""

    argv: list[str]
    env: dict[str, str]  # the one-off container's environment (the secrets file's lines included)
    image: str
    name: str
    others: list[tuple[str, str, str]]  # (name, version, status) of the app containers there at that moment


def release_ran(argv: list[str], env: Mapping[str, str]) -> Outcome:
    return Outcome(stdout="release ran\n")


class Killed(BaseException):
    """The deploy tool was SIGKILLed: it runs nothing more (see :meth:`FakeHost.kill_on`)."""


# -- scripting ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Behaviour:
    """How an app container of one version behaves, counted in ``docker inspect`` reports.

    ``healthy_after``: reports "starting" that many times, then "healthy" (``None``: "starting"
    forever, so the engine's health timeout runs out). ``never_healthy``: "unhealthy" instead.
    ``crash``: exits at once with ``exit_code`` and restarts over and over (never listens).
    ``dies_after``: healthy, then on the N-th report after the first healthy one it has exited
    with ``exit_code`` and is being restarted. ``listens``: makes its unix socket (or, as a TCP app,
    accepts connections on its port once healthy). A TCP app listens on ``PORT`` from its
    environment unless ``fixed_port`` says otherwise (an app that ignores PORT), and answers any GET
    with ``http_status`` (503 while ``never_healthy``).
    """

    healthy_after: int | None = DEFAULT_HEALTHY_AFTER
    never_healthy: bool = False
    crash: bool = False
    dies_after: int | None = None
    exit_code: int = 1
    listens: bool = True
    log: tuple[str, ...] = ()
    fixed_port: int | None = None
    http_status: int = 200
    no_healthcheck: bool = False  # an image without HEALTHCHECK: Docker reports no health at all

    @staticmethod
    def from_fault(fault: str) -> Behaviour | None:
        """What the real app does with ``APP_FAULT`` (None: no fault)."""
        name, _, _ = fault.partition(":")
        if not fault:
            return None
        if fault == "unhealthy":
            return Behaviour(never_healthy=True, log=("GET /healthz 503 (APP_FAULT=unhealthy)",))
        if fault == "crash":
            return Behaviour(crash=True, exit_code=EXIT_CRASH, listens=False,
                             log=(f"APP_FAULT=crash: exiting with status {EXIT_CRASH} before serving",))
        if name == "exit-after":
            return Behaviour(dies_after=DEFAULT_DIES_AFTER, exit_code=EXIT_EXIT_AFTER,
                             log=(f"APP_FAULT={fault}: exiting with status {EXIT_EXIT_AFTER}",))
        return Behaviour(crash=True, exit_code=EXIT_CONFIG_ERROR, listens=False,
                         log=(f"config error: APP_FAULT {fault!r} is not supported",))


@dataclass(frozen=True)
class Command:
    """One command line as the host got it: ``argv`` without the ``env`` prefix, ``env`` its
    variables (the runner's ``env=`` merged under the prefix's)."""

    line: str
    argv: list[str]
    env: dict[str, str]

    @property
    def is_docker(self) -> bool:
        return bool(self.argv) and self.argv[0] == "docker"


Match = str | Callable[[Command], bool]


def docker(*words: str) -> Callable[[Command], bool]:
    """Match ``docker <words...>`` (e.g. ``docker("stop")``, ``docker("exec")``)."""
    return lambda c: c.argv[: len(words) + 1] == ["docker", *words]


def compose(subcommand: str, *words: str) -> Callable[[Command], bool]:
    """Match ``docker compose ... <subcommand>`` whose arguments hold every one of ``words``."""

    def match(c: Command) -> bool:
        if c.argv[:2] != ["docker", "compose"]:
            return False
        try:
            _, rest = _compose_globals(c.argv[2:])
        except AssertionError:
            return False
        return bool(rest) and rest[0] == subcommand and all(w in rest[1:] for w in words)

    return match


@dataclass
class Rule:
    """A scripted fault: what it does, on which commands, and how often it fired."""

    match: Match
    action: str  # fail, timeout, interrupt, kill
    after: bool = False  # let the command take effect first
    nth: int = 1
    times: int | None = 1
    exited: int = 1
    stdout: str = ""
    stderr: str = ""
    seen: int = 0
    fired: int = 0

    def matches(self, command: Command) -> bool:
        return self.match in command.line if isinstance(self.match, str) else bool(self.match(command))

    def count(self, command: Command) -> bool:
        """Count a matching command; True if this one is due to fire the fault."""
        if not self.matches(command):
            return False
        self.seen += 1
        return self.seen >= self.nth and (self.times is None or self.fired < self.times)


@dataclass
class Call:
    command: Command
    outcome: str = "ran"  # ran, failed (scripted), timed out, interrupted, killed, unknown
    exited: int | None = None


# -- the model ---------------------------------------------------------------------------------------
@dataclass
class Nginx:
    """nginx's worker processes, as its process listing shows them."""

    next_pid: int = 7
    active: list[int] = field(default_factory=list)
    draining: dict[int, int] = field(default_factory=dict)  # pid -> listings left
    pending: int | None = None  # listings until a reload's new workers appear
    stuck: bool = False

    def spawn(self) -> list[int]:
        pids = list(range(self.next_pid, self.next_pid + NGINX_WORKERS))
        self.next_pid += NGINX_WORKERS
        return pids


@dataclass
class Container:
    id: str
    name: str
    project: str
    service: str
    number: int
    image: str
    image_id: str
    labels: dict[str, str]
    env: dict[str, str]
    behaviour: Behaviour
    seq: int
    socket_dir: Path | None = None
    root_mount: str = ""
    status: str = "created"
    health: str = "starting"
    restarts: int = 0
    exit_code: int = 0
    inspections: int = 0
    healthy_at: int | None = None
    dead: bool = False
    log: list[str] = field(default_factory=list)
    nginx: Nginx | None = None
    execs: list[list[str]] = field(default_factory=list)  # commands run in it with docker exec
    stop_signal: str = "SIGTERM"
    address: str = ""  # its IP on the project's network while it runs

    @property
    def tcp_port(self) -> int | None:
        """The TCP port a TCP app (no UNIX_SOCKET_DIR) accepts connections on now, if any."""
        b = self.behaviour
        if self.nginx is not None or self.env.get("UNIX_SOCKET_DIR") or not b.listens or b.crash or self.dead:
            return None
        if self.status != "running" or (self.healthy_at is None and not b.never_healthy):
            return None  # still starting: nothing listens yet
        return b.fixed_port or int(self.env.get("PORT") or "8000")

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    @property
    def version(self) -> str:
        return self.labels.get(VERSION_LABEL, "")

    @property
    def created(self) -> str:
        return (CREATED_EPOCH + timedelta(seconds=self.seq)).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")

    @property
    def socket_path(self) -> Path | None:
        return self.socket_dir / f"app-{self.short_id}.sock" if self.socket_dir else None

    def advance(self) -> None:
        """One more health report: move along the behaviour's script."""
        self.inspections += 1
        if self.status not in ("running", "restarting"):
            return
        b = self.behaviour
        if self.dead or b.crash:
            self.dead = True
            self.status, self.health, self.exit_code = "restarting", "starting", b.exit_code
            self.restarts += 1
            self.log.append(f"exited with status {b.exit_code}; restarting")
            return
        if self.healthy_at is not None and b.dies_after is not None \
                and self.inspections >= self.healthy_at + b.dies_after:
            self.dead = True
            self.status, self.health, self.exit_code = "restarting", "unhealthy", b.exit_code
            self.restarts += 1
            self.log.append(f"exited with status {b.exit_code}; restarting")
            return
        if b.no_healthcheck:
            self.health = ""
        elif b.healthy_after is None or self.inspections <= b.healthy_after:
            self.health = "starting"
        elif b.never_healthy:
            self.health = "unhealthy"
        else:
            self.health = "healthy"
            if self.healthy_at is None:
                self.healthy_at = self.inspections

    def inspect(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "Created": self.created,
            "Name": f"/{self.name}",
            "RestartCount": self.restarts,
            "Image": self.image_id,
            "State": {
                "Status": self.status,
                "Running": self.status in ("running", "restarting"),
                "Restarting": self.status == "restarting",
                "ExitCode": self.exit_code,
                **({"Health": {"Status": self.health, "FailingStreak": 0, "Log": []}} if self.health else {}),
            },
            "Config": {
                "Image": self.image,
                "Labels": dict(self.labels),
                "Env": [f"{k}={v}" for k, v in sorted(self.env.items())],
            },
            "NetworkSettings": {"Networks": {f"{self.project}_default": {
                "IPAddress": self.address if self.status in ("running", "restarting") else ""}}},
        }


@dataclass(frozen=True)
class Outcome:
    stdout: str = ""
    stderr: str = ""
    exited: int = 0


OK = Outcome()


def _fail(message: str, exited: int = 1) -> Outcome:
    return Outcome(stderr=message + "\n", exited=exited)


def _normal_ref(ref: str) -> str:
    """Docker's short form of an image reference, with ``:latest`` when it has no tag."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    if ref.startswith("sha256:") or "@" in ref:
        return ref
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


def _options(argv: list[str], flags: Iterable[str], valued: Iterable[str], what: str
             ) -> tuple[set[str], dict[str, list[str]], list[str]]:
    """Split ``argv`` into the flags given, the valued options' values and the positionals.

    Names are given in their long form; ``"-q|--quiet"`` names both forms. Anything else that
    looks like an option is not modelled: fail loudly.
    """
    def table(names: Iterable[str]) -> dict[str, str]:
        out = {}
        for spec in names:
            forms = spec.split("|")
            for form in forms:
                out[form] = forms[-1]
        return out

    flag_names, valued_names = table(flags), table(valued)
    seen: set[str] = set()
    values: dict[str, list[str]] = {}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if arg.startswith("-") and arg != "-":
            if name in valued_names:
                if eq:
                    value = inline
                else:
                    i += 1
                    if i >= len(argv):
                        raise AssertionError(f"fakehost: {what}: option {arg} lacks its value")
                    value = argv[i]
                values.setdefault(valued_names[name], []).append(value)
            elif arg in flag_names:
                seen.add(flag_names[arg])
            else:
                raise AssertionError(f"fakehost does not model option {arg} of {what}")
        else:
            positionals.append(arg)
        i += 1
    return seen, values, positionals


def _compose_globals(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--project-name P --file F [--file F2...]`` before the compose subcommand; returns them (``file``
    the first, ``files`` all of them, newline-separated) and the rest."""
    found: dict[str, str] = {}
    names = {"-p": "project", "--project-name": "project", "-f": "file", "--file": "file"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, inline = argv[i].partition("=")
        if name not in names:
            raise AssertionError(f"fakehost does not model the compose option {argv[i]}")
        if not eq:
            i += 1
            if i >= len(argv):
                raise AssertionError(f"fakehost: compose option {argv[i - 1]} lacks its value")
            inline = argv[i]
        if names[name] == "file":
            found["files"] = f"{found['files']}\n{inline}" if "files" in found else inline
            found.setdefault("file", inline)
        else:
            found[names[name]] = inline
        i += 1
    return found, argv[i:]


def _extra_services(files: list[str]) -> dict[str, str]:
    """The services of the compose files after handover's own (the user's), each with its image."""
    from invoke.vendor import yaml

    out: dict[str, str] = {}
    for file in files[1:]:
        data = yaml.safe_load(Path(file).read_text()) or {}  # type: ignore[no-untyped-call]
        for name, spec in (data.get("services") or {}).items():
            out[str(name)] = str((spec or {}).get("image") or f"{name}-image:latest")
    return out


def _bind_socket(path: Path) -> None:
    """Make ``path`` a real AF_UNIX socket file (bind, then close: nothing listens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(str(path)) < SOCKET_PATH_LIMIT:
            sock.bind(str(path))
        else:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                sock.bind(f"/proc/self/fd/{directory}/{path.name}")
            finally:
                os.close(directory)
    finally:
        sock.close()


def _env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines of a compose ``env_file`` (missing is fine: it is ``required: false``)."""
    file = Path(path)
    if not path or not file.is_file():
        return {}
    out = {}
    for line in file.read_text().splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key and not key.startswith("#"):
            out[key.strip()] = value
    return out


def fake_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of a deploy tree inside ``tmp_path``: the repository's compose file and nginx.conf
    under ``tmp_path/deploy``, the state in ``tmp_path/deploy/.state``, fast engine timings."""
    deploy = tmp_path / "deploy"
    for rel in ("compose/docker-compose.yml", "nginx/nginx.conf", "nginx/handover.js"):
        (deploy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_ROOT / rel, deploy / rel)
    config = dict(defaults()["deploy"])
    loaded = settings_mod.load(config, deploy_dir=str(deploy))
    # The state directory, as the fake host runs it: not the Docker volumes that `auto` picks where
    # DOCKER_HOST points elsewhere (tests/unit/test_daemon_files.py tests those).
    return dataclasses.replace(loaded, **{**FAST_TIMINGS, "proxy_files": "bind", **overrides})


class FakeKeeper:
    """The deploy lock's keeper, ``flock -n -o -E 75 FILE sh -c 'printf "locked ..."; exec cat'``, done in
    this process: the same ``flock(2)`` on the same file (so it conflicts with real keepers and with other
    fake ones exactly as two flock processes do), held until its stdin closes or unlock kills it.

    It stands in for Invoke's Promise and Runner: ``promise.runner.stdout``, ``process_is_finished``,
    ``close_proc_stdin()``, ``kill()`` and ``promise.join()``. Its pid is above the kernel's pid_max,
    so no real process has it (unlock's kill reaches it through the fake host). When the lock file
    cannot be opened the real keeper runs instead, to report the real reason.
    """

    def __init__(self, command: Command, path: str, fd: int, pid: str) -> None:
        self.command, self.path, self.pid = command, path, pid
        self.boot_id = _boot_id()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.exited: int | None = None
        self.fd: int | None = fd
        self.promise = self
        self.runner = self

    @classmethod
    def start(cls, command: Command, root: Path, seq: int) -> FakeKeeper | None:
        argv = command.argv
        if argv[:3] != ["sh", "-c", lock.KEEPER_SCRIPT] or len(argv) != 5 or argv[3] != "keeper" \
                or shlex.join(argv) != command.line:
            return None
        try:
            fd = os.open(root / argv[4], os.O_RDONLY | os.O_CREAT | os.O_NOCTTY, 0o666)
        except OSError:
            return None
        keeper = cls(command, argv[4], fd, str(_pid_max() + 1 + seq))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            keeper.end(lock.KEEPER_BUSY)
        else:
            keeper.stdout.append(f"{lock.KEEPER_READY} {keeper.boot_id} {keeper.pid}\n")
        return keeper

    @property
    def process_is_finished(self) -> bool:
        return self.exited is not None

    def end(self, exited: int) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.exited is None:
            self.exited = exited

    def close_proc_stdin(self) -> None:
        self.end(0)  # cat sees the end of its input; flock's child exits 0, and so does flock

    def kill(self) -> None:
        self.end(KILLED_EXIT)

    def join(self) -> Result:
        if self.exited is None:
            raise AssertionError("fakehost: join() of a lock keeper that still runs would wait forever")
        return Result(stdout="".join(self.stdout), stderr="", command=self.command.line, shell=SHELL, env={},
                      exited=self.exited, pty=False, hide=("stdout", "stderr"))


def _boot_id() -> str:
    try:
        return Path(lock.BOOT_ID_FILE).read_text().strip()
    except OSError:
        return ""


def _pid_max() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text())


class FakeRunner:
    """What the engine gets: ``run(line, **kwargs)`` as Invoke's ``Context.run``."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def run(self, command: str, **kwargs: Any) -> Result:
        return self.host.run(command, **kwargs)


RUN_KWARGS = {"hide", "warn", "in_stream", "timeout", "env", "pty", "echo", "asynchronous"}


class FakeHost:
    """One Docker host: real files under ``root``, docker in memory. See the module docstring."""

    def __init__(self, root: Path, settings: Settings | None = None) -> None:
        self.root = Path(root)
        self.settings = settings or fake_settings(self.root)
        self.runner = FakeRunner(self)
        # scripted state
        self.behaviours: dict[str, Behaviour] = {}
        self.default_behaviour = Behaviour()
        self.build_failures: dict[str, str] = {}
        self.nginx_test_error: str | None = None
        self.nginx_reload_delay: int | None = DEFAULT_RELOAD_DELAY
        self.docker_installed = True
        self.daemon_running = True
        self.compose_installed = True
        self.registry: set[str] = set()  # references `docker pull` can fetch
        self.extra: dict[str, str] = {}  # the user's services (extra compose files) of the last compose command
        self.release_outcome: Callable[[list[str], dict[str, str]], Outcome] = release_ran
        self.release_hangs = False
        self.release_runs: list[ReleaseRun] = []
        self.rules: list[Rule] = []
        self.killed = False
        # the model
        self.images: dict[str, str] = {}  # reference -> image ID
        self.containers: dict[str, Container] = {}
        self.nginx_reloads = 0
        self.health_gets: list[str] = []  # URLs a TCP app's health path was fetched from (answered)
        self._seq = 0
        # what happened
        self.calls: list[Call] = []
        self.background: list[Any] = []  # invoke Promises of commands left running
        self.unknown: list[str] = []
        self.in_process = True  # answer plain file commands without a real sh (see fakeshell)
        self.shell_lines: list[str] = []  # the lines a real sh ran
        self.keepers: list[FakeKeeper] = []  # the lock keepers modelled in this process
        self._lock = threading.RLock()
        self._shim = self.root / ".fakehost" / "bin"
        self._shim.mkdir(parents=True, exist_ok=True)
        docker_shim = self._shim / "docker"
        docker_shim.write_text(f'#!/bin/sh\necho "{SHIM_MARK}: docker $*" >&2\nexit {SHIM_EXIT}\n')
        docker_shim.chmod(0o755)
        for ref in (self.settings.base_image, self.settings.proxy_base_image):
            self._add_image(ref)

    def context(self) -> Context:
        """An Invoke ``Context`` whose ``run`` is this host's, to call tasks as Invoke does."""
        host = self

        class HostContext(Context):
            def run(self, command: str, **kwargs: Any) -> Result:
                return host.run(command, **kwargs)

        return HostContext()

    # -- scripting ---------------------------------------------------------------------------------
    def behave(self, version: str, behaviour: Behaviour) -> None:
        """App containers of ``version`` started from now on behave so."""
        self.behaviours[version] = behaviour

    def fail_build(self, version: str, stdout: str = BUILD_FAILURE_STDOUT) -> None:
        """``compose build`` of ``version`` exits 1 with ``stdout`` (the classic builder's pip output)."""
        self.build_failures[version] = stdout

    def _rule(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def fail_on(self, match: Match, exited: int = 1, stderr: str = "", stdout: str = "", *, after: bool = False,
                nth: int = 1, times: int | None = 1) -> Rule:
        """The matching command exits ``exited`` with that output; without effect unless ``after``."""
        return self._rule(Rule(match, "fail", after, nth, times, exited, stdout, stderr))

    def timeout_on(self, match: Match, *, after: bool = False, nth: int = 1, times: int | None = 1) -> Rule:
        """Raise Invoke's ``CommandTimedOut`` (as Invoke does even with ``warn=True``)."""
        return self._rule(Rule(match, "timeout", after, nth, times))

    def interrupt_on(self, match: Match, *, before: bool = False, after: bool = False, nth: int = 1,
                     times: int | None = 1) -> Rule:
        """Raise ``KeyboardInterrupt`` before the command runs (default), or ``after`` it ran:
        a Ctrl-C held until the command returned."""
        if before and after:
            raise ValueError("interrupt_on: before or after, not both")
        return self._rule(Rule(match, "interrupt", after, nth, times))

    def kill_on(self, match: Match, *, after: bool = False, nth: int = 1) -> Rule:
        """SIGKILL of the tool at the matching command (before it is sent, or ``after`` it ran):
        raise :class:`Killed`, and so does every later command, without effect, until :meth:`revive`."""
        return self._rule(Rule(match, "kill", after, nth, 1))

    def crash_container(self, ref: str, exit_code: int = 137) -> Container:
        """The container (ID, short ID or name) dies now, between commands: exited with ``exit_code``."""
        c = self._find(ref)
        if c is None:
            raise ValueError(f"fakehost: no container {ref!r}")
        c.status, c.health, c.exit_code = "exited", "unhealthy", exit_code
        c.log.append(f"killed; exited with status {exit_code}")
        return c

    def revive(self) -> None:
        """The tool runs again (a new process): commands work again; the faults fired stay spent."""
        self.killed = False

    def clear_faults(self) -> None:
        self.rules.clear()

    # -- queries -----------------------------------------------------------------------------------
    @property
    def commands(self) -> list[list[str]]:
        """Every command the runner was given, as argv (without the env prefix)."""
        return [call.command.argv for call in self.calls]

    def commands_since(self, mark: int) -> list[list[str]]:
        """``host.commands[mark:]``: take ``mark = len(host.commands)`` before a step."""
        return self.commands[mark:]

    def matching(self, match: Match, since: int = 0) -> list[list[str]]:
        """The commands from ``host.commands[since:]`` that ``match`` (a predicate or substring) selects."""
        rule = Rule(match, "query")
        return [call.command.argv for call in self.calls[since:] if rule.matches(call.command)]

    def containers_of(self, service: str, project: str | None = None) -> list[Container]:
        project = project or self.settings.project
        found = [c for c in self.containers.values() if c.project == project and c.service == service]
        return sorted(found, key=lambda c: c.seq)

    def app_containers(self) -> list[Container]:
        return self.containers_of(APP)

    def running(self, version: str | None = None) -> list[Container]:
        return [c for c in self.app_containers()
                if c.status == "running" and (version is None or c.version == version)]

    @property
    def state_path(self) -> Path:
        return Path(self.settings.state_path)

    def live_targets(self) -> dict[int, str]:
        """slot -> the name the ``live-<slot>.sock`` link points at."""
        sockets = self.state_path / "sockets"
        out = {}
        for link in sorted(sockets.glob("live-*.sock")) if sockets.is_dir() else []:
            if link.is_symlink():
                out[int(link.name.removeprefix("live-").removesuffix(".sock"))] = os.readlink(link)
        return out

    def tcp_targets(self) -> dict[str, list[str]]:
        """A TCP app's targets.json (``live``, ``fallback``, ``live_ids``, ``fallback_ids``); {} if none."""
        path = self.state_path / "nginx" / "targets.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def live_containers(self) -> list[Container]:
        if self.settings.tcp:
            ids = set(self.tcp_targets().get("live_ids", []))
            return [c for c in self.app_containers() if c.short_id in ids]
        targets = set(self.live_targets().values())
        return [c for c in self.app_containers() if f"app-{c.short_id}.sock" in targets]

    def live_versions(self) -> set[str]:
        return {c.version for c in self.live_containers()}

    def sockets(self) -> list[str]:
        """Names of the app socket files in the sockets directory."""
        sockets = self.state_path / "sockets"
        return sorted(p.name for p in sockets.glob("app-*.sock")) if sockets.is_dir() else []

    def records(self) -> list[dict[str, Any]]:
        log = self.state_path / "releases.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []

    def lock_held(self) -> bool:
        return (self.state_path / "lock").exists()

    def image_tags(self, repository: str | None = None) -> list[str]:
        repository = repository or self.settings.app_image
        return sorted(ref.rpartition(":")[2] for ref in self.images if ref.rpartition(":")[0] == repository)

    # -- the runner --------------------------------------------------------------------------------
    def parse(self, line: str, env: Mapping[str, str] | None = None) -> Command:
        argv = fakeshell.split(line)
        merged = dict(env or {})
        if argv and argv[0] == "env":
            i = 1
            while i < len(argv) and "=" in argv[i]:
                if argv[i].startswith("-"):
                    raise AssertionError(f"fakehost does not model env options: {line}")
                key, _, value = argv[i].partition("=")
                merged[key] = value
                i += 1
            argv = argv[i:]
        return Command(line, argv, merged)

    def run(self, line: str, **kwargs: Any) -> Result:
        unknown = set(kwargs) - RUN_KWARGS
        if unknown:
            raise AssertionError(f"fakehost: run() got options it does not model: {sorted(unknown)} ({line})")
        with self._lock:
            command = self.parse(line, kwargs.get("env"))
            call = Call(command)
            self.calls.append(call)
            if self.killed:
                call.outcome = "killed"
                raise Killed(line)
            if kwargs.get("asynchronous"):
                return self._background(command, kwargs)
            rule = None
            for candidate in self.rules:  # every rule counts the command; the first one due fires
                if candidate.count(command) and rule is None:
                    rule = candidate
                    rule.fired += 1
            if rule is not None and not rule.after:
                outcome = self._fault(rule, call, kwargs)  # raises, except for "fail"
            else:
                outcome = self._execute(command, call, kwargs)
                if rule is not None:
                    scripted = self._fault(rule, call, kwargs)
                    outcome = scripted if rule.action == "fail" else outcome
            call.exited = outcome.exited
            return self._result(command, outcome, kwargs)

    def _background(self, command: Command, kwargs: Mapping[str, Any]) -> Any:
        """A command left running (the lock's keeper): a :class:`FakeKeeper`, or else a real local
        process, as Invoke's Promise.

        It lives until its stdin closes: when the engine releases it, or when the tool is killed
        (:meth:`kill_on` closes every background command's stdin, as the death of the process does).
        """
        if command.is_docker:
            raise AssertionError(f"fakehost does not model docker in the background: {command.line}")
        if self.in_process and not kwargs.get("env"):
            keeper = FakeKeeper.start(command, self.root, len(self.keepers))
            if keeper is not None:
                self.keepers.append(keeper)
                self.background.append(keeper.promise)
                return keeper.promise
        env = {**{k: str(v) for k, v in (kwargs.get("env") or {}).items()},
               "PATH": f"{self._shim}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        options = {k: v for k, v in kwargs.items() if k not in ("env", "asynchronous", "timeout")}
        promise = Context().run(f"cd {shlex.quote(str(self.root))} && {command.line}", asynchronous=True,
                                env=env, **options)
        self.background.append(promise)
        return promise

    def _end_background(self) -> None:
        for promise in self.background:
            with contextlib.suppress(Exception):
                promise.runner.close_proc_stdin()
            with contextlib.suppress(Exception):
                promise.join()
        self.background.clear()

    def _fault(self, rule: Rule, call: Call, kwargs: Mapping[str, Any]) -> Outcome:
        line = call.command.line
        if rule.action == "fail":
            call.outcome = "failed (scripted)"
            return Outcome(rule.stdout, rule.stderr, rule.exited)
        if rule.action == "timeout":
            call.outcome = "timed out"
            result = self._invoke_result(call.command, Outcome(exited=TIMED_OUT_EXIT), kwargs)
            raise CommandTimedOut(result, timeout=kwargs.get("timeout") or 0)
        if rule.action == "interrupt":
            call.outcome = "interrupted"
            raise KeyboardInterrupt
        call.outcome = "killed"
        self.killed = True
        self._end_background()  # the process is gone: so are the pipes its keepers waited on
        raise Killed(line)

    def _execute(self, command: Command, call: Call, kwargs: Mapping[str, Any]) -> Outcome:
        if not command.is_docker:
            return self._shell(command, kwargs)
        try:
            return self._docker(command)
        except _Hang:
            call.outcome = "timed out"
            result = self._invoke_result(command, Outcome(exited=TIMED_OUT_EXIT), kwargs)
            raise CommandTimedOut(result, timeout=kwargs.get("timeout") or 0) from None
        except AssertionError as exc:
            call.outcome = "unknown"
            self.unknown.append(f"{exc}: {command.line}")
            raise AssertionError(f"{exc}\n  command: {command.line}") from None

    def _shell(self, command: Command, kwargs: Mapping[str, Any]) -> Outcome:
        env = {**os.environ, **{k: str(v) for k, v in (kwargs.get("env") or {}).items()}}
        stream = kwargs.get("in_stream")
        stdin_text = stream.read() if stream is not None and stream is not False and hasattr(stream, "read") else None
        if self.in_process:
            stopped = self._stop_stale_keeper(command)
            if stopped is not None:
                return stopped
            answered = fakeshell.answer(command.argv, command.line, str(self.root), env)
            if answered is not None:
                return Outcome(*answered)
        return self.real_shell(command.line, env, stdin_text, kwargs)

    def _stop_stale_keeper(self, command: Command) -> Outcome | None:
        """unlock's ``kill`` of a keeper modelled here (the real script finds no such process)."""
        argv = command.argv
        if argv[:3] != ["sh", "-c", lock.STOP_STALE_KEEPER_SCRIPT] or len(argv) != 7 \
                or shlex.join(argv) != command.line:
            return None
        pid, flock_path, boot_id = argv[4:]
        for keeper in self.keepers:
            if keeper.pid == pid:
                if flock_path == keeper.path and boot_id == keeper.boot_id:
                    keeper.end(TERMINATED_EXIT)
                return OK
        return None

    def real_shell(self, line: str, env: Mapping[str, str], stdin_text: str | None = None,
                   kwargs: Mapping[str, Any] | None = None) -> Outcome:
        """Run ``line`` with the real ``sh`` in the test's directory (docker answers only in memory)."""
        kwargs = kwargs or {}
        self.shell_lines.append(line)
        env = {**env, "PATH": f"{self._shim}:{env.get('PATH', '/usr/bin:/bin')}"}
        try:
            done = subprocess.run([SHELL, "-c", line], cwd=self.root, env=env, capture_output=True,
                                  text=True, input=stdin_text, stdin=None if stdin_text is not None else
                                  subprocess.DEVNULL, timeout=kwargs.get("timeout"), check=False)
        except subprocess.TimeoutExpired as exc:
            result = self._invoke_result(self.parse(line, kwargs.get("env")), Outcome(exited=TIMED_OUT_EXIT), kwargs)
            raise CommandTimedOut(result, timeout=int(exc.timeout)) from None
        if done.returncode == SHIM_EXIT and SHIM_MARK in done.stderr:
            message = f"fakehost cannot answer docker called from a shell script: {line}"
            self.unknown.append(message)
            raise AssertionError(message)
        return Outcome(done.stdout, done.stderr, done.returncode)

    def _invoke_result(self, command: Command, outcome: Outcome, kwargs: Mapping[str, Any]) -> Result:
        return Result(stdout=outcome.stdout, stderr=outcome.stderr, command=command.line, shell=SHELL,
                      env=dict(kwargs.get("env") or {}), exited=outcome.exited, pty=bool(kwargs.get("pty")),
                      hide=normalize_hide(kwargs.get("hide")))

    def _result(self, command: Command, outcome: Outcome, kwargs: Mapping[str, Any]) -> Result:
        result = self._invoke_result(command, outcome, kwargs)
        if kwargs.get("echo"):
            print(f"\033[1;37m{command.line}\033[0m", flush=True)
        if "stdout" not in result.hide and outcome.stdout:
            sys.stdout.write(outcome.stdout)
        if "stderr" not in result.hide and outcome.stderr:
            sys.stderr.write(outcome.stderr)
        if outcome.exited != 0 and not kwargs.get("warn"):
            raise UnexpectedExit(result)
        return result

    # -- docker ------------------------------------------------------------------------------------
    def _docker(self, command: Command) -> Outcome:
        argv = command.argv[1:]
        if not self.docker_installed:
            return _fail("bash: line 1: docker: command not found", EXIT_NOT_FOUND)
        if not argv:
            raise AssertionError("fakehost does not model a bare `docker`")
        head, rest = argv[0], argv[1:]
        if head == "compose":
            return self._compose(command, rest)
        if head == "version":
            return self._version(rest)
        if not self.daemon_running:
            return _fail(DAEMON_DOWN)
        if head == "image" and rest:
            head, rest = {"inspect": "image-inspect", "ls": "images", "list": "images", "rm": "rmi",
                          "remove": "rmi", "pull": "pull"}.get(rest[0], f"image {rest[0]}"), rest[1:]
        if head == "container" and rest:
            head, rest = {"inspect": "inspect", "ls": "ps", "list": "ps", "stop": "stop", "rm": "rm",
                          "logs": "logs", "exec": "exec"}.get(rest[0], f"container {rest[0]}"), rest[1:]
        handler: Callable[[list[str]], Outcome] | None = {
            "ps": self._ps, "inspect": self._inspect, "image-inspect": self._image_inspect,
            "images": self._images, "rmi": self._rmi, "pull": self._pull, "stop": self._stop, "rm": self._rm,
            "logs": self._logs, "exec": self._exec,
        }.get(head)
        if handler is None:
            raise AssertionError(f"fakehost does not model `docker {head}`")
        return handler(rest)

    def _version(self, argv: list[str]) -> Outcome:
        _, values, _ = _options(argv, (), ("-f|--format",), "docker version")
        fmt = (values.get("--format") or [""])[0]
        if fmt == "{{.Client.Version}}":
            return Outcome(DOCKER_VERSION + "\n")
        if fmt != "{{.Server.Version}}":
            raise AssertionError(f"fakehost does not model docker version --format {fmt!r}")
        if not self.daemon_running:
            return _fail(DAEMON_DOWN)
        return Outcome(DOCKER_VERSION + "\n")

    def _find(self, ref: str) -> Container | None:
        if not ref:
            return None
        if ref in self.containers:
            return self.containers[ref]
        by_name = [c for c in self.containers.values() if c.name == ref.lstrip("/")]
        if by_name:
            return by_name[0]
        by_prefix = [c for c in self.containers.values() if c.id.startswith(ref)]
        return by_prefix[0] if len(by_prefix) == 1 else None

    def _published(self) -> Outcome:
        """``docker ps --format`` as the front's port check asks it: running containers with their
        project and published ports (the proxy publishes the settings' port, as the compose file says)."""
        lines = []
        for c in sorted(self.containers.values(), key=lambda c: c.seq):
            if c.status != "running":
                continue
            ports = (f"{self.settings.http_bind}:{self.settings.http_port}->8080/tcp" if c.service == "nginx"
                     else "8000/tcp")
            lines.append(f"{c.name}\t{c.project}\t{ports}\n")
        return Outcome("".join(lines))

    def _ps(self, argv: list[str]) -> Outcome:
        flags, values, positionals = _options(argv, ("-a|--all", "--no-trunc", "-q|--quiet"),
                                              ("-f|--filter", "--format"), "docker ps")
        if values.get("--format") == [front.PUBLISHED_FORMAT] and not positionals and not flags:
            return self._published()
        if "--format" in values:
            raise AssertionError("fakehost does not model option --format of docker ps (but the front's port check)")
        if positionals or "--quiet" not in flags:
            raise AssertionError("fakehost models only `docker ps --quiet`")
        by_key: dict[str, list[str]] = {}
        for spec in values.get("--filter", []):
            key, _, value = spec.partition("=")
            if key not in ("label", "name", "status", "id"):
                raise AssertionError(f"fakehost does not model the docker ps filter {key}")
            by_key.setdefault(key, []).append(value)

        def keep(c: Container) -> bool:
            if "--all" not in flags and c.status not in ("running", "restarting", "paused"):
                return False
            for spec in by_key.get("label", []):  # labels: all must hold
                key, eq, value = spec.partition("=")
                if key not in c.labels or (eq and c.labels[key] != value):
                    return False
            checks: dict[str, Callable[[str], bool]] = {
                "name": lambda v: v in c.name, "status": lambda v: c.status == v, "id": lambda v: c.id.startswith(v)}
            return all(any(checks[k](v) for v in vs) for k, vs in by_key.items() if k != "label")

        found = sorted((c for c in self.containers.values() if keep(c)), key=lambda c: -c.seq)
        width = None if "--no-trunc" in flags else SHORT_ID
        return Outcome("".join(f"{c.id[:width]}\n" for c in found))

    def _inspect(self, argv: list[str]) -> Outcome:
        _, _, refs = _options(argv, (), (), "docker inspect")
        if not refs:
            return _fail('"docker inspect" requires at least 1 argument.')
        found, errors = [], []
        for ref in refs:
            c = self._find(ref)
            if c is not None:
                c.advance()
                found.append(c.inspect())
            elif _normal_ref(ref) in self.images:
                found.append(self._image_json(_normal_ref(ref)))
            else:
                errors.append(f"Error: No such object: {ref}")
        return Outcome(json.dumps(found, indent=4) + "\n", "".join(e + "\n" for e in errors), 1 if errors else 0)

    # -- images --------------------------------------------------------------------------------------
    def _add_image(self, ref: str) -> str:
        self._seq += 1
        image_id = "sha256:" + hashlib.sha256(f"image-{self._seq}".encode()).hexdigest()
        self.images.pop(_normal_ref(ref), None)  # newest last, as `docker image ls` orders them
        self.images[_normal_ref(ref)] = image_id
        return image_id

    def _image_json(self, ref: str) -> dict[str, Any]:
        image_id = self.images[ref]
        return {"Id": image_id, "RepoTags": sorted(r for r, i in self.images.items() if i == image_id)}

    def _image_inspect(self, argv: list[str]) -> Outcome:
        _, values, refs = _options(argv, (), ("-f|--format",), "docker image inspect")
        fmt = (values.get("--format") or [""])[0]
        if fmt not in ("", "{{.Id}}"):
            raise AssertionError(f"fakehost does not model docker image inspect --format {fmt!r}")
        found, errors = [], []
        for ref in refs:
            if _normal_ref(ref) in self.images:
                found.append(self._image_json(_normal_ref(ref)))
            else:
                errors.append(f"Error response from daemon: No such image: {ref}")
        out = "".join(f"{image['Id']}\n" for image in found) if fmt else json.dumps(found, indent=4) + "\n"
        return Outcome(out, "".join(e + "\n" for e in errors), 1 if errors else 0)

    def _images(self, argv: list[str]) -> Outcome:
        _, values, positionals = _options(argv, (), ("--format",), "docker image ls")
        fmt = (values.get("--format") or [""])[0]
        if not fmt or len(positionals) > 1:
            raise AssertionError("fakehost models only `docker image ls [REPOSITORY] --format ...`")
        lines = []
        for ref, image_id in reversed(self.images.items()):
            repository, _, tag = ref.rpartition(":")
            if positionals and _normal_ref(positionals[0]).rpartition(":")[0] != repository:
                continue
            line = fmt.replace("{{.Repository}}", repository).replace("{{.Tag}}", tag)
            line = line.replace("{{.ID}}", image_id.removeprefix("sha256:")[:SHORT_ID])
            if "{{" in line:
                raise AssertionError(f"fakehost does not model docker image ls --format {fmt!r}")
            lines.append(line + "\n")
        return Outcome("".join(lines))

    def _rmi(self, argv: list[str]) -> Outcome:
        flags, _, refs = _options(argv, ("-f|--force",), (), "docker image rm")
        out, errors = [], []
        for ref in refs:
            name = _normal_ref(ref)
            if name not in self.images:
                errors.append(f"Error response from daemon: No such image: {ref}")
                continue
            users = [c for c in self.containers.values() if c.image_id == self.images[name]]
            if users and "--force" not in flags:
                errors.append(f'Error response from daemon: conflict: unable to remove repository reference "{ref}" '
                              f"(must force) - container {users[0].short_id} is using its referenced image "
                              f"{self.images[name].removeprefix('sha256:')[:SHORT_ID]}")
                continue
            del self.images[name]
            out.append(f"Untagged: {name}\n")
        return Outcome("".join(out), "".join(e + "\n" for e in errors), 1 if errors else 0)

    def _pull(self, argv: list[str]) -> Outcome:
        flags, _, refs = _options(argv, ("-q|--quiet",), (), "docker pull")
        if len(refs) != 1:
            raise AssertionError("fakehost models `docker pull` of one image")
        name = _normal_ref(refs[0])
        if name not in self.registry:
            repository = name.rpartition(":")[0]
            return _fail(f"Error response from daemon: pull access denied for {repository}, repository does not "
                         "exist or may require 'docker login'")
        self._add_image(name)
        return Outcome(f"docker.io/library/{name}\n" if "--quiet" in flags else f"Status: Downloaded newer image "
                       f"for {name}\n")

    # -- containers ----------------------------------------------------------------------------------
    def _each(self, refs: list[str], act: Callable[[Container], str | None]) -> Outcome:
        out, errors = [], []
        for ref in refs:
            c = self._find(ref)
            error = f"Error response from daemon: No such container: {ref}" if c is None else act(c)
            if error:
                errors.append(error)
            else:
                out.append(ref + "\n")
        return Outcome("".join(out), "".join(e + "\n" for e in errors), 1 if errors else 0)

    def _stop_one(self, c: Container) -> None:
        if c.status in ("running", "restarting"):
            c.status, c.exit_code = "exited", 0
            c.log.append("Shutting down; drained; finished server process")

    def _stop(self, argv: list[str]) -> Outcome:
        _, _, refs = _options(argv, (), ("-t|--time", "-s|--signal"), "docker stop")
        if not refs:
            return _fail('"docker stop" requires at least 1 argument.')

        def stop(c: Container) -> None:
            self._stop_one(c)

        return self._each(refs, stop)

    def _rm(self, argv: list[str]) -> Outcome:
        flags, _, refs = _options(argv, ("-f|--force", "-v|--volumes"), (), "docker rm")
        if not refs:
            return _fail('"docker rm" requires at least 1 argument.')

        def remove(c: Container) -> str | None:
            if c.status in ("running", "restarting") and "--force" not in flags:
                return (f'Error response from daemon: cannot remove container "/{c.name}": container is running: '
                        "stop the container before removing or force remove")
            del self.containers[c.id]
            return None

        return self._each(refs, remove)

    def _logs(self, argv: list[str]) -> Outcome:
        _, values, refs = _options(argv, ("-t|--timestamps",), ("-n|--tail",), "docker logs")
        if len(refs) != 1:
            raise AssertionError("fakehost models `docker logs` of one container")
        c = self._find(refs[0])
        if c is None:
            return _fail(f"Error response from daemon: No such container: {refs[0]}")
        tail = (values.get("--tail") or ["all"])[0]
        lines = c.log if tail == "all" else c.log[-int(tail):] if int(tail) else []
        return Outcome(stderr="".join(line + "\n" for line in lines))

    def _exec(self, argv: list[str]) -> Outcome:
        if not argv or argv[0].startswith("-"):
            raise AssertionError("fakehost models `docker exec ID COMMAND...` without options")
        c = self._find(argv[0])
        if c is None:
            return _fail(f"Error response from daemon: No such container: {argv[0]}")
        if c.status != "running":
            return _fail(f"Error response from daemon: container {c.id} is not running")
        args = argv[1:]
        if c.nginx is None:
            # In an app container: a pre_stop command, kept; it succeeds unless a rule says otherwise.
            c.execs.append(args)
            return OK
        if args[:1] == ["nginx"]:
            return self._nginx(c, c.nginx, args[1:])
        if args[:2] == ["sh", "-c"] and len(args) >= 3 and "/proc/" in args[2] and "cmdline" in args[2]:
            return self._processes(c.nginx)
        if args[:1] == ["timeout"] and args[2:4] == ["bash", "-c"] and len(args) > 5:
            return self._tcp_client(args[5], args[6:])
        raise AssertionError(f"fakehost does not model `{shlex.join(args)}` in the nginx container")

    def _listening(self, address: str, port: str) -> Container | None:
        for c in self.containers.values():
            if c.address == address and c.status == "running" and str(c.tcp_port) == port:
                return c
        return None

    def _tcp_client(self, name: str, args: list[str]) -> Outcome:
        """The proxy's bash /dev/tcp clients: ``health IP PORT PATH`` and ``ports IP:PORT...``."""
        if name == "health" and len(args) == 3:
            app = self._listening(args[0], args[1])
            if app is None:
                return Outcome(exited=7)
            self.health_gets.append(f"http://{args[0]}:{args[1]}{args[2]}")
            status = 503 if app.behaviour.never_healthy else app.behaviour.http_status
            return Outcome(f"HTTP/1.1 {status} X\r\n")
        if name == "ports":
            refused = [a for a in args if self._listening(*a.rpartition(":")[::2]) is None]
            return Outcome("".join(f"{a}\n" for a in refused))
        raise AssertionError(f"fakehost does not model the {name!r} client in the nginx container")

    def _nginx(self, c: Container, nginx: Nginx, argv: list[str]) -> Outcome:
        flags, values, positionals = _options(argv, ("-t", "-q"), ("-c", "-s"), "nginx")
        conf = (values.get("-c") or ["/etc/nginx/nginx.conf"])[0]
        signals = values.get("-s") or []
        signal = signals[0] if signals else None
        if positionals or ("-t" in flags) == (signal is not None):
            raise AssertionError(f"fakehost models `nginx -t` and `nginx -s reload`, not nginx {shlex.join(argv)}")
        error = self._nginx_error(c, conf)
        if "-t" in flags:
            if error:
                return _fail(f"{error}\nnginx: configuration file {conf} test failed")
            return OK if "-q" in flags else Outcome(stderr=f"nginx: the configuration file {conf} syntax is ok\n"
                                                           f"nginx: configuration file {conf} test is successful\n")
        if signal != "reload":
            raise AssertionError(f"fakehost models only `nginx -s reload`, not -s {signal}")
        if error:
            return _fail(error)
        self.nginx_reloads += 1
        nginx.pending = self.nginx_reload_delay
        nginx.stuck = self.nginx_reload_delay is None
        return Outcome(stderr="[notice] 1#1: signal process started\n")

    def _nginx_error(self, c: Container, conf: str) -> str | None:
        if conf.startswith(CONTAINER_ROOT + "/") and c.root_mount:
            host_path = Path(c.root_mount) / conf.removeprefix(CONTAINER_ROOT + "/")
            if not host_path.is_file():
                return f'nginx: [emerg] open() "{conf}" failed (2: No such file or directory)'
        if self.nginx_test_error:
            return f"nginx: [emerg] {self.nginx_test_error} in {conf}:1"
        return None

    def _processes(self, nginx: Nginx) -> Outcome:
        if nginx.pending is not None and not nginx.stuck:
            if nginx.pending <= 0:
                nginx.draining.update({pid: DRAINING_LISTINGS for pid in nginx.active})
                nginx.active, nginx.pending = nginx.spawn(), None
            else:
                nginx.pending -= 1
        lines = ["1 nginx: master process nginx -g daemon off; "]
        lines += [f"{pid} nginx: worker process " for pid in nginx.active]
        lines += [f"{pid} nginx: worker process is shutting down " for pid in nginx.draining]
        lines.append(f"{nginx.next_pid + 100} sh -c {_LISTING_TITLE}")
        nginx.draining = {pid: left - 1 for pid, left in nginx.draining.items() if left > 1}
        return Outcome("".join(line + "\n" for line in lines))

    # -- compose -------------------------------------------------------------------------------------
    def _compose(self, command: Command, argv: list[str]) -> Outcome:
        if not self.compose_installed:
            return _fail("docker: 'compose' is not a docker command.\nSee 'docker --help'")
        found, rest = _compose_globals(argv)
        if not rest:
            raise AssertionError("fakehost does not model a bare `docker compose`")
        sub, args = rest[0], rest[1:]
        if sub == "version":
            flags, _, _ = _options(args, ("--short",), (), "docker compose version")
            return Outcome(f"{COMPOSE_VERSION}\n" if "--short" in flags
                           else f"Docker Compose version v{COMPOSE_VERSION}\n")
        if "project" not in found or "file" not in found:
            raise AssertionError("fakehost models compose commands with --project-name and --file")
        project, env = found["project"], command.env
        files = found["files"].split("\n")
        for each in files:
            if not Path(each).is_file():
                return _fail(f"open {each}: no such file or directory")
        self.extra = _extra_services(files)
        for required in ("HANDOVER_STATE_DIR", "HANDOVER_ROOT"):
            if not env.get(required):
                return _fail(f"error while interpolating services.app.volumes.[]: required variable {required} "
                             f"is missing a value: {required} must be set")
        state = Path(env["HANDOVER_STATE_DIR"])
        if not state.resolve().is_relative_to(self.root.resolve()):
            raise AssertionError(f"fakehost: HANDOVER_STATE_DIR {state} lies outside the test's directory")
        if sub == "config":
            flags, _, _ = _options(args, ("-q|--quiet", "--services"), (), "docker compose config")
            if "--services" in flags:
                return Outcome("".join(f"{name}\n" for name in (APP, PROXY, *self.extra)))
            if "--quiet" not in flags:
                raise AssertionError("fakehost models `compose config --quiet` and `--services`")
            return OK
        if not self.daemon_running:
            return _fail(DAEMON_DOWN)
        handlers: dict[str, Callable[[str, dict[str, str], list[str]], Outcome]] = {
            "build": self._compose_build, "up": self._compose_up, "down": self._compose_down,
            "logs": self._compose_logs, "run": self._compose_run,
        }
        handler = handlers.get(sub)
        if handler is None:
            raise AssertionError(f"fakehost does not model `docker compose {sub}`")
        return handler(project, env, args)

    def _services(self, positionals: list[str]) -> list[str]:
        for name in positionals:
            if name not in (APP, PROXY, *self.extra):
                raise AssertionError(f"fakehost knows the services {APP}, {PROXY} and {sorted(self.extra)}, not {name}")
        return positionals or [APP, PROXY, *self.extra]

    def _image_of(self, service: str, env: Mapping[str, str]) -> str:
        if service == APP:
            return f"{env.get('APP_IMAGE') or 'handover-app'}:{env.get('APP_VERSION') or 'dev'}"
        if service in self.extra:
            return self.extra[service]
        return f"{env.get('PROXY_IMAGE') or 'handover-nginx'}:1"

    def _compose_build(self, project: str, env: dict[str, str], argv: list[str]) -> Outcome:
        _, _, positionals = _options(argv, ("--pull", "--no-cache", "-q|--quiet"), ("--build-arg",),
                                     "docker compose build")
        services = self._services(positionals)
        version = env.get("APP_VERSION") or "dev"
        if APP in services and version in self.build_failures:
            return Outcome(self.build_failures[version],
                           "failed to solve: process \"/bin/sh -c pip install --no-index --find-links /wheels -r "
                           "requirements.txt\" did not complete successfully: exit code: 1\n", 1)
        out = []
        for service in services:
            ref = self._image_of(service, env)
            self._add_image(ref)
            out.append(f" Service {service}  Built\n")
        return Outcome(stderr="".join(out))

    def _compose_up(self, project: str, env: dict[str, str], argv: list[str]) -> Outcome:
        flags, values, positionals = _options(
            argv, ("-d|--detach", "--no-build", "--no-recreate", "--no-deps", "--remove-orphans"),
            ("--scale",), "docker compose up")
        if "--detach" not in flags:
            raise AssertionError("fakehost models only `compose up --detach`")
        scales = {}
        for spec in values.get("--scale", []):
            service, _, count = spec.partition("=")
            scales[service] = int(count)
        out: list[str] = []
        for service in self._services(positionals):
            ref = _normal_ref(self._image_of(service, env))
            if service in self.extra and ref not in self.images:
                self._add_image(ref)  # pulled by compose (the user's own images)
            if ref not in self.images:
                if "--no-build" in flags:
                    repository = ref.rpartition(":")[0]
                    return _fail(f"Error response from daemon: pull access denied for {repository}, repository does "
                                 "not exist or may require 'docker login'")
                built = self._compose_build(project, env, [service])
                if built.exited:
                    return built
            existing = self.containers_of(service, project)
            wanted = scales.get(service, 1)
            if len(existing) > wanted:
                raise AssertionError(f"fakehost does not model compose scaling {service} down "
                                     f"({len(existing)} -> {wanted})")
            if "--no-recreate" not in flags and any(c.image != ref for c in existing):
                raise AssertionError(f"fakehost does not model compose recreating {service} containers")
            for c in existing:
                if c.status in ("exited", "created"):
                    self._start(c)
                    out.append(f" Container {c.name}  Started\n")
                else:
                    out.append(f" Container {c.name}  Running\n")
            number = max((c.number for c in existing), default=0)
            for _ in range(wanted - len(existing)):
                number += 1
                c = self._create(project, service, number, ref, env)
                self._start(c)
                out.append(f" Container {c.name}  Created\n Container {c.name}  Started\n")
        return Outcome(stderr="".join(out))

    def _create(self, project: str, service: str, number: int, ref: str, env: Mapping[str, str]) -> Container:
        self._seq += 1
        cid = hashlib.sha256(f"container-{self._seq}".encode()).hexdigest()
        labels = {PROJECT_LABEL: project, SERVICE_LABEL: service, NUMBER_LABEL: str(number)}
        state = Path(env["HANDOVER_STATE_DIR"])
        if service == APP:
            version = env.get("APP_VERSION") or "dev"
            labels |= {ROLE_LABEL: "app", VERSION_LABEL: version}
            cenv = _env_file(env.get("APP_ENV_FILE", ""))
            cenv |= {"APP_VERSION": version, "DRAIN_TIMEOUT": env.get("DRAIN_TIMEOUT") or "10",
                     "DRAIN_SPREAD": env.get("DRAIN_SPREAD", ""), "APP_FAULT": env.get("APP_FAULT", ""),
                     "UNIX_SOCKET_DIR": env.get("APP_SOCKET_DIR", SOCKET_DIR_IN_CONTAINER),
                     "PORT": env.get("APP_PORT") or "8000"}
            behaviour = (Behaviour.from_fault(cenv["APP_FAULT"]) or self.behaviours.get(version)
                         or self.default_behaviour)
        elif service == PROXY:
            labels |= {ROLE_LABEL: "proxy"}
            cenv = {"NGINX_CONF": f"{CONTAINER_ROOT}/{env.get('HANDOVER_SOURCE_SUBDIR') or '.'}/nginx/nginx.conf"}
            behaviour = Behaviour(healthy_after=0)
        else:  # one of the user's services: no socket, no labels of handover's
            cenv, behaviour = {}, Behaviour(healthy_after=0, listens=False)
        c = Container(id=cid, name=f"{project}-{service}-{number}", project=project, service=service, number=number,
                      image=ref, image_id=self.images[ref], labels=labels, env=cenv, behaviour=behaviour,
                      seq=self._seq, socket_dir=state / "sockets" if service == APP else None,
                      root_mount=env.get("HANDOVER_ROOT", ""), nginx=Nginx() if service == PROXY else None,
                      stop_signal=env.get("APP_STOP_SIGNAL") or "SIGTERM" if service == APP else "SIGTERM",
                      address=f"172.30.{self._seq // 250}.{self._seq % 250 + 2}")
        self.containers[cid] = c
        return c

    def _start(self, c: Container) -> None:
        c.status, c.health, c.exit_code, c.dead, c.healthy_at = "running", "starting", 0, False, None
        c.inspections = 0
        if c.nginx is not None:
            c.nginx.active, c.nginx.draining, c.nginx.pending = c.nginx.spawn(), {}, None
            c.health = "healthy"
            return
        c.log += ["INFO:     Started server process [1]", *c.behaviour.log]
        if c.behaviour.listens and not c.behaviour.crash and c.socket_path is not None \
                and c.env.get("UNIX_SOCKET_DIR"):
            _bind_socket(c.socket_path)
            c.log.append(f"INFO:     Uvicorn running on unix socket {SOCKET_DIR_IN_CONTAINER}/{c.socket_path.name}")

    def _compose_run(self, project: str, env: dict[str, str], argv: list[str]) -> Outcome:
        at = next((i for i, arg in enumerate(argv) if not arg.startswith("-") and argv[i - 1:i] != ["--name"]),
                  len(argv))
        flags, values, _ = _options(argv[:at], ("--rm", "--no-deps", "-T"), ("--name",),
                                              "docker compose run")
        if flags != {"--rm", "--no-deps", "-T"} or at >= len(argv) - 1:
            raise AssertionError("fakehost models only `compose run --rm --no-deps -T [--name N] SERVICE COMMAND...`")
        service, command = argv[at], argv[at + 1:]
        if service != APP:
            raise AssertionError(f"fakehost models compose run of {APP} only, not {service}")
        ref = _normal_ref(self._image_of(APP, env))
        if ref not in self.images:
            return _fail(f"Error response from daemon: pull access denied for {ref.rpartition(':')[0]}, repository "
                         "does not exist or may require 'docker login'")
        name = (values.get("--name") or [f"{project}-{APP}-run-1"])[0]
        if self._find(name) is not None:
            return _fail(f'Error response from daemon: Conflict. The container name "/{name}" is already in use')
        others = [(c.name, c.version, c.status) for c in self.containers_of(APP, project)]
        c = self._create(project, APP, 0, ref, env)
        c.name, c.behaviour = name, Behaviour(listens=False)
        c.labels["com.docker.compose.oneoff"] = "True"
        c.status, c.health = "running", "starting"
        self.release_runs.append(ReleaseRun(list(command), dict(c.env), ref, name, others))
        if self.release_hangs:
            c.log.append("release: waiting for a lock that never comes")
            raise _Hang(name)
        outcome = self.release_outcome(list(command), dict(c.env))
        c.log += (outcome.stdout + outcome.stderr).splitlines()
        c.status, c.exit_code = "exited", outcome.exited
        del self.containers[c.id]  # --rm
        return outcome

    def _compose_down(self, project: str, env: dict[str, str], argv: list[str]) -> Outcome:
        _options(argv, ("--remove-orphans", "-v|--volumes"), ("-t|--timeout", "--rmi"), "docker compose down")
        out = []
        for c in sorted((c for c in self.containers.values() if c.project == project), key=lambda c: -c.seq):
            self._stop_one(c)
            del self.containers[c.id]
            out.append(f" Container {c.name}  Removed\n")
        out.append(f" Network {project}_default  Removed\n")
        return Outcome(stderr="".join(out))

    def _compose_logs(self, project: str, env: dict[str, str], argv: list[str]) -> Outcome:
        _, values, positionals = _options(argv, ("-f|--follow", "--no-color", "-t|--timestamps"), ("-n|--tail",),
                                          "docker compose logs")
        tail = (values.get("--tail") or ["all"])[0]
        out = []
        for service in self._services(positionals):
            for c in self.containers_of(service, project):
                lines = c.log if tail == "all" else c.log[-int(tail):] if int(tail) else []
                out += [f"{c.name}  | {line}\n" for line in lines]
        return Outcome("".join(out))


# What the proxy's process listing shows for the listing shell itself (its own /proc entry).
_LISTING_TITLE = "for p in /proc/[0-9]*; do ...; done"
