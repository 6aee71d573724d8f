"""``flashcaption bench --journal N``: the journal's write, replay and export times."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from streaming.evaluation.streams import stats


def journal_bench(count: int, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Write ``count`` finals to a fresh journal one by one (as the server does), then time the
    replay and the exports of that room."""
    from streaming.export import render
    from streaming.journal import Journal

    with tempfile.TemporaryDirectory(prefix="flashcaption-journal-") as directory:
        journal = Journal(Path(directory) / "journal.sqlite3")
        # A busy neighbour room, so queries must use the index rather than scan one room.
        for seq in range(1, 1001):
            journal.append(_fake_final("other", seq), 0.0, 1.0)
        latencies = []
        for seq in range(1, count + 1):
            started = time.perf_counter()
            journal.append(_fake_final("big", seq), seq * 3.0, seq * 3.0 + 2.5)
            latencies.append(time.perf_counter() - started)
        timings: dict[str, Any] = {"finals": count, "append": stats(latencies)}
        for name, action in (
            ("last_seq", lambda: journal.last_seq("big")),
            ("since_last_100", lambda: journal.finals("big", count - 100)),
            ("read_all", lambda: journal.finals("big")),
        ):
            started = time.perf_counter()
            action()
            timings[name] = time.perf_counter() - started
        rows = journal.finals("big")
        for format in ("srt", "vtt", "json", "txt"):
            started = time.perf_counter()
            render(rows, format)
            timings[f"export_{format}"] = time.perf_counter() - started
        timings["file_mb"] = sum(p.stat().st_size for p in Path(directory).iterdir()) / 1e6
        journal.close()
    a = timings["append"]
    print(f"journal: {count} finals appended one at a time (synced): p50 {a['p50'] * 1000:.2f} ms  "
          f"p95 {a['p95'] * 1000:.2f} ms  max {a['max'] * 1000:.1f} ms; file {timings['file_mb']:.0f} MB", file=out)
    print(f"  last seq {timings['last_seq'] * 1000:.2f} ms, since (last 100) {timings['since_last_100'] * 1000:.2f} ms, "
          f"read all {timings['read_all']:.2f} s", file=out)
    print("  export " + ", ".join(f"{f} {timings[f'export_{f}']:.2f} s" for f in ("srt", "vtt", "json", "txt")) + " (plus the read)", file=out)
    return timings


def _fake_final(room: str, seq: int) -> dict[str, Any]:
    return {"room": room, "seq": seq, "session": "bench", "speaker": "Speaker", "segment": seq, "language": "en",
            "text": "It was the first great sorrow of his life, not so much the loss of the cotton itself.",
            "start": seq * 3.0, "end": seq * 3.0 + 2.5}


