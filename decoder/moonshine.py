"""Moonshine (encoder-decoder on the raw 16 kHz waveform): its tokenizer, its encoder, its
decoder graph as :class:`decoder.loop.TokenGraph` (greedy decoding with draft verification runs
in ``decoder/loop.py``), its first-step rule, and the context-biased beam search.

The decoder is the "merged" export: one graph with an ``If`` on ``use_cache_branch``. The first
call (no cache) takes BOS plus any forced prefix at once and returns the self-attention cache
and the cross-attention cache; later calls take one token and the caches. The caches stay in
ONNX Runtime values bound with I/O binding, so on a GPU they never leave the device; only the
logits come back to the host.

Over 400 lines because the context-biased beam search is Moonshine's alone (Whisper steers
spelling with its prompt instead): it branches only where a term is at stake and batches beams
whose caches come from different calls, which the shared loop does not express; and because
the steps of concurrent decodes are padded into one batch here (decoder/batching.py runs them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from decoder.api import SAMPLE_RATE, DecodeLimits, DecodeOptions, Hypothesis, Word, with_vocabulary
from decoder.batching import ComputeLane, StepBatcher
from decoder.context import Context, MatchState, TermMatcher
from decoder.loop import greedy
from decoder.optimize import CROSS_ATTENTION_BIAS, POSITION_IDS, SELF_ATTENTION_BIAS
from decoder.runtime import RuntimeOptions, create_session

log = logging.getLogger(__name__)

BOS, EOS = 1, 2
_SPACE = "\u2581".encode()  # SentencePiece's word-start marker


class MoonshineTokenizer:
    """``tokenizer.bin``: token pieces in id order, each length-prefixed (1 byte below 128,
    else 2 bytes: low 7 bits first). Byte-fallback pieces are stored as the raw byte."""

    def __init__(self, path: Path):
        raw = path.read_bytes()
        pieces: list[bytes] = []
        i = 0
        while i < len(raw):
            first = raw[i]
            if first < 128:
                length, i = first, i + 1
            else:
                length, i = raw[i + 1] * 128 + first - 128, i + 2
            pieces.append(raw[i : i + length])
            i += length
        self.pieces = pieces
        self.special = {0, BOS, EOS}
        self._trie: dict | None = None

    def piece_text(self, token: int) -> str | None:
        """The text a token adds (word-start mark as a space); None for special and byte pieces."""
        if token in self.special or token >= len(self.pieces):
            return None
        try:
            return self.pieces[token].replace(_SPACE, b" ").decode("utf-8")
        except UnicodeDecodeError:
            return None

    def tokens_spelling_start_of(self, text: str) -> list[int]:
        """Every token whose text is a prefix of ``text`` (a walk down a trie of the pieces)."""
        if self._trie is None:
            trie: dict = {}
            for token in range(len(self.pieces)):
                piece = self.piece_text(token)
                if piece:
                    node = trie
                    for char in piece:
                        node = node.setdefault(char, {})
                    node.setdefault(None, []).append(token)
            self._trie = trie
        found: list[int] = []
        node = self._trie
        for char in text:
            child = node.get(char)
            if child is None:
                break
            node = child
            found.extend(node.get(None, ()))
        return found

    def __len__(self) -> int:
        return len(self.pieces)

    def words(self, tokens: Sequence[int]) -> tuple[Word, ...]:
        """Group tokens into words: a word starts at a piece that begins with the space mark."""
        groups: list[list[int]] = []
        for token in tokens:
            if token in self.special or token >= len(self.pieces):
                continue
            if not groups or self.pieces[token].startswith(_SPACE):
                groups.append([token])
            else:
                groups[-1].append(token)
        return tuple(Word(self.text(g), tuple(g)) for g in groups)

    def text(self, tokens: Sequence[int]) -> str:
        data = b"".join(self.pieces[t] for t in tokens if t not in self.special and t < len(self.pieces))
        return data.replace(_SPACE, b" ").decode("utf-8", errors="replace")


# The decoder's cache, by input name (past_key_values.*): on the device, or on the host once cut.
MoonshineCache = dict[str, ort.OrtValue | np.ndarray]


def _past(name: str) -> str:
    """The input name for an output of the cache (present.* -> past_key_values.*)."""
    return name.replace("present.", "past_key_values.")


def _host(value: ort.OrtValue | np.ndarray) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


class _Arena:
    """Reused buffers for the batch's padded caches. Fresh arrays of tens of megabytes cost
    more in page faults than the copy itself (measured: 24 ms to stack four 10 s rows into
    new arrays); one batch runs at a time, so each name's buffer is free again at the next.
    They keep the largest batch seen: at most ``max_rows`` rows of the longest utterance."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}

    def padded(self, name: str, values: Sequence[np.ndarray], length: int) -> np.ndarray:
        """One-row caches [1, heads, n, dim] stacked as rows and padded to ``length`` positions
        with zeros (masked, but they must be finite: zero weight times NaN is NaN)."""
        first = values[0]
        shape = (len(values), first.shape[1], length, first.shape[3])
        size = int(np.prod(shape))
        flat = self._flat.get(name)
        if flat is None or flat.size < size:
            flat = self._flat[name] = np.empty(size + size // 2, np.float32)  # room to grow
        out = flat[:size].reshape(shape)
        for row, value in enumerate(values):
            out[row, :, : value.shape[2]] = value[0]
            out[row, :, value.shape[2] :] = 0.0
        return out


_MASKED = -1e9  # an attention bias that leaves a padded position out of the softmax


@dataclass
class _Step:
    """One decode's next token, for the step batcher."""

    features: MoonshineFeatures
    token: int
    cache: MoonshineCache
    offset: int


@dataclass
class _Stacked:
    """Several rows' cross-attention caches as one batch, and each row's real length."""

    values: dict[str, np.ndarray]
    frames: list[int]


@dataclass
class MoonshineFeatures:
    hidden: ort.OrtValue  # encoder output, on the model's device
    duration: float


class MoonshineModel:
    """The Moonshine family behind :class:`decoder.api.SpeechModel`."""

    languages: tuple[str, ...] = ("en",)

    def __init__(
        self,
        name: str,
        encoder_path: Path,
        decoder_path: Path,
        tokenizer_path: Path,
        runtime: RuntimeOptions = RuntimeOptions(),
        limits: DecodeLimits | None = None,
    ):
        self.name = name
        self.translates = False  # English speech to English text only
        self.encoder, self.device = create_session(encoder_path, runtime)
        self.decoder, _ = create_session(decoder_path, runtime)
        self.tokenizer = MoonshineTokenizer(tokenizer_path)
        # Digits are tokens of their own here: "627,000" ends in three "0" tokens.
        self.limits = with_vocabulary(limits or DecodeLimits(), [self.tokenizer.piece_text(t) for t in range(len(self.tokenizer))])
        self._past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self._present_names = [o.name for o in self.decoder.get_outputs() if o.name.startswith("present.")]
        self._self_attention = [n for n in self._present_names if ".decoder." in n]
        first = next(i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values."))
        self._heads, self._head_dim = int(first.shape[1]), int(first.shape[3])
        # Prepared to take rows of different lengths (decoder/optimize.py): one stream's rows
        # all share one length, so they get the neutral inputs.
        self._row_inputs = POSITION_IDS in {i.name for i in self.decoder.get_inputs()}
        # ...so that steps of concurrent decodes run as one batch; every call takes turns.
        self.lane = ComputeLane(runtime.calls_at_once)
        self.steps: StepBatcher[_Step, tuple[np.ndarray, MoonshineCache]] = StepBatcher(self._step_alone, self._steps_together, self.lane)
        self._cross_names = [n for n in self._past_names if ".encoder." in n]
        self._last_cross: tuple[tuple[int, ...], list, _Stacked] | None = None
        self._arena = _Arena()
        self._hidden_size = int(next(i for i in self.decoder.get_inputs() if i.name == "encoder_hidden_states").shape[-1])
        vocab = int(self.decoder.get_outputs()[0].shape[-1])
        # The output layer is wider than the vocabulary; padding ids and <unk> are never emitted.
        self._suppress = np.zeros(vocab, dtype=np.float32)
        self._suppress[len(self.tokenizer) :] = -np.inf
        self._suppress[0] = -np.inf
        # Context biasing (see decoder/context.py): beam width, bonus, and how unlikely a term's
        # token may be and still be considered.
        self.beam_width = 2  # measured: 4 finds no more terms here and costs 35% more
        self.bonus_per_char = 0.5
        self.bias_min_logprob = -8.0
        # An alternative this far behind the best hypothesis is dropped, term or not.
        self.bias_margin = 8.0
        self._matchers: dict[Context, tuple[TermMatcher, np.ndarray]] = {}
        self._matcher_lock = threading.Lock()

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, audio: np.ndarray) -> MoonshineFeatures:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        # The encoder's convolutions need a minimum length; pad very short audio with silence.
        if audio.shape[1] < SAMPLE_RATE // 4:
            audio = np.pad(audio, ((0, 0), (0, SAMPLE_RATE // 4 - audio.shape[1])))
        binding = self.encoder.io_binding()
        binding.bind_cpu_input("input_values", audio)
        binding.bind_output("last_hidden_state", self.device.kind, self.device.index)
        with self.lane.turn("encoder"):
            self.encoder.run_with_iobinding(binding)
        return MoonshineFeatures(binding.get_outputs()[0], audio.shape[1] / SAMPLE_RATE)

    # -- decoder graph (decoder/loop.py's TokenGraph) -----------------------------------------
    eot = EOS

    def run(
        self, features: MoonshineFeatures, rows: Sequence[Sequence[int]], cache: MoonshineCache | None, offset: int
    ) -> tuple[np.ndarray, MoonshineCache]:
        """The decoder on one row of tokens: without a cache (the first call, on BOS and any
        known tokens at once) it also returns the cross-attention cache, which later calls
        (the cache branch) reuse as it is. ``offset`` is implied by the cache's length.

        A single token after a cache is a step that other decodes' steps may join
        (decoder/batching.py)."""
        if cache is not None and self._row_inputs and len(rows) == 1 and len(rows[0]) == 1:
            return self.steps.run(_Step(features, rows[0][0], cache, offset))
        with self.lane.turn("decoder prompt" if cache is None else "decoder rows", rows=len(rows)):
            return self._run_bound(features, rows, cache, offset)

    def _run_bound(
        self, features: MoonshineFeatures, rows: Sequence[Sequence[int]], cache: MoonshineCache | None, offset: int
    ) -> tuple[np.ndarray, MoonshineCache]:
        """One decode's call, its values bound where they are (on a GPU they stay there);
        the caller holds the lane."""
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("input_ids", np.array(rows, dtype=np.int64))
        binding.bind_ortvalue_input("encoder_hidden_states", features.hidden)
        binding.bind_cpu_input("use_cache_branch", np.array([cache is not None]))
        frames = int(features.hidden.shape()[1])
        for name, value in self._neutral_row_inputs(len(rows), len(rows[0]), offset, frames).items():
            binding.bind_cpu_input(name, value)
        if cache is None:
            empty = np.zeros((len(rows), self._heads, 0, self._head_dim), dtype=np.float32)
            for name in self._past_names:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in cache.items():
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, value)
                else:
                    binding.bind_ortvalue_input(name, value)
        # The cache branch's copies of the cross-attention cache are not asked for at all.
        produced = self._present_names if cache is None else self._self_attention
        binding.bind_output("logits", "cpu")
        for name in produced:
            binding.bind_output(name, self.device.kind, self.device.index)
        self.decoder.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        grown = {**(cache or {}), **{_past(name): value for name, value in zip(produced, outputs[1:])}}
        return self._log_probs(outputs[0].numpy()), grown

    def _step_alone(self, step: _Step) -> tuple[np.ndarray, MoonshineCache]:
        return self._run_bound(step.features, [[step.token]], step.cache, step.offset)

    def _steps_together(self, steps: Sequence[_Step]) -> list[tuple[np.ndarray, MoonshineCache]]:
        """Several decodes' steps as one batch: each row at its own position, its cache padded
        to the longest and the padding masked; each row's results cut back out."""
        own = [{_past(n): _host(s.cache[_past(n)]) for n in self._self_attention} for s in steps]
        feeds = self.batch_feeds(list(zip(own, (s.token for s in steps))), self._cross_for(steps))
        outputs = self.decoder.run(["logits", *self._self_attention], feeds)
        longest = feeds[SELF_ATTENTION_BIAS].shape[-1] - 1
        log_probs = self._log_probs(outputs[0])
        results = []
        for row, (step, cache) in enumerate(zip(steps, own)):
            length = cache[_past(self._self_attention[0])].shape[2]
            grown = {
                _past(name): np.concatenate([value[row : row + 1, :, :length], value[row : row + 1, :, longest:]], axis=2)
                for name, value in zip(self._self_attention, outputs[1:])
            }
            results.append((log_probs[row : row + 1], {**step.cache, **grown}))
        return results

    def batch_feeds(self, rows: Sequence[tuple[dict[str, np.ndarray], int]], cross: _Stacked | None = None) -> dict[str, np.ndarray]:
        """The cache branch's inputs for one token after each row's own cache (host arrays):
        self-attention caches padded to the longest and audio to the longest, the padding
        masked. ``cross``: the rows' cross-attention caches already stacked (else stacked
        from ``rows``)."""
        if cross is None:
            self._last_cross = None  # its buffers are about to be written over
            cross = self._stack_cross([cache for cache, _ in rows])
        count = len(rows)
        lengths = [cache[_past(self._self_attention[0])].shape[2] for cache, _ in rows]
        longest, widest = max(lengths), max(cross.frames)
        bias_self = np.zeros((count, 1, 1, longest + 1), np.float32)
        bias_cross = np.zeros((count, 1, 1, widest), np.float32)
        for row, (length, frames) in enumerate(zip(lengths, cross.frames)):
            bias_self[row, 0, 0, length:longest] = _MASKED
            bias_cross[row, 0, 0, frames:] = _MASKED
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.array([[token] for _, token in rows], dtype=np.int64),
            # The cache branch never reads the audio's states (it has the cross-attention cache).
            "encoder_hidden_states": np.zeros((count, 1, self._hidden_size), np.float32),
            "use_cache_branch": np.array([True]),
            POSITION_IDS: np.array([[length] for length in lengths], dtype=np.int64),
            SELF_ATTENTION_BIAS: bias_self,
            CROSS_ATTENTION_BIAS: bias_cross,
            **cross.values,
        }
        for name in self._self_attention:
            feeds[_past(name)] = self._arena.padded(name, [cache[_past(name)] for cache, _ in rows], longest)
        return feeds

    def _stack_cross(self, caches: Sequence[MoonshineCache]) -> _Stacked:
        names = self._cross_names
        host = [{n: _host(c[n]) for n in names} for c in caches]
        frames = [c[names[0]].shape[2] for c in host]
        return _Stacked({n: self._arena.padded(n, [c[n] for c in host], max(frames)) for n in names}, frames)

    def _cross_for(self, steps: Sequence[_Step]) -> _Stacked:
        """The rows' cross-attention caches stacked: the same decodes tend to step together
        token after token, so the last stack is kept and used again while they do."""
        key = tuple(id(s.cache[self._cross_names[0]]) for s in steps)
        kept = self._last_cross
        if kept is not None and kept[0] == key:
            return kept[2]
        stacked = self._stack_cross([s.cache for s in steps])
        # The values are held with the stack, so their ids cannot be reused while it is kept.
        self._last_cross = (key, [s.cache[self._cross_names[0]] for s in steps], stacked)
        return stacked

    def _neutral_row_inputs(self, count: int, tokens: int, offset: int, frames: int) -> dict[str, np.ndarray]:
        """Every row at positions ``offset...``, attending to every cached and audio position."""
        if not self._row_inputs:
            return {}
        return {
            POSITION_IDS: np.broadcast_to(np.arange(offset, offset + tokens, dtype=np.int64), (count, tokens)).copy(),
            SELF_ATTENTION_BIAS: np.zeros((count, 1, 1, offset + tokens), dtype=np.float32),
            CROSS_ATTENTION_BIAS: np.zeros((count, 1, 1, frames), dtype=np.float32),
        }

    def cut(self, cache: MoonshineCache, length: int) -> MoonshineCache:
        """The self-attention cache cut to ``length`` positions (one trip through host memory);
        the cross-attention cache as it is."""
        cut = {_past(name): np.ascontiguousarray(_host(cache[_past(name)])[:, :, :length]) for name in self._self_attention}
        return {**cache, **cut}

    def allowed(self, log_probs: np.ndarray, at_start: bool) -> np.ndarray:
        """Every token the model can emit: the rest is suppressed in :meth:`_log_probs`."""
        return log_probs

    def first_step(self, log_probs: np.ndarray) -> tuple[np.ndarray, bool] | None:
        """Known quirk: on some real utterances (spoken digit strings among them) the first
        step prefers end-of-text although a word is plausible. On noise and music end-of-text
        takes nearly all the mass (alternatives below -7), so the runner-up is taken only when
        the model itself finds it plausible (and its words must then average well, see
        :meth:`decode`)."""
        if int(log_probs.argmax()) != EOS:
            return log_probs, False
        log_probs = log_probs.copy()
        log_probs[EOS] = -np.inf
        if log_probs.max() < self.limits.first_token_min_logprob:
            return None
        return log_probs, True

    def _log_probs(self, logits: np.ndarray) -> np.ndarray:
        logits = logits + self._suppress
        peak = logits.max(axis=-1, keepdims=True)
        return logits - (peak + np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True)))

    def decode(
        self, features: MoonshineFeatures, prefix: Sequence[Word] = (), draft: Sequence[Word] = (), options: DecodeOptions = DecodeOptions()
    ) -> Hypothesis:
        if options.task != "transcribe":
            raise ValueError(f"{self.name} transcribes English speech; it does not {options.task}")
        if options.beam_size > 1:
            raise ValueError(f"Moonshine decodes greedily (beam_size 1), not with a beam of {options.beam_size}; its beam search serves context terms only")
        if options.language not in (None, "en") or (options.candidates and "en" not in options.candidates):
            asked = options.language or ",".join(options.candidates)
            raise ValueError(f"Moonshine ({self.name}) transcribes English only, not {asked!r}")
        started = time.perf_counter()
        forced = [t for w in prefix for t in w.tokens]
        budget = self.limits.budget(features.duration)
        proposed = [t for w in draft for t in w.tokens]
        context = options.context
        rejected = None
        if context is not None and context.terms:
            # Biasing needs a search that can back out of a term: a beam search that branches
            # only where a term is at stake (sessions without context stay greedy and pay nothing).
            chosen, scores = self._beam_search(features, forced, proposed[: max(0, budget - len(forced))], budget, self._matcher(context))
            heard = self.tokenizer.words(chosen)
            words = self.limits.cut_repeated_phrase(heard, chosen, scores)
            cut = "repeated phrase" if len(words) < len(heard) else "budget" if len(forced) + len(chosen) >= budget else None
        else:
            with self.steps.decoding():
                found = greedy(self, features, [BOS], forced, proposed, budget, self.limits)
            chosen, scores = found.tokens, found.scores
            heard = self.tokenizer.words(chosen)
            words = self.limits.cut_repeated_phrase(heard, chosen, scores)
            cut = "repeated phrase" if len(words) < len(heard) else None if found.stopped == "end" else found.stopped
            if found.overruled and scores and np.mean(scores) < self.limits.override_min_avg_logprob:
                words, scores, cut, rejected = (), [], None, "unsure start"  # the model never believed in these words
        return Hypothesis(
            words=(*prefix, *words),
            language="en",
            avg_logprob=float(np.mean(scores)) if scores else 0.0,
            compute_seconds=time.perf_counter() - started,
            cut=cut,
            rejected=rejected,
        )

    # -- context biasing -----------------------------------------------------------------------
    def _matcher(self, context: Context) -> tuple[TermMatcher, np.ndarray]:
        """The context's term matcher and the tokens that can start one of its terms (cached:
        a session sends the same context for every decode)."""
        with self._matcher_lock:
            cached = self._matchers.get(context)
            if cached is None:
                matcher = TermMatcher(context.terms, self.bonus_per_char)
                starts = {t for form in matcher.forms for t in self.tokenizer.tokens_spelling_start_of(form)}
                cached = (matcher, np.array(sorted(starts), dtype=np.int64))
                if len(self._matchers) >= 64:
                    self._matchers.pop(next(iter(self._matchers)))
                self._matchers[context] = cached
            return cached

    def _run(self, ids: np.ndarray, hidden: np.ndarray, past: dict[str, np.ndarray], cached: bool) -> list[np.ndarray]:
        offset = next(v.shape[2] for n, v in past.items() if ".decoder." in n) if cached else 0
        rows = self._neutral_row_inputs(ids.shape[0], ids.shape[1], offset, hidden.shape[1])
        feeds = {"input_ids": ids, "encoder_hidden_states": hidden, "use_cache_branch": np.array([cached]), **past, **rows}
        with self.lane.turn("biased search", rows=ids.shape[0]):
            return self.decoder.run(["logits", *(self._present_names if not cached else self._self_attention)], feeds)

    def _beam_search(
        self,
        features: MoonshineFeatures,
        forced: list[int],
        draft: list[int],
        budget: int,
        biasing: tuple[TermMatcher, np.ndarray],
    ) -> tuple[list[int], list[float]]:
        """Beam search with shallow fusion, branching only where a term is at stake.

        Each candidate token scores its log-probability plus the change in term bonus it causes
        (negative when it breaks a partial match). The best candidate always goes on; others are
        kept (up to the beam width) only while they are inside a term match or have finished
        one, and are not hopelessly behind. So away from terms this is greedy decoding, which
        keeps accuracy and punctuation as without context, and the ``draft`` (the previous
        hypothesis) can be verified in the first decoder call: a beam that follows it reads its
        log-probabilities from that call instead of running a step. Returns the tokens after
        ``forced`` and their log-probabilities."""
        matcher, start_tokens = biasing
        width, floor, margin = self.beam_width, self.bias_min_logprob, self.bias_margin
        hidden = features.hidden.numpy()
        empty = np.zeros((1, self._heads, 0, self._head_dim), dtype=np.float32)
        outputs = self._run(np.array([[BOS, *forced, *draft]], dtype=np.int64), hidden, {n: empty for n in self._past_names}, False)
        draft_log_probs = self._log_probs(outputs[0][0])  # row i: the token after input i
        present = dict(zip(self._present_names, outputs[1:]))
        cross = {n.replace("present.", "past_key_values."): v for n, v in present.items() if ".encoder." in n}
        draft_past = {n.replace("present.", "past_key_values."): present[n] for n in self._self_attention}
        shared: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        state = MatchState()
        for token in forced:  # a term may have begun in the forced words
            state = matcher.advance(state, self.tokenizer.piece_text(token) or "\0")
        beams = [_Beam([], [], 0.0, state, on_draft=True)]
        finished: list[tuple[float, list[int], list[float]]] = []
        eos_overridden = False
        for step in range(max(0, budget - len(forced))):
            candidates = []  # (fused score, beam, token, match state after it)
            for beam in beams:
                lp = draft_log_probs[len(forced) + step] if beam.on_draft else beam.log_probs
                assert lp is not None  # computed by _extend for every beam off the draft
                if not forced and not step:
                    # As in greedy decoding: on noise and silence end-of-text takes nearly all
                    # the mass; a term bonus must not talk the model into words.
                    opened = self.first_step(lp)
                    if opened is None:
                        return [], []
                    lp, eos_overridden = opened
                beam.log_probs = lp
                options = set(np.argpartition(-lp, width)[:width].tolist())
                # A term's tokens are considered even when the model ranks them lower.
                options.update(start_tokens[lp[start_tokens] >= floor].tolist())
                for index, matched in beam.state.partial.items():
                    rest = matcher.forms[index][matched:]
                    options.update(t for t in self.tokenizer.tokens_spelling_start_of(rest) if lp[t] >= floor)
                for token in options:
                    if token == EOS:
                        after, gain = beam.state, matcher.finish(beam.state) - beam.state.score
                    elif np.isfinite(lp[token]):
                        after = matcher.advance(beam.state, self.tokenizer.piece_text(token) or "\0")
                        gain = after.score - beam.state.score
                    else:
                        continue
                    candidates.append((beam.total + float(lp[token]) + gain, beam, token, after))
            candidates.sort(key=lambda c: -c[0])
            best_score = candidates[0][0]
            kept: list[tuple[float, _Beam, int, MatchState]] = []
            plain = False
            for score, beam, token, after in candidates:
                if len(kept) == width or score < best_score - margin:
                    break
                at_stake = after.pending > 0 or after.banked > beam.state.banked
                if plain and not at_stake:
                    continue  # no term at stake: like greedy, only the best such path goes on
                plain = plain or not at_stake
                if token == EOS:
                    finished.append((score / (step + 1), beam.tokens, beam.scores))
                    if not kept:
                        break  # the best hypothesis ends here
                    continue
                if self.limits.loop_start(forced + beam.tokens + [token]) is not None:  # strict, as in any beam
                    continue
                kept.append((score, beam, token, after))
            if not kept or candidates[0][2] == EOS:
                break
            beams = self._extend(kept, step, len(forced), draft, draft_past, hidden, cross, shared)
        else:
            for beam in beams:  # out of budget: the live beams end here
                gain = matcher.finish(beam.state) - beam.state.score
                finished.append(((beam.total + gain) / max(1, len(beam.tokens)), beam.tokens, beam.scores))
        if not finished:
            return [], []
        _, tokens, scores = max(finished, key=lambda f: f[0])
        if eos_overridden and scores and np.mean(scores) < self.limits.override_min_avg_logprob:
            return [], []
        return tokens, scores

    def _extend(
        self,
        kept: list[tuple[float, _Beam, int, MatchState]],
        step: int,
        n_forced: int,
        draft: list[int],
        draft_past: dict[str, np.ndarray],
        hidden: np.ndarray,
        cross: dict[str, np.ndarray],
        shared: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]],
    ) -> list[_Beam]:
        """The next beams: those still following the draft need no decoder step; the others
        are run together in one batch, each from its parent's cache."""
        beams: list[_Beam] = []
        pending: list[tuple[_Beam, _Beam]] = []
        for score, parent, token, after in kept:
            assert parent.log_probs is not None  # set by the search before it extends
            child = _Beam(parent.tokens + [token], parent.scores + [float(parent.log_probs[token])], score, after)
            child.on_draft = parent.on_draft and step < len(draft) and draft[step] == token
            if not child.on_draft:
                pending.append((child, parent))
            beams.append(child)
        if pending:
            length = 1 + n_forced + step  # every parent's cache covers BOS, forced and `step` tokens
            feeds = {
                name: np.concatenate([
                    draft_past[name][:, :, :length] if parent.on_draft else parent.past[name] for _, parent in pending
                ])
                for name in draft_past
            }
            count = len(pending)
            if count not in shared:
                # The audio's states are the same for every beam: copied once per beam count.
                shared[count] = (np.repeat(hidden, count, axis=0), {n: np.repeat(v, count, axis=0) for n, v in cross.items()})
            batch_hidden, batch_cross = shared[count]
            ids = np.array([[child.tokens[-1]] for child, _ in pending], dtype=np.int64)
            outputs = self._run(ids, batch_hidden, {**feeds, **batch_cross}, True)
            log_probs = self._log_probs(outputs[0][:, -1])
            names = [n.replace("present.", "past_key_values.") for n in self._self_attention]
            for row, (child, _) in enumerate(pending):
                child.log_probs = log_probs[row]
                child.past = {name: value[row : row + 1] for name, value in zip(names, outputs[1:])}
        return beams


@dataclass
class _Beam:
    """One hypothesis of the biased search."""

    tokens: list[int]
    scores: list[float]  # the model's log-probability of each token
    total: float  # fused score: log-probabilities plus term bonus
    state: MatchState
    on_draft: bool = False  # its tokens are the draft's first ones: read its scores from the draft call
    log_probs: np.ndarray | None = None  # the next token's log-probabilities, when computed
    past: dict[str, np.ndarray] = field(default_factory=dict)  # its self-attention cache, when off the draft
