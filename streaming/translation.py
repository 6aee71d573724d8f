"""How a final becomes a translation: one interface, :class:`Translator` (a final and its
audio in, text out), and two ways behind it.

- :class:`SpeechTranslator`: the speech model itself, multilingual Whisper's translate task: the
  final's audio decoded again, into English, through the engine (never urgent: every final goes
  first). What the server uses today.
- :class:`TextTranslation`: a :class:`TextTranslator` (a final's text in, its translation out: a
  machine-translation model) for targets the speech model cannot do. None is installed: no
  translation model's weights install from the package registries this project uses. One is
  added by implementing :class:`TextTranslator` and passing it to :func:`translators`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from decoder.api import DecodeOptions, SpeechModel
from streaming.events import Final
from streaming.session import DecodeRequest

if TYPE_CHECKING:
    from streaming.engine import Engine


class Translator(Protocol):
    async def translate(self, final: Final, audio: np.ndarray, target: str) -> str:
        """The final's text in ``target``."""
        ...


class TextTranslator(Protocol):
    """A machine-translation model: text in one language to text in another. Blocking (it is
    run off the event loop)."""

    targets: tuple[str, ...]

    def translate(self, text: str, source: str, target: str) -> str: ...


class SpeechTranslator:
    """The speech model's own translation (Whisper's translate task): audio into English."""

    def __init__(self, engine: Engine, model: SpeechModel, beam_size: int = 1):
        self.engine = engine
        self.model = model
        self.beam_size = beam_size

    async def translate(self, final: Final, audio: np.ndarray, target: str) -> str:
        assert final.seq is not None and target == "en"
        language = final.language if final.language in self.model.languages else None
        request = DecodeRequest(
            id=-final.seq, segment_key=-1, audio=audio, prefix=(), draft=(), final=False,
            options=DecodeOptions(language=language, task="translate", beam_size=self.beam_size),
        )
        return (await self.engine.decode(request)).hypothesis.text.strip()


class TextTranslation:
    """A :class:`TextTranslator` as a :class:`Translator`: the final's text, off the event loop."""

    def __init__(self, translator: TextTranslator):
        self.translator = translator

    async def translate(self, final: Final, audio: np.ndarray, target: str) -> str:
        return await asyncio.to_thread(self.translator.translate, final.text, final.language, target)


def translators(engine: Engine, model: SpeechModel, beam_size: int = 1, text: Iterable[TextTranslator] = ()) -> dict[str, Translator]:
    """What each target language is translated by: the speech model into English where it can,
    text translators for their targets (the speech model first: it hears the speech itself)."""
    found: dict[str, Translator] = {}
    for translator in text:
        for target in translator.targets:
            found.setdefault(target, TextTranslation(translator))
    if model.translates:
        found["en"] = SpeechTranslator(engine, model, beam_size)
    return found
