"""Context biasing: the term scoring, its limits, and the real model steered by it."""

from __future__ import annotations

import json

import pytest

from decoder.api import DecodeOptions, transcribe
from decoder.context import (
    MAX_TERMS,
    ContextError,
    MatchState,
    Term,
    TermMatcher,
    load_context_file,
    parse_context,
    variants,
)
from streaming import protocol
from streaming.evaluation.bench import said
from streaming.protocol import ProtocolError
from tests.conftest import CLIPS, NON_SPEECH
from tests.test_server import finals, publish

HESTER = CLIPS["en_ls_1221-135766-0002f"]  # "... affected Hester Prynne less with hope ..."
DISTRACTORS = ["Reykjavik", "Kubernetes", "Esther Prince", "Szczecin", "Qwen3-ASR", "Okonkwo", "Tchaikovsky"]


def advance(matcher: TermMatcher, pieces: list[str]) -> list[float]:
    """The fused bonus after each piece."""
    state, scores = MatchState(), []
    for piece in pieces:
        state = matcher.advance(state, piece)
        scores.append(state.score)
    return scores


# -- the prefix tree's scoring ---------------------------------------------------------------
def test_each_character_of_a_term_earns_a_bonus_kept_when_the_word_ends():
    matcher = TermMatcher([Term("Hester Prynne")], bonus_per_char=0.5)
    scores = advance(matcher, [" Hest", "er", " Pr", "yn", "ne", " less"])
    assert scores[:5] == sorted(scores[:5]) and scores[0] > 0
    assert scores[4] == pytest.approx(0.5 * len("Hester Prynne"))
    assert scores[5] == scores[4], "a finished term keeps its bonus"


def test_a_broken_partial_match_gets_its_bonus_taken_back():
    matcher = TermMatcher([Term("Hester Prynne")])
    scores = advance(matcher, [" Hest", "er", " Pr", "inn", " less"])
    assert scores[2] > 0
    assert scores[3] == 0.0, "the bonus of 'Hester Pr' is taken back when 'inn' breaks the match"
    assert scores[4] == 0.0
    # A term that is only the start of a longer word is no match either.
    assert advance(TermMatcher([Term("Byron")]), [" By", "ron", "ic"])[-1] == 0.0
    # Ending the text inside a term earns nothing.
    state = MatchState()
    for piece in [" Hest", "er", " Pr"]:
        state = matcher.advance(state, piece)
    assert matcher.finish(state) == 0.0


def test_the_bonus_does_not_depend_on_how_the_model_splits_the_term():
    matcher = TermMatcher([Term("Sintra")])
    whole = advance(matcher, [" Sintra", ","])[-1]
    split = advance(matcher, [" S", "in", "t", "ra", ","])[-1]
    assert whole == split > 0


def test_case_and_spacing_variants_match_with_the_term_boost():
    assert {" qwen3 asr", " Qwen3-ASR", " qwen3-asr"} <= variants("Qwen3-ASR")
    matcher = TermMatcher([Term("Qwen3-ASR", boost=2.0), Term("sintra")])
    assert advance(matcher, [" qwen", "3", " asr", "."])[-1] == pytest.approx(2.0 * 0.5 * len("qwen3 asr"))
    assert advance(matcher, [" Sintra", "."])[-1] == pytest.approx(0.5 * len("Sintra"))
    assert advance(matcher, [" Sintras", " x"])[-1] == 0.0, "a longer word is not the term"


# -- parsing and limits ----------------------------------------------------------------------
def test_context_forms():
    assert parse_context(None) is None and parse_context("") is None
    text = parse_context("Hester Prynne, Qwen3-ASR; Reykjavík\nA talk about the history of printing in the Netherlands and beyond")
    assert [t.text for t in text.terms] == ["Hester Prynne", "Qwen3-ASR", "Reykjavík"], "a sentence is prompt text, not a term"
    weighted = parse_context({"terms": [{"text": "Qwen3-ASR", "boost": 2.0}, "Hester Prynne"]})
    assert weighted.terms == (Term("Qwen3-ASR", 2.0), Term("Hester Prynne", 1.0))
    assert parse_context('{"terms": ["Sintra"]}').terms == (Term("Sintra"),), "JSON in a query parameter"


@pytest.mark.parametrize(
    "value, too_large, words",
    [
        ({"terms": [f"term{i}" for i in range(MAX_TERMS + 1)]}, True, "at most"),
        ({"terms": ["x" * 61]}, False, "too long"),
        ({"terms": ["one two three four five six seven"]}, False, "too long"),
        ({"terms": [{"text": "Sintra", "boost": 9}]}, False, "boost"),
        ({"terms": [{"text": "Sintra", "boost": "high"}]}, False, "boost"),
        ({"terms": [{"txt": "Sintra"}]}, False, "each context term"),
        ({"words": ["Sintra"]}, False, "context must be"),
        ("y" * 2001, True, "longer than"),
        ("{not json", False, "JSON"),
    ],
)
def test_limits_are_clear_errors(value, too_large, words):
    with pytest.raises(ContextError, match=words) as caught:
        parse_context(value)
    assert caught.value.too_large == too_large
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_client_message(json.dumps({"type": "config", "context": value}))
    assert refused.value.code == ("too_large" if too_large else "bad_request")


def test_context_file_forms(tmp_path):
    (tmp_path / "all.txt").write_text("Hester Prynne, Sintra\n")
    assert [t.text for t in load_context_file(str(tmp_path / "all.txt"))["*"].terms] == ["Hester Prynne", "Sintra"]
    (tmp_path / "rooms.json").write_text(json.dumps({"rooms": {"keynote": {"terms": ["Qwen3-ASR"]}, "*": "Sintra"}}))
    rooms = load_context_file(str(tmp_path / "rooms.json"))
    assert rooms["keynote"].terms == (Term("Qwen3-ASR"),) and rooms["*"].terms == (Term("Sintra"),)
    (tmp_path / "bad.json").write_text('{"rooms": 3}')
    with pytest.raises(ContextError):
        load_context_file(str(tmp_path / "bad.json"))


# -- the real model --------------------------------------------------------------------------
def test_a_name_comes_out_spelled_as_the_context_says(model):
    plain = transcribe(model, HESTER.audio).text
    assert "Prynne" not in plain, f"the model alone already spells it right: {plain!r}"
    steered = transcribe(model, HESTER.audio, options=DecodeOptions(context=parse_context({"terms": ["Hester Prynne", *DISTRACTORS]}))).text
    assert "Hester Prynne" in steered, steered
    # Only the name changed: the rest reads as without context.
    assert said("less with hope than apprehension", steered)


def test_context_never_appears_where_nobody_said_it(model):
    context = parse_context({"terms": DISTRACTORS + ["Hester Prynne", "Sintra", "Lord Byron"], "text": "Keynote by Ada"})
    for name, make in NON_SPEECH.items():
        heard = transcribe(model, make()[: 16000 * 8], options=DecodeOptions(context=context)).text
        assert heard == "", f"{name}: {heard!r}"
    for clip in (CLIPS["en_ls_1995-1837-0001"], CLIPS["en_jfk_inaugural"], CLIPS["en_arctic_a0024"]):
        heard = transcribe(model, clip.audio, options=DecodeOptions(context=context)).text
        for term in context.terms:
            assert not said(term.text, heard), f"{term.text!r} invented in {clip.id}: {heard!r}"
        assert "Keynote" not in heard and "Ada" not in heard


def test_unrelated_terms_do_not_change_what_is_heard(model):
    from streaming.scoring import error_counts

    context = parse_context({"terms": DISTRACTORS})
    for clip in (CLIPS["en_ls_1995-1837-0001"], CLIPS["en_fleurs_test_004"], CLIPS["en_librivox_sns01_0880"]):
        plain = error_counts(clip.reference, transcribe(model, clip.audio).text)[0]
        biased = error_counts(clip.reference, transcribe(model, clip.audio, options=DecodeOptions(context=context)).text)[0]
        assert biased <= plain, clip.id


def test_server_applies_query_config_and_room_default_context(server, model, tmp_path):
    context = json.dumps({"terms": ["Hester Prynne", *DISTRACTORS]})
    from urllib.parse import quote

    messages, _ = publish(server.url, HESTER.audio, f"room=ctx-query&context={quote(context)}")
    assert "Hester Prynne" in " ".join(m["text"] for m in finals(messages))
    # Without context the same stream spells it as the model alone does.
    messages, _ = publish(server.url, HESTER.audio, "room=ctx-none")
    assert "Prynne" not in " ".join(m["text"] for m in finals(messages))

    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread

    config = ServerConfig(port=0, data_dir=tmp_path, room_contexts={"keynote": parse_context("Hester Prynne")})
    running = ServerThread(CaptionServer(config, model)).start()
    try:
        messages, _ = publish(running.url, HESTER.audio, "room=keynote")
        assert "Hester Prynne" in " ".join(m["text"] for m in finals(messages)), "the room's default context applies"
        messages, _ = publish(running.url, HESTER.audio, "room=other")
        assert "Prynne" not in " ".join(m["text"] for m in finals(messages)), "only in its room"
    finally:
        running.stop()


def test_a_context_nested_deeper_than_json_reads_is_a_clear_error():
    with pytest.raises(ContextError, match="not valid JSON"):
        parse_context('{"text": ' + "[" * 5000)
