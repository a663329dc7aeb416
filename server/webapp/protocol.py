"""The WebSocket feed's JSON messages: what a client may send and what the server answers.

Pure functions with no I/O, so the protocol can be read (and tested) apart from the sockets.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

JsonObject = dict[str, Any]

# Close code of a server that goes away for a restart: the client should reconnect at once.
WS_CLOSE_SERVICE_RESTART = 1012


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_message(reason: str) -> JsonObject:
    return {"type": "error", "error": reason}


def reply_to_text(text: str, server_id: str) -> JsonObject:
    """The server's answer to one inbound text frame."""
    try:
        message = json.loads(text)
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        return error_message("invalid JSON: nested too deeply")
    except ValueError:
        return error_message("invalid JSON")
    if not isinstance(message, dict):
        return error_message("message must be a JSON object")
    kind = message.get("type")
    if kind == "ping":
        return {"type": "pong"}
    if kind == "msg":
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            return error_message("'msg' needs a non-empty string 'id'")
        return {"type": "ack", "id": message_id, "server_id": server_id}
    return error_message(f"unknown message type {kind!r}")
