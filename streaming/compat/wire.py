"""What other services' dialects share: a refusal before the WebSocket upgrade, as the service
gives it, and reading a client's JSON event."""

from __future__ import annotations

import json
import re
from typing import Any

from streaming.protocol import ProtocolError

_CODES = {401: "unauthorized", 413: "too_large", 429: "overloaded", 503: "overloaded"}


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


def spread_words(text: str, start: float, end: float) -> list[dict[str, Any]]:
    """The transcript's words, their times spread over the caption's by length: the models
    served here give no word times (docs/compat.md)."""
    tokens = text.split()
    total = sum(len(t) for t in tokens) or 1
    words, at, span = [], start, max(0.0, end - start)
    for token in tokens:
        length = span * len(token) / total
        bare = re.sub(r"^\W+|\W+$", "", token).lower() or token.lower()
        words.append({"word": bare, "start": round(at, 3), "end": round(at + length, 3), "confidence": 1.0, "punctuated_word": token})
        at += length
    return words
