"""``flashcaption bench``: latency, throughput and accuracy, measured from the client side.

Each recording of a manifest is streamed through ``/v1/publish`` by N concurrent publishers
(at real-time pace, or as fast as the server takes it), followed by a tail of silence; what
is measured per utterance is :mod:`streaming.evaluation.streams`'. Per clip: partials per
second of speech and the share of partials that rewrite (are not an extension of) the previous
one, word by word (see :func:`is_extension`); WER/CER of the finals against the reference, next
to the same model decoding the whole clip offline. Per run: server CPU seconds per audio second
and peak resident memory, read from /proc for the server process the bench started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.client import connect

from streaming.client import http_url, publish_url, to_pcm16
from streaming.evaluation.files import print_files, run_files
from streaming.evaluation.longform import print_long_form_report, run_long_form
from streaming.evaluation.noise import Noise, with_voices
from streaming.evaluation.streams import (
    GOALS,
    TAIL_SILENCE_SECONDS,
    Clip,
    ServerProcess,
    StreamResult,
    duration,
    format_stats,
    load_manifest,
    machine,
    progress,
    run_streams,
    stats,
    stream_clip,
)
from streaming.evaluation.translation import print_translation, run_translation
from streaming.nonspeech import NON_SPEECH
from streaming.scoring import CHARACTER_LANGUAGES, error_counts, normalize, units


def offline_decoder(
    model_name: str, device: str, beam_size: int = 1, tail: float = 0.0, clip_language: bool = False
) -> Callable[[Clip], str]:
    """A function that decodes a whole clip in one go (the model loaded once), with the beam
    the server's finals use, and ``tail`` seconds of what follows it in a stream; with
    ``clip_language``, in the clip's language where the model knows it (else it detects)."""
    import soxr

    from decoder.api import DecodeOptions, transcribe
    from decoder.models import load_model
    from decoder.runtime import RuntimeOptions

    model = load_model(model_name, RuntimeOptions(device=device))

    def decode(clip: Clip) -> str:
        audio, _, rate = clip.audio(tail=tail)
        if rate != 16000:
            audio = soxr.resample(audio, rate, 16000)
        asked = clip.language if clip_language and clip.language in model.languages else None
        return transcribe(model, audio, options=DecodeOptions.asking(asked, beam_size=beam_size)).text

    return decode


def offline_texts(clips: list[Clip], model_name: str, device: str, beam_size: int = 1) -> dict[str, str]:
    """Each whole clip decoded in one go, with the beam the server's finals use."""
    decode = offline_decoder(model_name, device, beam_size)
    return {clip.id: decode(clip) for clip in clips}


def offline_errors(clips: list[Clip], texts: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Per language: (errors, reference words or characters) of the offline transcripts."""
    totals = {}
    for language in sorted({c.language for c in clips}):
        counted = [error_counts(c.reference, texts[c.id], language) for c in clips if c.language == language]
        totals[language] = (sum(e for e, _ in counted), sum(n for _, n in counted))
    return totals


def summarize(clips: list[Clip], all_results: list[StreamResult]) -> dict[str, Any]:
    by_id = {c.id: c for c in clips}
    results = [r for r in all_results if not r.refused]  # refused streams are counted, not scored
    utterances = [u for r in results for u in r.utterances]
    languages: dict[str, dict[str, Any]] = {}
    for language in sorted({c.language for c in clips}):
        mine = [r for r in results if by_id[r.clip].language == language]
        streamed = [error_counts(by_id[r.clip].reference, " ".join(r.finals), language) for r in mine]
        # Language identification, per stream: the language most of its finals were given.
        # (An API that does not say the language, as OpenAI's realtime events do not, is not scored.)
        identified = [max(set(r.languages), key=r.languages.count) == language for r in mine if r.languages]
        captioned = sum(len(units(" ".join(r.finals), language)) for r in mine)
        languages[language] = {
            "clips": len({r.clip for r in mine}),
            "units": sum(n for _, n in streamed),  # reference words (characters for zh, ja...)
            "streaming_errors": sum(e for e, _ in streamed),
            "streaming_error_rate": sum(e for e, _ in streamed) / max(1, sum(n for _, n in streamed)),
            "language_id_share": sum(identified) / len(identified) if identified else None,
            # With the references as what an editor would have made of the captions: words to
            # change per 100 words captioned (the editor issue's post-edit rate; normalised words).
            "post_edit_per_100_words": 100 * sum(e for e, _ in streamed) / max(1, captioned),
        }
    speech = sum(r.speech_seconds for r in results)
    partials = sum(r.partials for r in results)
    return {
        "final_latency": stats([u.final_latency for u in utterances]),
        "tail_latency": stats([u.tail_latency for u in utterances]),
        "first_caption_latency": stats([u.first_caption_latency for u in utterances]),
        "partials_per_second_of_speech": partials / speech if speech else None,
        "rewrite_share": sum(r.rewrites for r in results) / partials if partials else None,
        "errors": [e for r in all_results for e in r.errors],
        "refused_streams": sum(r.refused for r in all_results),
        "max_behind_real_time_s": max((r.behind_seconds for r in results), default=0.0),
        "languages": languages,
    }




def print_report(report: dict[str, Any], out: TextIO = sys.stdout) -> None:
    m = report["machine"]
    vad = f", voice detector {report['vad']}" if "vad" in report else ""
    print(f"FlashCaption bench: model {report['model']} on {report['device']}{vad}; {m['cpu']}, {m['cores']} cores", file=out)
    if report.get("lead_silence"):
        print(f"each recording streamed and decoded after {report['lead_silence']:.2f} s of silence", file=out)
    if "context" in report:
        print_context_report(report["context"], out)
    if "long_form" in report:
        print_long_form_report(report["long_form"], out)
    if "files" in report:
        print_files(report, out)
    if "translation" in report:
        print_translation(report, out)
    if "nodes" in report:
        from streaming.evaluation.nodes_bench import print_nodes_report

        print_nodes_report(report["nodes"], out)
    if "noise" in report:
        print_noise_report(report["noise"], out)
    for run in report["runs"]:
        s = run["summary"]
        print(f"\nstreams={run['streams']} speed={run['speed'] or 'max'} audio={run['audio_seconds']:.0f}s", file=out)
        print(f"  final latency (s)        {format_stats(s['final_latency'])}", file=out)
        print(f"  tail latency (s)         {format_stats(s['tail_latency'])}", file=out)
        print(f"  first caption (s)        {format_stats(s['first_caption_latency'])}", file=out)
        if s["partials_per_second_of_speech"] is not None:
            print(f"  partials per speech s    {s['partials_per_second_of_speech']:.2f}", file=out)
            print(f"  rewrite share            {s['rewrite_share']:.3f}", file=out)
        for language, entry in s["languages"].items():
            unit = "CER" if language in CHARACTER_LANGUAGES else "WER"
            line = f"  {language} {unit} streaming        {entry['streaming_error_rate']:.4f}"
            if "offline_error_rate" in entry:
                line += f"   offline {entry['offline_error_rate']:.4f}"
                # Few clips: one word is several points, so the counts go along.
                line += f" ({entry['streaming_errors']} vs {entry['offline_errors']} of {entry['units']})"
            share = entry["language_id_share"]
            print(line + f"   language right {'-' if share is None else format(share, '.0%')}   ({entry['clips']} clips)", file=out)
            print(f"  {language} post-edit rate        {entry['post_edit_per_100_words']:.2f} words to change per 100 captioned "
                  "(the references taken as the corrected transcripts)", file=out)
        if run.get("cpu_per_audio_second") is not None:
            print(f"  server CPU s / audio s   {run['cpu_per_audio_second']:.3f}   peak RSS {run['peak_rss_mb']:.0f} MB", file=out)
        print(f"  behind real time (max)   {s['max_behind_real_time_s']:.2f} s   errors {len(s['errors'])}"
              f"   streams refused {s.get('refused_streams', 0)}", file=out)
        for model, w in (run.get("shadow") or {}).items():
            words = w.get("words", 0.0)
            print(f"  shadow {model}: {w.get('finals', 0):.0f} finals decoded, {w.get('skipped', 0):.0f} skipped, "
                  f"{100 * w.get('word_differences', 0) / words if words else float('nan'):.1f} words differing per 100, "
                  f"{w.get('compute_seconds', 0) / max(1e-9, w.get('audio_seconds', 0)):.3f} s per audio s (wall time in its process, "
                  "stopped while the server decodes)",
                  file=out)
        for kind, c in (run.get("model_calls") or {}).items():
            if "decodes" in c:  # a kind of decode request
                print(f"  {kind:<21} {c['decodes']:6.0f}  decoding {c['audio_per_audio_second']:5.2f} s of audio and taking "
                      f"{c['seconds_per_audio_second']:.3f} s (waits included) per audio s", file=out)
                continue
            print(f"  model {kind:<15}  {c['calls']:6.0f} calls  {c['rows_per_call']:4.2f} rows/call  "
                  f"{c['seconds_per_audio_second']:.3f} s / audio s  wait {c['mean_wait_ms']:5.1f} ms", file=out)
    if report.get("non_speech") is not None:
        print("\nnon-speech (30 s each): " + ", ".join(f"{k}: {v} captions" for k, v in report["non_speech"].items()), file=out)
    if len(report["runs"]) > 1:
        print_sweep_table(report["runs"], out)
    if report.get("capacity") is not None:
        goal = GOALS["capacity_final_latency_p95"]
        print(f"\nlargest N meeting p95 final latency <= {goal} s without falling behind or a stream refused: {report['capacity']}", file=out)


async def non_speech_captions(url: str, seconds: float = 30.0) -> dict[str, int]:
    """Stream generated silence, pink noise and music; count captions (should be none)."""
    counts = {}
    for name in ("silence", "pink_noise", "music"):
        audio = NON_SPEECH[name](seconds)
        messages = []
        async with connect(publish_url(url, room=f"bench-{name}", mode="file"), max_size=2**22) as ws:
            await ws.recv()
            for offset in range(0, len(audio), 16000):
                await ws.send(to_pcm16(audio[offset : offset + 16000]))
            await ws.send(json.dumps({"type": "end"}))
            async for raw in ws:
                messages.append(json.loads(raw))
        counts[name] = sum(1 for m in messages if m["type"] in ("partial", "final"))
    return counts


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    clips = load_manifest(Path(args.manifest), set(args.langs.split(",")) if args.langs else None, args.lead_silence)
    if not clips:
        raise SystemExit(f"no recordings for languages {args.langs} in {args.manifest}")
    if getattr(args, "nodes", None):  # servers of its own: two nodes and a Redis
        from streaming.evaluation.nodes_bench import run_nodes_bench

        extra = ["--model", args.model, "--device", args.device, *args.server_args]
        return {"machine": machine(), "model": args.model, "device": args.device, "runs": [],
                "nodes": run_nodes_bench(clips, args.streams, args.nodes, extra)}
    server = None
    if args.url:
        url = args.url
    else:
        extra = ["--model", args.model, "--device", args.device, *args.server_args]
        server = ServerProcess(extra)
        url = server.url
    try:
        health = json.loads(urllib.request.urlopen(http_url(url) + "/healthz", timeout=10).read())
        report: dict[str, Any] = {"machine": machine(), "model": health["model"], "device": health["device"], "runs": []}
        report["vad"] = health.get("vad", "?")
        report["lead_silence"] = args.lead_silence
        if getattr(args, "context", None):
            term_lists = json.loads(Path(args.context).read_text(encoding="utf-8"))
            clips = [c for c in clips if c.id in term_lists["clips"]]
            by_condition = asyncio.run(run_context_streams(url, clips, term_lists, args.speed))
            report["context"] = summarize_context(clips, term_lists, by_condition)
            return report
        if getattr(args, "noise", None):
            voices = [c.path for c in load_manifest(Path(args.manifest), None)]
            report["noise"] = run_noise(url, clips, args.noise, voices, args.speed, health, server, offline=not args.no_offline,
                                        draws=getattr(args, "noise_draws", 1))
            return report
        if getattr(args, "translate", False):
            report["translation"] = run_translation(url, clips, args.speed)
            return report
        if getattr(args, "files", None):
            cpu_before = server.cpu_seconds() if server else None
            report["files"] = run_files(url, clips, args.files)
            if server is not None and cpu_before is not None:
                report["files"]["cpu_per_audio_second"] = (server.cpu_seconds() - cpu_before) / report["files"]["audio_seconds"]
                report["files"]["peak_rss_mb"] = server.peak_rss_mb()
            if not args.no_offline:
                offline = offline_errors(clips, offline_texts(clips, health["model"], "cpu", health.get("final_beam_size", 1)))
                for language, (errors, units) in offline.items():
                    report["files"]["languages"][language]["offline_error_rate"] = errors / max(1, units)
            return report
        if getattr(args, "long_form", None):
            levels = getattr(args, "long_form_levels", "matched")
            report["long_form"] = run_long_form(url, clips, args.long_form, args.speed, server=server, levels=levels)
            return report
        counts = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.streams]
        capacity = None
        for streams in counts:
            cpu_before = server.cpu_seconds() if server else None
            calls_before, shadow_before = model_calls(url), shadow_work(url)
            results = asyncio.run(run_streams(url, clips, streams, args.speed, in_step=getattr(args, "in_step", False),
                                              dialect=getattr(args, "dialect", "native")))
            audio_seconds = sum(duration(c) for c in clips) * streams
            run: dict[str, Any] = {"streams": streams, "speed": args.speed, "audio_seconds": audio_seconds}
            run["summary"] = summarize(clips, results)
            run["utterances"] = [asdict(u) for r in results for u in r.utterances]
            run["clips"] = [{"clip": r.clip, "stream": r.stream, "finals": r.finals, "languages": r.languages} for r in results if not r.refused]
            if server is not None and cpu_before is not None:
                run["cpu_per_audio_second"] = (server.cpu_seconds() - cpu_before) / audio_seconds
                run["peak_rss_mb"] = server.peak_rss_mb()
            run["model_calls"] = calls_since(calls_before, model_calls(url), audio_seconds)
            if shadow_before:  # the server has a shadow model (serve --shadow): what it did meanwhile
                time.sleep(SHADOW_SETTLE_S)  # the last finals' shadow decodes
                after = shadow_work(url)
                run["shadow"] = {model: {k: v - shadow_before[model].get(k, 0.0) for k, v in figures.items()} for model, figures in after.items()}
            report["runs"].append(run)
            p95 = (run["summary"]["final_latency"] or {}).get("p95", float("inf"))
            summary = run["summary"]
            if p95 <= GOALS["capacity_final_latency_p95"] and summary["max_behind_real_time_s"] < 0.5 and not summary["refused_streams"]:
                capacity = streams
        if args.sweep:
            report["capacity"] = capacity
        alone = next((run for run in report["runs"] if run["streams"] == 1), None)
        if alone is not None:
            for run in report["runs"]:
                run["finals_differing_from_alone"] = finals_differing(alone["clips"], run["clips"])
        if not args.no_offline:
            texts = offline_texts(clips, health["model"], "cpu", health.get("final_beam_size", 1))
            report["offline_texts"] = texts
            offline = offline_errors(clips, texts)
            for run in report["runs"]:
                for language, (errors, units) in offline.items():
                    entry = run["summary"]["languages"][language]
                    entry["offline_errors"] = errors * run["streams"]  # counted as often as streamed
                    entry["offline_error_rate"] = errors / max(1, units)
        if not args.no_non_speech:
            report["non_speech"] = asyncio.run(non_speech_captions(url))
    finally:
        if server:
            server.stop()
    return report


# -- context biasing -------------------------------------------------------------------------------
CONTEXT_CONDITIONS = ("none", "terms", "unrelated")


def said(term: str, text: str) -> bool:
    """Whether ``term`` appears in ``text`` as whole words (case and punctuation aside)."""
    wanted, words = normalize(term), normalize(text)
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def context_query(terms: list[str]) -> str:
    return json.dumps({"terms": terms}, ensure_ascii=False, separators=(",", ":"))


async def run_context_streams(url: str, clips: list[Clip], term_lists: dict[str, Any], speed: float | None) -> dict[str, list[StreamResult]]:
    """Each recording under three contexts: none; its spoken terms mixed with as many
    distractors (order fixed, spoken ones not first); and an unrelated list."""
    results: dict[str, list[StreamResult]] = {condition: [] for condition in CONTEXT_CONDITIONS}
    for number, clip in enumerate(clips):
        progress(number, len(clips), clip.id)
        entry = term_lists["clips"][clip.id]
        mixed = [t for pair in zip(entry["distractors"], entry["spoken"]) for t in pair]
        contexts = {"none": None, "terms": context_query(mixed), "unrelated": context_query(term_lists["unrelated"])}
        for condition in CONTEXT_CONDITIONS:
            room = f"bench-context-{condition}-{clip.id[:40]}"
            results[condition].append(await stream_clip(url, clip, 0, speed, room=room, context=contexts[condition]))
    progress(len(clips), len(clips), "done")
    return results


def summarize_context(clips: list[Clip], term_lists: dict[str, Any], results: dict[str, list[StreamResult]]) -> dict[str, Any]:
    by_id = {c.id: c for c in clips}
    summary: dict[str, Any] = {}
    for condition, runs in results.items():
        spoken = [(r.clip, t) for r in runs for t in term_lists["clips"][r.clip]["spoken"]]
        distractors = [(r.clip, t) for r in runs for t in term_lists["clips"][r.clip]["distractors"]]
        texts = {r.clip: " ".join(r.finals) for r in runs}
        counted = [error_counts(by_id[r.clip].reference, texts[r.clip], "en") for r in runs]
        utterances = [u for r in runs for u in r.utterances]
        summary[condition] = {
            "term_recall": sum(said(t, texts[c]) for c, t in spoken) / len(spoken),
            "missed_terms": [f"{c}: {t}" for c, t in spoken if not said(t, texts[c])],
            "false_alarm_rate": sum(said(t, texts[c]) for c, t in distractors) / len(distractors),
            "false_alarms": [f"{c}: {t}" for c, t in distractors if said(t, texts[c])],
            "word_error_rate": sum(e for e, _ in counted) / max(1, sum(n for _, n in counted)),
            "final_latency": stats([u.final_latency for u in utterances]),
            "tail_latency": stats([u.tail_latency for u in utterances]),
            "terms": (len(spoken), len(distractors)),
        }
    return summary


def print_context_report(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    names = {"none": "no context", "terms": "spoken terms + distractors", "unrelated": "unrelated terms"}
    spoken, distractors = summary["none"]["terms"]
    print(f"\ncontext biasing ({spoken} spoken terms, {distractors} distractors):", file=out)
    for condition, entry in summary.items():
        print(
            f"  {names[condition]:28s} term recall {entry['term_recall']:.3f}   false alarms {entry['false_alarm_rate']:.3f}"
            f"   WER {entry['word_error_rate']:.4f}",
            file=out,
        )
        print(f"  {'':28s} final latency {format_stats(entry['final_latency'])}", file=out)
        if entry["missed_terms"]:
            print(f"  {'':28s} missed: {', '.join(entry['missed_terms'])}", file=out)
        if entry["false_alarms"] and condition != "none":
            print(f"  {'':28s} false alarms: {', '.join(entry['false_alarms'])}", file=out)




# -- noise -------------------------------------------------------------------------------------
def run_noise(
    url: str,
    clips: list[Clip],
    conditions: list[Noise | None],
    voices: list[Path],
    speed: float | None,
    health: dict[str, Any],
    server: ServerProcess | None,
    offline: bool = True,
    draws: int = 1,
) -> dict[str, Any]:
    """Every recording under each noise condition (None: clean), streamed once and, unless
    ``offline`` is false, decoded whole by the same model on the same noisy audio: the noise
    after the recording included (a babble goes on speaking there, in the stream and offline).
    With ``draws`` above 1, each noisy condition is mixed that many ways (draw 0 first, the mix
    quoted when there is one): the summary pools them, and each draw's errors are kept."""
    beam_size = health.get("final_beam_size", 1)
    decode = offline_decoder(health["model"], "cpu", beam_size, tail=TAIL_SILENCE_SECONDS) if offline else None
    by_condition: dict[str, Any] = {}
    for condition in conditions:
        pooled_clips: list[Clip] = []
        pooled_results: list[StreamResult] = []
        entry: dict[str, Any] = {"clips": [], "draws": []}
        cpu_seconds = audio_seconds = 0.0
        for draw in range(1 if condition is None else draws):
            noisy = [replace(c, noise=None if condition is None else with_voices(replace(condition, draw=draw), c.path, voices)) for c in clips]
            cpu_before = server.cpu_seconds() if server else None
            results = asyncio.run(run_streams(url, noisy, 1, speed))
            if server is not None and cpu_before is not None:
                cpu_seconds += server.cpu_seconds() - cpu_before
                audio_seconds += sum(duration(c) for c in noisy)
            summary = summarize(noisy, results)
            entry["clips"] += [{"clip": r.clip, "draw": draw, "finals": r.finals} for r in results]
            if decode is not None:
                texts = {c.id: decode(c) for c in noisy}
                entry.setdefault("offline_texts", []).append(texts)
                for language, (errors, _) in offline_errors(noisy, texts).items():
                    summary["languages"][language]["offline_errors"] = errors
            entry["draws"].append({language: {k: figures[k] for k in ("streaming_errors", "offline_errors", "units") if k in figures}
                                   for language, figures in summary["languages"].items()})
            pooled_clips += noisy
            pooled_results += results
        entry["summary"] = summarize(pooled_clips, pooled_results)
        for language, figures in entry["summary"]["languages"].items():
            if all("offline_errors" in d[language] for d in entry["draws"]):
                errors = sum(d[language]["offline_errors"] for d in entry["draws"])
                figures.update(offline_errors=errors, offline_error_rate=errors / max(1, figures["units"]))
        if audio_seconds:
            entry["cpu_per_audio_second"] = cpu_seconds / audio_seconds
        by_condition["clean" if condition is None else condition.label] = entry
    return by_condition


def _ratio(figures: Iterable[dict[str, Any]]) -> float:
    """Streaming errors over offline errors, summed over ``figures`` (languages, or a draw's)."""
    figures = list(figures)
    return sum(f["streaming_errors"] for f in figures) / max(1, sum(f.get("offline_errors", 0) for f in figures))


def print_noise_report(by_condition: dict[str, Any], out: TextIO = sys.stdout) -> None:
    draws = max(len(entry.get("draws", [])) for entry in by_condition.values())
    pooled = f"; each noisy condition mixed {draws} ways, errors summed over them" if draws > 1 else ""
    print(f"\nnoise: streaming against offline decoding of the same noisy audio (errors of units{pooled})", file=out)
    each = "   each draw's ratio" if draws > 1 else ""
    print(f"  {'condition':10s} {'lang':4s}  {'streaming':>18s}  {'offline':>18s}  {'ratio':>5s}{each}   final latency p50 / p95", file=out)
    for label, entry in by_condition.items():
        s = entry["summary"]
        latency = s["final_latency"] or {}
        for number, (language, figures) in enumerate(s["languages"].items()):
            streamed = f"{figures['streaming_error_rate']:.2%} ({figures['streaming_errors']}/{figures['units']})"
            line = f"  {label if number == 0 else '':10s} {language:4s}  {streamed:>18s}"
            if "offline_errors" in figures:
                offline = f"{figures['offline_error_rate']:.2%} ({figures['offline_errors']})"
                line += f"  {offline:>18s}  {_ratio([figures]):5.2f}"
                if len(entry.get("draws", [])) > 1:
                    line += "   " + " ".join(f"{_ratio([d[language]]):.2f}" for d in entry["draws"])
            if number == 0 and latency:
                line += f"   {latency['p50']:.2f} / {latency['p95']:.2f} s"
                if entry.get("cpu_per_audio_second") is not None:
                    line += f", server CPU {entry['cpu_per_audio_second']:.2f} s per audio s"
            print(line, file=out)
        if len(s["languages"]) > 1:
            streamed_total = sum(f["streaming_errors"] for f in s["languages"].values())
            units_total = sum(f["units"] for f in s["languages"].values())
            line = f"  {'':10s} {'all':4s}  {streamed_total / max(1, units_total):>8.2%} ({streamed_total}/{units_total})"
            offline_total = sum(f.get("offline_errors", 0) for f in s["languages"].values())
            if any("offline_errors" in f for f in s["languages"].values()):
                line += f"  {offline_total / max(1, units_total):>8.2%} ({offline_total})  {_ratio(s['languages'].values()):5.2f}"
                if len(entry.get("draws", [])) > 1 and all("offline_errors" in f for d in entry["draws"] for f in d.values()):
                    line += "   " + " ".join(f"{_ratio(d.values()):.2f}" for d in entry["draws"])
            print(line, file=out)


# Seconds the bench waits after a run for the shadow model's decodes of its last finals.
SHADOW_SETTLE_S = 5.0


def metrics_text(url: str) -> str | None:
    """The server's ``/metrics`` page; None when it will not say (no admin token) or cannot be reached."""
    try:
        return str(urllib.request.urlopen(http_url(url) + "/metrics", timeout=10).read().decode())
    except OSError:
        return None


def shadow_work(url: str) -> dict[str, dict[str, float]]:
    """The server's shadow-model counters from ``/metrics`` by model: finals, words, word
    differences, skipped, audio and compute seconds ({} without a shadow, or without access)."""
    text = metrics_text(url)
    if text is None:
        return {}
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = re.fullmatch(r'flashcaption_shadow_(\w+)_total\{(.*)\} (\S+)', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            figures = found.setdefault(labels["model"], {})
            figures[match.group(1)] = figures.get(match.group(1), 0.0) + float(match.group(3))
    return found


def model_calls(url: str) -> dict[tuple[str, str], float] | None:
    """The server's model-call counters from ``/metrics`` by (metric, kind); None when it
    will not say (no admin token)."""
    text = metrics_text(url)
    if text is None:
        return None
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r'flashcaption_model_(\w+)_total\{kind="([^"]+)"\} (\S+)', line)
        if match:
            found[(match.group(1), match.group(2))] = float(match.group(3))
        match = re.fullmatch(r'flashcaption_decode_request(_audio_seconds|_seconds|s)_total\{kind="([^"]+)"\} (\S+)', line)
        if match:
            found[("decodes" + match.group(1).removeprefix("s"), match.group(2))] = float(match.group(3))
    return found


def calls_since(before: dict[tuple[str, str], float] | None, after: dict[tuple[str, str], float] | None, audio_seconds: float) -> dict[str, dict[str, float]]:
    """What the model did during a run, by kind of call: calls, rows per call, compute per
    audio second streamed, mean wait for the turn."""
    if before is None or after is None:
        return {}
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({kind for metric, kind in delta if metric == "decodes"}):
        decodes = delta[("decodes", kind)]
        if decodes:
            out[f"decodes: {kind}"] = {
                "decodes": decodes,
                "audio_per_audio_second": delta.get(("decodes_audio_seconds", kind), 0.0) / audio_seconds,
                "seconds_per_audio_second": delta.get(("decodes_seconds", kind), 0.0) / audio_seconds,
            }
    for kind in sorted({kind for metric, kind in delta if metric == "calls"}):
        calls = delta.get(("calls", kind), 0.0)
        if calls:
            out[kind] = {
                "calls": calls,
                "rows_per_call": delta.get(("rows", kind), 0.0) / calls,
                "seconds_per_audio_second": delta.get(("compute_seconds", kind), 0.0) / audio_seconds,
                "mean_wait_ms": 1000 * delta.get(("wait_seconds", kind), 0.0) / calls,
            }
    return out


def finals_differing(alone: list[dict[str, Any]], together: list[dict[str, Any]]) -> float | None:
    """The share of finals whose text differs from the same recording's finals when it was
    streamed alone: what batching and load change (a final missing or extra counts as one)."""
    reference = {entry["clip"]: entry["finals"] for entry in alone}
    differing = total = 0
    for entry in together:
        mine, theirs = entry["finals"], reference.get(entry["clip"])
        if theirs is None:
            continue
        differing += sum(a != b for a, b in zip(mine, theirs)) + abs(len(mine) - len(theirs))
        total += max(len(mine), len(theirs))
    return differing / total if total else None


def print_sweep_table(runs: list[dict[str, Any]], out: TextIO) -> None:
    """One line per stream count: what the sweep is read by."""
    print("\nstreams  final p50 / p95 / p99 (s)   partials/speech s   CPU s/audio s   peak RSS MB   step rows/call   finals unlike alone   refused", file=out)
    for run in sorted(runs, key=lambda r: r["streams"]):
        latency = run["summary"]["final_latency"] or {}
        steps = (run.get("model_calls") or {}).get("decoder step", {})
        print(
            f"{run['streams']:7d}  {latency.get('p50', float('nan')):5.2f} / {latency.get('p95', float('nan')):5.2f} / {latency.get('p99', float('nan')):5.2f}"
            f"   {run['summary']['partials_per_second_of_speech'] or 0.0:17.2f}   {run.get('cpu_per_audio_second', float('nan')):13.3f}"
            f"   {run.get('peak_rss_mb', float('nan')):11.0f}   {steps.get('rows_per_call', float('nan')):14.2f}"
            f"   {_share(run.get('finals_differing_from_alone')):>19s}   {run['summary'].get('refused_streams', 0):7d}",
            file=out,
        )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
