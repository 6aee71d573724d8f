"""Silero VAD (an ONNX voice-activity model) for the segmenter's ``--vad silero|both``.

The graph reads 32 ms chunks (512 samples at 16 kHz) after the previous chunk's last 64
samples, and carries a recurrent state from chunk to chunk; it returns the probability that the
chunk is speech. One ONNX Runtime session (CPU, one thread) serves every stream; each stream
keeps its own state (:class:`SileroStream`). The segmenter's frames are 20 ms, so a frame is
judged by the latest whole chunk, at most 32 ms behind it (the pre-roll covers that).

The state carries what the model has heard: after 20 s of loud noise or music it judged the
next sentence's first half second not speech (its first words were lost). So a stream's state
starts afresh after ``RESET_AFTER_S`` in which no chunk came near speech: the next sentence
was then found from its first syllable (0.29 s into the recording, against 0.5-0.6 s), and
noise and music between sentences still stayed below 0.5 (music's highest chunk 0.40; resets
every 1-2 s let it reach 0.5-0.6).
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16_000
CHUNK = 512
CONTEXT = 64
RESET_AFTER_S = 4.0
QUIET_PROBABILITY = 0.1  # below this a chunk counts towards a fresh start


class SileroModel:
    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        # A few hundred microseconds a chunk: threads would cost more than they save, and the
        # decoder's sessions need the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self._lock = threading.Lock()  # sessions run from the event loop and from tests' threads

    def probability(self, audio: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Speech probability of one chunk (``CONTEXT + CHUNK`` samples), and the next state."""
        with self._lock:
            output, next_state = self._session.run(None, {"input": audio[None, :], "state": state, "sr": self._rate})
        return float(output[0, 0]), next_state


@functools.cache
def shared_model() -> SileroModel:
    """The one Silero session of this process, loaded on first use."""
    from decoder.models import silero_vad_path

    return SileroModel(str(silero_vad_path()))


class SileroStream:
    """One stream's Silero state: feed samples, read the probability of the latest chunk."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), np.float32)
        self._pending = np.zeros(CONTEXT, np.float32)  # the last chunk's tail, then new samples
        self._quiet_chunks = 0
        self._reset_after = int(RESET_AFTER_S * SAMPLE_RATE / CHUNK)
        self.probability = 0.0

    def feed(self, samples: np.ndarray) -> float:
        self._pending = np.concatenate([self._pending, samples.astype(np.float32)])
        while len(self._pending) >= CONTEXT + CHUNK:
            chunk = self._pending[: CONTEXT + CHUNK]
            self.probability, self._state = self._model.probability(chunk, self._state)
            self._pending = self._pending[CHUNK:]
            self._quiet_chunks = self._quiet_chunks + 1 if self.probability < QUIET_PROBABILITY else 0
            if self._quiet_chunks >= self._reset_after:
                self._state = np.zeros_like(self._state)
                self._quiet_chunks = 0
        return self.probability
