"""A recording's audio, from the file's bytes to 16 kHz mono PCM, a block at a time.

Decoded by FFmpeg through PyAV (the formats OpenAI's file API takes: WAV, MP3, FLAC, Ogg, MP4 /
M4A, WebM, MPEG), only from the containers in :data:`CONTAINERS`: a client's file is untrusted,
and FFmpeg's rarer demuxers are where its parsers' bugs have been. Blocking: run it off the
event loop, one block per call (:func:`blocks` is an iterator for ``asyncio.to_thread(next, ...)``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import numpy as np

from decoder.api import SAMPLE_RATE

# FFmpeg's demuxers and decoders for the formats taken: FFmpeg is told to use no others (the
# probe included), and the names are checked again after opening.
DEMUXERS = "wav,w64,mp3,flac,ogg,mov,matroska,mpeg,aac"
CONTAINERS = frozenset({"wav", "w64", "mp3", "flac", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpeg", "aac"})
DECODERS = frozenset({"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le", "pcm_u8", "pcm_s16be", "pcm_mulaw", "pcm_alaw",
                      "mp3", "mp3float", "mp2", "mp2float", "flac", "vorbis", "opus", "libopus", "aac", "alac"})
FORMATS_TAKEN = "wav, mp3, flac, ogg, opus, m4a, mp4, webm, mpeg"
BLOCK_SAMPLES = SAMPLE_RATE // 2  # what one call yields: half a second


class MediaError(ValueError):
    """The file is not audio this server reads, or holds more than it takes."""


def blocks(data: bytes, max_seconds: float) -> Iterator[np.ndarray]:
    """The first audio track of ``data`` as int16 blocks of :data:`BLOCK_SAMPLES` at 16 kHz mono
    (the last one shorter). Raises MediaError for what is not a readable recording, or once
    more than ``max_seconds`` of audio has been decoded."""
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore",
                            options={"format_whitelist": DEMUXERS, "codec_whitelist": ",".join(sorted(DECODERS))})
    except (av.FFmpegError, ValueError, OSError) as error:
        raise MediaError(f"the file is not audio this server reads ({FORMATS_TAKEN}): {error}") from None
    with container:
        if container.format.name not in CONTAINERS:
            raise MediaError(f"files in {container.format.name} are not taken; send one of {FORMATS_TAKEN}")
        if not container.streams.audio:
            raise MediaError("the file has no audio track")
        stream = container.streams.audio[0]
        if stream.codec_context.name not in DECODERS:
            raise MediaError(f"audio in {stream.codec_context.name} is not taken; send one of {FORMATS_TAKEN}")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        held = decoded = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    decoded += len(samples)
                    if decoded > max_seconds * SAMPLE_RATE:
                        raise MediaError(f"the recording is longer than this server takes ({max_seconds:g} s)")
                    pending.append(samples)
                    held += len(samples)
                    while held >= BLOCK_SAMPLES:
                        joined = np.concatenate(pending)
                        yield joined[:BLOCK_SAMPLES]
                        pending, held = [joined[BLOCK_SAMPLES:]], len(joined) - BLOCK_SAMPLES
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
        except MediaError:
            raise
        except Exception as error:  # FFmpeg's errors, and PyAV's own on a stream that changes format midway
            raise MediaError(f"the audio could not be decoded: {error}") from None
        rest = np.concatenate(pending) if pending else np.zeros(0, np.int16)
        for at in range(0, len(rest), BLOCK_SAMPLES):
            yield rest[at : at + BLOCK_SAMPLES]
