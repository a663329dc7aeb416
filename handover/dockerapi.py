"""The Docker Engine API, for the calls a deploy makes many times: on this machine over its unix socket,
on a host over the SSH connection the deploy already has.

Every ``docker inspect``/``ps``/``stop``/``rm`` is a Go program start: 15-25 ms of CPU and 20-50 ms
of wall time through Invoke, besides the engine's own work. A deploy makes some twenty of them (the
health polls above all), so the Compose backend asks the engine directly instead: one HTTP request,
about 1 ms on this machine (see BENCHMARK.md, "The tool's own overhead"). The answers are the same
JSON the CLI prints (``docker inspect`` prints the API's objects), so the rest of the backend reads
them alike.

On this machine (an Invoke ``Context``) the requests go to ``/var/run/docker.sock``, when the CLI would
talk to that same socket: no ``DOCKER_HOST`` or ``DOCKER_CONTEXT`` elsewhere, no current context in
the CLI's config, the socket answering ``/_ping``.

Over SSH (a Fabric ``Connection``) each CLI call was one SSH command: a new session, a shell and a Go
program on the host, 30-80 ms each. Instead, one channel of the connection's own SSH transport (the
same host key check, the same user) runs the fixed command ``docker system dial-stdio`` (the docker
CLI on the host, 20.10 and newer, connecting to the engine that host's CLI uses), and HTTP/1.1 with
keep-alive goes through it: one channel and one program on the host for the whole deploy's requests,
another while an event stream is read to its end beside them, and one per container stopped at once
(at most :data:`SSH_PARALLEL_STOPS`). That took a redeploy over SSH from 50 SSH commands to 28 (23-24
with the commands merged since; BENCHMARK.md, "Over SSH, the Engine API through the connection").
The host's engine may keep another clock: the event waits ask for times in its clock (``SystemTime``
of ``/info``, read once).
When the channel does not work (no ``dial-stdio``, no permission on the engine's socket, no docker)
the first ``/_ping`` fails and that connection uses the CLI, as before.

``HANDOVER_DOCKER_API=0`` turns both off: everything through the ``docker`` CLI. ``docker compose``
(build, up, config) and ``docker exec`` always use the CLI.

Only the standard library for HTTP: ``http.client`` with a socket that connects to a unix path, or
one that is a paramiko channel.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import CommandError, CommandTimeout, HandoverError
from .shell import command_line, holding_interrupts, runs_here

SOCKET = "/var/run/docker.sock"
DEFAULT_HOSTS = ("", f"unix://{SOCKET}")
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 (how the CLI shows a port published without an address)
SWITCH_ENV = "HANDOVER_DOCKER_API"  # "0": always the docker CLI
REQUEST_TIMEOUT = 30.0
PING_TIMEOUT = 2.0  # an engine that does not answer its ping by then is left to the CLI
STOP_EXTRA_SECONDS = 60.0
# What may change an instance's health as the engine reports it (``health_status`` matches
# ``health_status: healthy`` and the like; the health check's own exec events are left out).
WATCHED_EVENTS = ("health_status", "die", "oom", "start", "restart", "pause", "unpause", "destroy")
# Over SSH: the one command run on the host, a fixed argv (nothing of the deploy's in it).
DIAL_ARGV = ("docker", "system", "dial-stdio")
CHANNEL_OPEN_TIMEOUT = 15.0
IDLE_CHANNELS = 4  # kept open for the next requests; more at once are closed after use
# Stops at once over SSH: each is a channel of its own while it waits, and sshd allows 10 sessions per
# connection by default (MaxSessions), the lock's keeper and the event wait among them.
SSH_PARALLEL_STOPS = 5


def query(params: Mapping[str, object]) -> str:
    """``?a=1&filters=...`` for the engine (filters as the JSON object the API wants); "" when empty."""
    items = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)) for k, v in params.items()}
    return "?" + urllib.parse.urlencode(items) if items else ""


def path(*parts: str, params: Mapping[str, object] | None = None) -> str:
    """``/a/b`` from ``parts`` (each percent-quoted: an image reference keeps no ``/`` or ``:`` of its
    own in the path), followed by :func:`query` of ``params``."""
    return "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts) + query(params or {})


def tags_of(repo_tags: Iterable[str]) -> set[str]:
    """The tags of ``name:tag`` references (a registry's port is no tag: ``host:5000/app`` has none)."""
    found = set()
    for ref in repo_tags:
        name, sep, tag = ref.rpartition(":")
        if sep and name and "/" not in tag and tag != "<none>":
            found.add(tag)
    return found


def published_line(container: Mapping[str, Any], label: str, *more: str) -> str:
    """One container of ``GET /containers/json`` as ``name<TAB>label value<TAB>ports``, the ports as the
    CLI shows them (``127.0.0.1:8080->80/tcp``, IPv6 in brackets); only published ports. The value is
    that of the first of ``label`` and ``more`` the container has."""
    names = container.get("Names") or [""]
    labels = container.get("Labels") or {}
    ports = []
    for p in container.get("Ports") or []:
        if isinstance(p, dict) and p.get("PublicPort"):
            ip = str(p.get("IP") or ALL_ADDRESSES)
            ip = f"[{ip}]" if ":" in ip else ip
            ports.append(f"{ip}:{p['PublicPort']}->{p.get('PrivatePort', '')}/{p.get('Type', 'tcp')}")
    value = next((str(labels[name]) for name in (label, *more) if labels.get(name)), "")
    return f"{str(names[0]).lstrip('/')}\t{value}\t{', '.join(ports)}"


def cli_uses_default_socket(env: Mapping[str, str], config_dir: Path) -> bool:
    """Whether the ``docker`` CLI would talk to :data:`SOCKET`: no other host or context in ``env``
    nor as the current context in its config (``config.json`` in ``config_dir``)."""
    if env.get("DOCKER_HOST", "") not in DEFAULT_HOSTS or env.get("DOCKER_CONTEXT", "default") != "default":
        return False
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False  # unreadable: let the CLI decide, as it always did
    current = config.get("currentContext", "default") if isinstance(config, dict) else "default"
    return current in ("", "default")


def engine_time(system_time: str) -> float | None:
    """``SystemTime`` of ``GET /info`` (RFC 3339, nanoseconds, an offset or ``Z``) as Unix seconds;
    None when it cannot be read."""
    text = system_time.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, dot, rest = text.partition(".")
    if dot:  # Python reads at most microseconds: cut the fraction to six digits, keep the offset
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:min(digits, 6)] + rest[digits:]
        text = f"{main}.{rest}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _ChannelReader(io.RawIOBase):
    """The receiving side of a paramiko channel as a raw stream (for ``io.BufferedReader``). Closing
    it leaves the channel open: the HTTP connection closes that."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.channel.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class ChannelSocket:
    """What ``http.client`` uses of a socket, on an SSH channel whose command carries the bytes."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def sendall(self, data: bytes) -> None:
        self.channel.sendall(data)

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        return io.BufferedReader(_ChannelReader(self.channel))

    def settimeout(self, seconds: float | None) -> None:
        self.channel.settimeout(seconds)

    def close(self) -> None:
        self.channel.close()


class _ChannelConnection(http.client.HTTPConnection):
    """HTTP over a new session channel of ``transport`` running :data:`DIAL_ARGV` on the host."""

    def __init__(self, transport: Any, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.transport = transport

    def connect(self) -> None:
        try:
            channel = self.transport.open_session(timeout=min(self.timeout or REQUEST_TIMEOUT, CHANNEL_OPEN_TIMEOUT))
            channel.settimeout(self.timeout)
            channel.exec_command(command_line(DIAL_ARGV))
        except OSError:
            raise
        except Exception as exc:  # paramiko's SSHException and ChannelException are no OSError
            raise ConnectionError(f"no SSH channel for the engine: {type(exc).__name__}: {exc}") from None
        self.sock = ChannelSocket(channel)


def ssh_transport(runner: object) -> Any:
    """The open SSH transport of a Fabric ``Connection`` (connected now when it is not yet), or None
    for anything else or a connection that cannot be opened (the CLI then says why)."""
    try:
        from fabric import Connection
    except ImportError:
        return None
    if not isinstance(runner, Connection):
        return None
    try:
        runner.open()
        transport = runner.client.get_transport()
    except Exception:  # the first command over the CLI reports the connection's problem as before
        return None
    return transport if transport is not None and transport.is_active() else None


# One client per SSH transport (the deploy asks for one in several places), or False: that host's
# channel did not answer, the CLI is used there.
_OVER_SSH: weakref.WeakKeyDictionary[Any, DockerAPI | bool] = weakref.WeakKeyDictionary()
_OVER_SSH_LOCK = threading.Lock()


class DockerAPI:
    """A few calls of the Engine API (see the module docstring); each raises :class:`CommandError`
    naming the call when the engine answers with an error it does not expect.

    ``opener``: a new HTTP connection for a timeout (by default one to ``socket_path``, new for each
    request); with ``keep``, connections whose answer was read to its end are kept for the next
    requests (HTTP keep-alive: an SSH channel is worth keeping)."""

    def __init__(self, socket_path: str = SOCKET, *,
                 opener: Callable[[float], http.client.HTTPConnection] | None = None, keep: bool = False,
                 same_clock: bool = True) -> None:
        self.socket_path = socket_path
        self.opener = opener or (lambda timeout: _UnixConnection(self.socket_path, timeout))
        self.keep = keep
        self.same_clock = same_clock
        self._idle: list[http.client.HTTPConnection] = []
        self._idle_lock = threading.Lock()
        self._clock_offset: float | None = 0.0 if same_clock else None
        self.parallel_stops: int | None = None  # None: every stop at once

    @classmethod
    def over_ssh(cls, transport: Any) -> DockerAPI:
        """A client through channels of ``transport`` (see the module docstring); not yet checked."""
        api = cls(f"ssh:{DIAL_ARGV[-1]}", opener=lambda timeout: _ChannelConnection(transport, timeout),
                  keep=True, same_clock=False)
        api.parallel_stops = SSH_PARALLEL_STOPS
        return api

    @classmethod
    def for_runner(cls, runner: object, env: Mapping[str, str] | None = None,
                   socket_path: str = SOCKET) -> DockerAPI | None:
        """A client when ``runner`` runs commands on this machine and the CLI uses the engine behind
        ``socket_path``, or when it is a Fabric ``Connection`` whose host answers through ``docker system
        dial-stdio`` (one client per SSH transport); else None (the CLI is used)."""
        env = os.environ if env is None else env
        if env.get(SWITCH_ENV, "1") == "0":
            return None
        if not runs_here(runner):
            return cls._for_ssh(runner)
        config_dir = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
        if not cli_uses_default_socket(env, config_dir):
            return None
        api = cls(socket_path)
        try:
            api.request("GET", "/_ping", timeout=PING_TIMEOUT)
        except (OSError, HandoverError, http.client.HTTPException):
            return None  # not reachable (or not answering) from here: the CLI says why, as before
        return api

    @classmethod
    def _for_ssh(cls, runner: object) -> DockerAPI | None:
        """The client over ``runner``'s SSH transport, checked once per transport; None: the CLI."""
        transport = ssh_transport(runner)
        if transport is None:
            return None
        with _OVER_SSH_LOCK:
            known = _OVER_SSH.get(transport)
            if known is None:
                api = cls.over_ssh(transport)
                try:
                    api.request("GET", "/_ping", timeout=PING_TIMEOUT * 5)
                    known = api
                except (OSError, HandoverError, http.client.HTTPException):
                    api.close()
                    known = False  # no dial-stdio, no permission, no engine: the CLI says what, as before
                _OVER_SSH[transport] = known
        return known if isinstance(known, DockerAPI) else None

    def close(self) -> None:
        """Close the connections kept for later requests."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- the HTTP part ---------------------------------------------------------------------------
    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for one request, and whether it was kept from an earlier one."""
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return self.opener(timeout), False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def _give_back(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse | None) -> None:
        """Keep ``conn`` for the next request when its answer was read to the end and it stays open."""
        if self.keep and response is not None and response.isclosed() and not response.will_close \
                and conn.sock is not None:
            with self._idle_lock:
                if len(self._idle) < IDLE_CHANNELS:
                    self._idle.append(conn)
                    return
        conn.close()

    @contextmanager
    def _exchange(self, method: str, target: str, timeout: float) -> Iterator[http.client.HTTPResponse]:
        """Send ``method target`` and yield the response; a kept connection the engine or the host closed
        meanwhile is replaced by a new one once. The connection is kept or closed afterwards."""
        for attempt in (0, 1):
            conn, reused = self._take(timeout)
            try:
                conn.request(method, target)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                    continue  # closed while it was kept (the host, the engine): once more on a new one
                raise
            except BaseException:
                conn.close()
                raise
            try:
                yield response
            except BaseException:
                conn.close()
                raise
            self._give_back(conn, response)
            return

    def request(self, method: str, target: str, *, ok: Sequence[int] = (200, 201, 204, 304),
                timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
        """``method target``; returns the status and body when the status is in ``ok`` (or 404, for the
        caller to read as "not there"), else raises :class:`CommandError` with the engine's message."""
        try:
            with holding_interrupts(), self._exchange(method, target, timeout) as response:
                body = response.read()
        except TimeoutError:
            raise CommandTimeout(f"the docker engine did not answer within {timeout:g} s: {method} {target}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError(f"docker engine API {method} {target}", 1, f"{type(exc).__name__}: {exc}") from None
        if response.status in ok or response.status == 404:
            return response.status, body
        raise CommandError(f"docker engine API {method} {target}", response.status, _message(body))

    def _json(self, target: str) -> Any:
        status, body = self.request("GET", target)
        if status == 404:
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise CommandError(f"docker engine API GET {target}", 0, f"unreadable answer: {exc}") from None

    def version(self) -> str:
        """The engine's version (``docker version --format {{.Server.Version}}``)."""
        found = self._json("/version")
        return str(found.get("Version", "")) if isinstance(found, dict) else ""

    # -- containers ------------------------------------------------------------------------------
    def container_ids(self, labels: Sequence[str]) -> list[str]:
        """IDs of the containers (any state) that carry every ``label=value`` of ``labels``."""
        found = self._json(path("containers", "json", params={"all": 1, "filters": {"label": list(labels)}}))
        return [str(c["Id"]) for c in found or [] if isinstance(c, dict) and "Id" in c]

    def inspect(self, container: str) -> dict[str, object] | None:
        """What ``docker inspect`` prints for ``container``, or None when it does not exist."""
        found = self._json(path("containers", container, "json"))
        return found if isinstance(found, dict) else None

    def stop(self, containers: Sequence[str], grace: float) -> None:
        """Stop each of ``containers`` with ``grace`` seconds, all at once (as ``docker stop`` does; over
        SSH :data:`SSH_PARALLEL_STOPS` at once); returns when every one has exited. One that is gone or
        stopped already is no error."""
        timeout = grace + STOP_EXTRA_SECONDS
        errors: list[HandoverError] = []
        slots = threading.BoundedSemaphore(self.parallel_stops or max(len(containers), 1))

        def one(cid: str) -> None:
            with slots:  # over SSH at most parallel_stops at once (a channel each)
                try:
                    self.request("POST", path("containers", cid, "stop", params={"t": int(grace)}), timeout=timeout)
                except HandoverError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=one, args=(cid,), daemon=True) for cid in containers]
        with holding_interrupts():  # as `docker stop`: a Ctrl-C comes after the containers stopped
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        timeouts = [e for e in errors if isinstance(e, CommandTimeout)]
        if timeouts or errors:
            raise (timeouts or errors)[0]

    def remove(self, containers: Sequence[str]) -> None:
        """``docker rm --force --volumes``: removed whatever their state; one that is gone is no error."""
        for cid in containers:
            self.request("DELETE", path("containers", cid, params={"force": 1, "v": 1}), ok=(200, 204, 409))

    def published(self, label: str, *more: str) -> str:
        """The running containers and the host ports they publish, as ``docker ps --format
        '{{.Names}}\t{{.Label "<label>"}}\t{{.Ports}}'`` prints them (one line each; the first of ``label``
        and ``more`` that a container has)."""
        found = self._json(path("containers", "json"))
        return "".join(published_line(c, label, *more) + "\n" for c in found or [] if isinstance(c, dict))

    # -- images ----------------------------------------------------------------------------------
    def image_id(self, reference: str) -> str:
        """The ID of the image ``reference`` (``name:tag``), or "" when it is not here."""
        found = self._json(path("images", reference, "json"))
        return str(found.get("Id", "")) if isinstance(found, dict) else ""

    def image_tags(self, repository: str) -> set[str]:
        """The tags of ``repository`` present here (``docker image ls REPO --format {{.Tag}}``)."""
        found = self._json(path("images", "json", params={"filters": {"reference": [repository]}}))
        return tags_of(tag for image in found or [] if isinstance(image, dict)
                       for tag in image.get("RepoTags") or [])

    def remove_images(self, references: Sequence[str]) -> None:
        """``docker image rm`` of each reference; one in use or gone stays as it is (no error)."""
        for ref in references:
            self.request("DELETE", path("images", ref), ok=(200, 409))

    # -- events ----------------------------------------------------------------------------------
    def clock_offset(self) -> float | None:
        """The engine's clock minus this machine's, in seconds (0 on this machine; over SSH read once
        from ``SystemTime`` of ``GET /info``); None when it cannot be read."""
        if self._clock_offset is None:
            before = time.time()
            try:
                info = self._json("/info")
            except HandoverError:
                return None
            after = time.time()
            there = engine_time(str(info.get("SystemTime", ""))) if isinstance(info, dict) else None
            if there is None:
                return None
            self._clock_offset = there - (before + after) / 2
        return self._clock_offset

    def wait_event(self, containers: Sequence[str], since: float, seconds: float) -> bool:
        """Wait up to ``seconds`` for an event of ``containers`` (a health status, an exit, a restart)
        since ``since`` (this machine's Unix seconds; events already past are seen at once). Returns
        whether one came. Never raises: the caller then looks again, as after a sleep."""
        until = time.time() + max(seconds, 0.0)
        offset = self.clock_offset()
        if offset is None:  # no engine time to ask in: a plain wait, as without the API
            time.sleep(max(seconds, 0.0))
            return False
        target = path("events", params={"since": f"{since + offset:.6f}", "until": f"{until + offset:.6f}",
                                         "filters": {"type": ["container"], "container": list(containers),
                                                     "event": list(WATCHED_EVENTS)}})
        for attempt in (0, 1):
            conn, reused = self._take(seconds + 5.0)
            try:
                # Not held like a request: a Ctrl-C ends the wait at once, as it ended the poll's sleep.
                conn.request("GET", target)
                response = conn.getresponse()
                event = response.readline().strip() if response.status == 200 else b""
                if event:
                    self._finish_later(conn, response)
                    return True
                response.read()  # the stream's end at until (or an error's message)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                    continue
                break
            except BaseException:
                conn.close()
                raise
            self._give_back(conn, response)
            break
        time.sleep(max(until - time.time(), 0.0))
        return False

    def _finish_later(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """After the first event the stream goes on until its ``until``. A connection worth keeping (an
        SSH channel) is read to that end beside the deploy and kept then; any other is closed now."""
        if not self.keep:
            conn.close()
            return

        def finish() -> None:
            try:
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                return
            self._give_back(conn, response)

        threading.Thread(target=finish, daemon=True).start()


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)
