"""``flashcaption compare --a MODEL --b MODEL DIR_OR_MANIFEST``: two models on the user's own
recordings, side by side, per language, in a report people read.

Each model serves in a server of its own (one after the other, so neither slows the other), and
every recording is streamed to it as a publisher would (``--speed``: 1 is real time, ``max`` as
fast as the server takes it) and decoded whole offline by the same model. Scored as the bench
scores (:func:`streaming.evaluation.bench.summarize`, :mod:`streaming.scoring`): word or
character error rates per language against the references there are (``NAME.txt`` beside a
recording, or the manifest's ``reference`` column); without references, how often and how much
the two models disagree. Also: final latency (plotted), how often partials change words already
shown, compute and memory. The report is one self-contained HTML file (plots inline, each
recording playable from it) and the same numbers as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import difflib
import html
import io
import json
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streaming import media
from streaming.evaluation.bench import offline_decoder, summarize
from streaming.evaluation.streams import Clip, ServerProcess, format_stats, machine, progress, stream_clip
from streaming.scoring import CHARACTER_LANGUAGES, error_counts

AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".mp4", ".webm", ".mpeg"}
UNKNOWN = "und"  # a recording whose language nobody said
MAX_SECONDS = 3600.0  # one recording
WORST = 5  # recordings shown per side, the worst first
MAX_EMBEDDED_BYTES = 4 << 20  # a recording larger than this (as 16 kHz WAV) is linked, not embedded


@dataclass
class Recording:
    id: str
    language: str
    reference: str | None
    source: Path  # as the user gave it
    wav: Path  # 16 kHz mono 16-bit, made for streaming
    seconds: float
    audio: bytes | None = None  # the WAV's bytes, for the report (None: too large to embed)


def load_recordings(source: Path, workdir: Path, language: str | None = None) -> list[Recording]:
    """A folder of recordings (``NAME.txt`` beside one is its reference, ``NAME.lang`` its
    language code), or a manifest TSV (columns ``id``, ``wav``, ``lang``, optional ``reference``,
    paths relative to it). ``language`` applies to recordings that name none."""
    rows: list[tuple[str, Path, str | None, str | None]] = []
    if source.is_dir():
        for path in sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            text_file, language_file = path.with_suffix(".txt"), path.with_suffix(".lang")
            rows.append((path.stem, path, text_file.read_text(encoding="utf-8").strip() if text_file.is_file() else None,
                         language_file.read_text(encoding="utf-8").strip() if language_file.is_file() else None))
    elif source.is_file():
        with open(source, encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rows.append((row["id"], source.parent / row["wav"], row.get("reference") or None, row.get("lang") or None))
    else:
        raise ValueError(f"{source}: no such folder or manifest")
    if not rows:
        raise ValueError(f"{source}: no recordings ({', '.join(sorted(AUDIO_SUFFIXES))})")
    recordings = []
    for number, (name, path, reference, code) in enumerate(rows):
        samples = np.concatenate(list(media.blocks(path.read_bytes(), MAX_SECONDS)) or [np.zeros(0, np.int16)])
        wav = workdir / f"{number:04d}.wav"
        with wave.open(str(wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(samples.astype("<i2").tobytes())
        recordings.append(Recording(name, code or language or UNKNOWN, reference, path, wav, len(samples) / 16000))
    return recordings


def _clip(recording: Recording) -> Clip:
    return Clip(recording.id, recording.language, recording.reference or "", recording.wav)


def run_side(model: str, recordings: list[Recording], speed: float | None, device: str = "cpu", streaming: bool = True) -> dict[str, Any]:
    """One model: streamed through a server of its own, then decoded offline."""
    side: dict[str, Any] = {"model": model}
    clips = [_clip(r) for r in recordings]
    if streaming:
        server = ServerProcess(["--model", model, "--device", device])
        try:
            before = server.cpu_seconds()
            results = []
            for number, clip in enumerate(clips):
                progress(number, len(clips), f"{model}: {clip.id}")
                results.append(asyncio.run(stream_clip(server.url, clip, 0, speed, room=f"compare-{model}")))
            progress(len(clips), len(clips), model)
            audio = sum(r.seconds for r in recordings)
            side["cpu_per_audio_second"] = (server.cpu_seconds() - before) / max(audio, 1e-9)
            side["peak_rss_mb"] = server.peak_rss_mb()
        finally:
            server.stop()
        summary = summarize(clips, results)
        side["streaming"] = {k: summary[k] for k in ("final_latency", "first_caption_latency", "partials_per_second_of_speech", "rewrite_share")}
        side["streaming"]["languages"] = _scored(recordings, {r.clip: " ".join(r.finals) for r in results})
        side["texts"] = {r.clip: " ".join(r.finals) for r in results}
        side["final_latencies"] = [u.final_latency for r in results for u in r.utterances if u.final_latency is not None]
    decode = offline_decoder(model, device, clip_language=True)
    side["offline_texts"] = {recording.id: decode(clip) for recording, clip in zip(recordings, clips)}
    side["offline"] = {"languages": _scored(recordings, side["offline_texts"])}
    return side


def _scored(recordings: list[Recording], texts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per language, against the references there are: errors, units, rate (as the bench scores)."""
    scored: dict[str, dict[str, Any]] = {}
    for recording in recordings:
        if recording.reference is None:
            continue
        errors, count = error_counts(recording.reference, texts[recording.id], recording.language)
        entry = scored.setdefault(recording.language, {"recordings": 0, "errors": 0, "units": 0})
        entry["recordings"] += 1
        entry["errors"] += errors
        entry["units"] += count
    for entry in scored.values():
        entry["error_rate"] = entry["errors"] / max(1, entry["units"])
    return scored


def disagreement(recordings: list[Recording], a: dict[str, str], b: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per language: in how many recordings A and B differ, and how much (edit distance in B's
    units against A's, per unit of A's)."""
    found: dict[str, dict[str, Any]] = {}
    for recording in recordings:
        distance, count = error_counts(a[recording.id], b[recording.id], recording.language)  # B scored against A
        entry = found.setdefault(recording.language, {"recordings": 0, "differing": 0, "differences": 0, "units": 0})
        entry["recordings"] += 1
        entry["differing"] += distance > 0
        entry["differences"] += distance
        entry["units"] += count
    for entry in found.values():
        entry["rate"] = entry["differences"] / max(1, entry["units"])
    return found


def compare(a_model: str, b_model: str, source: Path, speed: float | None = None, language: str | None = None,
            device: str = "cpu", streaming: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flashcaption-compare-") as workdir:
        recordings = load_recordings(source, Path(workdir), language)
        a = run_side(a_model, recordings, speed, device, streaming)
        b = run_side(b_model, recordings, speed, device, streaming)
        for recording in recordings:  # the clips go in the report: it is one file
            data = recording.wav.read_bytes()
            recording.audio = data if len(data) <= MAX_EMBEDDED_BYTES else None
    key = "texts" if streaming else "offline_texts"
    report: dict[str, Any] = {
        "machine": machine(), "speed": "max" if speed is None else speed, "streaming": streaming, "a": a, "b": b,
        "disagreement": disagreement(recordings, a[key], b[key]),
        "recordings": [
            {"id": r.id, "language": r.language, "seconds": round(r.seconds, 2), "source": str(r.source), "reference": r.reference,
             "a": a[key][r.id], "b": b[key][r.id],
             "a_errors": None if r.reference is None else error_counts(r.reference, a[key][r.id], r.language),
             "b_errors": None if r.reference is None else error_counts(r.reference, b[key][r.id], r.language),
             "audio": base64.b64encode(r.audio).decode() if r.audio else None}
            for r in recordings
        ],
    }
    return report


# -- the report ------------------------------------------------------------------------------------
def _rate(entry: dict[str, Any] | None, key: str = "error_rate") -> str:
    return "–" if not entry else f"{entry[key]:.2%}"


def _unit(language: str) -> str:
    return "CER" if language in CHARACTER_LANGUAGES else "WER"


def word_diff(a: str, b: str) -> str:
    """B's words against A's, as HTML: what B lacks struck through, what B adds underlined."""
    a_words, b_words = a.split(), b.split()
    matcher = difflib.SequenceMatcher(a=[w.lower().strip(".,;:!?") for w in a_words], b=[w.lower().strip(".,;:!?") for w in b_words],
                                      autojunk=False)
    out = []
    for kind, i1, i2, j1, j2 in matcher.get_opcodes():
        if kind == "equal":
            out.append(html.escape(" ".join(b_words[j1:j2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(' '.join(a_words[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(' '.join(b_words[j1:j2]))}</ins>")
    return " ".join(out)


def _latency_plot(report: dict[str, Any]) -> str:
    """Both sides' final latencies, as an inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 2.6), constrained_layout=True)
    series = [report[side].get("final_latencies") or [0.0] for side in ("a", "b")]
    axis.boxplot(series, orientation="horizontal", tick_labels=[f"A: {report['a']['model']}", f"B: {report['b']['model']}"], widths=0.5)
    axis.set(xlabel="final latency (s): end of speech to its final", title="final latency")
    axis.grid(alpha=0.3, axis="x")
    out = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        figure.savefig(out, format="svg")
    plt.close(figure)
    svg = out.getvalue()
    return svg[svg.index("<svg") :]


def render_html(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    languages = sorted({r["language"] for r in report["recordings"]})
    has_references = any(r["reference"] is not None for r in report["recordings"])
    kind = "streamed" if report["streaming"] else "offline"
    rows = []
    for language in languages:
        cells = [html.escape(language), _unit(language)]
        for side in (a, b):
            streamed = (side.get("streaming") or {}).get("languages", {}).get(language)
            cells += [_rate(streamed), _rate(side["offline"]["languages"].get(language))]
        cells.append(_rate(report["disagreement"].get(language), "rate"))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")

    def figure(side: dict[str, Any], key: str, fmt: str) -> str:
        value = side.get(key) if key in side else (side.get("streaming") or {}).get(key)
        if value is None:
            return "–"
        return fmt.format(value["p50"], value["p95"]) if isinstance(value, dict) else fmt.format(value)

    summary = [
        ("Final latency p50 / p95", "final_latency", "{:.2f} / {:.2f} s"),
        ("First caption p50 / p95", "first_caption_latency", "{:.2f} / {:.2f} s"),
        ("Partials that change shown words", "rewrite_share", "{:.1%}"),
        ("Server CPU per audio second", "cpu_per_audio_second", "{:.3f} s"),
        ("Peak memory", "peak_rss_mb", "{:.0f} MB"),
    ]
    summary_rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{figure(a, key, fmt)}</td><td>{figure(b, key, fmt)}</td></tr>"
                           for name, key, fmt in summary)
    worst = []
    for label, side_key in (("A", "a_errors"), ("B", "b_errors")):
        def badness(r: dict[str, Any], side_key: str = side_key) -> float:
            errors, count = r[side_key] if r[side_key] is not None else error_counts(r["a"], r["b"], r["language"])
            return errors / max(1, count)

        chosen = sorted(report["recordings"], key=badness, reverse=True)[:WORST]
        items = []
        for r in chosen:
            audio = (f'<audio controls preload="none" src="data:audio/wav;base64,{r["audio"]}"></audio>' if r["audio"]
                     else f"<span>{html.escape(r['source'])}</span>")
            reference = f"<p><b>Reference</b> {html.escape(r['reference'])}</p>" if r["reference"] is not None else ""
            errors = f" · A {r['a_errors'][0]} / B {r['b_errors'][0]} errors of {r['a_errors'][1]}" if r["a_errors"] else ""
            items.append(f"<li><h4>{html.escape(r['id'])} <small>({html.escape(r['language'])}, {r['seconds']:.1f} s{errors})</small></h4>"
                         f"{audio}{reference}<p><b>A</b> {html.escape(r['a'])}</p><p><b>B</b> {html.escape(r['b'])}</p>"
                         f"<p class=diff><b>A → B</b> {word_diff(r['a'], r['b'])}</p></li>")
        worst.append(f"<h3>Where {label} does worst{'' if has_references else ' (by disagreement)'}</h3><ol>{''.join(items)}</ol>")
    plot = _latency_plot(report) if report["streaming"] else "<p>Not streamed (--no-streaming).</p>"
    m = report["machine"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FlashCaption: {html.escape(a['model'])} vs {html.escape(b['model'])}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 1.5rem; color: #111; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.2rem; }} td, th {{ border-bottom: 1px solid #ddd; padding: .3rem .7rem; text-align: left; }}
thead th {{ background: #f3f3f3; }} del {{ background: #ffd7d5; }} ins {{ background: #d2f4d3; text-decoration: none; }}
li {{ margin-bottom: 1rem; }} h4 {{ margin: .2rem 0; }} audio {{ height: 2rem; }} .note {{ color: #666; }}
</style></head><body>
<h1>{html.escape(a['model'])} (A) vs {html.escape(b['model'])} (B)</h1>
<p class=note>{len(report['recordings'])} recordings, {sum(r['seconds'] for r in report['recordings']):.0f} s; {kind} at speed {report['speed']}
(1: real time; max: as fast as the server takes it) and offline; {html.escape(str(m.get('cpu')))}, {m.get('cores')} cores.
{'' if has_references else 'No references: the error columns are empty, and the models are compared with each other.'}</p>
<h2>Summary</h2>
<table><thead><tr><th></th><th>A: {html.escape(a['model'])}</th><th>B: {html.escape(b['model'])}</th></tr></thead><tbody>{summary_rows}</tbody></table>
<h2>Errors per language</h2>
<table id=languages><thead><tr><th>language</th><th></th><th>A {kind}</th><th>A offline</th><th>B {kind}</th><th>B offline</th>
<th>A and B differ</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Final latency</h2>
<div id=latency>{plot}</div>
<h2>Recordings</h2>
{''.join(worst)}
<p class=note>Made by <code>flashcaption compare</code>; the same numbers are in its JSON.</p>
</body></html>
"""


def print_summary(report: dict[str, Any]) -> None:
    for side in ("a", "b"):
        entry = report[side]
        streamed = entry.get("streaming") or {}
        line = f"{side.upper()} {entry['model']}: final latency {format_stats(streamed.get('final_latency'))}"
        print(line)
        for language, scored in sorted(entry["offline"]["languages"].items()):
            live = streamed.get("languages", {}).get(language)
            print(f"  {language} {_unit(language)} streamed {_rate(live)}  offline {_rate(scored)}")
    for language, found in sorted(report["disagreement"].items()):
        print(f"A and B differ in {found['differing']} of {found['recordings']} {language} recordings, {found['rate']:.2%} of A's units")


def write(report: dict[str, Any], html_path: Path, json_path: Path | None) -> None:
    html_path.write_text(render_html(report), encoding="utf-8")
    if json_path is not None:
        lean = {**report, "recordings": [{k: v for k, v in r.items() if k != "audio"} for r in report["recordings"]]}
        json_path.write_text(json.dumps(lean, indent=1, ensure_ascii=False), encoding="utf-8")

