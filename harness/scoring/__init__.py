"""Scoring a run record: strict (default) and paper-compatible, side by side.

Scoring reads only the record, never the dataset, so a finished run can be
re-scored (``python -m harness score RUN_DIR``) with new rules or a judge.
"""

from __future__ import annotations

from typing import Any

from harness.scoring.compat import COMPAT_RULES, compat_score
from harness.scoring.extract import is_empty
from harness.scoring.judge import ExactMatchJudge, Judge, JudgeSpec, make_judge
from harness.scoring.strict import MRA_THRESHOLDS, Parse, StrictResult, mean_relative_accuracy, score_strict
from harness.types import AnswerType, Status

__all__ = [
    "COMPAT_RULES", "ExactMatchJudge", "Judge", "JudgeSpec", "MRA_THRESHOLDS", "Parse",
    "make_judge", "mean_relative_accuracy", "score_record", "score_strict",
]


def score_record(record: dict[str, Any], compat_rule: str | None, judge: Judge) -> dict[str, Any]:
    """Fill ``scores``, ``parse``, ``extracted`` and ``judge`` in a record; returns it."""
    answer_type = record["answer_type"]
    if answer_type == AnswerType.NONE:
        record.update(scores={"strict": None, "compat": None}, parse=Parse.NOT_SCORED, extracted=None, judge=None)
        return record

    ok = record["status"] == Status.OK
    prediction = record.get("prediction") if ok else None
    meta = dict(record.get("compat_meta") or {})
    meta["answer_pytype"] = record.get("answer_pytype")
    judge_info = None

    if not ok:
        strict = StrictResult(0.0, Parse.NO_PREDICTION)
    elif answer_type == AnswerType.OPEN and not is_empty(prediction):
        verdict = judge.judge(record["question"], record["gold"], prediction)
        judge_info = {"name": judge.name, "score": verdict.score, "error": verdict.error, "cached": verdict.cached}
        meta["judge_verdict"] = verdict.score
        if verdict.score is None:
            strict = StrictResult(0.0, Parse.JUDGE_ERROR)
        else:
            strict = StrictResult(verdict.score, Parse.OK, prediction)
    else:
        strict = score_strict(answer_type, prediction, record["gold"], record.get("choices"))

    compat = compat_score(compat_rule, prediction, record.get("compat_gold"), meta) if compat_rule else strict.score
    record.update(
        scores={"strict": strict.score, "compat": compat},
        parse=strict.parse,
        extracted=strict.extracted,
        judge=judge_info,
    )
    return record
