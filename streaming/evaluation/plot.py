"""The sweep drawn: final latency, partial cadence and compute against concurrent streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_sweep(report: dict[str, Any], stem: Path, goal_s: float) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg from a bench report with several runs; returns them."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display here
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'flashcaption[bench]'") from None
    runs = sorted(report["runs"], key=lambda r: r["streams"])
    streams = [r["streams"] for r in runs]

    def latency(key: str) -> list[float]:
        return [(r["summary"]["final_latency"] or {}).get(key, float("nan")) for r in runs]

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^--")):
        left.plot(streams, latency(key), style, label=key)
    left.axhline(goal_s, color="grey", linestyle=":", label=f"goal p95 {goal_s:g} s")
    left.set(title="final latency", xlabel="concurrent real-time streams", ylabel="seconds")
    left.legend()
    middle.plot(streams, [r["summary"]["partials_per_second_of_speech"] or 0.0 for r in runs], "o-")
    middle.set(title="partial captions per second of speech", xlabel="concurrent real-time streams")
    right.plot(streams, [r.get("cpu_per_audio_second", float("nan")) for r in runs], "o-", label="server CPU s")
    right.set(title="per second of audio", xlabel="concurrent real-time streams", ylabel="CPU seconds")
    memory = right.twinx()
    memory.plot(streams, [r.get("peak_rss_mb", float("nan")) for r in runs], "s--", color="tab:red", label="peak RSS")
    memory.set_ylabel("peak RSS (MB)", color="tab:red")
    for axis in (left, middle, right):
        axis.set_xticks(streams)
        axis.grid(alpha=0.3)
    machine = report.get("machine", "")
    if isinstance(machine, dict):  # as the bench records it
        machine = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
    figure.suptitle(f"{report.get('model', '')} on {report.get('device', '')}, {machine}")
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    stem.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable
        for path in paths:
            figure.savefig(path, dpi=110)
    plt.close(figure)
    return paths
