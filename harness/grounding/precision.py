"""Label precision of each step against a hand-labelled sample (the paper checked 100 images).

A labels file has one JSON line per checked image::

    {"id": "<record id>", "correct": [candidate indices that are true objects of their label], "missed": 2}

``correct`` lists the candidates (numbered as on the review pages) that truly
show one object of their phrase; ``missed`` (optional, default 0) counts true
objects of the image's phrases that no candidate found. For each step (the
detector's candidates, then after coarse, crop and dedup) a surviving box is a
true positive when it is listed in ``correct`` and a false positive otherwise;
a correct box the step has lost, and every missed object, is a false negative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.grounding.export import PRECISION_STAGES, read_records, records_path, survivors
from harness.jsonl import json_objects


class LabelsError(ValueError):
    """A labels file that does not fit its records; the message names the file, line and id."""


@dataclass
class StageScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


@dataclass
class PrecisionReport:
    images: int = 0
    stages: dict[str, StageScore] = field(default_factory=lambda: {s: StageScore() for s in PRECISION_STAGES})

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images,
                "stages": {name: {**asdict(score), "precision": score.precision, "recall": score.recall}
                           for name, score in self.stages.items()}}

    def table(self) -> list[list[Any]]:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        return [[name, s.tp, s.fp, s.fn, fmt(s.precision), fmt(s.recall)] for name, s in self.stages.items()]


def _indices(value: Any, where: str, key: str, count: int) -> set[int]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise LabelsError(f"{where}: '{key}' must be a list of candidate indices, got {value!r}")
    wrong = sorted(i for i in value if not 0 <= i < count)
    if wrong:
        raise LabelsError(f"{where}: '{key}' names candidates {wrong}, but the record has {count} "
                          f"(indices 0 to {count - 1})")
    return set(value)


def label_precision(records_file: str | Path, labels_file: str | Path) -> PrecisionReport:
    """Score every step against the labels (see the module's docstring)."""
    records = {r["id"]: r for r in read_records(records_file)}
    labels_file = Path(labels_file)
    if not labels_file.is_file():
        raise FileNotFoundError(f"labels file {labels_file} does not exist")
    report = PrecisionReport()
    seen: dict[str, int] = {}
    for number, entry in json_objects(labels_file, LabelsError):
        where = f"{labels_file}:{number}"
        record_id = entry.get("id")
        if not isinstance(record_id, str):
            raise LabelsError(f"{where}: needs a string 'id'")
        where = f"{where} (id {record_id})"
        if record_id in seen:
            raise LabelsError(f"{where}: already labelled on line {seen[record_id]}")
        seen[record_id] = number
        record = records.get(record_id)
        if record is None:
            raise LabelsError(f"{where}: no such record in {records_path(records_file)}")
        alive = survivors(record)
        if not alive:
            state = record["status"] + (f" at {record['stage']}" if record.get("stage") else "")
            raise LabelsError(f"{where}: the record is {state}, not a verified image; only records with status ok "
                              f"can be scored")
        correct = _indices(entry.get("correct"), where, "correct", len(record["candidates"]))
        missed = entry.get("missed", 0)
        if isinstance(missed, bool) or not isinstance(missed, int) or missed < 0:
            raise LabelsError(f"{where}: 'missed' must be a whole number of at least 0, got {missed!r}")
        report.images += 1
        for stage, kept in alive.items():
            score = report.stages[stage]
            kept_set = set(kept)
            score.tp += len(kept_set & correct)
            score.fp += len(kept_set - correct)
            score.fn += len(correct - kept_set) + missed
    if not report.images:
        raise LabelsError(f"{labels_file}: no labelled images")
    return report
