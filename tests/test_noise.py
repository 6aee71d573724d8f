"""Recordings mixed with noise for the bench: the ratio asked for, the same mix every run."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from streaming.evaluation.noise import Noise, mix, parse_conditions, with_voices
from streaming.evaluation.streams import FRAME, Clip, load_manifest
from tests.conftest import DATA


def clips() -> list[Clip]:
    return load_manifest(DATA / "manifest.tsv", None)


def speech_power_db(clip: Clip) -> tuple[float, np.ndarray, np.ndarray]:
    clean, speech, rate = clip.audio(tail=1.0)
    hop = int(rate * FRAME)
    count = min(len(speech), len(clean) // hop)
    frames = clean[: count * hop].reshape(-1, hop)[speech[:count]]
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2)), clean, speech


def test_conditions_parse_and_bad_ones_say_what_to_write() -> None:
    assert parse_conditions("clean, pink:10,babble:-2.5") == [None, Noise("pink", 10.0), Noise("babble", -2.5)]
    for bad, says in [("hiss:10", "kind must be one of"), ("pink", "e.g. pink:10"), ("pink:99", "between"), ("", "no noise condition")]:
        with pytest.raises(ValueError, match=says):
            parse_conditions(bad)


@pytest.mark.parametrize("kind", ["pink", "brown", "music", "babble"])
def test_noise_is_mixed_at_the_ratio_asked_through_the_whole_stream(kind: str) -> None:
    clip = replace(clips()[0], lead_silence=0.5)
    others = [c.path for c in clips()]
    noisy = replace(clip, noise=with_voices(Noise(kind, 5.0), clip.path, others))
    speech_db, clean, speech = speech_power_db(clip)
    mixed, mixed_speech, _ = noisy.audio(tail=1.0)
    assert len(mixed) == len(clean) and (mixed_speech == speech).all()
    added = mixed.astype(np.float64) - clean
    if np.abs(mixed).max() < 0.99:  # not scaled down against clipping: the ratio is exact
        assert speech_db - 10 * np.log10(np.mean(added**2)) == pytest.approx(5.0, abs=0.01)
    # The lead silence and the tail are noise too: the background starts before the speech.
    lead, tail = 8_000, 16_000  # 0.5 s and 1 s (music leaves its last half second unplayed)
    assert np.sqrt(np.mean(mixed[:lead] ** 2)) > 1e-3 and np.sqrt(np.mean(mixed[-tail:] ** 2)) > 1e-3
    # The same mix every run; another recording or condition gets another one.
    assert np.array_equal(mixed, noisy.audio(tail=1.0)[0])
    other = replace(noisy, noise=with_voices(Noise(kind, 6.0), clip.path, others))
    assert not np.allclose(other.audio(tail=1.0)[0] - clean, added * 10 ** (-1 / 20), atol=1e-4)


@pytest.mark.parametrize("kind", ["pink", "babble"])
def test_another_draw_is_another_mix_and_repeats(kind: str) -> None:
    clip = clips()[0]
    others = [c.path for c in clips()]

    def mixed(draw: int) -> np.ndarray:
        return replace(clip, noise=with_voices(Noise(kind, 5.0, draw=draw), clip.path, others)).audio(tail=1.0)[0]

    assert np.array_equal(mixed(1), mixed(1))
    assert not np.allclose(mixed(1), mixed(0), atol=1e-4) and not np.allclose(mixed(2), mixed(1), atol=1e-4)
    # Draw 0 is the mix the figures have always quoted.
    assert np.array_equal(mixed(0), replace(clip, noise=with_voices(Noise(kind, 5.0), clip.path, others)).audio(tail=1.0)[0])


def test_a_babble_is_made_of_other_recordings() -> None:
    paths = [c.path for c in clips()]
    for path in paths:
        voices = with_voices(Noise("babble", 10.0), path, paths).voices
        assert path not in voices and len(set(voices)) == min(4, len(paths) - 1)
    assert with_voices(Noise("pink", 10.0), paths[0], paths).voices == ()


def test_a_mix_that_would_clip_is_scaled_down_whole() -> None:
    loud = np.full(16_000, 0.95, np.float32)
    mixed = mix(loud, np.ones(50, bool), Noise("pink", 0.0), "loud")
    assert np.abs(mixed).max() <= 0.99


@pytest.mark.slow
def test_noise_section_runs_through_a_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streaming.evaluation.bench import print_report, run_bench
    from tests.test_bench import _only, bench_args

    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(_only({"en_arctic_a0024", "en_librivox_sns01_0880"}), encoding="utf-8")
    for name in ("en_arctic_a0024.wav", "en_librivox_sns01_0880.wav"):
        (tmp_path / name).symlink_to(DATA / name)
    conditions = parse_conditions("clean,pink:0")
    report = run_bench(bench_args(manifest=manifest, noise=conditions, speed=None, no_offline=False, noise_draws=2))
    clean, noisy = report["noise"]["clean"], report["noise"]["pink:0"]
    for entry, draws in ((clean, 1), (noisy, 2)):
        english = entry["summary"]["languages"]["en"]
        assert "offline_errors" in english and len(entry["draws"]) == len(entry["offline_texts"]) == draws
        assert len(entry["clips"]) == 2 * draws and entry["offline_texts"][0].keys() == {"en_arctic_a0024", "en_librivox_sns01_0880"}
        # The summary pools the draws: each recording's words once a draw, errors summed.
        assert english["units"] == sum(d["en"]["units"] for d in entry["draws"]) > 20 * draws
        for kind in ("streaming_errors", "offline_errors"):
            assert english[kind] == sum(d["en"][kind] for d in entry["draws"])
    assert clean["summary"]["languages"]["en"]["streaming_error_rate"] < 0.25
    # Noise as loud as the speech: offline decoding hears another audio than the clean one,
    # and the second draw another again.
    assert noisy["offline_texts"][0] != clean["offline_texts"][0] and noisy["offline_texts"][1] != noisy["offline_texts"][0]
    out = io.StringIO()
    print_report(report, out)
    assert "pink:0" in out.getvalue() and "offline" in out.getvalue() and "mixed 2 ways" in out.getvalue()
