"""Garbage from clients against the real server process: it keeps serving and its memory stays bounded.

Random and malformed WebSocket frames (text, binary, invalid UTF-8, over WS_MAX_MESSAGE), odd and
huge HTTP headers, and many connections opening and closing. A fixed seed and fixed counts keep
the run repeatable and short.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.server_process import LOOPBACK, running_server

SEED = 20261126
WS_MAX_MESSAGE = 4096
WS_CONNECTIONS = 20
FRAMES_PER_CONNECTION = 25
CHURN_CONNECTIONS = 200
RECEIVE_TIMEOUT = 5.0
RSS_SLACK_KB = 64 * 1024  # generous: allocator noise, not a leak per connection
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8


@pytest.fixture
def fuzz_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    with running_server(WS_MAX_MESSAGE=str(WS_MAX_MESSAGE)) as running:
        yield running


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def random_text(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:  # JSON objects of odd shapes
        value: object = {rng.choice(["type", "id", "body", "", "\u0000"]): rng.choice(
            [None, 1, -1e308, "msg", "ping", [], {}, "x" * rng.randrange(100)]) for _ in range(rng.randrange(4))}
        return json.dumps(value)
    if kind == 1:  # a valid message now and then: must be acked
        return json.dumps({"type": "msg", "id": f"m{rng.randrange(10**6)}"})
    if kind == 2:  # JSON that is not an object
        return rng.choice(["[]", "null", "1", '"s"', "true", "[[[[[[[[[[[[]]]]]]]]]]]]"])
    if kind == 3:  # deep nesting
        depth = rng.randrange(1, 2000)
        return "[" * depth + "]" * depth
    if kind == 4:  # random unicode, including astral characters
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD7FF),
                                      rng.randrange(0x10000, 0x10FFFF)])) for _ in range(rng.randrange(200)))
    return "".join(chr(rng.randrange(0, 128)) for _ in range(rng.randrange(1, 300)))  # control bytes too


async def fuzz_frames(port: int, rng: random.Random) -> None:
    """Each frame, text or binary, gets exactly one reply and the socket stays open."""
    async with connect(f"ws://{LOOPBACK}:{port}/ws", max_size=None, compression=None) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
        assert hello["type"] == "hello"
        for _ in range(FRAMES_PER_CONNECTION):
            if rng.random() < 0.3:
                await ws.send(rng.randbytes(rng.randrange(1, WS_MAX_MESSAGE)))
            else:
                await ws.send(random_text(rng)[: WS_MAX_MESSAGE // 4])
            while True:  # skip ticks
                reply = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
                if reply["type"] != "tick":
                    break
            assert reply["type"] in ("error", "ack", "pong"), reply
        await ws.send(json.dumps({"type": "ping"}))


async def oversized_message(port: int, limit: int = WS_MAX_MESSAGE) -> int | None:
    """Send four times the server's ``limit``; return its close code (None: it never closed)."""
    async with connect(f"ws://{LOOPBACK}:{port}/ws", max_size=None) as ws:
        await ws.recv()
        await ws.send("x" * (limit * 4))
        try:
            async with asyncio.timeout(RECEIVE_TIMEOUT):
                while True:  # ticks until the close
                    await ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        except TimeoutError:
            return None


async def churn(port: int, rng: random.Random) -> None:
    """Many connections: WebSockets closed at once or mid-handshake, and bare TCP connects."""
    for n in range(CHURN_CONNECTIONS):
        if n % 3 == 0:
            async with connect(f"ws://{LOOPBACK}:{port}/ws") as ws:
                if rng.random() < 0.5:
                    await ws.recv()
        elif n % 3 == 1:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(handshake(port)[: rng.randrange(1, 60)])  # a handshake cut short
            writer.close()
        else:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.close()


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    length = len(payload)
    head += bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + struct.pack("!H", length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_code_after_invalid_utf8(port: int) -> int | None:
    """Send a text frame that is not UTF-8 on a raw socket; return the server's close code."""
    with socket.create_connection((LOOPBACK, port), timeout=RECEIVE_TIMEOUT) as raw:
        raw.sendall(handshake(port))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += raw.recv(4096)
        assert buffer.startswith(b"HTTP/1.1 101")
        buffer = buffer.split(b"\r\n\r\n", 1)[1]
        raw.sendall(masked_frame(OPCODE_TEXT, b"\xff\xfe{\xc3\x28}"))
        while True:
            while len(buffer) < 2:
                chunk = raw.recv(4096)
                if not chunk:
                    return None
                buffer += chunk
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                while len(buffer) < 4:
                    buffer += raw.recv(4096)
                length, offset = struct.unpack("!H", buffer[2:4])[0], 4
            while len(buffer) < offset + length:
                chunk = raw.recv(4096)
                if not chunk:
                    return None
                buffer += chunk
            payload, buffer = buffer[offset:offset + length], buffer[offset + length:]
            if opcode == OPCODE_CLOSE:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code


def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes; return the status line (or b"" if the server just closed)."""
    with socket.create_connection((LOOPBACK, port), timeout=RECEIVE_TIMEOUT) as raw:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.sendall(request)
        try:
            return raw.recv(4096).split(b"\r\n", 1)[0]
        except ConnectionResetError:
            return b""


# Every odd request is answered, with this status (a connection closed without one fails): the
# app's HTTP parser refuses what breaks the protocol and serves what it can read.
BAD_REQUEST, NOT_FOUND, OK = b"400", b"404", b"200"
ODD_REQUESTS = [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 200_000 + b"\r\n\r\n", BAD_REQUEST),
    (b"GET /" + b"p" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", NOT_FOUND),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n", OK),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x00b\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n folded\r\n\r\n", OK),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), BAD_REQUEST),  # a TLS hello
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", OK),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BAD_REQUEST),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", BAD_REQUEST),
]


def status_code(status_line: bytes) -> bytes:
    """The code of an HTTP status line, or b"" when there was none (the connection just closed)."""
    parts = status_line.split(b" ")
    return parts[1] if len(parts) > 1 and status_line.startswith(b"HTTP/") else b""


def test_garbage_from_clients_leaves_the_server_serving(fuzz_server: tuple[subprocess.Popen[str], int]) -> None:
    process, port = fuzz_server
    base = f"http://{LOOPBACK}:{port}"
    rng = random.Random(SEED)
    client = httpx.Client(timeout=5)  # one client: each new one loads the CA bundle again
    for _ in range(20):  # warm up before measuring
        client.get(f"{base}/api/info")
    rss_before = rss_kb(process.pid)

    async def websocket_fuzz() -> int | None:
        for _ in range(WS_CONNECTIONS):
            await fuzz_frames(port, rng)
        code = await oversized_message(port)
        await churn(port, rng)
        return code

    assert asyncio.run(websocket_fuzz()) == CLOSE_MESSAGE_TOO_BIG
    assert close_code_after_invalid_utf8(port) == CLOSE_INVALID_PAYLOAD

    for request, expected in ODD_REQUESTS:
        status = raw_http(port, request)
        assert status_code(status) == expected, (request[:60], status)
        assert process.poll() is None

    assert process.poll() is None
    assert client.get(f"{base}/healthz").status_code == 200
    client.close()
    rss_after = rss_kb(process.pid)
    assert rss_after - rss_before < RSS_SLACK_KB, (rss_before, rss_after)
    print(f"\n[fuzz] VmRSS {rss_before} kB -> {rss_after} kB; /healthz 200", flush=True)
