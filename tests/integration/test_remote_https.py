"""HTTPS over `fab` on a real sshd host and the real Docker engine: the pair goes to the host over
SFTP (0600, nginx's workers' own, in the state directory), `fab certs` puts a renewed pair live, and
a bad pair changes nothing."""

from __future__ import annotations

import hashlib
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tlsfiles import Authority

from .conftest import LAB_PORT_SHIFT, LAB_TAG, loopback
from .test_remote import Lab, open_lab

pytestmark = pytest.mark.integration

ADDRESSES = [loopback(41)]
PORT_BASE = 28700 + LAB_PORT_SHIFT
HTTPS_OFFSET = 50
WORKER_UID = 10080


def served(port: int, ca_file: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def digest(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory, "remote-https", f"hrtls{LAB_TAG}", ADDRESSES, PORT_BASE) as the_lab:
        yield the_lab


def test_fab_serves_https_renews_without_a_reload_and_refuses_a_bad_pair(tlab: Lab) -> None:
    [host] = tlab.hosts("tls", tlab.ssh.servers[:1])
    ca = Authority.make()
    ca_file = ca.write(tlab.work / "ca.pem")
    cert, key = ca.server_pair(tlab.work, "first")
    https_port = host.http_port + HTTPS_OFFSET

    def config(cert: Path, key: Path) -> Path:
        return tlab.config("tls", [host], tls_certificate=str(cert), tls_key=str(key), https_port=https_port)

    tlab.fab(config(cert, key), [host], "setup")
    first = tlab.fab(config(cert, key), [host], "deploy", "--version", "t1")
    assert served(https_port, ca_file) == digest(cert)
    assert "PRIVATE KEY" not in first.stdout + first.stderr
    tls_dir = host.deploy_dir / ".state" / "tls"
    [pair] = [p for p in tls_dir.glob("*.pem") if not p.is_symlink()]
    assert pair.read_bytes().endswith(key.read_bytes())
    assert stat.S_IMODE(pair.stat().st_mode) == 0o600 and pair.stat().st_uid == WORKER_UID
    assert not any((host.deploy_dir / "releases").rglob("*.pem"))  # never in a release

    renewed_cert, renewed_key = ca.server_pair(tlab.work, "renewed")
    out = tlab.fab(config(renewed_cert, renewed_key), [host], "certs").stdout
    assert "new certificate and key live" in out and "reloaded" not in out, out
    assert served(https_port, ca_file) == digest(renewed_cert)

    expired_cert, expired_key = ca.server_pair(tlab.work, "expired", expired=True)
    files = sorted(p.name for p in tls_dir.iterdir())
    for args in (("certs",), ("deploy", "--version", "t2")):
        result = tlab.fab(config(expired_cert, expired_key), [host], *args, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"the certificate in {expired_cert} expired on" in result.stderr
    assert served(https_port, ca_file) == digest(renewed_cert)
    assert sorted(p.name for p in tls_dir.iterdir()) == files
