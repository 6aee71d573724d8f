"""Wire dialects: how one publisher connection speaks, over the same sessions and rooms.

A :class:`Dialect` turns what the server has to say (ready, captions, errors, the close) into
the connection's text messages, and the client's text messages into FlashCaption's commands.
The native dialect is protocol v1 (docs/protocol.md); :mod:`streaming.compat.deepgram` speaks
Deepgram's live API, :mod:`streaming.compat.openai_realtime` OpenAI's realtime transcription.
Rooms, viewers, the journal and ``/metrics`` see every dialect's sessions alike: a dialect only
changes what this one connection reads and writes. No sockets here.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from streaming.events import Caption, ErrorEvent, Ready, encode
from streaming.protocol import ClientMessage, ProtocolError, parse_client_message


class Dialect(Protocol):
    # Whether a dropped connection's session waits to be resumed (protocol v1's resume=ID);
    # other services' clients have no way to ask, so their sessions end with the connection.
    resumable: ClassVar[bool]

    def ready(self, ready: Ready) -> list[str]:
        """The connection's first messages."""
        ...

    def client_message(self, text: str) -> ClientMessage | None:
        """A client's text message as a command; None: nothing to do (a keepalive)."""
        ...

    def answers(self, applied: bool = True) -> list[str]:
        """What to reply to the client's last text message, once the server has ``applied`` its
        command (if the server refused it, the dialect forgets what the message asked for)."""
        ...

    def caption(self, message: Caption) -> list[str]:
        """What the publisher is sent for one of its captions."""
        ...

    def error(self, error: ProtocolError) -> str:
        ...

    def closing(self, audio_seconds: float) -> list[str]:
        """The last messages before the server closes a stream that ended normally."""
        ...


class Native:
    """Protocol v1."""

    resumable: ClassVar[bool] = True

    def ready(self, ready: Ready) -> list[str]:
        return [encode(ready)]

    def client_message(self, text: str) -> ClientMessage | None:
        return parse_client_message(text)

    def answers(self, applied: bool = True) -> list[str]:
        return []

    def caption(self, message: Caption) -> list[str]:
        return [encode(message)]

    def error(self, error: ProtocolError) -> str:
        return encode(ErrorEvent(error.code, error.message, error.retry_url))

    def closing(self, audio_seconds: float) -> list[str]:
        return []


NATIVE = Native()
