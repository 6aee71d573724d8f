"""Numbers written one way (streaming/numbers.py): pure text in, text out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.numbers import STYLES, supported, write_numbers, write_numbers_partial

ENGLISH = [
    # The examples: percentages, years said in pairs, decimals with a scale and currency.
    ("one hundred and five percent", "105%"),
    ("twenty twenty one", "2021"),
    ("ninety eight percent", "98%"),
    ("three point five million dollars", "$3.5 million"),
    ("two thousand and twenty one", "2021"),
    ("nineteen eighty four", "1984"),
    ("nineteen oh five", "1905"),
    ("in the nineteen nineties", "in the 1990s"),
    ("fifteen point one percent", "15.1%"),
    ("we counted six hundred twenty seven thousand subscribers", "we counted 627,000 subscribers"),
    ("an increase of seven percent compared to twenty twenty.", "an increase of 7% compared to 2020."),
    ("it costs five dollars and fifty cents", "it costs $5.50"),
    ("one hundred thousand dollars", "$100,000"),
    ("the twenty first century", "the 21st century"),
    # Times: a colon with am/pm, or after "at"; two bare figures stay as they are.
    ("at five thirty pm", "at 5:30 pm"),
    ("five oh five p.m.", "5:05 p.m."),
    ("at five pm", "at 5 pm"),
    ("meet me at ten fifteen.", "meet me at 10:15."),
    # Zero to nine alone stay words, as most house styles write them; in a group, digits.
    ("one", "one"),
    ("no one", "no one"),
    ("one of them", "one of them"),
    ("someone", "someone"),
    ("I have two dogs and three cats", "I have two dogs and three cats"),
    ("the first of may", "the first of may"),
    ("first of all", "first of all"),
    ("the second time", "the second time"),
    ("eleven people", "11 people"),
    ("one two three four", "1 2 3 4"),
    ("one point five", "1.5"),
    # A small number before a percent or scale word is a figure all the same.
    ("one percent", "1%"),
    ("three million", "3 million"),
    ("a million thanks", "a million thanks"),
    ("millions of people", "millions of people"),
    ("a hundred and fifty people", "150 people"),
    # Capitals, punctuation and the text's own spaces are kept.
    ("Twenty twenty one, and then", "2021, and then"),
    ("  twenty five  ", "  25  "),
    ("ask not what your country can do for you", "ask not what your country can do for you"),
]


@pytest.mark.parametrize(("spoken", "written"), ENGLISH)
def test_english(spoken: str, written: str) -> None:
    assert write_numbers(spoken, "en") == written


def test_the_models_own_digits_are_not_regrouped_or_joined() -> None:
    text = "At year end, we counted 627,000 subscribers, an increase of 7% compared to 2020"
    assert write_numbers(text, "en") == text
    assert write_numbers("call 5551234", "en") == "call 5551234"
    assert write_numbers("rooms 20 21 and 22", "en") == "rooms 20 21 and 22"
    # ...but their percent and currency words are written like the rest.
    assert write_numbers("up 7 percent to 5 dollars", "en") == "up 7% to $5"


OTHER_LANGUAGES = [
    ("fr", "vingt et un pour cent", "21 %"),
    ("fr", "cinq pour cent", "5 %"),
    ("fr", "deux mille vingt et un", "2021"),
    ("fr", "vingt-cinq mille habitants", "25 000 habitants"),
    ("fr", "trois virgule cinq millions d'euros", "3,5 millions d'euros"),
    ("fr", "il y a un chat", "il y a un chat"),
    ("fr", "le premier mai", "le premier mai"),
    ("es", "veintiuno por ciento", "21 %"),
    ("es", "dos mil veintiuno", "2021"),
    ("es", "tiene veinticinco años", "tiene 25 años"),
    ("es", "uno de ellos", "uno de ellos"),
    ("de", "einundzwanzig Prozent", "21 %"),
    ("de", "zweihundertfünfzigtausend Menschen", "250.000 Menschen"),
    ("de", "drei Komma fünf Millionen Euro", "3,5 Millionen Euro"),
    ("de", "einer von ihnen", "einer von ihnen"),
    ("de", "der erste Mai", "der erste Mai"),
    ("pt", "vinte e um por cento", "21%"),
    ("pt", "dois mil e vinte e um", "2021"),
    ("pt", "ele estava na casa dos vinte anos", "ele estava na casa dos 20 anos"),
    ("pt", "um deles", "um deles"),
    ("it", "ventuno per cento", "21%"),
    ("it", "uno di loro", "uno di loro"),
    ("nl", "eenentwintig procent", "21%"),
]


@pytest.mark.parametrize(("language", "spoken", "written"), OTHER_LANGUAGES)
def test_other_languages(language: str, spoken: str, written: str) -> None:
    assert write_numbers(spoken, language) == written


def test_language_tags_and_unsupported_languages() -> None:
    assert write_numbers("twenty five", "en-US") == "25"
    assert write_numbers("twenty five", "EN") == "25"
    assert supported("pt-BR") and supported("zh-TW") and not supported("ko") and not supported("auto")
    for language in ("ko", "auto", "en,zh", "", "xx"):
        assert write_numbers("twenty five 二十五", language) == "twenty five 二十五"


CHINESE_AND_JAPANESE = [
    # One number in a run of numerals, in simplified and traditional characters.
    ("zh", "我们有六十二万七千个用户", "我们有627000个用户"),
    ("zh", "一共有两千零二十一人", "一共有2021人"),
    ("yue", "一共有兩千零二十一人", "一共有2021人"),
    ("zh", "一百零五，三千五，两万五，二十五", "105，3500，25000，25"),
    ("zh", "这是一九九八年的事", "这是1998年的事"),
    ("zh", "第二十三届，五十多个", "第23届，50多个"),
    ("zh", "报警请打一一零", "报警请打110"),
    # Large sums keep 万 and 亿, as papers write them.
    ("zh", "三百万元，一亿两千万", "300万元，1.2亿"),
    ("yue", "一千兩百萬", "1200萬"),
    # Percentages, decimals, dates and times: even single digits.
    ("zh", "增长了百分之七，百分之十五点一，百分之百", "增长了7%，15.1%，100%"),
    ("yue", "增長了百分之十五點一", "增長了15.1%"),
    ("zh", "三点五公里", "3.5公里"),
    ("zh", "今天是十二月三日下午三点二十分，五点零五分", "今天是12月3日下午3:20，5:05"),
    ("ja", "二千二十一年三月三日に六十二万七千人", "2021年3月3日に627000人"),
    ("ja", "百パーセント、二十歳、一千二百三十四円、十一時", "100%、20歳、1234円、11時"),
    # Not one number, or not surely a number: kept as written.
    ("zh", "我有一个苹果，一些人，星期一，第一", "我有一个苹果，一些人，星期一，第一"),
    ("zh", "十全十美，三心二意，一五一十，千千万万，千万不要，万一", "十全十美，三心二意，一五一十，千千万万，千万不要，万一"),
    ("zh", "七八个，三四天，几十个，十几岁，一一列举，九九八十一", "七八个，三四天，几十个，十几岁，一一列举，九九八十一"),
    ("zh", "一点点，一点一点地，三点钟，两点半", "一点点，一点一点地，三点钟，两点半"),
    ("yue", "在短短兩週內", "在短短兩週內"),
    ("ja", "一人で、一つの", "一人で、一つの"),
]


@pytest.mark.parametrize(("language", "spoken", "written"), CHINESE_AND_JAPANESE)
def test_chinese_cantonese_and_japanese(language: str, spoken: str, written: str) -> None:
    assert write_numbers(spoken, language) == written
    assert write_numbers(spoken, language, "spoken") == spoken


def test_chinese_partial_stable_prefixes_hold_as_the_caption_grows() -> None:
    """Character by character, the last two unstable: a number still being said (a year, a
    percentage, a time) is never promised in a form the next partial changes."""
    text = "二零二一年十二月三日下午三点二十分我们有六十二万七千个用户增长了百分之十五点一"
    shown: list[str] = []
    for n in range(1, len(text) + 1):
        written, count = write_numbers_partial(text[:n], max(0, n - 2), "zh")
        assert all(written.startswith(prefix) for prefix in shown), (text[:n], written, shown)
        shown.append(written[:count])
    final = write_numbers(text, "zh")
    assert final == "2021年12月3日下午3:20我们有627000个用户增长了15.1%"
    assert all(final.startswith(prefix) for prefix in shown) and len(shown[-1]) > 10


def test_spoken_style_is_unchanged() -> None:
    assert STYLES == ("digits", "spoken")
    for text, _ in ENGLISH:
        assert write_numbers(text, "en", "spoken") == text
    assert write_numbers_partial("twenty five", 7, "en", "spoken") == ("twenty five", 7)


def test_text_holding_the_placeholder_is_left_alone() -> None:
    assert write_numbers("qxzqaqxzq twenty five", "en") == "qxzqaqxzq twenty five"


# -- partials ---------------------------------------------------------------------------------


def split(text: str, stable: int) -> tuple[str, str]:
    written, count = write_numbers_partial(text, stable, "en")
    return written[:count], written[count:]


def test_partial_text_is_what_the_final_will_read() -> None:
    text = "we counted six hundred twenty seven thousand subscribers, an increase"
    assert write_numbers_partial(text, 40, "en")[0] == write_numbers(text, "en")


def test_partial_stable_prefix_stops_before_a_number_that_may_grow() -> None:
    # "twenty" may yet become "twenty five" or "twenty twenty one": not promised.
    assert split("the price rose by twenty", 24) == ("the price rose by ", "20")
    assert split("compared to twenty twenty one", 29) == ("compared to ", "2021")
    # "seven" may yet take "percent"; a stable cut inside a word leaves the word open.
    assert split("the price rose by seven", 23) == ("the price rose by ", "seven")
    assert split("the price rose by seven perce", 25) == ("the price rose by ", "seven perce")
    # A finished number is stable, written.
    assert split("up by seven percent this year", 29) == ("up by 7% this year", "")
    assert split("we counted six hundred twenty seven thousand subscribers, then", 64) == ("we counted 627,000 subscribers, then", "")


def test_partial_without_numbers_keeps_its_stable_count() -> None:
    assert write_numbers_partial("hello world", 5, "en") == ("hello world", 5)
    assert write_numbers_partial("hello world", 0, "en") == ("hello world", 0)
    assert write_numbers_partial("hello world", 99, "en") == ("hello world", 11)
    assert write_numbers_partial("", 3, "en") == ("", 0)


def test_partial_stable_prefixes_hold_as_the_caption_grows() -> None:
    """Feed a sentence word by word, the last two words unstable each time: every stable prefix
    shown must still be the start of every later partial (and of the final)."""
    words = "at year end we counted six hundred twenty seven thousand subscribers an increase of seven percent compared to twenty twenty one".split()
    shown: list[str] = []
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        stable = len(" ".join(words[: max(0, n - 2)]))
        written, count = write_numbers_partial(text, stable, "en")
        assert all(written.startswith(prefix) for prefix in shown), (text, written, shown)
        shown.append(written[:count])
    final = write_numbers(" ".join(words), "en")
    assert final == "at year end we counted 627,000 subscribers an increase of 7% compared to 2021"
    assert all(final.startswith(prefix) for prefix in shown)


# -- never raises -----------------------------------------------------------------------------

NUMBER_WORDS = (
    "zero one two three five seven nine ten eleven twenty thirty ninety hundred thousand million billion "
    "point and a oh percent per cent dollars cents am pm at first twenty-one nineties "
    "vingt et un pour cent mille veintiuno por ciento einundzwanzig Prozent Millionen vinte cento "
    "5 30 627,000 7% 2020 3.5 $ , . : - qxzq 二十五 百分之 点 點 月 日 分 万 亿 零 两 千 パーセント 一九九八"
).split()

texts = st.lists(st.one_of(st.sampled_from(NUMBER_WORDS), st.text(max_size=8)), max_size=20).map(" ".join)
languages = st.sampled_from(["en", "fr", "es", "pt", "de", "it", "nl", "da", "zh", "ja", "auto", ""])


@settings(max_examples=300, deadline=None)
@given(text=texts, language=languages, style=st.sampled_from(STYLES))
def test_never_raises_and_keeps_the_edges(text: str, language: str, style: str) -> None:
    written = write_numbers(text, language, style)
    assert isinstance(written, str)
    assert (written == "") == (text == "")
    # Spaces around the caption (partials join words with them) stay as they were.
    assert len(written) - len(written.lstrip()) == len(text) - len(text.lstrip())
    assert len(written) - len(written.rstrip()) == len(text) - len(text.rstrip())


@settings(max_examples=300, deadline=None)
@given(text=texts, stable=st.integers(-5, 200), language=languages, style=st.sampled_from(STYLES))
def test_partial_never_raises_and_counts_within_the_text(text: str, stable: int, language: str, style: str) -> None:
    written, count = write_numbers_partial(text, stable, language, style)
    assert written == write_numbers(text, language, style)
    assert 0 <= count <= len(written)
