"""The webrtcvad segmenter on real speech, pauses, noise and hum."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.nonspeech import brown_noise, pink_noise
from tests.conftest import CLIPS, NON_SPEECH
from vad.segmenter import Segmenter, SpeechChunk, SpeechEnd, SpeechStart, VadConfig

SR = 16000


def segments(audio: np.ndarray, config: VadConfig = VadConfig(), frame: int = 320) -> list[tuple[float, float, str]]:
    segmenter = Segmenter(config)
    events = []
    for offset in range(0, len(audio), frame):
        events += segmenter.feed(audio[offset : offset + frame])
    events += segmenter.flush()
    found, start = [], None
    for event in events:
        if isinstance(event, SpeechStart):
            start = event.start
        elif isinstance(event, SpeechEnd):
            found.append((start / SR, event.end / SR, event.reason))
    return found


def test_speech_with_a_pause_gives_two_utterances():
    a, b = CLIPS["en_arctic_a0024"].audio, CLIPS["en_librivox_sns01_0880"].audio
    gap = np.zeros(int(1.5 * SR), np.float32)
    found = segments(np.concatenate([gap, a, gap, b, gap]))
    assert len(found) == 2, found
    (s1, e1, _), (s2, e2, _) = found
    # Each utterance covers its recording (pre-roll before, a short tail after).
    assert s1 <= 1.5 and e1 >= 1.5 + len(a) / SR - 0.4
    assert 1.5 + len(a) / SR < s2 <= 3.0 + len(a) / SR and e2 >= 3.0 + (len(a) + len(b)) / SR - 0.4
    # Ends come from trailing silence, placed shortly after the speech, not at the detection.
    assert all(reason == "silence" for *_, reason in found)


@pytest.mark.parametrize("frame", [1, 160, 333, 480, 16000])
def test_any_frame_size_gives_the_same_segments(frame):
    audio = np.concatenate([np.zeros(SR, np.float32), CLIPS["en_fleurs_test_004"].audio, np.zeros(SR, np.float32)])
    if frame == 1:
        audio = audio[: 3 * SR]  # one sample at a time is slow in Python; the start is what matters
    expected = segments(audio, frame=320)
    assert expected  # two empty lists would be equal too
    assert segments(audio, frame=frame) == expected


def test_pre_roll_keeps_the_first_syllable():
    audio = np.concatenate([np.zeros(SR, np.float32), CLIPS["en_arctic_a0024"].audio])
    energy = np.abs(audio) > 0.01
    first_sound = np.argmax(energy) / SR
    (start, _, _), = segments(audio)
    assert start <= first_sound - 0.1


# Music does open utterances (webrtcvad hears harmonics as voice); the decoder finds no words
# in them: see test_decoder and test_session.
@pytest.mark.parametrize("name", ["silence", "pink_noise", "brown_noise"])
def test_no_segment_on_silence_or_noise(name):
    assert segments(NON_SPEECH[name]()) == []


def test_speech_under_steady_hum_is_found_where_it_is():
    # FLEURS ja 000 has a 1 kHz hum throughout; the words are between ~1.9 s and ~8.2 s. The
    # hum fades in during the first 0.2 s, before the stream has any background to compare
    # with, so the first utterance may start early; it must not run on into the hum after.
    found = segments(CLIPS["ja_fleurs_test_000"].audio)
    assert found and found[0][0] <= 1.9 and 8.2 <= found[-1][1] <= 9.0
    assert all(e - s < 9.5 for s, e, _ in found)


def test_noise_that_starts_mid_stream_is_learned_within_a_second():
    # The background floor needs about a second to rise to a new steady noise: the onset may
    # open one short utterance (the decoder finds no words in it), never a long one.
    quiet = pink_noise(5, level=0.003, seed=5)
    loud = brown_noise(20, level=0.5, seed=6)
    found = segments(np.concatenate([quiet, loud]))
    assert len(found) <= 1 and all(e - s <= 2.0 for s, e, _ in found), found


def test_speech_in_pink_noise_at_10_db_snr():
    speech = CLIPS["en_ls_1995-1837-0001"].audio
    audio = np.concatenate([np.zeros(2 * SR, np.float32), speech, np.zeros(2 * SR, np.float32)])
    noise = pink_noise(len(audio) / SR, seed=7)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2)) / 10 ** (10 / 20)
    found = segments(audio + noise)
    assert found and found[0][0] <= 2.3 and found[-1][1] >= 2 + len(speech) / SR - 0.5


def noisy(clip_id: str, kind: str, snr_db: float, lead_s: float = 2.0, tail_s: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A test recording with ``lead_s`` before and ``tail_s`` after it, mixed as the bench mixes
    (:mod:`streaming.evaluation.noise`), and its speech frames (20 ms), found in the clean audio."""
    from streaming.evaluation.noise import Noise, mix
    from streaming.evaluation.streams import speech_frames

    speech = CLIPS[clip_id].audio
    audio = np.concatenate([np.zeros(int(lead_s * SR), np.float32), speech, np.zeros(int(tail_s * SR), np.float32)])
    frames = np.concatenate([np.zeros(int(lead_s / 0.02), bool), speech_frames(speech, SR), np.zeros(int(tail_s / 0.02) + 1, bool)])
    return mix(audio, frames, Noise(kind, snr_db), clip_id), frames


def covered(found: list[tuple[float, float, str]], frames: np.ndarray) -> float:
    """The share of speech frames inside the segments found."""
    inside = np.zeros(len(frames), bool)
    for start, end, _ in found:
        inside[int(start / 0.02) : int(np.ceil(end / 0.02))] = True
    return float((inside & frames).sum() / frames.sum())


@pytest.mark.parametrize(("snr_db", "share"), [(10, 0.98), (5, 0.95)])
@pytest.mark.parametrize("clip_id", ["en_ls_1995-1837-0001", "en_jfk_inaugural", "en_fleurs_test_004"])
def test_speech_in_steady_noise_is_found_whole_and_ends_as_in_a_quiet_room(clip_id: str, snr_db: int, share: float):
    # Pink noise throughout, from 2 s before the speech to 3 s after: the speech is inside
    # utterances (all but a few frames of the 1961 broadcast at 5 dB), the first syllable
    # too, and the last utterance ends where it does in a quiet room, or sooner, not later.
    audio, frames = noisy(clip_id, "pink", snr_db)
    quiet = segments(noisy(clip_id, "pink", 40)[0])
    found = segments(audio)
    first = np.flatnonzero(frames)[0] * 0.02
    assert covered(found, frames) >= share, found
    assert found[0][0] <= first
    assert found[-1][1] <= quiet[-1][1] + 0.1, (found, quiet)
    assert found[-1][2] == "silence"  # ended by the pause (in noise), not by the stream's end


def test_noise_that_starts_and_stops_mid_utterance_neither_cuts_it_nor_holds_it_open():
    # Pink noise at 5 dB from 1 s into the speech to 2 s before its end.
    clean, frames = noisy("en_ls_1995-1837-0001", "pink", 40)
    loud, _ = noisy("en_ls_1995-1837-0001", "pink", 5)
    window = np.zeros(len(clean), np.float32)
    window[3 * SR : len(clean) - 5 * SR] = 1.0
    found = segments(clean * (1 - window) + loud * window)
    assert covered(found, frames) >= 0.98, found
    assert found[-1][1] <= segments(clean)[-1][1] + 0.1, found


# -- Silero VAD (--vad silero|both) -------------------------------------------------------------
@pytest.mark.slow  # an ONNX Runtime session, if a small one
@pytest.mark.parametrize("detector", ["silero", "both"])
def test_silero_finds_speech_in_noise_and_nothing_in_noise_or_music_alone(detector: str):
    config = VadConfig(detector=detector)
    for snr_db in (10, 5):
        audio, frames = noisy("en_ls_1995-1837-0001", "pink", snr_db)
        assert covered(segments(audio, config), frames) >= 0.95
    for name in ("silence", "pink_noise", "brown_noise"):
        assert segments(NON_SPEECH[name](), config) == [], name
    # Music opens an utterance of a second at most (webrtcvad alone: the whole 30 s).
    assert sum(e - s for s, e, _ in segments(NON_SPEECH["music"](), config)) <= 1.0
    quiet, loud = pink_noise(5, level=0.003, seed=5), brown_noise(20, level=0.5, seed=6)
    assert segments(np.concatenate([quiet, loud]), config) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["brown_noise", "music"])
def test_silero_hears_a_sentence_after_a_long_loud_background_as_from_a_fresh_start(name: str):
    # The model's state remembers the background: after 20 s of it, as loud as the speech, the
    # next sentence's first syllables scored as non-speech until the state started afresh.
    from vad.silero import CHUNK, SileroStream, shared_model

    def first_speech_s(audio: np.ndarray, since: int) -> float:
        stream = SileroStream(shared_model())
        for offset in range(0, len(audio) - CHUNK + 1, CHUNK):
            if stream.feed(audio[offset : offset + CHUNK]) >= 0.5 and offset >= since:
                return (offset - since) / SR
        return float("inf")

    first, second = CLIPS["en_arctic_a0024"].audio, CLIPS["en_librivox_sns01_0880"].audio
    background = NON_SPEECH[name]()[: 20 * SR]
    background *= np.sqrt(np.mean(first**2) / np.mean(background**2))
    lead = np.concatenate([first, background])
    lead = lead[: len(lead) // CHUNK * CHUNK]
    alone = first_speech_s(second, 0)
    assert alone < 0.5
    assert first_speech_s(np.concatenate([lead, second]), len(lead)) <= alone + 2 * CHUNK / SR


def test_silero_weights_that_are_missing_or_altered_are_a_clear_error(tmp_path, monkeypatch):
    import decoder.models as models

    monkeypatch.setattr(models, "_package_dir", lambda name: None)
    with pytest.raises(models.ModelUnavailable, match="pip install --no-deps silero-vad=="):
        models.silero_vad_path()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "silero_vad.onnx").write_bytes(b"not the graph")
    monkeypatch.setattr(models, "_package_dir", lambda name: tmp_path)
    with pytest.raises(models.ModelUnavailable, match="sha256 differs"):
        models.silero_vad_path()
    with pytest.raises(ValueError, match="detector must be one of"):
        VadConfig(detector="energy")


def test_short_blip_is_ignored():
    click = np.zeros(3 * SR, np.float32)
    word = CLIPS["en_arctic_a0024"].audio
    loud = int(np.argmax(np.abs(word)))
    click[SR : SR + int(0.1 * SR)] = word[loud : loud + int(0.1 * SR)]
    assert segments(click) == []


def test_long_speech_is_cut_at_a_quiet_point_and_nothing_is_lost():
    speech = np.concatenate([CLIPS[c].audio for c in ("en_ls_1995-1837-0001", "en_jfk_inaugural")])
    config = VadConfig(max_utterance_s=8.0, end_silence_ms=2000)
    segmenter = Segmenter(config)
    events = []
    for offset in range(0, len(speech), 320):
        events += segmenter.feed(speech[offset : offset + 320])
    events += segmenter.flush()
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    starts = [e for e in events if isinstance(e, SpeechStart)]
    assert any(e.reason == "max_length" for e in ends)
    for end, next_start in zip(ends, starts[1:]):
        if end.reason == "max_length":
            assert next_start.start == end.end  # the rest continues at once: no audio dropped
            # The cut is at a quiet point: quieter than the utterance's typical level.
            around = speech[end.end - 800 : end.end + 800]
            assert np.sqrt(np.mean(around**2)) < 0.5 * np.sqrt(np.mean(speech**2))
    # Utterance audio adds up: chunks after each start reach at least to its end.
    position = None
    for event in events:
        if isinstance(event, SpeechStart):
            position = event.start
        elif isinstance(event, SpeechChunk):
            position += len(event.samples)
        elif isinstance(event, SpeechEnd):
            assert position >= event.end
    assert all(e.end - s.start <= 8.0 * SR + 320 for s, e in zip(starts, ends))


def test_config_is_validated():
    with pytest.raises(ValueError):
        VadConfig(frame_ms=25)
    with pytest.raises(ValueError):
        VadConfig(aggressiveness=5)
