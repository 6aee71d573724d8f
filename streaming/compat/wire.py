"""What other services' dialects share: a refusal before the WebSocket upgrade, as the service
gives it, and reading a client's JSON event."""

from __future__ import annotations

import json
from typing import Any

from streaming.protocol import ProtocolError

_CODES = {401: "unauthorized", 503: "overloaded"}


class HandshakeError(ProtocolError):
    """A request the service would refuse, the HTTP ``status`` it refuses it with, and its
    JSON ``body``; after the upgrade the same error is an error message in the dialect."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(_CODES.get(status, "bad_request"), message)
        self.status = status

    def body(self, request_id: str) -> str:
        raise NotImplementedError


def read_event(text: str, limit: int) -> tuple[Any, dict[str, Any]]:
    """A client's text message as (its ``type``, the event), within ``limit`` bytes."""
    if len(text.encode("utf-8", errors="replace")) > limit:
        raise ProtocolError("too_large", f"text messages are limited to {limit} bytes")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: JSON, or an integer too long to convert
        raise ProtocolError("bad_request", "text message is not a JSON object") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "text message is not a JSON object")
    return message.get("type"), message
