"""Bytes from the wire to float32 samples at 16 kHz."""

from __future__ import annotations

import numpy as np
import soxr

from decoder.api import SAMPLE_RATE
from streaming.protocol import ENCODINGS, ProtocolError


class PcmDecoder:
    """Decodes one stream's PCM frames; keeps resampler state across frames."""

    def __init__(self, encoding: str, sample_rate: int, max_frame_seconds: float = 1.0):
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.width = ENCODINGS[encoding]
        self.max_frame_bytes = int(sample_rate * max_frame_seconds) * self.width
        self._resampler = (
            soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if sample_rate != SAMPLE_RATE
            else None
        )

    def decode(self, frame: bytes) -> np.ndarray:
        if len(frame) > self.max_frame_bytes:
            raise ProtocolError(
                "too_large", f"audio frames are limited to 1 s ({self.max_frame_bytes} bytes at this rate and encoding)"
            )
        if len(frame) % self.width:
            raise ProtocolError(
                "bad_request", f"{self.encoding} frame of {len(frame)} bytes is not a whole number of samples"
            )
        if self.encoding == "pcm_s16le":
            samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(frame, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(samples)) or np.abs(samples).max(initial=0.0) > 16.0:
                raise ProtocolError("bad_request", "pcm_f32le frame holds NaN, infinity or values far outside [-1, 1]")
            samples = np.clip(samples, -1.0, 1.0)
        return self._resample(samples, last=False)

    def finish(self) -> np.ndarray:
        """What the resampler still holds at the end of the stream."""
        return self._resample(np.zeros(0, np.float32), last=True)

    def _resample(self, samples: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return samples
        return self._resampler.resample_chunk(samples, last=last)
