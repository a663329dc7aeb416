"""HTTPS at the edge: the user's certificate and key, checked, installed for nginx, and its TLS config.

nginx terminates TLS on the published ``https_port`` with a certificate (chain) and key the user
provides as local files (``deploy.tls_certificate`` / ``deploy.tls_key``); the plain ``http_port``
then only redirects to HTTPS. This module holds:

- :func:`check_pair`: the pair is read, parsed and checked before anything runs (readable, a
  certificate and an unencrypted private key, the key belongs to the certificate, valid now). Its
  messages name the files and the problem, never their content;
- :func:`render_listen` / :func:`render_redirect`: the two files nginx.conf includes, pure;
- :class:`TlsFiles`: writes the pair and those files into the state directory's ``tls/`` on the
  host (mounted read-only into the proxy at ``/etc/nginx/tls``), never into a release or the
  synced sources. The pair's file names carry a digest of its content, so the proxy's
  configuration fingerprint changes when the certificate is renewed and the reload that follows
  is validated with ``nginx -t`` first; the pair in use stays on disk until the next one replaced
  it, so a failed validation puts the previous files back and nothing changed.

The key reaches the host over SFTP (a Fabric connection) or is written directly (this machine), into
a file made 0600 before any byte is written: never on a command line, never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import ConfigError, HandoverError
from .shell import Runner, read_file, run, write_file

CONTAINER_DIR = "/etc/nginx/tls"  # the state directory's tls/, mounted read-only into nginx
HTTP_PORT_IN_CONTAINER = 8080
HTTPS_PORT_IN_CONTAINER = 8443
LISTEN_FILE = "listen.conf"  # included inside the app's server block
REDIRECT_FILE = "redirect.conf"  # included at http level: the plain-HTTP redirect server, or nothing
CERT_SUFFIX, KEY_SUFFIX = ".crt", ".key"
KEY_MODE, CERT_MODE, DIR_MODE = 0o600, 0o644, "0700"
GENERATION_LENGTH = 16
HSTS_MAX = 63072000  # two years, the usual preload value
REDIRECT_STATUS = 308  # keeps the method and body, unlike 301/302
DEFAULT_HTTPS_PORT = 443
_GENERATION = re.compile(r"[0-9a-f]{16}")
_USES = re.compile(rf"{re.escape(CONTAINER_DIR)}/([0-9a-f]{{{GENERATION_LENGTH}}}){re.escape(CERT_SUFFIX)}")

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
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(cert_path: str, key_path: str, now: dt.datetime | None = None) -> Pair:
    """Read and check the pair; raise :class:`ConfigError` naming the file and the problem."""
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


def render_listen(generation: str | None, hsts: int = 0) -> str:
    """The app server's listen directives: plain HTTP (``generation`` None) or TLS with that pair."""
    lines = ["# Written by handover (deploy.tls_*): how the app's server block listens."]
    if generation is None:
        return "\n".join([*lines, f"listen {HTTP_PORT_IN_CONTAINER} default_server;", ""])
    if not _GENERATION.fullmatch(generation):
        raise ValueError(f"not a pair generation: {generation!r}")
    if not 0 <= hsts <= HSTS_MAX:
        raise ValueError(f"hsts out of range: {hsts}")
    lines += [
        f"listen {HTTPS_PORT_IN_CONTAINER} ssl default_server;",
        f"ssl_certificate {CONTAINER_DIR}/{generation}{CERT_SUFFIX};",
        f"ssl_certificate_key {CONTAINER_DIR}/{generation}{KEY_SUFFIX};",
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
    """The plain-HTTP server when TLS is on (``https_port``): every request is redirected to HTTPS."""
    head = "# Written by handover (deploy.tls_*): the plain HTTP port"
    if https_port is None:
        return f"{head} is the app's own server (TLS is off).\n"
    return "\n".join([
        f"{head} redirects to HTTPS, keeping the path and query.",
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


def generation_in_use(listen: str | None) -> str | None:
    """The pair a listen.conf names, if any."""
    match = _USES.search(listen or "")
    return match.group(1) if match else None


# -- on the host -----------------------------------------------------------------------------------
def write_private(runner: Runner, path: str, content: bytes, mode: int = KEY_MODE) -> None:
    """Write ``content`` to ``path`` with ``mode`` (set before any byte is written), through a temp
    file and a rename: over SFTP on a Fabric connection (as the secrets file goes), else directly
    on this machine. The content is never on a command line, in output or in an error."""
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


@dataclass
class TlsFiles:
    """The proxy's TLS files in ``directory`` on the host, for the pair in ``cert``/``key`` ('' = off)."""

    runner: Runner
    directory: str
    cert: str = ""
    key: str = ""
    https_port: int = DEFAULT_HTTPS_PORT
    hsts: int = 0
    _previous: dict[str, str | None] | None = None

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
            LISTEN_FILE: render_listen(pair.generation if pair else None, self.hsts),
            REDIRECT_FILE: render_redirect(self.https_port if pair else None),
        }

    def install(self) -> bool:
        """Write the pair and the include files when they differ; returns whether anything did.
        Keeps what :meth:`restore` needs to put the previous files back."""
        pair, files = self.wanted()
        self.prepare()
        current = {name: read_file(self.runner, self._path(name)) for name in files}
        self._previous = None
        if current == files:
            return False
        in_use = generation_in_use(current.get(LISTEN_FILE))
        if pair is not None and pair.generation != in_use:
            write_private(self.runner, self._path(pair.generation + CERT_SUFFIX), pair.certificate, CERT_MODE)
            write_private(self.runner, self._path(pair.generation + KEY_SUFFIX), pair.key)
        for name, text in files.items():
            if current[name] != text:
                write_file(self.runner, self._path(name), text)
        self._previous = current
        self._prune(keep={g for g in (in_use, pair.generation if pair else None) if g})
        return True

    def commit(self) -> None:
        """What :meth:`install` wrote is loaded: nothing to put back any more."""
        self._previous = None

    def restore(self) -> bool:
        """Put back the include files :meth:`install` replaced (the previous pair is still there)."""
        if self._previous is None:
            return False
        for name, text in self._previous.items():
            if text is None:
                run(self.runner, ["rm", "-f", "--", self._path(name)], check=False)
            else:
                write_file(self.runner, self._path(name), text)
        self._previous = None
        return True

    def _prune(self, keep: set[str]) -> None:
        """Remove the pairs neither the new nor the loaded configuration names."""
        names = [f"{g}{suffix}" for g in sorted(keep) for suffix in (CERT_SUFFIX, KEY_SUFFIX)]
        script = ('cd "$1" || exit 0; shift; for f in *.crt *.key; do [ -f "$f" ] || continue; keep=0; '
                  'for k; do [ "$f" = "$k" ] && keep=1; done; [ "$keep" = 1 ] || rm -f -- "$f"; done')
        run(self.runner, ["sh", "-c", script, "prune", self.directory, *names], check=False)
