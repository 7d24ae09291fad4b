"""Turning a prediction (a program's value or a model's text) into a typed answer.

Every function returns ``None`` when no answer of the asked type can be read, so
callers can tell "unparsable" apart from "wrong".
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Sequence

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}
_MULTIPLIERS = {"dozen": 12, "hundred": 100, "thousand": 1000}
_TOKEN = re.compile(r"[a-z]+")
# A number not glued to a preceding letter or digit, so "B2" and "x10" are not read
# as numbers, and "10" is never read as "1".
_NUMERAL = re.compile(r"(?<![A-Za-z0-9.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")

_YES = {"yes", "true", "yeah"}
_NO = {"no", "false"}
_WORD = re.compile(r"[a-z]+")
_ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def unwrap(value: Any) -> Any:
    """Single-element containers and numpy scalars become plain Python values."""
    while isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    return value


def is_empty(value: Any) -> bool:
    value = unwrap(value)
    return value is None or (isinstance(value, str) and not value.strip())


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    words = str(text).lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def parse_yes_no(value: Any) -> bool | None:
    """Yes/no from a bool, a 0/1 number or text.

    Text that starts with a yes/no word is read from that word ("No, the cup is
    left of it"); otherwise exactly one kind of yes/no word must occur, so text
    mentioning both is unparsable rather than guessed.
    """
    value = unwrap(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if not isinstance(value, str):
        return None
    words = _WORD.findall(value.lower())
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    kinds = {True for w in words if w in _YES} | {False for w in words if w in _NO}
    return kinds.pop() if len(kinds) == 1 else None


def _words_to_number(text: str) -> list[tuple[int, float]]:
    """(position, value) of every number written in words.

    A run of number words is one number ("one hundred and five", "twenty-one",
    "a dozen"); "none" alone is 0.
    """
    found: list[tuple[int, float]] = []
    tokens = [(m.start(), m.group()) for m in _TOKEN.finditer(text)]
    i = 0
    while i < len(tokens):
        start, word = tokens[i]
        if word == "none":
            found.append((start, 0.0))
            i += 1
            continue
        leading_a = word == "a" and i + 1 < len(tokens) and tokens[i + 1][1] in _MULTIPLIERS
        if word not in _UNITS and word not in _MULTIPLIERS and not leading_a:
            i += 1
            continue
        total, current, j = 0, 0, i + (1 if leading_a else 0)
        while j < len(tokens):
            word = tokens[j][1]
            if word in _UNITS:
                current += _UNITS[word]
            elif word == "thousand":
                total += max(current, 1) * 1000
                current = 0
            elif word in _MULTIPLIERS:
                current = max(current, 1) * _MULTIPLIERS[word]
            elif not (word == "and" and j + 1 < len(tokens) and tokens[j + 1][1] in _UNITS):
                break
            j += 1
        found.append((start, float(total + current)))
        i = j
    return found


def numbers_in(text: str) -> list[float]:
    """Every number in the text, digits or words, in reading order."""
    lowered = text.lower()
    found = [(m.start(), float(m.group().replace(",", ""))) for m in _NUMERAL.finditer(lowered)]
    found += _words_to_number(lowered)
    return [v for _, v in sorted(found)]


def parse_number(value: Any) -> float | None:
    """A number from a numeric value or text.

    Text that is itself a number ("3", "2.5e-1", "three") is read whole; text that
    mentions numbers is read as its last one ("I count 2 red and 3 blue, so 5"),
    the usual place for a final answer. Booleans are not numbers.
    """
    value = unwrap(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        number = float(text.replace(",", ""))
        return number if math.isfinite(number) else None
    except ValueError:
        pass
    found = numbers_in(text)
    return found[-1] if found else None


_LETTER_ALONE = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LETTER_LEAD = re.compile(r"^\(?([A-Z])\)?[.:)]\s")
# Keywords in any case, the letter itself a capital: "answer is B", "Option: (C)",
# but never the article in "the answer: a red car".
_LETTER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)\b(?:\s+(?i:is|would\s+be|should\s+be))?"
    r"[^A-Za-z0-9(]{0,12}\(?([A-Z])\)?(?![A-Za-z])"
)
_LETTER_PAREN = re.compile(r"\(([A-Z])\)")


def parse_choice(value: Any, choices: Sequence[str]) -> int | None:
    """Index of the chosen option, from its letter or its text.

    Letters are read only where they stand alone ("B", "(B)", "B.", "answer is
    B"), never as the first capital of a sentence. Text matches an option when
    equal after normalisation, numerically equal, or when exactly one option's
    words occur in the prediction.
    """
    value = unwrap(value)
    if value is None or isinstance(value, bool):
        return None
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    normalized_choices = [normalize_text(c) for c in choices]
    if isinstance(value, (int, float)):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None

    norm = normalize_text(text)
    if norm in normalized_choices:
        return normalized_choices.index(norm)

    for pattern in (_LETTER_ALONE, _LETTER_LEAD, _LETTER_PHRASE, _LETTER_PAREN):
        m = pattern.search(text)
        if m and m.group(1).upper() in letters:
            return letters.index(m.group(1).upper())

    numeric = [parse_number(c) if _is_number_text(c) else None for c in choices]
    if any(n is not None for n in numeric):
        number = parse_number(text)
        if number is not None and number in numeric:
            return numeric.index(number)

    padded = f" {norm} "
    hits = [i for i, c in enumerate(normalized_choices) if c and f" {c} " in padded]
    # An option contained in another matched option ("red" in "red car") yields.
    hits = [i for i in hits if not any(j != i and normalized_choices[i] in normalized_choices[j] for j in hits)]
    return hits[0] if len(hits) == 1 else None


def _is_number_text(text: str) -> bool:
    try:
        float(str(text).strip().replace(",", ""))
        return True
    except ValueError:
        return False
