"""HTTPS on the real stack: nginx terminates TLS with a certificate from a CA made in the test, and
the probe verifies it (https and wss) through deploys, a renewal under load, and bad pairs."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from handover.probe import Probe, ProbeSettings
from tests.tlsfiles import Authority, other_key

from .conftest import PROBE_RATE, TEST_PORT, TEST_PROJECT, StackHandle, docker_ready, stack_env

pytestmark = pytest.mark.integration

HTTPS_PROJECT = f"{TEST_PROJECT}-tls"
HTTP_PORT = TEST_PORT + 2
HTTPS_PORT = TEST_PORT + 3
HSTS_SECONDS = 600
PROBE_WS_CLIENTS = 10
SETTLE_SECONDS = 1.0


@dataclass
class TlsStack:
    stack: StackHandle
    ca: Authority
    ca_file: Path
    certs: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{HTTPS_PORT}"

    def use(self, cert: Path, key: Path) -> None:
        """Point the stack's configuration at another pair (as a user edits invoke.yaml)."""
        self.stack.env["INVOKE_DEPLOY_TLS_CERTIFICATE"] = str(cert)
        self.stack.env["INVOKE_DEPLOY_TLS_KEY"] = str(key)

    def probe(self) -> Probe:
        return Probe(ProbeSettings(base_url=self.url, rate=PROBE_RATE, ws_clients=PROBE_WS_CLIENTS,
                                   ca_file=str(self.ca_file)))

    def served_certificate(self) -> str:
        """SHA-256 of the certificate the server presents, verified against the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()

    def tls_listing(self) -> list[list[str]]:
        """The proxy's TLS directory: ``[name, "->", target]`` for a link, ``[name, digest, mode, uid]`` for a
        file. Read where the deploy writes it: the state directory, or with ``INVOKE_DEPLOY_PROXY_FILES=volume``
        its volume, through the files container (at the same path)."""
        directory = str(self.stack.state_dir / "tls")
        argv = ["sh", "-c", LIST_TLS, "list", directory]
        if self.stack.env.get("INVOKE_DEPLOY_PROXY_FILES") == "volume":
            argv = ["docker", "exec", f"{self.stack.project}-proxy-files-1", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"cannot list {directory}: {done.stderr}"
        return [line.split("\t") for line in sorted(done.stdout.splitlines())]

    def tls_files(self) -> dict[str, str]:
        """Each file of the proxy's TLS directory: its content's digest (a link: its target)."""
        return {entry[0]: (f"-> {entry[2]}" if entry[1] == "->" else entry[1]) for entry in self.tls_listing()}


LIST_TLS = ('cd "$1" || exit 3; for f in * .[!.]*; do [ -e "$f" ] || [ -L "$f" ] || continue; '
            'if [ -L "$f" ]; then printf "%s\t->\t%s\n" "$f" "$(readlink "$f")"; '
            'else printf "%s\t%s\t%s\n" "$f" "$(sha256sum < "$f" | cut -d" " -f1)" "$(stat -c "%a\t%u" "$f")"; fi; '
            'done')


def pem_digest(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    docker_ready()
    certs = tmp_path_factory.mktemp("certs")
    ca = Authority.make()
    ca_file = ca.write(certs / "ca.pem")
    cert, key = ca.server_pair(certs, "first")
    state = f".state-{HTTPS_PROJECT}"
    env = stack_env(HTTPS_PROJECT, HTTP_PORT, state)
    env.update({"INVOKE_DEPLOY_APP_IMAGE": f"{HTTPS_PROJECT}-app", "INVOKE_DEPLOY_HTTPS_PORT": str(HTTPS_PORT),
                "INVOKE_DEPLOY_HSTS": str(HSTS_SECONDS)})
    handle = StackHandle(HTTPS_PROJECT, HTTP_PORT, Path(__file__).resolve().parents[2] / state, env)
    stack = TlsStack(handle, ca, ca_file, certs)
    stack.use(cert, key)
    handle.inv("local.down", check=False)
    handle.inv("local.up")
    yield stack
    handle.inv("local.down", check=False)
    assert handle.containers() == [] and handle.containers("nginx") == []
    assert not (handle.state_dir / "tls").exists()
    images = subprocess.run(["docker", "image", "ls", f"{HTTPS_PROJECT}-app", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, check=False).stdout.split()
    if images:
        subprocess.run(["docker", "image", "rm", *images], capture_output=True, check=False)


def info(stack: TlsStack) -> dict[str, object]:
    response = requests.get(f"{stack.url}/api/info", timeout=5, verify=str(stack.ca_file))
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


def unique(tag: str) -> str:
    return f"tls-{tag}-{time.strftime('%H%M%S')}-{time.monotonic_ns() % 100000}"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # TLS 1.0/1.1 asked for on purpose
def test_https_serves_with_hsts_and_plain_http_redirects(tls_stack: TlsStack) -> None:
    response = requests.get(f"{tls_stack.url}/api/info", timeout=5, verify=str(tls_stack.ca_file))
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"] == f"max-age={HSTS_SECONDS}"
    plain = requests.get(f"http://127.0.0.1:{HTTP_PORT}/some/path?a=1&b=two", timeout=5, allow_redirects=False)
    assert plain.status_code == 308
    assert plain.headers["Location"] == f"https://127.0.0.1:{HTTPS_PORT}/some/path?a=1&b=two"
    followed = requests.get(f"http://localhost:{HTTP_PORT}/api/info", timeout=5, verify=str(tls_stack.ca_file))
    assert followed.status_code == 200 and followed.url == f"https://localhost:{HTTPS_PORT}/api/info"
    # Old protocols are refused.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cafile=str(tls_stack.ca_file))
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=5) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="localhost")
    # The key file on the host: 0600, in the state directory, not in the sources nginx is given.
    pairs = [entry for entry in tls_stack.tls_listing() if entry[0].endswith(".pem") and entry[1] != "->"]
    assert len(pairs) == 1 and pairs[0][2:] == ["600", "10080"], pairs


def test_three_deploys_over_https_lose_nothing(tls_stack: TlsStack) -> None:
    probe = tls_stack.probe()
    probe.start()
    ids = [info(tls_stack)["server_id"]]
    served = tls_stack.served_certificate()
    versions = []
    try:
        for n in range(3):
            versions.append(unique(f"d{n}"))
            with probe.window(f"deploy-{n}"):
                tls_stack.stack.inv("local.deploy", "--version", versions[-1])
            ids.append(info(tls_stack)["server_id"])
            time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    assert len(set(ids)) == 4, ids
    assert info(tls_stack)["version"] == versions[-1]
    data = report.to_dict()
    # The WebSocket clients (wss, verified against the test CA) were moved by every deploy.
    assert data["ws"]["reconnects"] >= 3 * PROBE_WS_CLIENTS, report.format_table()  # type: ignore[index]
    assert data["http"]["completed_ok"] > 0  # type: ignore[index]
    assert tls_stack.served_certificate() == served  # a deploy with the same pair reloads nothing


def test_certificate_renewal_under_load_loses_nothing(tls_stack: TlsStack) -> None:
    renewed_cert, renewed_key = tls_stack.ca.server_pair(tls_stack.certs, "renewed")
    again_cert, again_key = tls_stack.ca.server_pair(tls_stack.certs, "again")
    probe = tls_stack.probe()
    probe.start()
    try:
        time.sleep(SETTLE_SECONDS)
        tls_stack.use(renewed_cert, renewed_key)
        with probe.window("certs"):
            out = tls_stack.stack.inv("local.certs").stdout
        assert "new certificate and key live (nginx -t passed" in out and "reloaded" not in out
        assert tls_stack.served_certificate() == pem_digest(renewed_cert)
        assert "unchanged; nothing done" in tls_stack.stack.inv("local.certs").stdout
        time.sleep(SETTLE_SECONDS)
        # A renewal picked up by a deploy: validated at `proxy config`, loaded at the switch.
        tls_stack.use(again_cert, again_key)
        with probe.window("deploy with a renewed certificate"):
            tls_stack.stack.inv("local.deploy", "--version", unique("renew"))
        assert tls_stack.served_certificate() == pem_digest(again_cert)
        time.sleep(SETTLE_SECONDS)
    finally:
        report = probe.stop()
    assert report.ok, report.format_table()
    # The pairs on the host: the one live and the one before it; older ones are gone.
    names = set(tls_stack.tls_files())
    assert len([n for n in names if n.endswith(".pem") and n != "live.pem"]) == 2, names
    secret_line = again_key.read_text().splitlines()[1]
    assert secret_line not in out


@pytest.mark.parametrize("problem", ["expired", "mismatched", "unreadable", "not a key"])
def test_a_bad_pair_changes_nothing_and_the_old_certificate_serves(tls_stack: TlsStack, problem: str) -> None:
    served, files, before = tls_stack.served_certificate(), tls_stack.tls_files(), info(tls_stack)
    good = (tls_stack.stack.env["INVOKE_DEPLOY_TLS_CERTIFICATE"], tls_stack.stack.env["INVOKE_DEPLOY_TLS_KEY"])
    if problem == "expired":
        cert, key = tls_stack.ca.server_pair(tls_stack.certs, "expired", expired=True)
        words = f"deploy.tls_certificate: the certificate in {cert} expired on"
    elif problem == "mismatched":
        cert, key = tls_stack.ca.server_pair(tls_stack.certs, "mismatched", key=other_key())
        words = f"the key {key} does not belong to the certificate {cert}"
    elif problem == "unreadable":
        cert, key = Path(good[0]), tls_stack.certs / "missing.key"
        words = f"deploy.tls_key: cannot read {key} (No such file or directory)"
    else:
        cert, key = Path(good[0]), tls_stack.certs / "garbage.key"
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n")
        words = f"deploy.tls_key: {key} holds no PEM private key"
    tls_stack.use(cert, key)
    try:
        for args in (("local.deploy", "--version", unique("bad")), ("local.certs",)):
            result = tls_stack.stack.inv(*args, check=False)
            assert result.returncode == 2, result.stdout + result.stderr
            assert words in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and "PRIVATE KEY" not in result.stdout + result.stderr
    finally:
        tls_stack.use(Path(good[0]), Path(good[1]))
    assert tls_stack.served_certificate() == served
    assert tls_stack.tls_files() == files
    after = info(tls_stack)
    assert (after["server_id"], after["version"]) == (before["server_id"], before["version"])
    status = tls_stack.stack.inv("local.status").stdout
    assert "lock: unlocked" in status


def test_an_https_port_nginx_does_not_publish_is_named_and_changes_nothing(tls_stack: TlsStack) -> None:
    """TLS turned on, or https_port changed, for an nginx container made before: refused, naming the
    key and the way out, instead of serving TLS on a port nobody can reach."""
    served, files, before = tls_stack.served_certificate(), tls_stack.tls_files(), info(tls_stack)
    other = HTTPS_PORT + 1
    tls_stack.stack.env["INVOKE_DEPLOY_HTTPS_PORT"] = str(other)
    try:
        for args in (("local.deploy", "--version", unique("port")), ("local.certs",)):
            result = tls_stack.stack.inv(*args, check=False)
            assert result.returncode == 2, result.stdout + result.stderr
            assert f"config key deploy.https_port: nginx's container {HTTPS_PROJECT}-nginx-1 does not publish " \
                   f"127.0.0.1:{other}" in result.stderr, result.stderr
            assert "inv local.down && inv local.up" in result.stderr
    finally:
        tls_stack.stack.env["INVOKE_DEPLOY_HTTPS_PORT"] = str(HTTPS_PORT)
    assert tls_stack.served_certificate() == served and tls_stack.tls_files() == files
    after = info(tls_stack)
    assert (after["server_id"], after["version"]) == (before["server_id"], before["version"])
