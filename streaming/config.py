"""The one configuration object, built once from command-line flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from decoder.context import Context
from decoder.models import DEFAULT_MODEL
from decoder.runtime import RuntimeOptions
from streaming.session import SessionConfig


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    model: str = DEFAULT_MODEL
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    # Decodes run at once on this many threads (each model call may use runtime.intra_op_threads
    # cores). More than the cores: concurrent decodes' token steps are batched (streaming/engine.py).
    workers: int = 8
    session: SessionConfig = field(default_factory=SessionConfig)
    # Where the journal of finals lives, and how long finals are kept (None: for ever).
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    retain_days: float | None = None
    # Rooms, finals and sessions kept in Redis instead (redis://HOST:6379/0), shared by every
    # node given the same URL (streaming/store.py); None: the SQLite journal in data_dir.
    store: str | None = field(default_factory=lambda: os.environ.get("FLASHCAPTION_STORE") or None)
    # This node among those sharing a store: its name, and the address clients reach it at
    # (sent to publishers another node is too busy for). Defaults: HOSTNAME:PORT, ws://HOST:PORT.
    node: str = ""
    advertise_url: str = ""
    # Messages queued for one viewer before it is dropped as too slow.
    viewer_queue: int = 512
    viewer_queue_bytes: int = 1 << 20  # ...or this many bytes of them
    # New publishers are refused while decodes wait longer than this for a worker on average
    # (the machine is saturated), or while this many decodes are queued.
    max_decode_wait_s: float = 0.75
    max_queued_decodes: int = 64
    shutdown_grace_s: float = 10.0
    # Access control: "auto" is on unless the server listens on loopback only.
    auth: str = "auto"
    secret_file: Path | None = None
    public_rooms: bool = False  # viewers need no token
    # Browsers may connect only from these origins (empty: any); clients without Origin always.
    allow_origins: tuple[str, ...] = ()
    certfile: Path | None = None  # TLS: serve wss:// and https://
    keyfile: Path | None = None
    # Limits (0: none).
    # Per client address (behind --trusted-proxy, the address it forwards): a hall's audience
    # shares one public address, and must not lock its speaker out.
    max_publishers_per_ip: int = 32
    max_viewers_per_ip: int = 2000
    # Connections at once, every kind (0: derived from the open-files limit at start).
    max_connections: int = 0
    # Reverse proxies whose Forwarded / X-Forwarded-For are believed (addresses or CIDR blocks).
    trusted_proxies: tuple[str, ...] = ()
    max_publishers_per_room: int = 16
    max_viewers_per_room: int = 1000
    idle_timeout_s: float = 120.0  # a publisher that sends nothing this long is closed
    # A live publisher may run this far ahead of real time; past it, it is refused.
    audio_burst_s: float = 10.0
    # A mode=file publisher's audio not yet captioned is held to about this much: past it its
    # socket is read no faster than the decoder gets through the audio (TCP paces the client).
    file_backlog_s: float = 5.0
    # Every client is pinged this often, and closed if it does not answer within as long.
    keepalive_s: float = 20.0
    # A client whose socket takes nothing the server sends for this long is cut off.
    send_stall_s: float = 30.0
    # A publisher whose connection dropped may resume its session within this time.
    resume_grace_s: float = 60.0
    # How often the journal forgets sessions past their grace period (ended marks, settings).
    forget_sessions_every_s: float = 60.0
    # Sessions one client address may leave parked at once; parking one more ends its oldest.
    max_parked_per_address: int = 16
    # POST /v1/audio/transcriptions: requests served at once, the largest file taken (OpenAI's
    # own limit, 25 MB), and the longest recording (its audio decoded, whatever the file's size).
    max_transcriptions: int = 2
    max_transcription_bytes: int = 25 * 1024 * 1024
    max_transcription_audio_s: float = 7200.0
    # Transcript exports made at once (each holds its room's transcript in memory meanwhile).
    max_exports: int = 2
    # Names and terms for rooms whose publishers give no context (decoder/context.py).
    room_contexts: dict[str, Context] = field(default_factory=dict)
    # Languages to detect among in a room ("*": every room) for publishers that name none:
    # detection on short audio is unreliable, and an event knows its languages.
    room_languages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Rooms whose finals an editor reviews before air ("*": every room): seconds the audience
    # waits for each final (editors get it at once; the audience gets no partials).
    room_review_delays: dict[str, float] = field(default_factory=dict)
    # Rooms whose finals are also translated ("*": every room): the target language ("en").
    room_translations: dict[str, str] = field(default_factory=dict)
    # Finals of one session waiting for their translation; past it, the oldest is not translated.
    max_pending_translations: int = 16
    # Rooms whose finals a second model also decodes, at the lowest priority ("*": every room;
    # "none": not this room): the shadow model's name (serve --shadow, --room-shadow).
    room_shadows: dict[str, str] = field(default_factory=dict)
    # Finals waiting for a shadow model, all rooms together; past it, the oldest is not decoded.
    max_pending_shadow: int = 32
    decode_delay_s: float = 0.0  # testing aid: every decode takes this much longer
    log_level: str = field(default_factory=lambda: os.environ.get("FLASHCAPTION_LOG_LEVEL", "info"))
    log_json: bool = False


def default_data_dir() -> Path:
    configured = os.environ.get("FLASHCAPTION_DATA")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "flashcaption"
