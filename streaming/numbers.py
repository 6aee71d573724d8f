"""Numbers written one way: inverse text normalisation of captions ("twenty twenty one" → "2021").

The model writes numbers sometimes as words and sometimes as digits; readers notice. With the
``digits`` style (the default) spelled-out numbers become digits; ``spoken`` keeps the model's
text. The parsing is ``text2num``'s ``alpha2digit`` (compiled Rust, eight languages, about 10 µs
a caption); around it a few rules per language make the output read like edited text (20-100 µs
a caption in all, so it runs on every partial):

- Isolated numbers zero to nine stay words ("one of them", "no one", "two dogs", "the first of
  May"), as in most house styles; groups ("one two three"), decimals and larger numbers become
  digits. A small number before a percent sign, a scale word, a currency or am/pm is a figure
  all the same ("7%", "3 million", "5 pm").
- Percentages take the sign ("105%", French "21 %"); English years said in pairs are joined
  ("twenty twenty one" → "2021"), times with am/pm take a colon, dollars the sign ("$3.5
  million"), and large numbers the language's digit grouping ("627,000", German "627.000").
- Digits the model wrote are never regrouped or joined, only their percent and currency words.

Chinese, Cantonese and Japanese, which ``text2num`` does not read, are written by
:mod:`streaming.cjk_numbers`. Other languages are returned unchanged, and so is any text on which
something fails: captioning never stops for a number.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from streaming import cjk_numbers

STYLES = ("digits", "spoken")

# Zero to nine: the isolated numbers that stay words. text2num converts isolated numbers whose
# value is at least ``threshold``.
_THRESHOLD = 10

# A placeholder that alpha2digit takes for an ordinary word: it ends number groups and is never
# converted. Text that already holds it is left alone (see _protect).
_MARK = "qxzq"
_MARK_RE = re.compile(_MARK + r"([a-z]+)" + _MARK)


@dataclass(frozen=True)
class _Rules:
    """How one language writes numbers, and the words that matter around them."""

    small: dict[str, str]  # zero..nine as words (lower case), for figures forced by context
    percent: str  # regex: what follows a number to make it a percentage (alpha2digit's output)
    percent_sign: str  # "%" or " %" (French, German and Spanish put a space before it)
    group: str  # thousands separator for numbers of five digits or more
    scales: str  # regex: million and up, kept as words ("3.5 million", never "3.5 1000000")
    hundreds: str  # regex: hundred/thousand words, kept as words after a figure ("5 thousand")
    joiners: frozenset[str]  # words inside a spoken number ("and", "point"): a partial's number may go on
    after: str = ""  # regex: more words after which a small number is written as a figure
    english: bool = False  # years in pairs, decades, times, dollars
    extra_small: dict[str, str] = field(default_factory=dict)


def _small(words: str) -> dict[str, str]:
    return {w: str(i) for i, w in enumerate(words.split())}


_EN = _Rules(
    small=_small("zero one two three four five six seven eight nine"),
    percent=r"per ?cent|%",
    percent_sign="%",
    group=",",
    scales=r"millions?|billions?|trillions?",
    hundreds=r"hundreds?|thousands?",
    joiners=frozenset({"and", "point", "a", "oh", "minus", "negative"}),
    after=r"dollars?|cents?|am|pm|a\.m\.|p\.m\.|o'clock",
    english=True,
)

_RULES: dict[str, _Rules] = {
    "en": _EN,
    "fr": _Rules(
        small=_small("zéro un deux trois quatre cinq six sept huit neuf"),
        extra_small={"une": "1"},
        percent=r"pour ?100|pour ?cent|%",
        percent_sign=" %",
        group=" ",
        scales=r"millions?|milliards?",
        hundreds=r"cents?|mille",
        joiners=frozenset({"et", "virgule", "moins"}),
    ),
    "es": _Rules(
        small=_small("cero uno dos tres cuatro cinco seis siete ocho nueve"),
        extra_small={"un": "1", "una": "1"},
        percent=r"por ?100|por ?ciento|por ?cien|%",
        percent_sign=" %",
        group=".",
        scales=r"millón|millones|billón|billones",
        hundreds=r"cien|cientos?|mil",
        joiners=frozenset({"y", "coma", "punto", "menos"}),
    ),
    "pt": _Rules(
        small=_small("zero um dois três quatro cinco seis sete oito nove"),
        extra_small={"uma": "1", "duas": "2"},
        percent=r"por ?100|por ?cento|%",
        percent_sign="%",
        group=".",
        scales=r"milhão|milhões|milhao|milhoes|bilhão|bilhões|bilião|biliões",
        hundreds=r"cem|cento|mil",
        joiners=frozenset({"e", "vírgula", "virgula", "ponto", "menos"}),
    ),
    "de": _Rules(
        small=_small("null eins zwei drei vier fünf sechs sieben acht neun"),
        extra_small={"ein": "1", "eine": "1"},
        percent=r"prozent|%",
        percent_sign=" %",
        group=".",
        scales=r"millionen|million|milliarden|milliarde",
        hundreds=r"hundert|tausend",
        joiners=frozenset({"und", "komma", "minus"}),
    ),
    "it": _Rules(
        small=_small("zero uno due tre quattro cinque sei sette otto nove"),
        extra_small={"un": "1", "una": "1"},
        percent=r"per ?100|per ?cento|%",
        percent_sign="%",
        group=".",
        scales=r"milioni|milione|miliardi|miliardo",
        hundreds=r"cento|mille|mila",
        joiners=frozenset({"e", "virgola", "meno"}),
    ),
    "nl": _Rules(
        small=_small("nul een twee drie vier vijf zes zeven acht negen"),
        extra_small={"één": "1"},
        percent=r"procent|%",
        percent_sign="%",
        group=".",
        scales=r"miljoen|miljard",
        hundreds=r"honderd|duizend",
        joiners=frozenset({"en", "komma", "min"}),
    ),
    "da": _Rules(
        small=_small("nul en to tre fire fem seks syv otte ni"),
        extra_small={"et": "1"},
        percent=r"procent|%",
        percent_sign=" %",
        group=".",
        scales=r"millioner|million|milliarder|milliard",
        hundreds=r"hundrede|tusind",
        joiners=frozenset({"og", "komma", "minus"}),
    ),
}

_DECADES = {"tens": 10, "twenties": 20, "thirties": 30, "forties": 40, "fifties": 50, "sixties": 60, "seventies": 70, "eighties": 80, "nineties": 90}


@functools.cache
def _alpha2digit() -> Callable[..., str]:
    # Imported on first use: a server that keeps the spoken style never loads it.
    module = importlib.import_module("text_to_num")
    function: Callable[..., str] = module.alpha2digit
    return function


@dataclass(frozen=True)
class _Compiled:
    language: str
    rules: _Rules
    protect: re.Pattern[str]
    forced: re.Pattern[str]
    percent: re.Pattern[str]
    small: dict[str, str]


@functools.cache
def _compiled(language: str) -> _Compiled:
    rules = _RULES[language]
    small = {**rules.small, **rules.extra_small}
    small_words = "|".join(sorted(map(re.escape, small), key=len, reverse=True))
    followers = "|".join(f"(?:{p})" for p in (rules.percent, rules.scales, rules.after) if p)
    return _Compiled(
        language=language,
        rules=rules,
        # Digits the model wrote (so that only new figures are grouped and joined), scale words,
        # and hundred/thousand after a figure ("5 thousand" would become "5 1000").
        protect=re.compile(rf"\d+(?:[.,:]\d+)*|\b(?:{rules.scales})\b|(?<=\d\s)(?:{rules.hundreds})\b", re.IGNORECASE),
        forced=re.compile(rf"(?<!\w)({small_words})(?=\s+(?:{followers})(?!\w))", re.IGNORECASE),
        percent=re.compile(rf"(\d)\s?(?:{rules.percent})(?!\w)", re.IGNORECASE),
        small=small,
    )


def supported(language: str) -> bool:
    """Whether numbers are written for this language (a BCP 47 tag like "en-US" counts as "en")."""
    return _base(language) in _RULES or _base(language) in cjk_numbers.LANGUAGES


def write_numbers(text: str, language: str, style: str = "digits") -> str:
    """The caption with its numbers written in ``style``: "digits" (spelled-out numbers as
    figures) or "spoken" (unchanged). Text in other languages, and text on which anything goes
    wrong, comes back unchanged; this never raises."""
    if style != "digits" or not text:
        return text
    base = _base(language)
    if base not in _RULES and base not in cjk_numbers.LANGUAGES:
        return text
    try:
        return cjk_numbers.write(text) if base in cjk_numbers.LANGUAGES else _write(text, _compiled(base))
    except BaseException as error:
        _reraise_exits(error)
        return text


def write_numbers_partial(text: str, stable: int, language: str, style: str = "digits") -> tuple[str, int]:
    """A partial caption's text with its numbers written, and how many of its leading characters
    are stable (will not change in later partials).

    The text is ``write_numbers(text)`` exactly, so a partial reads as its final will. The
    stable prefix stops before any number still being spoken: a run of number words (or
    figures, "and", "point"...) at the end of the stable part may yet grow ("twenty" → "twenty
    five" → "25") or take a word that rewrites it ("seven" + "percent" → "7%"), so it is left
    unstable. Of the rest, what is stable is the common prefix of the stable part written on
    its own and the whole text written: only characters that both agree on are promised.
    """
    stable = max(0, min(stable, len(text)))
    if style != "digits" or not supported(language):
        return text, stable
    written = write_numbers(text, language, style)
    if stable == 0:
        return written, 0
    try:
        base = _base(language)
        cut = cjk_numbers.settled(text, stable) if base in cjk_numbers.LANGUAGES else _settled(text, stable, base)
        if cut == 0:
            return written, 0
        alone = write_numbers(text[:cut], language, style)
        common = 0
        for a, b in zip(alone, written):
            if a != b:
                break
            common += 1
        return written, common
    except BaseException as error:
        _reraise_exits(error)
        return written, 0


def _reraise_exits(error: BaseException) -> None:
    # A panic in the compiled parser is a BaseException (pyo3's PanicException): caught like
    # any error, but an interrupt or exit still goes through.
    if isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise error


def _base(language: str) -> str:
    return language.replace("_", "-").split("-")[0].strip().lower()


def _write(text: str, c: _Compiled) -> str:
    rules = c.rules
    if rules.english and ("hundred" in text or "thousand" in text):
        # "a hundred and fifty people" is one number; alpha2digit would give "a 150 people".
        text = _A_HUNDRED.sub(lambda m: ("One " if m[1] == "A" else "one ") + m[2], text)
    protected, saved = _protect(text, c.protect)
    if protected is None:
        return text
    out = _alpha2digit()(protected, c.language, threshold=_THRESHOLD)
    # Rules for new figures only: the model's own digits are still placeholders here. Most
    # captions hold no number at all, so each rule is skipped unless it can match.
    if _has_digit(out):
        if rules.english:
            out = _english_years(out, c.small)
        out = _LONG.sub(lambda m: _grouped(m[0], rules.group), out)
    if saved:
        out = _MARK_RE.sub(lambda m: saved[_index(m[1])], out)
    out = c.forced.sub(lambda m: c.small[m[1].lower()], out)
    if not _has_digit(out):
        return out
    if rules.english:
        out = _english_times(out, c.small)
    out = c.percent.sub(lambda m: m[1] + rules.percent_sign, out)
    if rules.english and "dollar" in out.lower():
        out = _dollars(out)
    return out


def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


_DIGIT = re.compile(r"\d")
_A_HUNDRED = re.compile(r"\b([Aa]) (hundred|thousand)\b")
_LONG = re.compile(r"(?<![\d.,])\d{5,}")


def _protect(text: str, pattern: re.Pattern[str]) -> tuple[str | None, list[str]]:
    """Each match replaced by a placeholder word; None when the text already has one."""
    if _MARK in text.lower():
        return None, []
    saved: list[str] = []

    def mark(match: re.Match[str]) -> str:
        saved.append(match[0])
        return _MARK + _letters(len(saved) - 1) + _MARK

    return pattern.sub(mark, text), saved


def _letters(n: int) -> str:
    """0 → "a", 25 → "z", 26 → "ba": a number in letters, which alpha2digit does not read."""
    out = ""
    while True:
        out = chr(ord("a") + n % 26) + out
        n //= 26
        if n == 0:
            return out


def _index(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - ord("a")
    return n


def _grouped(digits: str, separator: str) -> str:
    head = len(digits) % 3 or 3
    return separator.join([digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)])


def _english_years(text: str, small: dict[str, str]) -> str:
    # alpha2digit reads "twenty twenty one" as two numbers ("20 21"). Only 19xx and 20xx:
    # "twelve fifteen" is more often a time than the year 1215.
    text = _YEAR.sub(r"\1\2", text)
    text = _YEAR_OH.sub(lambda m: m[1] + "0" + small[m[2].lower()] if m[2].lower() in small and m[2].lower() != "zero" else m[0], text)
    return _DECADE.sub(lambda m: f"{m[1]}{_DECADES[m[2].lower()]}s", text)


_YEAR = re.compile(r"(?<![\d.,])(19|20) ([1-9]\d)(?![\d.,]\d)(?!\w)")
_YEAR_OH = re.compile(r"(?<![\d.,])(19|20) oh (\w+)\b", re.IGNORECASE)
_DECADE = re.compile(r"(?<![\d.,])(19|20) (" + "|".join(_DECADES) + r")\b", re.IGNORECASE)


def _english_times(text: str, small: dict[str, str]) -> str:
    """ "5 30 pm" → "5:30 pm", "five oh five pm" → "5:05 pm", "at 10 30" → "at 10:30"."""

    def hour(word: str) -> str | None:
        value = small.get(word.lower(), word)
        return value if value.isdigit() and 1 <= int(value) <= 12 else None

    def clock(m: re.Match[str]) -> str:
        h = hour(m[1])
        if h is None:
            return m[0]
        minutes = m[2]
        if minutes.lower().startswith("oh "):
            digit = small.get(minutes[3:].lower(), minutes[3:])
            if not (digit.isdigit() and len(digit) == 1):
                return m[0]
            minutes = "0" + digit
        elif not (len(minutes) == 2 and minutes.isdigit() and int(minutes) < 60):
            return m[0]
        return f"{h}:{minutes} {m[3]}"

    text = _CLOCK.sub(clock, text)
    # Without am/pm, two figures are a time only after a word that introduces one ("at ten
    # thirty"); alone, "10 30" may be a range or a list and stays as alpha2digit wrote it.
    return _AT_CLOCK.sub(lambda m: f"{m[1]} {small.get(m[2].lower(), m[2])}:{m[3]}", text)


_CLOCK = re.compile(r"(?<![\w:.,])(\w+) (oh \w+|\d\d) ((?:am|pm|a\.m\.|p\.m\.)(?!\w))", re.IGNORECASE)
_AT_CLOCK = re.compile(
    r"\b(at|by|until|till|from|before|after|around|about|since) (1[0-2]|[1-9]|one|two|three|four|five|six|seven|eight|nine) ([0-5]\d)(?!\w|[.,:]\d)",
    re.IGNORECASE,
)


def _dollars(text: str) -> str:
    """ "5 dollars and 50 cents" → "$5.50", "3.5 million dollars" → "$3.5 million"."""
    text = _CENTS.sub(lambda m: f"${m[1]}.{int(m[2]):02d}", text)
    return _DOLLARS.sub(r"$\1\2", text)


_CENTS = re.compile(r"(?<![\w$.,])(\d+) dollars? and (\d{1,2}) cents?\b", re.IGNORECASE)
_DOLLARS = re.compile(r"(?<![\w$.,])(\d[\d,]*(?:\.\d+)?)((?: (?:million|billion|trillion))?) dollars?\b", re.IGNORECASE)


def _settled(text: str, stable: int, language: str) -> int:
    """Where the stable part ends once a number that may still be growing is taken off it."""
    cut = stable
    if 0 < cut < len(text) and not text[cut - 1].isspace() and not text[cut].isspace():
        while cut > 0 and not text[cut - 1].isspace():
            cut -= 1  # mid-word: the whole word is still open
    tokens = list(_TOKEN.finditer(text[:cut]))
    for token in reversed(tokens):
        core = token[0].strip(".,;:!?\"'()[]«»“”‘’¿¡-–—").lower()
        if core and not _numeric(core, language):
            break
        cut = token.start()
    return cut


_TOKEN = re.compile(r"\S+")


def _numeric(word: str, language: str) -> bool:
    """Whether a word may belong to a spoken number (or make one a percentage, a time...)."""
    if any(c.isdigit() for c in word):
        return True
    rules = _RULES.get(language)
    if rules is None:
        return False
    return word in rules.joiners or _is_number_word(word, language)


@functools.lru_cache(maxsize=8192)
def _is_number_word(word: str, language: str) -> bool:
    # alpha2digit with no threshold converts every number word and ordinal, and nothing else.
    return _alpha2digit()(word, language, threshold=0) != word
