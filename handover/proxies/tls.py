"""HTTPS at the edge: the user's certificate and key, checked, installed for nginx, and its TLS config.

nginx terminates TLS on the published ``https_port`` with a certificate (chain) and key the user
provides as local files (``deploy.tls_certificate`` / ``deploy.tls_key``); the plain ``http_port``
then only redirects to HTTPS. This module holds:

- :func:`check_pair`: the pair is read, parsed and checked before anything runs (readable, a
  certificate and an unencrypted private key, the key belongs to the certificate, valid now). Its
  messages name the files and the problem, never their content;
- :func:`render_listen` / :func:`render_redirect`: the two files nginx.conf includes, pure;
- :class:`TlsFiles`: writes the pair (chain and key in one file, ``<digest>.pem``, mode 0600, owned
  by nginx's worker user) and those includes into the state directory's ``tls/`` on the host
  (mounted read-only into the proxy at ``/etc/nginx/tls``), never into a release or the synced
  sources.

nginx names the pair through the ``live.pem`` link and a variable, so it loads the pair at each TLS
handshake instead of at a reload. A renewal is: the new pair written, ``nginx -t`` on a throwaway
configuration that loads exactly that pair, then one ``rename(2)`` of the link. The next handshake
gets the new certificate; no reload, so no idle keep-alive connection is closed under its client
(see README, "Why the switch is not an nginx reload"). The previous pair stays until the next
renewal, so a failed deploy points the link back. The include files change only when TLS is
turned on or off, or HSTS or the port changes: that is a configuration change, validated with
``nginx -t`` and loaded by a reload, as any other.

The key reaches the host over SFTP (a Fabric connection) or is written directly (this machine), into
a file made 0600 before any byte is written: never on a command line, never printed or logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CommandError, ConfigError, HandoverError
from ..settings import HSTS_MAX
from ..shell import Runner, read_file, run, write_file

CONTAINER_DIR = "/etc/nginx/tls"  # the state directory's tls/, mounted read-only into nginx
HTTP_PORT_IN_CONTAINER = 8080
HTTPS_PORT_IN_CONTAINER = 8443
LISTEN_FILE = "listen.conf"  # included inside the app's server block
REDIRECT_FILE = "redirect.conf"  # included at http level: the plain-HTTP redirect server, or nothing
PAIR_SUFFIX = ".pem"  # the certificate chain and the key in one file, so one rename swaps both
LIVE_LINK = "live.pem"  # -> <generation>.pem: the pair nginx loads at each TLS handshake
CHECK_FILE = "pair-check.nginx"  # loads a new pair alone, for `nginx -t` (not *.conf: not in the fingerprint)
KEY_MODE = 0o600
DIR_MODE = "0711"  # nginx's workers (another user) pass through; nobody lists it
# nginx's workers run as this user (nginx/Dockerfile, nginx.conf `user`): they read the pair at each
# handshake, so its file is theirs (mode 0600); on the host no account has that uid.
WORKER_UID = 10080
GENERATION_LENGTH = 16
REDIRECT_STATUS = 308  # keeps the method and body, unlike 301/302
DEFAULT_HTTPS_PORT = 443
_GENERATION = re.compile(r"[0-9a-f]{16}")
_PAIR_FILE = re.compile(rf"([0-9a-f]{{{GENERATION_LENGTH}}}){re.escape(PAIR_SUFFIX)}")

# Mozilla's "intermediate" profile (TLS 1.2 and 1.3; forward-secret AEAD suites for TLS 1.2). The
# DHE suites are left out: they need a DH parameter file, and every client that has them has ECDHE.
PROTOCOLS = "TLSv1.2 TLSv1.3"
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


@dataclass(frozen=True)
class Pair:
    """A checked certificate (chain) and key: their bytes stay in memory, never in a message."""

    certificate: bytes
    key: bytes
    not_after: dt.datetime

    @property
    def generation(self) -> str:
        """Names the pair's files on the host: a digest of both, so a renewal changes the config."""
        digest = hashlib.sha256(b"handover-tls\0" + self.certificate + b"\0" + self.key)
        return digest.hexdigest()[:GENERATION_LENGTH]


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"config key deploy.{key}: cannot read {path} ({why})") from None


def _spki(public_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(cert_path: str, key_path: str, now: dt.datetime | None = None) -> Pair:
    """Read and check the pair; raise :class:`ConfigError` naming the file and the problem."""
    # Imported here: every command of the tool imports this module, only a TLS setup needs them
    # (cryptography's import is a tenth of a second of the tool's start-up on a small machine).
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    cert_bytes, key_bytes = _read("tls_certificate", cert_path), _read("tls_key", key_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_bytes)
    except ValueError:
        chain = []
    if not chain:
        raise ConfigError(f"config key deploy.tls_certificate: {cert_path} holds no PEM certificate "
                          "(expected -----BEGIN CERTIFICATE-----, the server's certificate first)")
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        raise ConfigError(f"config key deploy.tls_key: the key in {key_path} is encrypted with a passphrase; "
                          "nginx needs it unencrypted (keep the file mode 0600 instead)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"config key deploy.tls_key: {key_path} holds no PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
                      | ed448.Ed448PrivateKey):
        raise ConfigError(f"config key deploy.tls_key: the key in {key_path} is not an RSA, ECDSA or EdDSA key "
                          "(not a TLS server key)")
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise ConfigError(f"config keys deploy.tls_certificate and deploy.tls_key: the key {key_path} does not "
                          f"belong to the certificate {cert_path} (their public keys differ)")
    moment = now or dt.datetime.now(dt.UTC)
    if moment >= leaf.not_valid_after_utc:
        raise ConfigError(f"config key deploy.tls_certificate: the certificate in {cert_path} expired on "
                          f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it (see README, HTTPS)")
    if moment < leaf.not_valid_before_utc:
        raise ConfigError(f"config key deploy.tls_certificate: the certificate in {cert_path} is not valid before "
                          f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return Pair(cert_bytes, key_bytes, leaf.not_valid_after_utc)


# -- rendering (pure) ------------------------------------------------------------------------------
def redirect_target(https_port: int) -> str:
    """Where the plain port sends a client: the same host, path and query, on HTTPS."""
    port = "" if https_port == DEFAULT_HTTPS_PORT else f":{https_port}"
    return f"https://$host{port}$request_uri"


def render_listen(tls: bool, hsts: int = 0) -> str:
    """The app server's listen directives: plain HTTP, or TLS with the pair behind ``live.pem``.

    The pair is named through a variable, so nginx loads it at each TLS handshake rather than at a
    reload: a renewal swaps the ``live.pem`` link with one rename, and no reload (which would close
    idle keep-alive connections under their clients) is needed."""
    lines = ["# Written by handover (deploy.tls_*): how the app's server block listens."]
    if not tls:
        return "\n".join([*lines, f"listen {HTTP_PORT_IN_CONTAINER} default_server;", ""])
    if not 0 <= hsts <= HSTS_MAX:
        raise ValueError(f"hsts out of range: {hsts}")
    live = f"{CONTAINER_DIR}/{LIVE_LINK}$handover_tls_pair"
    lines += [
        f"listen {HTTPS_PORT_IN_CONTAINER} ssl default_server;",
        f"ssl_certificate {live};",
        f"ssl_certificate_key {live};",
        f"ssl_protocols {PROTOCOLS};",
        f"ssl_ciphers {CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        # One cache for all workers; it survives reloads, so resumed sessions keep working.
        "ssl_session_cache shared:handover_tls:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;",
    ]
    if hsts:
        lines.append(f'add_header Strict-Transport-Security "max-age={hsts}" always;')
    return "\n".join([*lines, ""])


def render_redirect(https_port: int | None) -> str:
    """The http-level part: with TLS on (``https_port``), the always-empty variable that makes the
    pair load per handshake, and the plain-HTTP server that redirects every request to HTTPS."""
    head = "# Written by handover (deploy.tls_*): the plain HTTP port"
    if https_port is None:
        return f"{head} is the app's own server (TLS is off).\n"
    return "\n".join([
        f"{head} redirects to HTTPS, keeping the path and query.",
        "map $server_port $handover_tls_pair {",
        '    default "";',
        "}",
        "server {",
        f"    listen {HTTP_PORT_IN_CONTAINER} default_server;",
        "    server_name _;",
        "    location = /nginx-health {",
        "        default_type text/plain;",
        '        return 200 "ok\\n";',
        "    }",
        "    location / {",
        f"        return {REDIRECT_STATUS} {redirect_target(https_port)};",
        "    }",
        "}",
        "",
    ])


def render_check(generation: str) -> str:
    """A configuration that only loads ``generation``'s pair, for ``nginx -t`` before it goes live."""
    if not _GENERATION.fullmatch(generation):
        raise ValueError(f"not a pair generation: {generation!r}")
    path = f"{CONTAINER_DIR}/{generation}{PAIR_SUFFIX}"
    return "\n".join([
        "# Written by handover: nginx -t loads the new certificate and key with this before they go live.",
        "pid /tmp/handover-tls-check.pid;",
        "error_log stderr;",
        "events {}",
        "http {",
        "    server {",
        "        listen 127.0.0.1:9 ssl;",
        f"        ssl_certificate {path};",
        f"        ssl_certificate_key {path};",
        "    }",
        "}",
        "",
    ])


def generation_of(link_target: str | None) -> str | None:
    """The pair ``live.pem`` points to, if any."""
    match = _PAIR_FILE.fullmatch((link_target or "").strip())
    return match.group(1) if match else None


# -- on the host -----------------------------------------------------------------------------------
# install()'s look at the directory: $1 directory, $2 its mode, $3 the live link, $4 the pair to keep
# besides the live one, then the include files, each printed as "+<base64>" or "-" (missing).
_LOOK = ('d=$1 m=$2 live=$3 want=$4; shift 4; mkdir -p -- "$d" && chmod "$m" "$d" && cd -- "$d" || exit 1; '
         'cur=$(readlink -- "$live" 2>/dev/null); printf "%s\\n" "$cur"; '
         'for f in *.pem; do [ -f "$f" ] && [ ! -L "$f" ] || continue; '
         '[ "$f" = "$want" ] || [ "$f" = "$cur" ] || rm -f -- "$f"; done; '
         'for f; do if [ -f "$f" ]; then printf "+"; base64 < "$f" | tr -d "\\n"; echo; else echo -; fi; done')


def _unpacked(line: str) -> str | None:
    """A file as :data:`_LOOK` printed it."""
    return base64.b64decode(line[1:]).decode() if line.startswith("+") else None


def write_private(runner: Runner, path: str, content: bytes, mode: int = KEY_MODE) -> None:
    """Write ``content`` to ``path`` with ``mode`` (set before any byte is written), through a temp
    file and a rename: over SFTP on a Fabric connection (as the secrets file goes), on the stdin of a
    ``docker exec`` for files in Docker volumes, else directly on this machine. The content is never
    on a command line, in output or in an error."""
    put_private = getattr(runner, "put_private", None)
    if callable(put_private):  # through the Docker daemon, on stdin (handover.proxies.daemonfiles)
        put_private(path, content, mode)
        return
    tmp = f"{path}.tmp"
    sftp_of = getattr(runner, "sftp", None)
    try:
        if callable(sftp_of):
            sftp = sftp_of()
            with sftp.open(tmp, "w") as out:
                out.chmod(mode)
                out.write(content)
            sftp.posix_rename(tmp, path)
            return
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(descriptor, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(content)
        os.replace(tmp, path)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise HandoverError(f"writing {path}: {why} (its content is not shown)") from None


Hook = Callable[[str], None]


@dataclass
class TlsFiles:
    """The proxy's TLS files in ``directory`` on the host, for the pair in ``cert``/``key`` ('' = off).

    ``give_to_workers(path)`` makes a pair file nginx's workers' own (a chown to :data:`WORKER_UID`);
    ``validate(generation)`` runs ``nginx -t`` on :func:`render_check` (or does nothing when nginx
    does not run yet) and raises with nginx's message."""

    runner: Runner
    directory: str
    cert: str = ""
    key: str = ""
    https_port: int = DEFAULT_HTTPS_PORT
    hsts: int = 0
    give_to_workers: Hook | None = None
    validate: Hook | None = None
    renewed: bool = False  # the last install() put another pair live
    _previous: tuple[dict[str, str | None], str | None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    def _path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def prepare(self) -> None:
        run(self.runner, ["mkdir", "-p", self.directory])
        run(self.runner, ["chmod", DIR_MODE, self.directory])

    def wanted(self) -> tuple[Pair | None, dict[str, str]]:
        """The pair (checked again: the files may have changed since the config was read) and the
        two include files for it."""
        pair = check_pair(self.cert, self.key) if self.enabled else None
        return pair, {
            LISTEN_FILE: render_listen(pair is not None, self.hsts),
            REDIRECT_FILE: render_redirect(self.https_port if pair else None),
        }

    def live(self) -> str | None:
        """The generation ``live.pem`` points to now."""
        result = run(self.runner, ["sh", "-c", 'readlink -- "$1" || :', "live", self._path(LIVE_LINK)])
        return generation_of(result.stdout)

    def _point(self, generation: str | None) -> None:
        if generation is None:
            run(self.runner, ["rm", "-f", "--", self._path(LIVE_LINK)])
            return
        script = 'cd "$1" && ln -sfn "$2" .live.tmp && mv -fT .live.tmp "$3"'
        run(self.runner, ["sh", "-c", script, "point", self.directory, f"{generation}{PAIR_SUFFIX}", LIVE_LINK])

    def install(self) -> bool:
        """Put the pair live (validated by nginx first) and write the include files; returns whether
        the include files changed (a reload is needed). Keeps what :meth:`restore` needs."""
        pair, files = self.wanted()
        wanted = pair.generation if pair else None
        # One command: the directory made private, the live pair read, the pairs that are neither
        # live nor wanted removed, the include files read.
        out = run(self.runner, ["sh", "-c", _LOOK, "look", self.directory, DIR_MODE, LIVE_LINK,
                                f"{wanted}{PAIR_SUFFIX}" if wanted else "", *files]).stdout.split("\n")
        in_use, lines = generation_of(out[0]), out[1:len(files) + 1]
        if len(lines) != len(files) or not all(line == "-" or line.startswith("+") for line in lines):
            raise CommandError(f"reading {self.directory}", 1, "\n".join(out))
        current = {name: _unpacked(line) for name, line in zip(files, lines, strict=True)}
        self._previous, self.renewed = None, False
        if wanted is not None and wanted != in_use:
            assert pair is not None
            path = self._path(f"{wanted}{PAIR_SUFFIX}")
            write_private(self.runner, path, pair.certificate.rstrip(b"\n") + b"\n" + pair.key)
            if self.give_to_workers is not None:
                self.give_to_workers(path)
            if self.validate is not None:
                write_file(self.runner, self._path(CHECK_FILE), render_check(wanted))
                self.validate(f"{CONTAINER_DIR}/{CHECK_FILE}")
            self._point(wanted)
            self.renewed = True
        for name, text in files.items():
            if current[name] != text:
                write_file(self.runner, self._path(name), text)
        if self.renewed or current != files:
            self._previous = (current, in_use)
        return current != files

    def commit(self) -> None:
        """What :meth:`install` wrote is in use: nothing to put back any more."""
        self._previous = None

    def restore(self) -> bool:
        """Put back the include files and the live pair :meth:`install` replaced; returns whether the
        include files changed back (a reload is needed)."""
        if self._previous is None:
            return False
        files, in_use = self._previous
        if in_use is not None or self.renewed:
            self._point(in_use)
        changed = False
        for name, text in files.items():
            if read_file(self.runner, self._path(name)) == text:
                continue
            changed = True
            if text is None:
                run(self.runner, ["rm", "-f", "--", self._path(name)], check=False)
            else:
                write_file(self.runner, self._path(name), text)
        self._previous, self.renewed = None, False
        return changed
