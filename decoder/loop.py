"""The token loop every autoregressive family shares: greedy decoding with one-pass draft
verification, and a batched beam search, both over a key-value cache and both under the guards
of :class:`decoder.api.DecodeLimits` (token budget, loop cut).

A family supplies only what differs, as a :class:`TokenGraph` (its decoder graph, how its cache
is cut, which tokens it allows, its end-of-text and its first-step rule) or, for the beam search,
a :class:`BatchGraph` (also: the cache rows that go on with each beam). The caches are the
family's own values: they stay on the model's device between calls unless the family moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from decoder.api import DecodeLimits

FeaturesT = TypeVar("FeaturesT", contravariant=True)  # a family's encoder output
CacheT = TypeVar("CacheT")  # a family's key-value cache


class TokenGraph(Protocol[FeaturesT, CacheT]):
    """A family's decoder, as the greedy loop uses it."""

    eot: int  # end-of-text

    def run(self, features: FeaturesT, rows: Sequence[Sequence[int]], cache: CacheT | None, offset: int) -> tuple[np.ndarray, CacheT]:
        """The decoder on token ``rows`` (one per hypothesis, all of one length) after the
        ``offset`` positions held in ``cache`` (None: none). Returns log-probabilities indexed by
        row, position, token (position i predicts the token after ``rows[r][i]``) and the cache
        grown by the rows."""
        ...

    def cut(self, cache: CacheT, length: int) -> CacheT:
        """The cache of its first ``length`` positions only."""
        ...

    def allowed(self, log_probs: np.ndarray, at_start: bool) -> np.ndarray:
        """``log_probs`` (one position) with the tokens that may not come next removed;
        ``at_start``: nothing has been written yet (nothing forced, nothing chosen)."""
        ...

    def first_step(self, log_probs: np.ndarray) -> tuple[np.ndarray, bool] | None:
        """The family's rule for the first token when nothing is forced, given the allowed
        log-probabilities: those to choose from, and whether they overrule the model's own
        first choice; or None to end with no text."""
        ...


class BatchGraph(TokenGraph[FeaturesT, CacheT], Protocol[FeaturesT, CacheT]):
    """A decoder that runs several hypotheses as one batch, for the beam search."""

    def select(self, cache: CacheT, rows: Sequence[int]) -> CacheT:
        """The cache of the given rows (a row may be taken more than once), in that order."""
        ...


@dataclass
class Decoded:
    """What a search chose after the forced tokens."""

    tokens: list[int]
    scores: list[float]  # the log-probability of each token
    first_call: np.ndarray  # log-probabilities of every position of the first decoder call
    overruled: bool = False  # the family's first-step rule overruled the model's first choice
    stopped: str = "end"  # why decoding stopped: "end" (end-of-text), "loop" or "budget"


def greedy(
    graph: TokenGraph[FeaturesT, CacheT],
    features: FeaturesT,
    start: Sequence[int],
    forced: Sequence[int],
    draft: Sequence[int],
    budget: int,
    limits: DecodeLimits,
) -> Decoded:
    """Greedy decoding after ``start + forced`` (at most ``budget`` tokens after ``start``).

    The ``draft`` (an earlier hypothesis) is checked in the first call, which scores every one
    of its tokens: where the model's own greedy choice agrees, the draft token is what greedy
    decoding would have produced, so the result equals plain greedy decoding, and only the rest
    is decoded step by step."""
    forced = list(forced)
    draft = list(draft)[: max(0, budget - len(forced))]
    log_probs, cache = graph.run(features, [[*start, *forced, *draft]], None, 0)
    first_call = log_probs[0]
    first = len(start) - 1 + len(forced)  # the position predicting the first token after the forced ones
    chosen: list[int] = []
    while len(chosen) < len(draft) and int(graph.allowed(first_call[first + len(chosen)], not forced and not chosen).argmax()) == draft[len(chosen)]:
        chosen.append(draft[len(chosen)])
    scores = [float(first_call[first + i, t]) for i, t in enumerate(chosen)]
    row = first_call[first + len(chosen)]
    offset = len(start) + len(forced) + len(chosen)
    if len(chosen) < len(draft):
        cache = graph.cut(cache, offset)  # it holds the rejected draft tokens too
    overruled = False
    stopped = "budget"
    while len(forced) + len(chosen) < budget:
        at_start = not forced and not chosen
        row = graph.allowed(row, at_start)
        if at_start:
            opened = graph.first_step(row)
            if opened is None:
                stopped = "end"
                break
            row, overruled = opened
        token = int(row.argmax())
        if token == graph.eot:
            stopped = "end"
            break
        chosen.append(token)
        scores.append(float(row[token]))
        if limits.cut_loop(forced, chosen, scores, budget):
            stopped = "loop"
            break
        step, cache = graph.run(features, [[token]], cache, offset)
        offset += 1
        row = step[0, -1]
    return Decoded(chosen, scores, first_call, overruled, stopped)


def beam_search(
    graph: BatchGraph[FeaturesT, CacheT],
    features: FeaturesT,
    start: Sequence[int],
    forced: Sequence[int],
    budget: int,
    width: int,
    limits: DecodeLimits,
) -> Decoded | None:
    """Beam search after ``start + forced``. Greedy decoding commits to a word on its own
    score ("Segunda informação", -0.30 per token) where the sentence it starts can be far
    less likely than another ("Segundo informações", -0.18). As Whisper's reference decoder
    does, each step extends every live hypothesis by its ``width + 1`` likeliest tokens and
    keeps the ``width`` best, and the search stops once ``width`` hypotheses have ended.

    The likeliest ended hypothesis wins: the sum of its log-probabilities, end-of-text
    included. Not the mean per token, as the reference ranks them: a sentence read twice is
    as sure of its second copy as of its first, and won on the mean ("Many people don't ...
    fly. Many peoples don't ... fly."); the sum makes the copy pay for every token, and
    ending before the speech does pays the end-of-text the model does not expect. The sum
    also lets the search drop a hypothesis as soon as it can no longer win.

    None when no hypothesis ended: the search ran into loops (which score well per token:
    the model is sure of what it repeats) or out of tokens, and greedy decoding, with its
    loop guard, reads such audio better. The live hypotheses run as one batch."""
    forced = list(forced)
    log_probs, cache = graph.run(features, [[*start, *forced]], None, 0)
    first_call = log_probs[0]
    rows = first_call[-1:]
    live: list[tuple[list[int], list[float], float]] = [([], [], 0.0)]  # tokens, scores, sum
    ended: list[tuple[list[int], list[float], float]] = []  # at end-of-text, which is scored too
    offset = len(start) + len(forced)
    overruled = False
    while live and len(ended) < width:
        extensions = []  # (sum, parent index, token, log-probability)
        for index, (tokens, _, total) in enumerate(live):
            at_start = not forced and not tokens
            row = graph.allowed(rows[index], at_start)
            if at_start:
                opened = graph.first_step(row)
                if opened is None:
                    continue
                row, overruled = opened
            for token in np.argpartition(-row, width + 1)[: width + 1]:
                if np.isfinite(row[token]):
                    extensions.append((total + float(row[token]), index, int(token), float(row[token])))
        extensions.sort(key=lambda e: -e[0])
        grown, parents = [], []
        for total, index, token, score in extensions:
            tokens, scores, _ = live[index]
            if token == graph.eot:
                ended.append((tokens, scores, total))
                continue
            tokens, scores = [*tokens, token], [*scores, score]
            # Strict here (no allowance for audio still to read): a beam keeps whatever loop
            # scores well, and noise read as "4-4-3-4-4-4..." would end as a hypothesis.
            if limits.cut_loop(forced, tokens, scores) or len(forced) + len(tokens) >= budget:
                continue  # a loop, or out of tokens: not a reading of the audio
            grown.append((tokens, scores, total))
            parents.append(index)
            if len(grown) == width:
                break
        # Log-probabilities are never positive: a hypothesis no likelier than one that has
        # ended can only fall further behind it, so it is dropped (the same winner, sooner).
        best = max((total for _, _, total in ended), default=-np.inf)
        kept = [i for i, (_, _, total) in enumerate(grown) if total > best]
        live, parents = [grown[i] for i in kept], [parents[i] for i in kept]
        if live and len(ended) < width:
            step, cache = graph.run(features, [[tokens[-1]] for tokens, _, _ in live], graph.select(cache, parents), offset)
            rows = step[:, -1]
            offset += 1
    if not ended:
        return None
    tokens, scores, _ = max(ended, key=lambda e: e[2])
    return Decoded(tokens, scores, first_call, overruled)
