"""Counters and a histogram, rendered in the Prometheus text format for ``GET /metrics``."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def labels(**values: object) -> str:
    """Prometheus labels: ``kind="encoder",rows="4"``."""
    return ",".join(f'{name}="{value}"' for name, value in values.items())


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, label: str = "") -> list[str]:
        """The histogram's samples; ``label``: labels every sample carries (``language="en"``)."""
        out, running = [], 0
        extra = f"{label}," if label else ""
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{{extra}le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{extra}le="+Inf"}} {self.count}')
        tail = f"{{{label}}}" if label else ""
        out += [f"{name}_sum{tail} {self.sum:.6f}", f"{name}_count{tail} {self.count}"]
        return out


class Metrics:
    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()  # by protocol error code
        self.dropped_viewers = 0
        self.cut_finals: Counter[str] = Counter()  # final (and early final) decodes that stopped short, by reason
        self.final_checks: Counter[str] = Counter()  # checks of a final's tail or head, by what they found
        self.rejected_finals: Counter[str] = Counter()  # final decodes whose words were not taken for speech, by guard
        self.final_latency = Histogram()  # end of an utterance's audio -> its final sent
        self.final_latency_by_language: dict[str, Histogram] = {}  # the same, by the final's language
        self.finals: Counter[str] = Counter()  # by language
        self.model = ""  # the model's name, a label on what is counted by language
        self.translation_delay = Histogram()  # a final sent -> its translation sent
        self.translations_skipped = 0  # finals not translated: too many were waiting
        self.translations_failed = 0
        # Post-edit rate: words captioned, and words editors changed (word edit distance of each
        # correction, before to after), by language.
        self.words_captioned: Counter[str] = Counter()
        self.words_edited: Counter[str] = Counter()
        self.corrections: Counter[str] = Counter()
        # The shadow model's (serve --shadow), by (its name, the final's language): finals it
        # decoded, the primary's words in them, and the word edit distance from the primary's
        # text to the shadow's (per 100 words, how much the two models disagree).
        self.shadow_finals: Counter[tuple[str, str]] = Counter()
        self.shadow_words: Counter[tuple[str, str]] = Counter()
        self.shadow_differences: Counter[tuple[str, str]] = Counter()
    def render(
        self,
        gauges: dict[str, tuple[str, float]],
        counters: dict[str, tuple[str, float]],
        labelled: dict[str, tuple[str, dict[str, float]]] | None = None,
    ) -> str:
        """``labelled``: counters by name -> (help, value by :func:`labels`)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, values: Callable[[], list[str]]) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *values()])

        def sample(name: str, value: float) -> Callable[[], list[str]]:
            return lambda: [f"{name} {value:g}"]

        for name, (help, value) in gauges.items():
            metric(name, "gauge", help, sample(name, value))
        for name, (help, value) in counters.items():
            metric(name, "counter", help, sample(name, value))
        for name, (help, values) in (labelled or {}).items():
            metric(name, "counter", help, lambda n=name, v=values: [f"{n}{{{key}}} {x:g}" for key, x in sorted(v.items())])  # type: ignore[misc]
        metric("flashcaption_viewers_dropped_total", "counter", "Viewers closed for falling behind.",
               lambda: [f"flashcaption_viewers_dropped_total {self.dropped_viewers}"])
        metric("flashcaption_errors_total", "counter", "Protocol errors sent to clients, by code.",
               lambda: [f'flashcaption_errors_total{{code="{code}"}} {n}' for code, n in sorted(self.errors.items())])
        metric("flashcaption_final_decodes_cut_total", "counter",
               "Decodes of finals (and early finals) that stopped short of the model's end, by reason (loop guard, token budget, repeated phrase).",
               lambda: [f'flashcaption_final_decodes_cut_total{{reason="{reason}"}} {n}' for reason, n in sorted(self.cut_finals.items())])
        metric("flashcaption_final_checks_total", "counter",
               "Finals whose tail (long, or stopped short: sent first) or head (no partial before it: held) was decoded again, "
               "by end and outcome: covered, extended (words the final had dropped were added), unmatched (could not be placed).",
               lambda: [f'flashcaption_final_checks_total{{check="{c}"}} {n}' for c, n in sorted(self.final_checks.items())])
        metric("flashcaption_final_decodes_rejected_total", "counter",
               "Decodes of finals (and early finals) whose words a guard did not take for speech (noise, music), by guard: "
               "no speech, unsure, unsure language, looping text, no words, copies context, unsure start.",
               lambda: [f'flashcaption_final_decodes_rejected_total{{guard="{g}"}} {n}' for g, n in sorted(self.rejected_finals.items())])
        def by_language(name: str, counts: Counter[str]) -> Callable[[], list[str]]:
            return lambda: [f"{name}{{{labels(language=k, model=self.model)}}} {n}" for k, n in sorted(counts.items())]

        metric("flashcaption_finals_total", "counter", "Finals sent, by language and model.", by_language("flashcaption_finals_total", self.finals))
        metric("flashcaption_words_captioned_total", "counter", "Words (characters in Chinese and Japanese) in finals, by language and model.",
               by_language("flashcaption_words_captioned_total", self.words_captioned))
        metric("flashcaption_words_edited_total", "counter",
               "Words editors changed in finals (word edit distance of each correction), by language and model: "
               "per 100 words captioned, the post-edit rate.", by_language("flashcaption_words_edited_total", self.words_edited))
        metric("flashcaption_corrections_total", "counter", "Corrections of finals made by editors, by language and model.",
               by_language("flashcaption_corrections_total", self.corrections))
        metric("flashcaption_final_latency_by_language_seconds", "histogram",
               "From the end of an utterance's audio (on arrival) to its final being sent, by language and model.",
               lambda: [line for k, h in sorted(self.final_latency_by_language.items())
                        for line in h.lines("flashcaption_final_latency_by_language_seconds", labels(language=k, model=self.model))])
        metric("flashcaption_translation_delay_seconds", "histogram", "From a final being sent to its translation being sent.",
               lambda: self.translation_delay.lines("flashcaption_translation_delay_seconds"))
        metric("flashcaption_translations_skipped_total", "counter", "Finals not translated: too many of their session's were waiting.",
               lambda: [f"flashcaption_translations_skipped_total {self.translations_skipped}"])
        metric("flashcaption_translations_failed_total", "counter", "Translations whose decode raised.",
               lambda: [f"flashcaption_translations_failed_total {self.translations_failed}"])
        def by_shadow(name: str, counts: Counter[tuple[str, str]]) -> Callable[[], list[str]]:
            return lambda: [f"{name}{{{labels(language=k, model=m)}}} {n}" for (m, k), n in sorted(counts.items())]

        metric("flashcaption_shadow_finals_total", "counter", "Finals the shadow model (serve --shadow) decoded too, by language and shadow model.",
               by_shadow("flashcaption_shadow_finals_total", self.shadow_finals))
        metric("flashcaption_shadow_words_total", "counter", "Words of the finals the shadow model decoded too (the primary's), by language and shadow model.",
               by_shadow("flashcaption_shadow_words_total", self.shadow_words))
        metric("flashcaption_shadow_word_differences_total", "counter",
               "Word edit distance from the primary's finals to the shadow model's text, by language and shadow model: "
               "per 100 words, how much the two models disagree.", by_shadow("flashcaption_shadow_word_differences_total", self.shadow_differences))
        metric("flashcaption_final_latency_seconds", "histogram",
               "From the end of an utterance's audio (on arrival) to its final being sent.",
               lambda: self.final_latency.lines("flashcaption_final_latency_seconds"))
        return "\n".join(lines) + "\n"
