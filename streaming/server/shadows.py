"""``serve --shadow MODEL``: the glue between the rooms' finals and their shadow model
(streaming/shadow.py). A publisher's final, with its audio, is offered to its room's shadow
queue; one task per shadow model decodes them in order, journals each text beside its final
and sends it to the viewers that asked (``shadow=1``: the /compare page)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from decoder.api import SAMPLE_RATE
from decoder.context import Context
from streaming.events import Final, ShadowFinal
from streaming.numbers import write_numbers
from streaming.rooms import Room
from streaming.scoring import error_counts
from streaming.shadow import ShadowModel, ShadowQueue

if TYPE_CHECKING:
    from streaming.config import ServerConfig
    from streaming.server.state import ServerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """A final waiting for the shadow: its room, itself, its audio and the context it was decoded with."""

    room: Room
    final: Final
    audio: np.ndarray
    context: Context | None


@dataclass
class Shadow:
    """One shadow model, the finals waiting for it, and what it has done."""

    model: ShadowModel
    queue: ShadowQueue[Waiting]
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0


def shadow_models(config: ServerConfig) -> dict[str, ShadowModel]:
    """The shadow models ``config`` names (``--shadow``, ``--room-shadow``), by name, not yet
    started: each is opened in its own process by ``decoder.models.load_model``."""
    from decoder.models import MODELS, load_model

    names = {name for name in config.room_shadows.values() if name != "none"}
    return {name: ShadowModel(functools.partial(load_model, name, config.runtime), MODELS[name].final_beam_size) for name in sorted(names)}


async def start(server: ServerState, models: Mapping[str, ShadowModel]) -> None:
    """Open each shadow model in its process and start its task; ValueError if one cannot be opened."""
    for name, model in models.items():
        try:
            await asyncio.to_thread(model.start)
        except Exception as error:
            raise ValueError(f"shadow model {name} could not be opened: {error}") from error
        shadow = Shadow(model, ShadowQueue(server.config.max_pending_shadow))
        server.shadows[name] = shadow
        server.engine.on_busy = functools.partial(_pause_all, server)
        server.spawn(_run(server, shadow), f"shadow {name}")
        log.info("shadow model %s decodes the finals of %s at the lowest priority", name,
                 ", ".join(room for room, shadowed in server.config.room_shadows.items() if shadowed == name))


def _pause_all(server: ServerState, busy: bool) -> None:
    """The primary engine has a decode in flight (or none now): the shadows stop (or go on)."""
    for shadow in server.shadows.values():
        shadow.model.pause(busy)


def offer(server: ServerState, room: Room, final: Final, audio: np.ndarray, context: Context | None) -> None:
    """A final (with its audio) for its room's shadow, if it has one; skipped if the server's
    own decoding is overloaded."""
    name = server.settings.shadow(room.name)
    shadow = server.shadows.get(name) if name else None
    if shadow is not None:
        shadow.queue.offer(Waiting(room, final, audio, context), server.engine.overloaded)
        shadow.ready.set()


async def _run(server: ServerState, shadow: Shadow) -> None:
    """Decode the waiting finals one at a time, oldest first."""
    name = shadow.model.name
    while True:
        await shadow.ready.wait()
        shadow.ready.clear()
        while (waiting := shadow.queue.take(server.engine.overloaded)) is not None:
            final = waiting.final
            assert final.seq is not None
            try:
                decoded = await shadow.model.decode(waiting.audio, final.language, waiting.context)
            except Exception:
                log.exception("shadow %s could not decode final %d", name, final.seq, extra={"room": waiting.room.name})
                shadow.failed += 1
                continue
            shadow.audio_seconds += len(waiting.audio) / SAMPLE_RATE
            shadow.compute_seconds += decoded.compute_seconds
            language = decoded.language or final.language
            text = write_numbers(decoded.text, language, server.config.session.numbers)
            await server.rooms.publish_shadow(waiting.room, ShadowFinal(waiting.room.name, final.seq, name, language, text))
            # How far apart the two models' words are (per 100 of the primary's, their disagreement);
            # off the event loop: an edit distance over a long utterance's characters takes a while.
            differences, words = await asyncio.to_thread(error_counts, final.text, text, final.language)
            counted = (name, final.language)
            server.metrics.shadow_finals[counted] += 1
            server.metrics.shadow_words[counted] += words
            server.metrics.shadow_differences[counted] += differences
            if decoded.rejected:
                log.info("shadow %s: a guard took final %d's audio for no speech (%s)", name, final.seq, decoded.rejected,
                         extra={"room": waiting.room.name})


def close(server: ServerState) -> None:
    """Stop the shadows' processes (each may finish the decode it has)."""
    server.engine.on_busy = lambda busy: None  # decodes after this must not stop them again
    for shadow in server.shadows.values():
        shadow.model.close()
