"""Garbage from some clients through nginx on the real stack, while the probe's clients keep going.

The same random and malformed WebSocket frames, oversized messages, cut handshakes and odd HTTP
requests as tests/unit/test_server_fuzz.py (against the bare app), here sent to nginx's port: nginx
answers what it refuses itself, the app the rest, and nobody else notices. The probe's clients see
no failed request, no abnormal close and no lost message; the app is the same process afterwards.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import requests

from tests.unit.test_server_fuzz import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    ODD_REQUESTS,
    SEED,
    WS_CONNECTIONS,
    churn,
    close_code_after_invalid_utf8,
    fuzz_frames,
    oversized_message,
    raw_http,
    status_code,
)

from .conftest import StackHandle, lost_nothing, probe_for
from .faultlog import note, probe_line
from .test_deploy import assert_one_live_container, assert_unlocked

pytestmark = pytest.mark.integration

# What nginx answers to each of ODD_REQUESTS (the app's answers are in the unit test): it refuses
# bad framing itself (400), a URI beyond its buffers (414) and an unknown HTTP version (505).
NGINX_ANSWERS = [b"400", b"414", b"400", b"400", b"400", b"400", b"400", b"505", b"400", b"400", b"400", b"400"]
STACK_WS_MAX_MESSAGE = 64 * 1024  # the app's default: the stack does not set WS_MAX_MESSAGE
ROUNDS = 3  # the odd requests, this many times over, spread through the run


def test_garbage_through_nginx_leaves_other_clients_unharmed(stack: StackHandle) -> None:
    assert len(NGINX_ANSWERS) == len(ODD_REQUESTS)
    before = stack.info()
    containers = stack.containers()
    rng = random.Random(SEED)
    port = stack.port

    async def websocket_fuzz() -> tuple[int | None, int | None]:
        for _ in range(WS_CONNECTIONS):
            await fuzz_frames(port, rng)
        code = await oversized_message(port, STACK_WS_MAX_MESSAGE)
        await churn(port, rng)
        return code, await asyncio.to_thread(close_code_after_invalid_utf8, port)

    answers: list[tuple[bytes, bytes, bytes]] = []
    probe = probe_for(stack.url)
    probe.start()
    try:
        for _ in range(ROUNDS):
            too_big, invalid = asyncio.run(websocket_fuzz())
            assert (too_big, invalid) == (CLOSE_MESSAGE_TOO_BIG, CLOSE_INVALID_PAYLOAD)
            for (request, _), expected in zip(ODD_REQUESTS, NGINX_ANSWERS, strict=True):
                answers.append((request[:60], expected, status_code(raw_http(port, request))))
    finally:
        report = probe.stop()
    wrong = [answer for answer in answers if answer[1] != answer[2]]
    assert wrong == [], wrong  # each odd request answered, with nginx's or the app's status
    http, ws = lost_nothing(report)
    assert http["sent"] > 0 and ws["messages_acked"] > 0, report.format_table()  # type: ignore[index]
    assert report.ok, report.format_table()
    assert stack.info()["server_id"] == before["server_id"]  # the same app process serves
    assert stack.containers() == containers
    assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200
    assert_one_live_container(stack, str(before["version"]))
    assert_unlocked(stack.state_dir)
    note("fuzz via nginx", f"{len(answers)} odd requests answered as expected; frames, oversized and invalid "
                           f"messages, churn x{ROUNDS}; {probe_line(report)}")
