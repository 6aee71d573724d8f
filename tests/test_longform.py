"""The bench's long-form section: the alignment and the boundary counts it rests on (pure), the
long-form audio it builds, and one short run through a real server."""

from __future__ import annotations

import io

import numpy as np
import pytest

from streaming.evaluation.bench import print_report
from streaming.evaluation.longform import (
    PEAK_LIMIT,
    RATE,
    SPEECH_LEVEL_DBFS,
    TRIM_MARGIN_S,
    Step,
    align,
    boundary_losses,
    build_long_form,
    leveled,
    trimmed,
)
from streaming.evaluation.streams import load_manifest
from streaming.scoring import edit_distance
from tests.conftest import DATA
from tests.test_bench import bench_args


def w(text: str) -> list[str]:
    return text.split()


def finals(*texts: str) -> list[list[str]]:
    return [w(t) for t in texts]


# -- align ----------------------------------------------------------------------------------------
def test_align_pairs_every_word_once_at_the_edit_distance() -> None:
    ref, hyp = w("the quick brown fox jumps"), w("a quick brown box jumps high")
    steps = align(ref, hyp)
    assert [s.ref for s in steps if s.ref is not None] == list(range(len(ref)))
    assert [s.hyp for s in steps if s.hyp is not None] == list(range(len(hyp)))
    assert sum(s.op != "ok" for s in steps) == edit_distance(ref, hyp) == 3
    assert [s.op for s in steps] == ["sub", "ok", "ok", "sub", "ok", "ins"]


def test_align_edges() -> None:
    assert align([], []) == []
    assert align(w("a b"), []) == [Step("del", 0, None), Step("del", 1, None)]
    assert align([], w("a")) == [Step("ins", None, 0)]
    assert [s.op for s in align(w("a b c"), w("a c"))] == ["ok", "del", "ok"]


def test_align_agrees_with_edit_distance_on_random_texts() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        ref = [str(x) for x in rng.integers(0, 4, rng.integers(0, 9))]
        hyp = [str(x) for x in rng.integers(0, 4, rng.integers(0, 9))]
        steps = align(ref, hyp)
        assert sum(s.op != "ok" for s in steps) == edit_distance(ref, hyp)
        assert all((s.op == "ok") == (s.ref is not None and s.hyp is not None and ref[s.ref] == hyp[s.hyp]) for s in steps)


# -- boundary_losses ------------------------------------------------------------------------------
def test_nothing_lost_or_doubled_when_the_finals_read_the_reference() -> None:
    result = boundary_losses(w("one two three four five six"), finals("one two three", "four five six"))
    assert (result.lost, result.doubled, result.errors, result.boundaries) == (0, 0, 0, [3])


def test_a_word_dropped_at_a_boundary_is_lost() -> None:
    ref = w("one two three four five six")
    assert boundary_losses(ref, finals("one two", "four five six")).lost == 1  # the first final's last word
    assert boundary_losses(ref, finals("one two three", "five six")).lost == 1  # the next final's first word
    # One word off the boundary still counts; further does not.
    assert boundary_losses(ref, finals("one two three", "four six")).lost == 1
    far = boundary_losses(ref, finals("one two three", "four five six"[:-4]))
    assert far.lost == 0 and far.deletions == 1  # "six" lost at the end of the stream, not at a boundary
    inside = boundary_losses(w("a b c d e f g h"), finals("a b c d", "e f h"))
    assert inside.lost == 0 and inside.deletions == 1  # "g" is two words past the boundary


def test_a_decode_stopped_short_loses_the_whole_run_after_it() -> None:
    # The case: a final stopped at "627,0" and the rest of the utterance never came.
    ref = w("we counted 627 000 subscribers an increase of 7 percent furthermore our profile")
    result = boundary_losses(ref, finals("we counted 627 0", "furthermore our profile"))
    assert result.substitutions == 1 and result.deletions == 6 and result.lost == 6
    (event,) = result.events
    assert event.kind == "lost" and [ref[i] for i in event.words] == w("subscribers an increase of 7 percent")


def test_words_read_twice_across_a_boundary_are_doubled() -> None:
    ref = w("the quick brown fox jumps over")
    assert boundary_losses(ref, finals("the quick brown", "brown fox jumps over")).doubled == 1
    assert boundary_losses(ref, finals("the quick brown fox", "brown fox jumps over")).doubled == 2
    three = boundary_losses(ref, finals("the quick brown fox", "quick brown fox jumps over"))
    assert three.doubled == 3 and three.insertions == 3 and three.lost == 0


def test_an_insertion_that_repeats_nothing_is_not_doubled() -> None:
    result = boundary_losses(w("the quick brown fox"), finals("the quick brown", "um fox"))
    assert result.insertions == 1 and result.doubled == 0
    # A repeat far from any boundary (a stutter mid-final) is not a boundary's doing.
    result = boundary_losses(w("a b c d e f g h"), finals("a b b c d e f", "g h"))
    assert result.insertions == 1 and result.doubled == 0


def test_boundary_counts_are_bounded_by_the_errors_on_random_texts() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        ref = [str(x) for x in rng.integers(0, 5, rng.integers(0, 12))]
        said = [[str(x) for x in rng.integers(0, 5, rng.integers(0, 5))] for _ in range(rng.integers(0, 4))]
        result = boundary_losses(ref, said)
        assert result.errors == edit_distance(ref, [w for f in said for w in f])
        assert 0 <= result.lost <= result.deletions and 0 <= result.doubled <= result.insertions


def test_empty_finals_are_no_boundary() -> None:
    result = boundary_losses(w("a b c d"), finals("", "a b", "", "", "c d", ""))
    assert result.boundaries == [2] and (result.lost, result.doubled) == (0, 0)
    assert boundary_losses(w("a b c d"), []).deletions == 4


# -- the audio ------------------------------------------------------------------------------------
def test_long_form_joins_trimmed_recordings_until_the_length() -> None:
    clips = load_manifest(DATA / "manifest.tsv", {"en"})
    whole = sum(len(c.audio()[0]) for c in clips) / RATE
    form = build_long_form(clips, minutes=1.0)
    assert form.seconds >= 60 and form.seconds < 60 + max(len(c.audio()[0]) for c in clips) / RATE
    assert len(form.pieces) > len(clips)  # repeated: the English test clips are ~36 s
    assert [p.clip for p in form.pieces[: len(clips)]] == [c.id for c in clips]
    assert form.reference.startswith(clips[0].reference) and len(form.reference_units) == sum(p.units for p in form.pieces)
    assert form.clip_of(0).startswith(f"{clips[0].id} word 1/{form.pieces[0].units}, at 0.0-")
    once = build_long_form(clips, minutes=0.01, trim=False)
    assert len(once.pieces) == 1 and once.pieces[0].end == pytest.approx(len(clips[0].audio()[0]) / RATE)
    assert all(a.end == b.start for a, b in zip(form.pieces, form.pieces[1:]))  # back to back, nothing between
    assert sum(len(trimmed(c.audio()[0], RATE)) for c in clips) / RATE < whole - 0.5  # edge silences gone
    with pytest.raises(ValueError):
        build_long_form(load_manifest(DATA / "manifest.tsv", None), minutes=1.0)


def test_trimming_keeps_a_margin_around_the_speech() -> None:
    t = np.arange(RATE) / RATE
    audio = np.zeros(3 * RATE, np.float32)
    audio[RATE : 2 * RATE] = 0.3 * np.sin(2 * np.pi * 220 * t)
    kept = trimmed(audio, RATE)
    assert len(kept) == pytest.approx(RATE + 2 * TRIM_MARGIN_S * RATE, abs=2 * 320)
    assert np.allclose(trimmed(np.zeros(RATE, np.float32), RATE), 0) and len(trimmed(np.zeros(RATE, np.float32), RATE)) == RATE


def test_levels_matched_bring_each_recording_to_one_speech_level() -> None:
    clips = load_manifest(DATA / "manifest.tsv", {"en"})
    for clip in clips:
        samples, speech, rate = clip.audio()
        out = leveled(samples, rate)
        frames = out[: len(out) // 320 * 320].reshape(-1, 320)[speech[: len(out) // 320]]
        level = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2)))
        assert np.abs(out).max() <= PEAK_LIMIT + 1e-6
        assert level == pytest.approx(SPEECH_LEVEL_DBFS, abs=0.1) or np.abs(out).max() == pytest.approx(PEAK_LIMIT, rel=1e-4)
    matched, recorded = build_long_form(clips, 0.01), build_long_form(clips, 0.01, levels="recorded")
    assert len(matched.audio) == len(recorded.audio) and not np.allclose(matched.audio, recorded.audio)


# -- a real run -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_long_form_section_runs_through_a_server() -> None:
    from streaming.evaluation.bench import run_bench

    report = run_bench(bench_args(long_form=0.5, speed=None))  # mode=file, the test clips
    entry = report["long_form"]
    assert entry["audio_seconds"] >= 30 and entry["reference_units"] > 0 and entry["finals"] >= 2
    assert isinstance(entry["lost_at_boundaries"], int) and isinstance(entry["doubled_at_boundaries"], int)
    assert 0 <= entry["lost_at_boundaries"] <= entry["deletions"] and 0 <= entry["doubled_at_boundaries"] <= entry["insertions"]
    assert entry["word_error_rate"] < 0.25  # moonshine-base-en reads these clips at a few percent
    assert 0 < entry["longest_final_s"] <= 25
    assert all(isinstance(n, int) for n in entry["final_decodes_cut"].values())
    assert entry["protocol_errors"] == []
    out = io.StringIO()
    print_report(report, out)
    assert "lost at boundaries" in out.getvalue()
