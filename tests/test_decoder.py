"""The Moonshine family on real speech: accuracy, guards, prefix forcing, weight folding."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from decoder.api import SAMPLE_RATE, DecodeLimits, DecodeOptions, Word, repeated_phrase_start, repetition_start, transcribe
from decoder.models import MODELS
from decoder.moonshine import MoonshineModel
from streaming.scoring import error_rate
from tests.conftest import CLIPS, ENGLISH, NON_SPEECH


def test_word_error_rate_on_real_english(model):
    pairs = [(clip.reference, transcribe(model, clip.audio).text) for clip in ENGLISH]
    wer = error_rate(pairs)
    print(f"offline WER on {len(pairs)} clips: {wer:.3f}")
    assert wer < 0.08, pairs


def test_forced_prefix_is_kept_and_continued(model):
    clip = CLIPS["en_ls_1995-1837-0001"]
    free = transcribe(model, clip.audio)
    prefix = free.words[:6]
    forced = transcribe(model, clip.audio, prefix=prefix)
    assert forced.words[:6] == prefix
    assert forced.text == free.text


def test_a_forced_word_comes_back_as_given_when_punctuation_follows(model):
    check_forced_word_before_punctuation(model, CLIPS["en_ls_1995-1837-0001"])


def check_forced_word_before_punctuation(model, clip) -> None:
    """Partials force the words they confirmed; the model may follow the last one with
    punctuation ("life" then "."). That token must not merge into the forced word: the word
    would no longer equal the confirmed one, and the partial showed it twice ("life life.")."""
    free = transcribe(model, clip.audio, options=DecodeOptions(language=clip.language))
    at = next(i for i, w in enumerate(free.words[:-1]) if len(w.tokens) > 1 and not model.tokenizer.text(w.tokens[-1:]).strip().isalnum())
    bare = Word(model.tokenizer.text(free.words[at].tokens[:-1]), free.words[at].tokens[:-1])
    prefix = (*free.words[:at], bare)
    forced = transcribe(model, clip.audio, prefix=prefix, options=DecodeOptions(language=clip.language))
    assert forced.words[: len(prefix)] == prefix
    assert forced.text == free.text


def test_a_draft_is_kept_only_where_the_model_agrees(model):
    clip = CLIPS["en_fleurs_test_004"]
    free = transcribe(model, clip.audio)
    other = transcribe(model, CLIPS["en_arctic_a0024"].audio)
    for draft in (free.words, free.words[:4], free.words[:3] + other.words[:5], other.words, free.words + other.words[:2]):
        assert transcribe(model, clip.audio, draft=draft).words == free.words


def test_a_wrong_prefix_is_kept_verbatim(model):
    # What callers confirmed is never rewritten by the model, even when it is wrong.
    clip = CLIPS["en_arctic_a0024"]
    wrong = transcribe(model, CLIPS["en_jfk_inaugural"].audio).words[:3]
    hyp = transcribe(model, clip.audio, prefix=wrong)
    assert hyp.words[:3] == wrong


@pytest.mark.parametrize("name", sorted(NON_SPEECH))
def test_no_words_from_non_speech(model, name):
    audio = NON_SPEECH[name]()
    for start in (0, 8 * SAMPLE_RATE):
        hyp = transcribe(model, audio[start : start + 6 * SAMPLE_RATE])
        assert hyp.text == "", (name, hyp.text)


def test_token_budget_bounds_output_on_cut_audio(model):
    # Half a second of a word cut mid-way: the budget stops the decoder.
    clip = CLIPS["en_jfk_inaugural"]
    hyp = transcribe(model, clip.audio[: SAMPLE_RATE // 2])
    assert len(hyp.tokens) <= model.limits.budget(0.5)


def test_repetition_start():
    assert repetition_start([5, 1, 2, 1, 2, 1, 2]) == 3
    assert repetition_start([7, 7, 7]) == 1
    assert repetition_start([1, 2, 3, 1, 2, 3]) is None  # a short phrase twice can be speech
    assert repetition_start([9, 1, 2, 3, 4, 1, 2, 3, 4]) == 5  # a long phrase twice is a loop
    assert repetition_start([1, 2, 3, 4, 5, 1, 2, 3, 4]) is None
    assert repetition_start([]) is None
    sentence = list(range(100, 125))  # a whole sentence read twice is a loop too
    assert repetition_start([1, 2, *sentence, *sentence]) == 2 + len(sentence)
    assert repetition_start([1, 2, *sentence, *sentence[:-1]]) is None


def test_a_phrase_said_twice_in_a_row_is_found_whatever_its_case():
    def words(text: str) -> list[Word]:
        return [Word(" " + w, (i,)) for i, w in enumerate(text.split())]

    # Seen with whisper-base int8: the sentence read again, its first word recased.
    looped = words("However, due to the slow communication channels, however, due to the slow communication channels,")
    assert repeated_phrase_start(looped) == 7
    # People repeat a few words ("I want to, I want to go"); the token guard takes short loops.
    assert repeated_phrase_start(words("I want to, I want to go")) is None
    assert repeated_phrase_start(words("no no no no")) is None
    assert repeated_phrase_start(words("a b c d , A b c d e")) == 5  # punctuation words do not count

    chosen, scores = [t for w in looped for t in w.tokens], [-0.1] * len(looped)
    kept = DecodeLimits().cut_repeated_phrase(looped, chosen, scores)
    assert kept == tuple(looped[:7]) and chosen == [0, 1, 2, 3, 4, 5, 6] and len(scores) == 7


def test_repetition_guard_cuts_a_loop(model):
    # A tight budget guard alone would let a loop through; the repetition guard stops it.
    limits = DecodeLimits(tokens_per_second=50, max_tokens=400)
    looping = MoonshineModel(
        model.name, *_paths(), limits=limits
    )
    audio = np.tile(CLIPS["en_arctic_a0024"].audio[: int(0.6 * SAMPLE_RATE)], 8)
    hyp = transcribe(looping, audio)
    assert repetition_start(hyp.tokens, limits.repeat_ngram_max, limits.repeat_times, limits.repeat_phrase_tokens) is None
    assert len(hyp.tokens) < 60


def _paths():
    from decoder.models import prepare_moonshine

    spec = MODELS["moonshine-base-en"]
    prepared = prepare_moonshine(spec)
    return prepared / "encoder.onnx", prepared / "decoder.onnx", spec.source_dir() / "tokenizer.bin"


def test_folded_float32_weights_give_the_same_tokens_as_the_shipped_model(model):
    """decoder/optimize.py must not change what the model says."""
    spec = MODELS["moonshine-base-en"]
    source = spec.source_dir()
    shipped = MoonshineModel(
        "shipped", source / "encoder_model.ort", source / "decoder_model_merged.ort", source / "tokenizer.bin"
    )
    for clip_id in ("en_arctic_a0024", "en_librivox_sns01_0880"):
        audio = CLIPS[clip_id].audio
        assert transcribe(shipped, audio).tokens == transcribe(model, audio).tokens


def test_io_binding_keeps_the_cache_in_ort_values(model):
    features = model.encode(CLIPS["en_arctic_a0024"].audio)
    assert isinstance(features.hidden, ort.OrtValue)
    log_probs, cache = model.run(features, [[1, 1063]], None, 0)
    assert log_probs.shape[:2] == (1, 2)  # one row per input position
    assert len(cache) == len(model._past_names) and all(isinstance(v, ort.OrtValue) for v in cache.values())
    next_log_probs, grown = model.run(features, [[int(log_probs[0, -1].argmax())]], cache, 2)
    assert next_log_probs.shape == (1, 1, log_probs.shape[2])
    assert all(isinstance(v, ort.OrtValue) for v in grown.values())
    # Cached steps ask only for the logits and the self-attention cache: the cross-attention
    # cache of the first call is bound again as it is.
    renewed = {name for name in grown if grown[name] is not cache[name]}
    assert renewed == {name.replace("present.", "past_key_values.") for name in model._self_attention} and len(renewed) == 16


def test_what_moonshine_cannot_do_is_refused(model):
    features = model.encode(CLIPS["en_arctic_a0024"].audio)
    with pytest.raises(ValueError, match="beam"):
        model.decode(features, options=DecodeOptions(beam_size=5))
    with pytest.raises(ValueError, match="English only"):
        model.decode(features, options=DecodeOptions(language="fr"))
    with pytest.raises(ValueError, match="English only"):
        model.decode(features, options=DecodeOptions(candidates=("de", "fr")))
    assert model.decode(features, options=DecodeOptions(candidates=("en", "fr"))).text == model.decode(features).text
