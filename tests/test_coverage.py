"""Placing a final's end inside its tail decoded alone (streaming/coverage.py): pure logic."""

from __future__ import annotations

from decoder.api import Word
from streaming.coverage import Coverage, coverage, echoes, head_coverage


def words(text: str) -> tuple[Word, ...]:
    return tuple(Word(" " + w, (index,)) for index, w in enumerate(text.split()))


def text(found: tuple[Word, ...]) -> str:
    return " ".join(w.text.strip() for w in found)


def test_a_tail_that_ends_as_the_final_does_covers_it() -> None:
    final = words("at year end we counted more subscribers than ever.")
    for tail in ("counted more subscribers than ever.", "more subscriber than ever", "than every", "ever", ""):
        found = coverage(final, words(tail))
        assert found.outcome == "covered" and not found.added, tail


def test_the_words_past_the_finals_end_are_the_ones_added() -> None:
    final = words("which is an increase of 7% compared to 2020, or roughly")
    found = coverage(final, words("ared to 2020, or roughly 43,000 more subscribers. Furthermore, our"))
    assert found.outcome == "extended" and text(found.added) == "43,000 more subscribers. Furthermore, our"


def test_a_last_word_cut_short_comes_again_whole() -> None:
    found = coverage(words("at year end we counted 627,0"), words("we counted 627,000 subscribers, which is"))
    assert found.outcome == "extended" and text(found.added) == "627,000 subscribers, which is"


def test_a_tail_that_meets_the_final_in_one_word_only_adds_nothing() -> None:
    # One word in common is no evidence of where the final ends: nothing is guessed.
    final = words("the results were good")
    found = coverage(final, words("good news for the shareholders today"))
    assert found.outcome == "unmatched" and not found.added
    # Nor a tail whose last word differs from the final's.
    final = words("more subscribers than ever")
    assert coverage(final, words("more subscribers than before")).outcome == "unmatched"
    assert coverage(words(""), words("something was said")).outcome == "unmatched"


def test_of_two_anchors_the_longer_wins_and_of_equal_ones_the_later() -> None:
    final = words("no no no we said no no")
    found = coverage(final, words("we said no no and then no no more"))
    assert text(found.added) == "and then no no more"
    found = coverage(words("it was the best of"), words("the best of times, it was the best of them all"))
    assert text(found.added) == "them all"


def test_words_before_the_finals_first_are_the_ones_a_head_adds() -> None:
    final = words("It was the first great sorrow of his life.")
    found = head_coverage(final, words("Ask what you can do for your country. It was the first gre"))
    assert found.outcome == "extended" and text(found.added) == "Ask what you can do for your country."
    assert head_coverage(final, words("It was the first great")).outcome == "covered"
    # A head that hears the first word differently cannot place the final: nothing is added.
    assert head_coverage(final, words("Is was the first great")) == head_coverage(final, words("Was the first")) == Coverage("unmatched")
    # The first word is not taken for a cut-short spelling, as the last one may be.
    assert head_coverage(words("It was fine"), words("Italy was fine")).outcome == "unmatched"


def characters(text: str) -> tuple[Word, ...]:
    return tuple(Word(char, (0,)) for char in text)  # Whisper's words in Chinese: one a character


def test_chinese_in_either_script_is_placed_alike() -> None:
    # Whisper wrote the final in traditional characters and its tail, decoded alone, in simplified.
    final = characters("當然也是金屬")
    assert coverage(final, characters("当然也是金属")).outcome == "covered"
    found = coverage(final, characters("也是金属和银"))
    assert found.outcome == "extended" and "".join(w.text for w in found.added) == "和银"


def test_a_tail_that_misreads_the_last_word_echoes_the_final_and_more_speech_does_not() -> None:
    final = words("all nouns always begin with a capital letter")
    assert echoes(final, words("always begin with a capital ladder"))
    assert echoes(characters("蓋夾的元素屬於金屬銀和金的元素當然也是金屬"), characters("和金的元素当然也是金素"))
    assert not echoes(final, words("even in the middle of a sentence"))
    assert not echoes(final, ())
