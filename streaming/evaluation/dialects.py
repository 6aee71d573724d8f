"""The bench's publisher in another service's dialect (streaming/compat): where it connects,
the audio as that service takes it, how it ends a stream, and that service's events turned
back into protocol v1's caption messages, so that one measurement serves every dialect."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import numpy as np

from streaming.client import publish_url, to_pcm16

DIALECTS = ("native", "deepgram", "openai")
OPENAI_RATE = 24000


class StreamRefused(RuntimeError):
    """The server answered the connection with an error instead of letting the stream start."""


class BenchClient:
    """Protocol v1: the server says ``ready``, takes binary PCM, ends on ``end`` and closes."""

    closes_itself = False  # whether the client, not the server, closes once every final is in

    def url(self, base: str, query: dict[str, Any]) -> str:
        return publish_url(base, **query)

    def first(self, message: dict[str, Any]) -> None:
        """The server's first message: the stream starts, or StreamRefused."""
        if message.get("type") != "ready":
            raise StreamRefused(f"server refused the stream: {message}")

    def audio(self, samples: np.ndarray, rate: int) -> bytes | str:
        return to_pcm16(samples)

    def end(self) -> str:
        return json.dumps({"type": "end"})

    def captions(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        return [message]

    @property
    def settled(self) -> bool:
        """Every utterance begun has its final (for a client that closes itself)."""
        return True


class DeepgramBenchClient(BenchClient):
    """Deepgram's ``/v1/listen``: no first message; Results become partials and finals."""

    def __init__(self) -> None:
        self.segment = 0

    def url(self, base: str, query: dict[str, Any]) -> str:
        listen = {"model": "nova-3", "encoding": "linear16", "sample_rate": query["sample_rate"], "interim_results": "true",
                  "room": query["room"], "speaker": query.get("speaker", "")}
        return f"{base.rstrip('/')}/v1/listen?{urlencode(listen)}"

    def first(self, message: dict[str, Any]) -> None:
        raise AssertionError("Deepgram sends nothing first")

    def end(self) -> str:
        return json.dumps({"type": "CloseStream"})

    def captions(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        if message.get("type") == "Error":
            return [{"type": "error", "message": message.get("description", "")}]
        if message.get("type") != "Results":
            return []
        final = bool(message.get("is_final"))
        alternative = message["channel"]["alternatives"][0]
        caption = {"type": "final" if final else "partial", "segment": self.segment, "text": alternative["transcript"],
                   "start": message["start"], "end": message["start"] + message["duration"], "language": (alternative.get("languages") or [""])[0]}
        if final:
            caption["seq"] = self.segment + 1
            self.segment += 1
        return [caption]


class OpenAIBenchClient(BenchClient):
    """OpenAI's realtime transcription: base64 PCM at 24 kHz; deltas add up to a partial, an
    item's completed transcript is its final; the client closes when every item is done."""

    closes_itself = True

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}  # item id -> segment, text, start, end
        self.finals = 0

    def url(self, base: str, query: dict[str, Any]) -> str:
        return f"{base.rstrip('/')}/v1/realtime?{urlencode({'intent': 'transcription', 'room': query['room']})}"

    def first(self, message: dict[str, Any]) -> None:
        if message.get("type") != "session.created":
            raise StreamRefused(f"server refused the stream: {message}")

    def audio(self, samples: np.ndarray, rate: int) -> bytes | str:
        count = int(round(len(samples) * OPENAI_RATE / rate))
        at_24k = np.interp(np.arange(count) * rate / OPENAI_RATE, np.arange(len(samples)), samples).astype(np.float32)
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(to_pcm16(at_24k)).decode()})

    def end(self) -> str:
        return json.dumps({"type": "input_audio_buffer.commit"})

    def captions(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        kind = message.get("type", "")
        if kind == "error":
            return [{"type": "error", "message": message.get("error", {}).get("message", "")}]
        item = self.items.get(message.get("item_id", ""))
        if kind == "input_audio_buffer.speech_started":
            self.items[message["item_id"]] = {"segment": len(self.items), "text": "", "start": message["audio_start_ms"] / 1000, "end": None}
        elif item is not None and kind == "conversation.item.input_audio_transcription.delta":
            item["text"] += message["delta"]
            return [{"type": "partial", "segment": item["segment"], "text": item["text"], "start": item["start"], "end": item["start"]}]
        elif item is not None and kind == "input_audio_buffer.speech_stopped":
            item["end"] = message["audio_end_ms"] / 1000
        elif item is not None and kind == "conversation.item.input_audio_transcription.completed":
            item["done"] = True
            self.finals += 1
            return [{"type": "final", "segment": item["segment"], "text": message["transcript"], "start": item["start"],
                     "end": item["end"] if item["end"] is not None else item["start"], "seq": self.finals}]
        return []

    @property
    def settled(self) -> bool:
        return all(item.get("done") for item in self.items.values())


def bench_client(dialect: str) -> BenchClient:
    return {"native": BenchClient, "deepgram": DeepgramBenchClient, "openai": OpenAIBenchClient}[dialect]()


def adapter_costs(repeat: int = 2000) -> dict[str, dict[str, float]]:
    """``flashcaption bench --adapter-cost``: what a dialect itself costs the server, in
    microseconds of one core: writing a caption (an utterance's two partials and its final, per
    caption), and reading one second of audio as the dialect sends it. Everything else on the
    way (session, engine, room) is the same for every dialect."""
    import timeit

    from streaming.audio import PcmDecoder
    from streaming.compat import NATIVE, Dialect
    from streaming.compat.deepgram import DeepgramDialect, parse_listen
    from streaming.compat.openai_realtime import RealtimeDialect, parse_realtime
    from streaming.events import Final, Partial

    text = "And so, my fellow Americans, ask not what your country can do for you"
    dialects: dict[str, Dialect] = {
        "native": NATIVE,
        "deepgram": DeepgramDialect(parse_listen("/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true", "r"), "m"),
        "openai": RealtimeDialect(parse_realtime("/v1/realtime?intent=transcription", "r"), "m"),
    }
    second: dict[str, str | bytes] = {"native": bytes(32000), "deepgram": bytes(32000),
              "openai": json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(48000)).decode()})}
    rates = {"native": 16000, "deepgram": 16000, "openai": OPENAI_RATE}
    costs = {}
    for name, dialect in dialects.items():
        def utterance(dialect: Dialect = dialect) -> None:
            for segment in range(3):
                dialect.caption(Partial("r", "s", "", segment, text[:30], 20, 0.0, 1.0, "en"))
                dialect.caption(Partial("r", "s", "", segment, text[:50], 40, 0.0, 1.5, "en"))
                dialect.caption(Final("r", "s", "", segment, text, 0.0, 2.0, "en"))

        pcm = PcmDecoder("pcm_s16le", rates[name])

        def audio(dialect: Dialect = dialect, message: str | bytes = second[name], pcm: PcmDecoder = pcm) -> None:
            frame = message if isinstance(message, bytes) else dialect.client_message(message).data  # type: ignore[union-attr]
            pcm.decode(frame)

        costs[name] = {
            "caption_us": timeit.timeit(utterance, number=repeat) / repeat / 9 * 1e6,
            "audio_second_us": timeit.timeit(audio, number=repeat // 4) / (repeat // 4) * 1e6,
        }
    return costs
