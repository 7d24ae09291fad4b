"""Scoring a run record: strict (default) and paper-compatible, side by side.

Scoring reads only the record, never the dataset, so a finished run can be
re-scored (``python -m harness score RUN_DIR``) with new rules or a judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.protocol import HARNESS, PAPER
from harness.scoring.compat import COMPAT_RULES, compat_score
from harness.scoring.extract import is_empty
from harness.scoring.judge import ExactMatchJudge, Judge, JudgeSpec, make_judge, make_paper_judge
from harness.scoring.strict import MRA_THRESHOLDS, Parse, StrictResult, mean_relative_accuracy, score_strict
from harness.scoring.values import answer_value
from harness.types import AnswerType, Status

__all__ = [
    "COMPAT_RULES", "ExactMatchJudge", "Judge", "JudgeSpec", "MRA_THRESHOLDS", "Parse",
    "Scorer", "make_judge", "make_scorer", "mean_relative_accuracy", "score_record", "score_strict",
]


def score_record(record: dict[str, Any], compat_rule: str | None, judge: Judge,
                 paper_judge: Judge | None = None) -> dict[str, Any]:
    """Fill ``scores``, ``parse``, ``extracted`` and ``judge`` in a record; returns it.

    ``paper_judge`` (the paper protocol) scores the ``judge`` rule in place of
    ``judge``'s verdict, for every prediction, failed ones included, as the
    original did; when it fails the paper-compatible score is missing (None).
    """
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

    value = answer_value(record) if ok else None
    if compat_rule == "judge" and paper_judge is not None:
        verdict = paper_judge.judge(meta.get("judge_question", record["question"]), record.get("compat_gold"), value)
        record["paper_judge"] = {"name": paper_judge.name, "score": verdict.score, "error": verdict.error,
                                 "cached": verdict.cached}
        compat = verdict.score
    elif compat_rule:
        compat = compat_score(compat_rule, value, record.get("compat_gold"), meta)
    else:
        compat = strict.score
    record.update(
        scores={"strict": strict.score, "compat": compat},
        parse=strict.parse,
        extracted=strict.extracted,
        judge=judge_info,
    )
    return record


@dataclass
class Scorer:
    """How a run scores its records: the judge for open answers, and under the paper
    protocol the original's judge for the ``judge`` rule (built on first use, so runs
    without such a task need no key for it)."""

    judge: Judge
    paper_judge: Callable[[], Judge] | None = None
    _paper: Judge | None = None

    def score(self, record: dict[str, Any], compat_rule: str | None) -> dict[str, Any]:
        paper = None
        if compat_rule == "judge" and self.paper_judge is not None:
            if self._paper is None:
                self._paper = self.paper_judge()
            paper = self._paper
        return score_record(record, compat_rule, self.judge, paper)


def make_scorer(spec: JudgeSpec, protocol: str = HARNESS, data_dir: str | Path | None = None) -> Scorer:
    paper = (lambda: make_paper_judge(spec, data_dir)) if protocol == PAPER else None
    return Scorer(make_judge(spec), paper)
