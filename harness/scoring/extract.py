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
# as numbers, and "10" is never read as "1". Digits joined by commas are read whole:
# thousands ("1,500") are a number, anything else ("1,5": 1.5 or "1 and 5"?) is ambiguous.
_NUMERAL = re.compile(r"(?<![A-Za-z0-9.])[-+]?\d+(?:,\d+)*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![0-9])")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_NEGATED_BEFORE = re.compile(r"(?:\bnot|\bnever|n't)\s+(?:exactly\s+|quite\s+)?$")
# "answer is 3", "answer: 3", "so the answer would be three": the stated answer wins.
_STATED = re.compile(r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be|=))?\s*[:=]?\s*$")

_YES = {"yes", "true", "yeah"}
_NO = {"no", "false"}
_WORD = re.compile(r"[a-z]+")
_ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


_MAX_TEXT = 10_000  # characters of a prediction read as text; a longer one is cut, never an error


def unwrap(value: Any) -> Any:
    """Single-element containers and numpy scalars become plain Python values."""
    for _ in range(64):  # a nesting deeper than this is not an answer
        if not (isinstance(value, (list, tuple)) and len(value) == 1):
            break
        value = value[0]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    return value


def as_text(value: Any) -> str:
    """``str(value)`` that never raises (deep nesting, integers past the digit limit) and stays short."""
    try:
        text = str(value)
    except (ValueError, RecursionError, TypeError):
        text = f"<{type(value).__name__}>"
    return text[:_MAX_TEXT]


def is_empty(value: Any) -> bool:
    value = unwrap(value)
    return value is None or (isinstance(value, str) and not value.strip())


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    words = as_text(text).lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in _ARTICLES)


_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "knives": "knife", "leaves": "leaf", "shelves": "shelf", "wolves": "wolf",
    "halves": "half", "loaves": "loaf", "lives": "life", "wives": "wife", "oxen": "ox", "dice": "die",
    "buses": "bus", "gases": "gas", "lenses": "lens", "canvases": "canvas", "atlases": "atlas",
}
_SINGULAR_ENDINGS = ("ss", "us", "is", "ous")  # glass, bus, axis, famous: not plurals


def singular(word: str) -> str:
    """A plural English noun's singular, by the regular rules and the common irregulars."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_SINGULAR_ENDINGS):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses", "oes")):
        return word[:-2]
    return word[:-1]


def word_key(text: str) -> str:
    """Normalised text with every word in the singular: "Two cups" and "two cup" agree."""
    return " ".join(singular(word) for word in normalize_text(text).split())


_NEGATORS = {"not", "never", "isn't", "aren't", "wasn't", "weren't", "doesn't", "don't", "didn't", "cannot",
             "can't", "isnt", "arent", "doesnt", "dont"}
_CLAUSE_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[,.;:!?]")


def _yes_no_words(text: str) -> list[bool]:
    """The yes/no words of a text, each flipped when a negation stands before it in its clause
    ("it is not true" -> no, "not false" -> yes)."""
    found, negated = [], False
    for token in _CLAUSE_WORD.findall(text.lower()):
        if token in ",.;:!?":
            negated = False
        elif token in _NEGATORS:
            negated = not negated
        elif token in _YES or token in _NO:
            found.append((token in _YES) != negated)
            negated = False
    return found


def parse_yes_no(value: Any) -> bool | None:
    """Yes/no from a bool, a 0/1 number (or the text "0"/"1") or text.

    Text that starts with a yes/no word is read from that word ("No, the cup is
    left of it"); otherwise every yes/no word, negations read ("it is not
    true" is no), must agree, so text mentioning both is unparsable rather than
    guessed.
    """
    value = unwrap(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return bool(value) if value in (0, 1) else None
    if not isinstance(value, str):
        return None
    text = value.strip()[:_MAX_TEXT]
    if text in ("0", "1"):
        return text == "1"
    words = _WORD.findall(text.lower())
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    kinds = set(_yes_no_words(text))
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


def _numeral_value(token: str) -> float | None:
    """A numeral's value; None when its commas are not thousands separators, or it overflows."""
    if "," in token and not _THOUSANDS.fullmatch(token):
        return None
    try:
        number = float(token.replace(",", ""))
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _mentions(text: str) -> list[tuple[int, float | None]]:
    """(position, value) of every number in the text, digits or words; None for an ambiguous one."""
    lowered = text.lower()
    found = [(m.start(), _numeral_value(m.group())) for m in _NUMERAL.finditer(lowered)]
    found += _words_to_number(lowered)
    return sorted(found, key=lambda item: item[0])


def numbers_in(text: str) -> list[float]:
    """Every unambiguous number in the text, digits or words, in reading order."""
    return [value for _, value in _mentions(text) if value is not None]


def parse_number(value: Any) -> float | None:
    """A number from a numeric value or text.

    Text that is itself a number ("3", "2.5e-1", "1,500", "three") is read
    whole. In text that mentions numbers, a stated answer wins ("the answer is 3,
    or maybe 4"), a negated number never counts ("3, not 5"), and otherwise the
    last number is read ("I count 2 red and 3 blue, so 5"), the usual place for
    a final answer. Digits joined by a comma that is not a thousands separator
    ("1,5") are ambiguous: text holding one is unparsable. Booleans are not
    numbers; values too large for a float are unparsable.
    """
    value = unwrap(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if not isinstance(value, str):
        return None
    text = value.strip()[:_MAX_TEXT]
    if _NUMERAL.fullmatch(text):
        return _numeral_value(text)
    try:
        number = float(text)
        return number if math.isfinite(number) else None
    except (ValueError, OverflowError):
        pass
    mentions = _mentions(text)
    if any(number is None for _, number in mentions):
        return None
    stated = [number for start, number in mentions if _STATED.search(text[:start].lower())]
    if stated:
        return stated[0]
    kept = [number for start, number in mentions if not _NEGATED_BEFORE.search(text[:start].lower())]
    return kept[-1] if kept else None


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
    if value is None:
        return None
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    normalized_choices = [normalize_text(c) for c in choices]
    if isinstance(value, bool):  # a yes/no question asked with options: True is "yes"
        for words in (("yes", "no"), ("true", "false")):
            wanted = words[0] if value else words[1]
            if wanted in normalized_choices and all(w in normalized_choices for w in words):
                return normalized_choices.index(wanted)
        return None
    if isinstance(value, (int, float)):
        number = parse_number(value)
        if number is None:
            return None
        value = str(int(number)) if number.is_integer() else str(number)
    if not isinstance(value, str):
        return None
    text = value.strip()[:_MAX_TEXT]
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
