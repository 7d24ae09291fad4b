"""Strict scoring: one well-defined rule per answer type, no substring leniency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from harness.scoring.extract import as_text, is_empty, parse_choice, parse_number, parse_yes_no, unwrap, word_key
from harness.types import AnswerType

MRA_THRESHOLDS = tuple(round(0.50 - 0.05 * i, 2) for i in range(10))  # 0.50, 0.45, ..., 0.05

# Single-letter compass answers (Omni3D-Bench) also accept the full word.
_COMPASS = {"north": "n", "south": "s", "east": "e", "west": "w"}


class Parse:
    OK = "ok"
    EMPTY = "empty"
    UNPARSABLE = "unparsable"
    NO_PREDICTION = "no_prediction"  # the system failed; see the record's status
    JUDGE_ERROR = "judge_error"
    NOT_SCORED = "not_scored"  # the task has no gold answers
    INFRASTRUCTURE = "infrastructure"  # not scored: the infrastructure failed (see the record's status)


@dataclass
class StrictResult:
    score: float | None  # None: no verdict (a failed judge), never a 0
    parse: str
    extracted: Any = None


def mean_relative_accuracy(prediction: float, gold: float) -> float:
    """Mean over thresholds t of 1[|pred - gold| / |gold| < t].

    With gold = 0 the relative error is undefined; only an exact 0 scores, so a
    zero-gold question can be answered but never divides by zero.
    """
    if gold == 0:
        return 1.0 if prediction == 0 else 0.0
    relative_error = abs(prediction - gold) / abs(gold)
    return sum(relative_error < t for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


def _word_key(value: Any) -> str:
    text = word_key(as_text(unwrap(value)))
    return _COMPASS.get(text, text)


def score_strict(answer_type: str, prediction: Any, gold: Any,
                 choices: Sequence[str] | None = None) -> StrictResult:
    """Score a prediction against the gold answer for every type but ``open``
    (which needs a judge, see :mod:`harness.scoring.judge`)."""
    if is_empty(prediction):
        return StrictResult(0.0, Parse.EMPTY)

    if answer_type == AnswerType.YESNO:
        got = parse_yes_no(prediction)
        if got is None:
            return StrictResult(0.0, Parse.UNPARSABLE)
        return StrictResult(float(got == parse_yes_no(gold)), Parse.OK, "yes" if got else "no")

    if answer_type in (AnswerType.INTEGER, AnswerType.FLOAT):
        got = parse_number(prediction)
        if got is None:
            return StrictResult(0.0, Parse.UNPARSABLE)
        want = float(gold)
        extracted = int(got) if got.is_integer() and abs(got) < 2 ** 63 else got
        if answer_type == AnswerType.INTEGER:
            return StrictResult(float(got == want), Parse.OK, extracted)
        return StrictResult(mean_relative_accuracy(got, want), Parse.OK, extracted)

    if answer_type == AnswerType.MULTIPLE_CHOICE:
        if not choices:
            raise ValueError("a multiple-choice sample needs its choices")
        index = parse_choice(prediction, choices)
        if index is None:
            return StrictResult(0.0, Parse.UNPARSABLE)
        gold_index = parse_choice(gold, choices)
        return StrictResult(float(index == gold_index), Parse.OK, chr(ord("A") + index))

    if answer_type in (AnswerType.WORD, AnswerType.OPEN):
        want_number = parse_number(gold) if isinstance(gold, (int, float)) or _looks_numeric(gold) else None
        if want_number is not None:
            got = parse_number(prediction)
            if got is None:
                return StrictResult(0.0, Parse.UNPARSABLE)
            return StrictResult(float(got == want_number), Parse.OK, got)
        got_key = _word_key(prediction)
        return StrictResult(float(got_key == _word_key(gold)), Parse.OK, got_key)

    raise ValueError(f"unknown answer type {answer_type!r}")


def _looks_numeric(value: Any) -> bool:
    try:
        float(as_text(value).strip())
        return True
    except (ValueError, OverflowError):
        return False
