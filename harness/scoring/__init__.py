"""Scoring a run record: strict (default) and paper-compatible, side by side.

Scoring reads only the record, never the dataset, so a finished run can be
re-scored (``python -m harness score RUN_DIR``) with new rules or a judge.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
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

    A prediction that failed for the infrastructure's sake (an API error, an
    unreadable image, a failed tool server: ``Status.INFRASTRUCTURE``) is not
    scored at all, and a failed judge leaves its score missing: neither may
    read as a wrong answer.
    """
    answer_type = record["answer_type"]
    record.pop("paper_judge", None)  # a re-scored record keeps no verdict of an earlier judge
    if answer_type == AnswerType.NONE:
        record.update(scores={"strict": None, "compat": None}, parse=Parse.NOT_SCORED, extracted=None, judge=None)
        return record
    if record["status"] in Status.INFRASTRUCTURE:
        record.update(scores={"strict": None, "compat": None}, parse=Parse.INFRASTRUCTURE, extracted=None,
                      judge=None)
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
            strict = StrictResult(None, Parse.JUDGE_ERROR)
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
    elif compat_rule == "judge" and judge_info is not None and judge_info["score"] is None:
        compat = None  # the judge failed: no verdict, which is not a 0
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
    without such a task need no key for it). Thread-safe: a run scores records on
    ``concurrency`` threads when a judge calls a model."""

    judge: Judge
    paper_judge: Callable[[], Judge] | None = None
    concurrency: int = 1
    _paper: Judge | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def remote(self) -> bool:
        """Whether scoring may call a model (and so is worth doing on several threads)."""
        return not isinstance(self.judge, ExactMatchJudge) or self.paper_judge is not None

    def score(self, record: dict[str, Any], compat_rule: str | None) -> dict[str, Any]:
        paper = None
        if compat_rule == "judge" and self.paper_judge is not None:
            with self._lock:
                if self._paper is None:
                    self._paper = self.paper_judge()
                paper = self._paper
        return score_record(record, compat_rule, self.judge, paper)

    def close(self) -> None:
        self.judge.close()
        if self._paper is not None:
            self._paper.close()


def make_scorer(spec: JudgeSpec, protocol: str = HARNESS, data_dir: str | Path | None = None) -> Scorer:
    paper = (lambda: make_paper_judge(spec, data_dir)) if protocol == PAPER else None
    return Scorer(make_judge(spec), paper, concurrency=spec.max_concurrency)
