"""Utterance boundaries from webrtcvad: which stretches of a stream are speech.

Pure object, no I/O: feed float32 16 kHz samples in chunks of any size, get events back.
Positions are sample indices on the stream's own clock (samples fed so far).

- A start needs ``min_speech_ms`` of voiced frames within the last ``start_window_ms``, so
  clicks and short blips never open an utterance.
- Each utterance begins ``pre_roll_ms`` before the frames that triggered it: the first
  syllable is quiet and webrtcvad is late on it.
- An utterance ends after ``end_silence_ms`` of unvoiced frames; its end is placed a short
  ``tail_ms`` after the last voiced frame (trailing silence only invites invented words).
- One longer than ``max_utterance_s`` is cut at the quietest point of its last seconds, and the
  rest continues as the next utterance, so nothing is lost and no word is cut in two.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from vad.silero import SileroStream, shared_model

SAMPLE_RATE = 16_000
DETECTORS = ("webrtc", "silero", "both")
# What `flashcaption serve` uses (the library's VadConfig keeps webrtc, which needs no weights).
# Silero VAD came closer to offline decoding under noise and babble with both models (Moonshine,
# pink 10 dB: 1.19 times offline against 1.26-1.33 for webrtc; Whisper, nine languages: 1.08
# against 1.13), let music hold an utterance open for a second rather than as long as it plays
# (finals under music 0.70 s after the speech against 2.2 s), and gave the same errors on clean
# speech (Moonshine 11 and 11, Whisper 73 and 72, one run each) at the same latency. Its one
# weakness measured, a state that stayed on a long loud noise, is answered in vad/silero.py.
SERVED_DETECTOR = "silero"


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 3  # webrtcvad mode 0-3; 3 rejects the most non-speech
    frame_ms: int = 20
    pre_roll_ms: int = 300
    start_window_ms: int = 300
    # 200 missed the start of sentences in pink noise 5 dB below the speech, where only two
    # frames of three stand out; a click or a short blip is still far shorter.
    min_speech_ms: int = 160
    end_silence_ms: int = 500
    tail_ms: int = 300  # trailing fricatives (the s of 'Americans') are unvoiced to webrtcvad
    max_utterance_s: float = 20.0
    cut_search_s: float = 3.0  # where to look for the quietest point when cutting
    min_level_dbfs: float = -55.0  # frames quieter than this are silence, whatever the VAD says
    # A voiced frame must also rise above the stream's own background: its spectrum, in bands,
    # must stand on average this many dB above each band's floor (a low percentile of the
    # last floor_window_s). Speech lights up many bands syllable by syllable; steady noise,
    # hum and tones (which webrtcvad often calls speech) sit at their floors. The measure does
    # not depend on the noise's level: steady noise alone gives at most 6.2 dB in 99 frames of
    # 100 (pink, brown), speech in a quiet room 15 dB or more in three of four. 8 dB lost
    # speech in noise: under pink noise 5 dB below it, half its frames fall below 7 dB, and
    # utterances vanished (the share of speech inside utterances: 91% at 10 dB, 53% at 5 dB;
    # 99.8% and 98.5% now, with the start and stray-frame rules; no utterance opened on steady
    # noise; see `bench --noise`).
    min_excess_db: float = 5.5
    floor_window_s: float = 10.0
    floor_percentile: float = 10.0
    # Which voice detector judges frames that pass the level and background tests: "webrtc"
    # (webrtcvad), "silero" (Silero VAD, an ONNX model, with the milder background test below)
    # or "both" (each must say speech). See vad/silero.py.
    detector: str = "webrtc"
    silero_threshold: float = 0.5
    # With Silero alone, a frame must still rise this much above the background: Silero's
    # probability stays high for 0.1-0.25 s after speech ends (0.6 s from the last word to the
    # end of an utterance in a quiet room, 0.68 s in pink noise, against 0.51 and 0.43 for
    # webrtc), while the spectrum falls to the floor at once (0.54 and 0.52 s with this test,
    # and the same speech found).
    silero_min_excess_db: float = 3.0
    # webrtcvad misses quiet speech, so the frames it judges are brought to this level (loud
    target_dbfs: float = -20.0
    max_gain_db: float = 30.0

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30 (webrtcvad's frame sizes)")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0-3")
        if self.end_silence_ms < self.frame_ms or self.max_utterance_s < 2 * self.cut_search_s:
            raise ValueError("end_silence_ms or max_utterance_s too small")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, not {self.detector!r}")


@dataclass(frozen=True)
class SpeechStart:
    start: int


@dataclass(frozen=True)
class SpeechChunk:
    """Audio belonging to the current utterance, contiguous after what came before."""

    samples: np.ndarray


@dataclass(frozen=True)
class SpeechEnd:
    """The current utterance ends at sample ``end`` (audio past it, if sent, is not part of it)."""

    end: int
    reason: str  # "silence", "max_length" or "flush"


SegmentEvent = SpeechStart | SpeechChunk | SpeechEnd


class BandFloor:
    """Per-band background level of a stream, and how far a frame rises above it."""

    def __init__(self, frame: int, window_frames: int, percentile: float, short_frames: int = 50, update_every: int = 5):
        self._fft = 1 << (frame - 1).bit_length()
        self._taper = np.hanning(frame).astype(np.float32)
        # ~24 log-spaced bands from 125 Hz to the top of the spectrum.
        top = self._fft // 2
        edges = np.unique(np.round(np.geomspace(self._fft / 128, top, 25)).astype(int))
        self._edges = edges
        self._levels = np.zeros((window_frames, len(edges) - 1), np.float32)
        self._count = 0
        self._percentile = percentile
        self._update_every = update_every
        self._short = short_frames
        self._floor: np.ndarray | None = None

    def excess_db(self, frame: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(frame * self._taper, self._fft)) ** 2
        bands = np.add.reduceat(power[self._edges[0] : self._edges[-1]], self._edges[:-1] - self._edges[0])
        levels = 10 * np.log10(bands + 1e-10)
        self._levels[self._count % len(self._levels)] = levels
        self._count += 1
        if self._floor is None or self._count % self._update_every == 0 or self._count <= self._short:
            seen = self._levels[: min(self._count, len(self._levels))]
            recent = np.take(self._levels, np.arange(self._count - min(self._count, self._short), self._count), axis=0, mode="wrap")
            # The long window remembers the quiet between words; the short one lets the floor
            # rise within a second when a steady noise starts (a fan, a hum).
            self._floor = np.maximum(
                np.percentile(seen, self._percentile, axis=0), np.percentile(recent, self._percentile, axis=0)
            )
        return float(np.mean(np.maximum(0.0, levels - self._floor)))


class Segmenter:
    def __init__(self, config: VadConfig = VadConfig()):
        self.config = config
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._silero = SileroStream(shared_model()) if config.detector != "webrtc" else None
        self._frame = SAMPLE_RATE * config.frame_ms // 1000
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet making a whole frame
        self._position = 0  # samples consumed into frames
        history_frames = (config.pre_roll_ms + config.start_window_ms) // config.frame_ms
        self._history: deque[tuple[np.ndarray, bool]] = deque(maxlen=history_frames)
        self._window = config.start_window_ms // config.frame_ms
        self._background = BandFloor(self._frame, int(config.floor_window_s * 1000 / config.frame_ms), config.floor_percentile)
        self._recent_levels: deque[float] = deque(maxlen=int(config.floor_window_s * 1000 / config.frame_ms))
        self._needed = max(1, config.min_speech_ms // config.frame_ms)
        self._in_speech = False
        self._start = 0
        self._last_voiced_end = 0
        self._silent_frames = 0
        self._previous_voiced = False
        # The current utterance's frames, kept to find a cut point: (position, level in dBFS, voiced).
        self._levels: list[tuple[int, float, bool]] = []
        self._utterance_audio: list[np.ndarray] = []

    @property
    def position(self) -> int:
        return self._position

    @property
    def trailing_silence_ms(self) -> int:
        """How long the current utterance has been silent (0 when not in speech)."""
        return self._silent_frames * self.config.frame_ms if self._in_speech else 0

    @property
    def pending_end(self) -> int | None:
        """Where the current utterance will end if the silence it is in goes on: known once
        the silence is ``tail_ms`` long, ``end_silence_ms`` before the end is declared. A final
        decoded on the audio up to here is the final, unless the speaker resumes."""
        if not self._in_speech or self._silent_frames * self.config.frame_ms < self.config.tail_ms:
            return None
        return self._last_voiced_end + self._tail

    def feed(self, samples: np.ndarray) -> list[SegmentEvent]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = len(data) // self._frame * self._frame
        self._pending = data[whole:].copy()
        events: list[SegmentEvent] = []
        for offset in range(0, whole, self._frame):
            events.extend(self._frame_in(data[offset : offset + self._frame]))
        return events

    def flush(self) -> list[SegmentEvent]:
        """End the current utterance now (the stream stopped, or the client asked)."""
        if not self._in_speech:
            return []
        events: list[SegmentEvent] = []
        if self._pending.size:  # the partial frame is audio too
            events.append(SpeechChunk(self._pending.copy()))
            self._position += len(self._pending)
            self._pending = np.zeros(0, dtype=np.float32)
        end = min(self._position, self._last_voiced_end + self._tail)
        events.append(self._end(end, "flush"))
        return events

    @property
    def _tail(self) -> int:
        return SAMPLE_RATE * self.config.tail_ms // 1000

    def _is_speech(self, frame: np.ndarray) -> tuple[bool, float]:
        rms = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2)) + 1e-12)
        level = 20 * np.log10(rms)
        self._recent_levels.append(level)
        excess = self._background.excess_db(frame)
        if self._silero is not None:
            # Fed every frame, speech or not: its state follows the whole stream.
            likely = self._silero.feed(frame) >= self.config.silero_threshold
            if self.config.detector == "silero":
                return level >= self.config.min_level_dbfs and likely and excess >= self.config.silero_min_excess_db, level
            if not likely:
                return False, level
        if level < self.config.min_level_dbfs or excess < self.config.min_excess_db:
            return False, level
        loud = np.percentile(self._recent_levels, 95.0)
        gain_db = min(self.config.max_gain_db, max(0.0, self.config.target_dbfs - loud))
        pcm = (np.clip(frame * 10 ** (gain_db / 20), -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return self._vad.is_speech(pcm, SAMPLE_RATE), level

    def _frame_in(self, frame: np.ndarray) -> list[SegmentEvent]:
        voiced, level = self._is_speech(frame)
        start_of_frame = self._position
        self._position += len(frame)
        if not self._in_speech:
            self._history.append((frame, voiced))
            recent = list(self._history)[-self._window :]
            if sum(v for _, v in recent) < self._needed:
                return []
            return self._begin(start_of_frame + len(frame) - len(self._history) * self._frame)

        self._levels.append((start_of_frame, level, voiced))
        self._utterance_audio.append(frame)
        events: list[SegmentEvent] = [SpeechChunk(frame)]
        # Inside an utterance, a voiced frame counts only after another: speech comes in runs of
        # voiced frames (a syllable is 5 or more), while steady noise passes both tests in a
        # frame now and then, alone, and those stray frames would hold an utterance open.
        if voiced and self._previous_voiced:
            self._silent_frames = 0
            self._last_voiced_end = self._position
        else:
            self._silent_frames += 1
        self._previous_voiced = voiced
        if self._silent_frames * self.config.frame_ms >= self.config.end_silence_ms:
            events.append(self._end(min(self._position, self._last_voiced_end + self._tail), "silence"))
        elif self._position - self._start >= self.config.max_utterance_s * SAMPLE_RATE:
            events.extend(self._cut())
        return events

    def _begin(self, start: int) -> list[SegmentEvent]:
        frames = list(self._history)
        self._history.clear()
        self._in_speech = True
        self._start = start
        self._silent_frames = 0
        self._previous_voiced = frames[-1][1]
        self._last_voiced_end = self._position
        self._levels = []
        self._utterance_audio = []
        audio = np.concatenate([f for f, _ in frames])
        position = start
        for frame, voiced in frames:
            self._levels.append((position, self._level(frame), voiced))
            self._utterance_audio.append(frame)
            position += len(frame)
        return [SpeechStart(start), SpeechChunk(audio)]

    @staticmethod
    def _level(frame: np.ndarray) -> float:
        return float(20 * np.log10(np.sqrt(np.mean(frame.astype(np.float64) ** 2)) + 1e-12))

    def _end(self, end: int, reason: str) -> SpeechEnd:
        self._in_speech = False
        self._history.clear()
        self._levels = []
        self._utterance_audio = []
        return SpeechEnd(end, reason)

    def _cut(self) -> list[SegmentEvent]:
        """Cut an over-long utterance at the quietest frame of its last seconds."""
        search = int(self.config.cut_search_s * 1000 / self.config.frame_ms)
        candidates = self._levels[-search:]
        levels = np.array([lvl for _, lvl, _ in candidates])
        # Smooth over ~100 ms so a single quiet frame inside a word does not win.
        width = max(1, 100 // self.config.frame_ms)
        smooth = np.convolve(levels, np.ones(width) / width, mode="same")
        # Prefer frames the VAD called unvoiced: a real pause between words.
        unvoiced = np.array([not v for _, _, v in candidates])
        quietest = int(np.argmin(smooth - 100.0 * unvoiced))
        cut_index = len(self._levels) - len(candidates) + quietest
        cut = self._levels[cut_index][0]
        rest = self._utterance_audio[cut_index:]
        rest_levels = self._levels[cut_index:]
        events: list[SegmentEvent] = [self._end(cut, "max_length")]
        self._in_speech = True
        self._start = cut
        self._silent_frames = 0
        self._last_voiced_end = self._position
        self._levels = rest_levels
        self._utterance_audio = rest
        events += [SpeechStart(cut), SpeechChunk(np.concatenate(rest))]
        return events
