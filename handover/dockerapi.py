"""The Docker Engine API over its unix socket, for the calls a deploy makes many times on this machine.

Every ``docker inspect``/``ps``/``stop``/``rm`` is a Go program start: 15-25 ms of CPU and 20-50 ms
of wall time through Invoke, besides the engine's own work. A deploy makes some twenty of them (the
health polls above all), so on the machine the tool runs on, the Compose backend asks the engine
directly instead: one HTTP request on ``/var/run/docker.sock``, about 1 ms (see BENCHMARK.md, "The
tool's own overhead"). The answers are the same JSON the CLI prints (``docker inspect`` prints the
API's objects), so the rest of the backend reads them alike.

Used only when the CLI would talk to that same socket: an Invoke ``Context`` on this machine (never
a Fabric ``Connection``: over SSH the CLI on the host stays), no ``DOCKER_HOST`` or ``DOCKER_CONTEXT``
elsewhere, no current context in the CLI's config, the socket answering ``/_ping``, and
``HANDOVER_DOCKER_API`` not ``0``. Otherwise everything goes through the ``docker`` CLI as before.
``docker compose`` (build, up, config) and ``docker exec`` always do.

Only the standard library: ``http.client`` with a socket that connects to a unix path.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CommandError, CommandTimeout, HandoverError
from .shell import holding_interrupts, runs_here

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


class DockerAPI:
    """A few calls of the Engine API (see the module docstring); each raises :class:`CommandError`
    naming the call when the engine answers with an error it does not expect."""

    def __init__(self, socket_path: str = SOCKET) -> None:
        self.socket_path = socket_path

    @classmethod
    def for_runner(cls, runner: object, env: Mapping[str, str] | None = None,
                   socket_path: str = SOCKET) -> DockerAPI | None:
        """A client when ``runner`` runs commands on this machine and the CLI uses the engine behind
        ``socket_path``; else None (the CLI is used)."""
        env = os.environ if env is None else env
        if not runs_here(runner) or env.get(SWITCH_ENV, "1") == "0":
            return None
        config_dir = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
        if not cli_uses_default_socket(env, config_dir):
            return None
        api = cls(socket_path)
        try:
            api.request("GET", "/_ping", timeout=PING_TIMEOUT)
        except (OSError, HandoverError, http.client.HTTPException):
            return None  # not reachable (or not answering) from here: the CLI says why, as before
        return api

    # -- the HTTP part ---------------------------------------------------------------------------
    def request(self, method: str, target: str, *, ok: Sequence[int] = (200, 201, 204, 304),
                timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
        """``method target``; returns the status and body when the status is in ``ok`` (or 404, for the
        caller to read as "not there"), else raises :class:`CommandError` with the engine's message."""
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            with holding_interrupts():
                conn.request(method, target)
                response = conn.getresponse()
                body = response.read()
        except TimeoutError:
            raise CommandTimeout(f"the docker engine did not answer within {timeout:g} s: {method} {target}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError(f"docker engine API {method} {target}", 1, f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
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
        """Stop each of ``containers`` with ``grace`` seconds, all at once (as ``docker stop`` does);
        returns when every one has exited. One that is gone or stopped already is no error."""
        timeout = grace + STOP_EXTRA_SECONDS
        errors: list[HandoverError] = []

        def one(cid: str) -> None:
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
    def wait_event(self, containers: Sequence[str], since: float, seconds: float) -> bool:
        """Wait up to ``seconds`` for an event of ``containers`` (a health status, an exit, a restart)
        since the engine's time ``since`` (Unix seconds; events already past are seen at once).
        Returns whether one came. Never raises: the caller then looks again, as after a sleep."""
        until = time.time() + max(seconds, 0.0)
        target = path("events", params={"since": f"{since:.6f}", "until": f"{until:.6f}",
                                         "filters": {"type": ["container"], "container": list(containers),
                                                     "event": list(WATCHED_EVENTS)}})
        conn = _UnixConnection(self.socket_path, seconds + 5.0)
        try:
            # Not held like a request: a Ctrl-C ends the wait at once, as it ended the poll's sleep.
            conn.request("GET", target)
            response = conn.getresponse()
            if response.status == 200:
                return bool(response.readline().strip())  # the first event, or "" when it ends at until
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(max(until - time.time(), 0.0))
        return False


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)
