"""What the server holds, shared by every handler: configuration, model, engine, room and
session registries, access policy, metrics, and the background tasks it keeps.

Handlers (``publish``, ``view``, ``http``) take it as their first argument; only ``app`` starts
and stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decoder.api import SpeechModel
from streaming import auth
from streaming.access import AccessPolicy, ConnectionCounter, auth_required, parse_networks
from streaming.compat import NATIVE, Dialect
from streaming.config import ServerConfig
from streaming.engine import Engine
from streaming.events import Final
from streaming.metrics import Metrics
from streaming.protocol import PublishParams
from streaming.room_settings import RoomSettings
from streaming.rooms import Publishers, Room, Rooms
from streaming.server import shadows
from streaming.server.connection import Link
from streaming.session import Session
from streaming.shadow import ShadowModel
from streaming.store import StoreUnavailable, open_store
from streaming.translation import translators

log = logging.getLogger(__name__)


@dataclass
class Publisher:
    """A session with its publisher's connection (the latest one, after a resume)."""

    id: str
    params: PublishParams
    session: Session
    room: Room
    connection: Link
    address: str  # the client's, for the per-address bound on parked sessions
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    started_wall: float = field(default_factory=time.time)  # Unix time of session clock 0
    parking: bool = False  # the connection dropped: finish what was heard, then wait for a resume
    # Set when this connection is done with the session (parked or ended): a take-over waits for it.
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # The pump says when it decoded something, or has nothing to do (pump_idle): a mode=file
    # publisher held back while its audio is decoded waits for these.
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    pump_idle: bool = True
    dialect: Dialect = NATIVE  # what its connection speaks (streaming/compat)
    own_context: bool = False  # its publisher gave a context: terms editors add to the room's do not replace it
    translate: str | None = None  # finals are also translated into this language
    # Finals waiting for their translation, and the task translating them (publish._translate).
    translations: asyncio.Queue[tuple[Final, np.ndarray, float]] = field(default_factory=asyncio.Queue)
    translator: asyncio.Task[None] | None = None

    @property
    def log_extra(self) -> dict[str, str]:
        return {"session": self.id, "room": self.room.name}


class ServerState:
    """Built once from the configuration and the loaded model."""

    def __init__(self, config: ServerConfig, model: SpeechModel, shadow_models: Mapping[str, ShadowModel] | None = None):
        """``shadow_models``: the shadow models the configuration names, by name (default: opened
        by name from the installed models, shadows.shadow_models)."""
        self.config = config
        self.model = model
        self.engine = Engine(
            model,
            workers=config.workers,
            max_queued=config.max_queued_decodes,
            delay_s=config.decode_delay_s,
            max_wait_s=config.max_decode_wait_s,
        )
        # What each target language is translated by (streaming/translation.py).
        self.translators = translators(self.engine, model, config.session.final_beam_size)
        self.settings = RoomSettings(
            model.name, model.languages, config.room_languages, config.room_contexts, config.room_review_delays, config.room_translations,
            translation_targets=tuple(self.translators), room_shadows=config.room_shadows,
        )
        # Shadow models (serve --shadow), started with the server (shadows.start).
        self.shadow_models = dict(shadow_models) if shadow_models is not None else shadows.shadow_models(config)
        missing = {name for name in config.room_shadows.values() if name != "none"} - set(self.shadow_models)
        if missing:
            raise ValueError(f"no shadow model {', '.join(sorted(missing))} was given to the server")
        self.shadows: dict[str, shadows.Shadow] = {}
        # This node's name among those sharing a store (unique while it runs).
        self.node = config.node or f"{socket.gethostname()}-{os.getpid()}"
        self.advertise_url = config.advertise_url  # set at start when not configured (nodes.advertised_url)
        self.nodes: list[dict[str, Any]] = []  # the nodes sharing the store, as last read (nodes.register)
        self.rooms = Rooms(
            open_store(config.store, config.data_dir, self.node), config.viewer_queue, viewer_bytes=config.viewer_queue_bytes,
            review_delay=self.settings.review_delay, node=self.node,
        )
        # Terms editors added to rooms' contexts (read once: a few rows; other nodes' as they add them, view.learned).
        try:
            self.settings.learned = self.rooms.store.room_terms()
        except StoreUnavailable:
            log.warning("terms editors added to rooms are not known until the store is back")
        self.sessions: Publishers[Publisher] = Publishers(config.max_parked_per_address)
        self.metrics = Metrics()
        self.metrics.model = model.name
        required = auth_required(config.auth, config.host)
        # auto on loopback: open to this machine, but not to what a reverse proxy forwards, and
        # deleting a room takes an admin token unless access control is off in so many words.
        forwarded_required = config.auth == "auto"
        secret = auth.load_secret(config.data_dir, config.secret_file) if required or forwarded_required else b""
        self.access = AccessPolicy(required, secret, config.public_rooms, forwarded_required, anonymous_delete=config.auth == "off")
        self.connections = ConnectionCounter({"publish": config.max_publishers_per_ip, "view": config.max_viewers_per_ip})
        self.trusted = parse_networks(config.trusted_proxies)
        self.connection_cap = config.max_connections  # 0: none; the server derives one at start
        self.exports = asyncio.Semaphore(config.max_exports)
        self.viewer_count = 0
        self.transcriptions = 0  # file transcriptions being served (POST /v1/audio/transcriptions)
        self.sockets = 0  # connections open, every kind, from accept to close (server/front.py)
        self.exchanges: set[asyncio.Task[None]] = set()  # requests with a body being served (server/front.py)
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def publishers(self) -> dict[str, Publisher]:
        """Live publishers by session id."""
        return self.sessions.live

    def spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background, referenced until it ends; a failure is logged."""
        task = asyncio.get_running_loop().create_task(coroutine, name=what)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %r failed", task.get_name(), exc_info=task.exception())
