"""flashcaption compare: two real models over a small folder of real recordings (one of them an
MP3), with references and without; the report's numbers against the bench's scoring of the same
texts; the HTML report in real Chromium (no console error, the plot drawn)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from streaming.scoring import error_counts
from tests.conftest import DATA
from tests.test_cli import flashcaption
from tests.test_openai_files import encoded
from tests.test_web import SCREENSHOTS, browser, context, playwright, screenshot  # noqa: F401  (fixtures)

RECORDINGS = ("en_arctic_a0024", "en_jfk_inaugural")


def folder(tmp_path, references: bool):
    from tests.conftest import CLIPS

    source = tmp_path / ("with" if references else "without")
    source.mkdir()
    shutil.copy(DATA / "en_arctic_a0024.wav", source / "en_arctic_a0024.wav")
    (source / "en_jfk_inaugural.mp3").write_bytes(encoded(CLIPS["en_jfk_inaugural"].audio, "mp3", "libmp3lame", 44100))
    for name in RECORDINGS:
        (source / f"{name}.lang").write_text("en")
        if references:
            (source / f"{name}.txt").write_text(CLIPS[name].reference)
    return source


@pytest.mark.slow
def test_compare_reports_what_the_bench_would_score_and_opens_in_a_browser(tmp_path, context):  # noqa: F811
    source = folder(tmp_path, references=True)
    page, numbers = tmp_path / "report.html", tmp_path / "report.json"
    done = subprocess.run(flashcaption("compare", "--a", "moonshine-base-en", "--b", "whisper-base", str(source), "-o", str(page),
                                       "--json", str(numbers)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(numbers.read_text())
    assert [r["id"] for r in report["recordings"]] == list(RECORDINGS)
    for side in ("a", "b"):
        for kind, texts in (("streaming", report[side]["texts"]), ("offline", report[side]["offline_texts"])):
            errors = units = 0
            for recording in report["recordings"]:
                e, n = error_counts(recording["reference"], texts[recording["id"]], "en")  # the bench's scoring
                errors, units = errors + e, units + n
            entry = report[side][kind]["languages"]["en"]
            assert (entry["errors"], entry["units"], entry["recordings"]) == (errors, units, 2), (side, kind)
            assert entry["error_rate"] == pytest.approx(errors / units)
        assert report[side]["streaming"]["final_latency"]["n"] >= 2 and report[side]["cpu_per_audio_second"] > 0
    # The JFK recording was an MP3: decoded, streamed and scored like the WAV.
    assert "fellow Americans" in report["a"]["texts"]["en_jfk_inaugural"]
    browser_page = context.new_page()
    errors: list[str] = []
    browser_page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    browser_page.goto(page.as_uri())
    assert errors == []
    plot = browser_page.eval_on_selector("#latency svg", "svg => svg.getBoundingClientRect().height")
    assert plot > 100  # the plot is drawn, not an empty box
    assert browser_page.eval_on_selector_all("audio", "players => players.length") >= 2
    assert browser_page.inner_text("#languages").count("%") == 5  # A and B, streamed and offline, and how much they differ
    screenshot(browser_page, "compare-report")


@pytest.mark.slow
def test_compare_without_references_measures_how_much_the_models_disagree(tmp_path):
    source = folder(tmp_path, references=False)
    numbers = tmp_path / "report.json"
    done = subprocess.run(flashcaption("compare", "--a", "moonshine-base-en", "--b", "whisper-base", str(source), "--no-streaming",
                                       "-o", str(tmp_path / "report.html"), "--json", str(numbers)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(numbers.read_text())
    assert report["a"]["offline"]["languages"] == {} and "streaming" not in report["a"]
    found = report["disagreement"]["en"]
    a, b = report["a"]["offline_texts"], report["b"]["offline_texts"]
    expected = sum(error_counts(a[r], b[r], "en")[0] for r in RECORDINGS)  # B's text scored against A's
    assert found["recordings"] == 2 and found["differences"] == expected
    assert found["differing"] == sum(error_counts(a[r], b[r], "en")[0] > 0 for r in RECORDINGS)
    assert "No references" in (tmp_path / "report.html").read_text()
