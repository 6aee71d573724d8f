"""``flashcaption bench --translate``: live translation, measured as the audience gets it.

Each recording is streamed with ``translate=en`` (a multilingual Whisper server: ``--model
whisper-base``); for each final, how long after it its translation came (p50/p95 per language
and over all), and whether every final got one. Where the manifest gives a recording's English
reference translation (column ``english``), the translations are scored with chrF (sacrebleu,
the standard implementation), per language over the recordings that have one; the rest are left
unscored, never given a reference made up for them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, TextIO

from streaming.evaluation.streams import Clip, format_stats, progress, stats, stream_clip


def run_translation(url: str, clips: list[Clip], speed: float | None) -> dict[str, Any]:
    by_language: dict[str, dict[str, Any]] = defaultdict(lambda: {"delays": [], "finals": 0, "translated": 0, "hypotheses": [], "references": []})
    for number, clip in enumerate(clips):
        progress(number, len(clips), clip.id)
        result = asyncio.run(stream_clip(url, clip, 0, speed, room=f"bench-translate-{clip.id[:40]}", translate="en"))
        entry = by_language[clip.language]
        entry["finals"] += len([text for text in result.finals if text])
        entry["translated"] += len(result.translations)
        entry["delays"] += [delay for _, _, delay in result.translations]
        if clip.english:
            entry["hypotheses"].append(" ".join(text for _, text, _ in result.translations))
            entry["references"].append(clip.english)
    progress(len(clips), len(clips), "done")
    report: dict[str, Any] = {"languages": {}, "delay": stats([d for e in by_language.values() for d in e["delays"]])}
    for language, entry in sorted(by_language.items()):
        report["languages"][language] = {
            "finals": entry["finals"], "translated": entry["translated"], "delay": stats(entry["delays"]),
            "scored_recordings": len(entry["references"]), "chrf": _chrf(entry["hypotheses"], entry["references"]),
        }
    return report


def _chrf(hypotheses: list[str], references: list[str]) -> float | None:
    if not references:
        return None
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def print_translation(report: dict[str, Any], out: TextIO) -> None:
    translation = report["translation"]
    print(f"\nlive translation into English: delay after each final {format_stats(translation['delay'])}", file=out)
    for language, entry in translation["languages"].items():
        chrf = f"chrF {entry['chrf']:.1f} ({entry['scored_recordings']} recordings)" if entry["chrf"] is not None else "unscored (no English reference)"
        print(f"  {language}: {entry['translated']} of {entry['finals']} finals translated, delay {format_stats(entry['delay'])}, {chrf}", file=out)
