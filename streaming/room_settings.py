"""What a session in a room decodes with when its publisher does not say: the operator's
per-room languages (``--room-languages``) and context (``--context-file``), checked against
the model; and how long a room's audience waits for finals while editors review them
(``--review-delay``). Pure decisions, no I/O.
"""

from __future__ import annotations

from typing import TypeVar

from decoder.context import Context
from streaming.protocol import ProtocolError

T = TypeVar("T")


def _for_room(settings: dict[str, T], room: str) -> T | None:
    """An operator's per-room setting: the room's own, else the one for every room ("*")."""
    return settings.get(room) or settings.get("*")


class RoomSettings:
    def __init__(
        self,
        model_name: str,
        model_languages: tuple[str, ...],
        room_languages: dict[str, tuple[str, ...]] | None = None,
        room_contexts: dict[str, Context] | None = None,
        room_review_delays: dict[str, float] | None = None,
    ):
        self.model_name = model_name
        self.supported = model_languages
        self.room_languages = room_languages or {}
        self.room_contexts = room_contexts or {}
        self.room_review_delays = room_review_delays or {}
        for room, codes in self.room_languages.items():
            missing = [code for code in codes if code not in model_languages]
            if missing:
                raise ValueError(f"--room-languages {room}: model {model_name} does not support {', '.join(missing)}")

    @property
    def default_language(self) -> str:
        """Multilingual models detect the language of each utterance unless told."""
        return self.supported[0] if len(self.supported) == 1 else "auto"

    def languages(self, room: str) -> tuple[str, ...]:
        """The room's language candidates, for publishers that name none."""
        return _for_room(self.room_languages, room) or ()

    def context(self, room: str) -> Context | None:
        """The room's default context, for publishers that give none."""
        return _for_room(self.room_contexts, room)

    def review_delay(self, room: str) -> float:
        """Seconds the room's audience gets finals after editors (``--review-delay``); 0: at once."""
        return _for_room(self.room_review_delays, room) or 0.0

    def language(self, requested: str | None, candidates: tuple[str, ...] = ()) -> str | None:
        """What a session asks the model for: a language it can do, "auto", or candidates to
        detect among ("en,zh"); None when nothing was asked; ``bad_request`` for a language the
        model lacks."""
        supported = self.supported
        for code in (*candidates, *([requested] if requested not in (None, "auto") else [])):
            if code not in supported:
                listed = ", ".join(supported) if len(supported) < 12 else f"{len(supported)} languages, e.g. {', '.join(supported[:12])}"
                raise ProtocolError("bad_request", f"model {self.model_name} does not support language {code!r} (supports: {listed})")
        if requested is None and not candidates:
            return None
        if requested not in (None, "auto"):
            return requested
        if len(supported) == 1:
            return supported[0]
        return ",".join(candidates) if len(candidates) > 1 else (candidates[0] if candidates else "auto")

    def session_language(self, room: str, requested: str | None, candidates: tuple[str, ...] = ()) -> str:
        """A new session's language: what its publisher asked for, else the room's, else the default."""
        return self.language(requested, candidates or self.languages(room)) or self.default_language
