"""Numbers as figures in Chinese (Mandarin and Cantonese, simplified or traditional) and Japanese.

``text2num`` does not read these languages. WeTextProcessing (the ``wetext`` runtime) does, but
measured on captions it wrote "下午三点二十分" as "3:20p.m.", "十二月三日" as "12/03", "几十个" as
"几10个" and "九九八十一" as "998 11", read no traditional numerals ("一千兩百萬" became
"1000兩百萬"), took 70 ms for 230 characters (this runs on every partial), and weighs 46 MB.
The numerals of these languages are one small grammar, so it is written here:

- A run of numeral characters that is one number becomes figures: 二十三 → 23, 两千零二十一 →
  2021, 三千五 → 3500, 一九九八年 → 1998年. A number that ends in 万 or 亿 keeps the unit, as
  newspapers write large sums: 三百万 → 300万, 一亿两千万 → 1.2亿.
- What is not one number stays as written: single characters (一个, 三心二意, 星期一, a lone 十
  in 十全十美), approximations (七八个, 三四天), set phrases (一五一十, 千千万万, 万一) and two
  digits in a row (一一列举).
- A single digit is a figure where the number is certain: a percentage (百分之七 → 7%, 七パー
  セント → 7%), a decimal (三点五 → 3.5), a date (十二月三日 → 12月3日) or a time (三点二十分 →
  3:20). 一点 ("a little"), 三点钟 and 两点半 stay words.
"""

from __future__ import annotations

import re

LANGUAGES = frozenset({"zh", "yue", "ja"})

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_SMALL_UNITS = {"十": 10, "拾": 10, "百": 100, "千": 1000}
_LARGE_UNITS = {"万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8}
_NUMERALS = "".join([*_DIGITS, *_SMALL_UNITS, *_LARGE_UNITS])
_RUN = f"[{_NUMERALS}]+"
_POINT = "[点點]"

# Where a number is certain, most specific first: percentages, times, decimals, dates, then
# any run of numerals.
_PATTERN = re.compile(
    rf"百分之(?P<percent>{_RUN}(?:{_POINT}[{''.join(_DIGITS)}]+)?)"
    rf"|(?P<percent_ja>{_RUN}(?:{_POINT}[{''.join(_DIGITS)}]+)?)パーセント"
    rf"|(?P<hour>{_RUN}){_POINT}(?P<minute>{_RUN})分"
    rf"|(?P<whole>{_RUN}){_POINT}(?P<fraction>[{''.join(_DIGITS)}]+)(?!{_POINT})"
    rf"|(?P<month>{_RUN})月(?P<day>{_RUN})(?P<day_mark>[日号號])"
    rf"|(?P<run>{_RUN})"
)


def write(text: str) -> str:
    """``text`` with its numbers written as figures; what is not surely a number is kept."""
    if not any(c in _NUMERALS for c in text):
        return text
    return _PATTERN.sub(_figures, text)


def settled(text: str, stable: int) -> int:
    """Where the first ``stable`` characters end once a number that may still be growing is
    taken off them: numeral characters (and a decimal or time point) at their end may yet
    become a larger number, a year, a date or a time."""
    cut = stable
    while cut > 0 and (text[cut - 1] in _NUMERALS or text[cut - 1] in "点點分之月"):
        cut -= 1
    return cut


def _figures(match: re.Match[str]) -> str:
    found = match.groupdict()
    if found["percent"] is not None or found["percent_ja"] is not None:
        number = _decimal(found["percent"] or found["percent_ja"])
        return match[0] if number is None else number + "%"
    if found["hour"] is not None:
        hour, minute = _any_value(found["hour"]), _any_value(found["minute"])
        if hour is None or minute is None or hour > 24 or minute > 59:
            return _run(found["hour"]) + match[0][len(found["hour"]) : -len(found["minute"]) - 1] + _run(found["minute"]) + "分"
        return f"{hour}:{minute:02d}"
    if found["whole"] is not None:
        number = _decimal(match[0])
        return _run(found["whole"]) + match[0][len(found["whole"]) :] if number is None else number
    if found["month"] is not None:
        month, day = _any_value(found["month"]), _any_value(found["day"])
        if month is None or day is None or not (1 <= month <= 12 and 1 <= day <= 31):
            return _run(found["month"]) + "月" + _run(found["day"]) + found["day_mark"]
        return f"{month}月{day}{found['day_mark']}"
    return _run(found["run"])


def _run(run: str) -> str:
    """A run of numerals alone: figures if it is one number of two characters or more."""
    if len(run) < 2:
        return run
    if all(c in _DIGITS for c in run):
        # Read digit by digit (一九九八年, 一一零); two digits are more often a range (三四天).
        return "".join(str(_DIGITS[c]) for c in run) if len(run) >= 3 else run
    value = _value(run)
    if value is None:
        return run
    if run[-1] in _LARGE_UNITS:
        largest = max((c for c in run if c in _LARGE_UNITS), key=_LARGE_UNITS.__getitem__)
        short = _short(value, _LARGE_UNITS[largest])
        if short is not None:
            return short + largest
    return str(value)


def _any_value(run: str) -> int | None:
    """The value of a run where a number is certain: single digits, digit strings and a bare
    百 or 千 (百パーセント, 百分之百) count."""
    if all(c in _DIGITS for c in run):
        return int("".join(str(_DIGITS[c]) for c in run))
    return _value(run, bare_units=True)


def _decimal(text: str) -> str | None:
    """"十五点一" → "15.1"; None if the part before the point is not one number."""
    whole, *fraction = re.split(_POINT, text, maxsplit=1)
    value = _any_value(whole)
    if value is None:
        return None
    return f"{value}." + "".join(str(_DIGITS[c]) for c in fraction[0]) if fraction else str(value)


def _value(run: str, bare_units: bool = False) -> int | None:
    """The value of a numeral written with units (二十三, 六十二万七千, 三千五); None if the run
    is not one number (two digits in a row, units out of order, a unit with nothing before it).
    A section may open on a bare 十 (十二 is twelve); on a bare 百 or 千 only if ``bare_units``
    (elsewhere 千万 is "by all means", not ten million)."""
    total = section = 0
    digit: int | None = None
    last_unit = 10**13  # the units of a section must fall: 三千五百, never 三百五千
    previous = before_digit = ""
    for char in run:
        if char in _DIGITS:
            if digit:
                return None  # 七八, 一五: a range or a phrase
            digit, before_digit = _DIGITS[char], previous
        elif char in _SMALL_UNITS:
            unit = _SMALL_UNITS[char]
            if unit >= last_unit:
                return None
            if digit is None:
                opens = previous == "" or previous in _LARGE_UNITS or previous in "零〇"
                if not opens or not (unit == 10 or bare_units):
                    return None
                digit = 1
            section, digit, last_unit = section + digit * unit, None, unit
        else:
            section += digit or 0
            if section == 0:
                return None  # 万一
            unit = _LARGE_UNITS[char]
            # 亿 multiplies what came before it (一万亿 aside, which is left as written).
            total = (total + section) * unit if unit > 10**4 else total + section * unit
            section, digit, last_unit = 0, None, 10**13
        previous = char
    if digit:
        place = _SMALL_UNITS.get(before_digit) or _LARGE_UNITS.get(before_digit)
        if place:
            digit *= place // 10  # 三千五 is 3500, 两万五 25000: the next place down
    return total + section + (digit or 0)


def _short(value: int, unit: int) -> str | None:
    """``value`` in ``unit``s with at most four decimals (1.2 for 120000000 in 亿), or None."""
    whole, rest = divmod(value, unit)
    if rest == 0:
        return str(whole)
    fraction = f"{rest:0{len(str(unit)) - 1}d}".rstrip("0")
    return f"{whole}.{fraction}" if len(fraction) <= 4 else None
