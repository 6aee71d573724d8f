"""PCM decoding and resampling of what publishers send."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from decoder.api import transcribe
from streaming.audio import PcmDecoder
from streaming.protocol import ProtocolError
from tests.conftest import CLIPS
from tests.scripted import hear, speak


def _stream(decoder: PcmDecoder, data: bytes, frame_bytes: int) -> np.ndarray:
    parts = [decoder.decode(data[i : i + frame_bytes]) for i in range(0, len(data), frame_bytes)]
    return np.concatenate(parts + [decoder.finish()])


def test_s16_at_16k_is_passed_through_exactly():
    audio = CLIPS["en_arctic_a0024"].audio
    data = (audio * 32768).astype("<i2").tobytes()
    out = _stream(PcmDecoder("pcm_s16le", 16000), data, 640)
    assert np.array_equal(out, audio)


@pytest.mark.parametrize("rate, encoding", [(8000, "pcm_s16le"), (44100, "pcm_s16le"), (48000, "pcm_f32le")])
def test_other_rates_are_resampled_and_still_recognised(model, rate, encoding):
    clip = CLIPS["en_arctic_a0024"]
    original = soxr.resample(clip.audio, 16000, rate)
    data = (original * 32768).astype("<i2").tobytes() if encoding == "pcm_s16le" else original.astype("<f4").tobytes()
    width = 2 if encoding == "pcm_s16le" else 4
    # Odd-sized frames: the resampler must carry its state across them.
    out = _stream(PcmDecoder(encoding, rate), data, width * 1234)
    assert abs(len(out) - len(clip.audio)) <= 16
    assert transcribe(model, out).text == transcribe(model, clip.audio).text


@pytest.mark.parametrize("rate, encoding", [(8000, "pcm_s16le"), (22050, "pcm_f32le"), (44100, "pcm_s16le"), (48000, "pcm_f32le")])
def test_other_rates_come_out_at_16k_with_the_same_words(rate, encoding):
    # The scripted words are pitches: a resampler that dropped, repeated or mis-timed audio
    # across frames would change what is heard, or how long it lasts.
    said = ("alpha bravo charlie", "papa oscar")
    audio = speak(*said)
    original = soxr.resample(audio, 16000, rate)
    data = (original * 32768).astype("<i2").tobytes() if encoding == "pcm_s16le" else original.astype("<f4").tobytes()
    width = 2 if encoding == "pcm_s16le" else 4
    out = _stream(PcmDecoder(encoding, rate), data, width * 1234)  # odd-sized frames
    assert abs(len(out) - len(audio)) <= 16
    assert hear(out) == tuple(" ".join(said).split())


def test_garbage_frames_are_refused_with_reasons():
    s16 = PcmDecoder("pcm_s16le", 16000)
    with pytest.raises(ProtocolError, match="whole number of samples"):
        s16.decode(b"\x00\x01\x02")
    with pytest.raises(ProtocolError) as too_big:
        s16.decode(bytes(16000 * 2 + 2))
    assert too_big.value.code == "too_large"
    f32 = PcmDecoder("pcm_f32le", 16000)
    with pytest.raises(ProtocolError, match="NaN"):
        f32.decode(np.array([0.1, np.nan], "<f4").tobytes())
    with pytest.raises(ProtocolError, match="outside"):
        f32.decode(np.array([1e9], "<f4").tobytes())
    # After refusing bad frames the decoder still works.
    assert len(s16.decode(bytes(640))) == 320
