"""Who may set the client address: X-Forwarded-For against a real server process.

nginx reaches the app over its unix socket and is believed; on TCP only FORWARDED_ALLOW_IPS
(loopback by default) is, so a client reaching the port directly cannot choose its address.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx

from tests.server_process import LOOPBACK, running_server

SPOOFED = "6.6.6.6"
# Another loopback address: routed locally like 127.0.0.1 but not in the default trusted list.
UNTRUSTED_LOOPBACK = "127.0.0.2"
REQUEST_TIMEOUT = 5.0
# One TLS context for every transport (each new one would load the CA bundle again; the requests are HTTP).
TLS = ssl.create_default_context()


def seen_client(transport: httpx.HTTPTransport, url: str) -> object:
    with httpx.Client(transport=transport, timeout=REQUEST_TIMEOUT) as client:
        response = client.get(url, headers={"X-Forwarded-For": SPOOFED})
    response.raise_for_status()
    return response.json()["client"]


def test_only_the_unix_socket_and_trusted_tcp_peers_may_set_the_client_address(tmp_path: Path) -> None:
    with running_server(UNIX_SOCKET_DIR=str(tmp_path)) as (_, port):
        url = f"http://{LOOPBACK}:{port}/api/client"
        untrusted = httpx.HTTPTransport(local_address=UNTRUSTED_LOOPBACK, verify=TLS)
        assert seen_client(untrusted, url) == UNTRUSTED_LOOPBACK

        trusted = httpx.HTTPTransport(local_address=LOOPBACK, verify=TLS)
        assert seen_client(trusted, url) == SPOOFED

        unix_path = tmp_path / f"app-{socket.gethostname()}.sock"
        unix = httpx.HTTPTransport(uds=str(unix_path), verify=TLS)
        assert seen_client(unix, "http://app/api/client") == SPOOFED

