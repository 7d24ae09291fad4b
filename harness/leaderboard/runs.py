"""Run records for the leaderboard: every ``results.json`` under some folders, and the choice of one per row and task.

A run fills the paper rows named by its label (``python -m harness run --label NAME``)
or, when it has none, by its system. Only complete runs are used (every sample a
model outcome: no infrastructure failure, no early stop); incomplete ones are
listed as skipped, or, when asked for, used after every complete one and
flagged. Where several runs match a (row, task), the paper's tables take a run
of the paper protocol over any other; then the newest complete one is used; a
run on part of a benchmark (``--limit``) is used only when no run of the whole
benchmark exists, and is flagged. Every choice among several runs names the
others.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.leaderboard.model import LeaderboardError
from harness.protocol import HARNESS, PROTOCOLS
from harness.results import RESULTS_FILE
from harness.types import Status

log = logging.getLogger(__name__)

_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class TaskScore:
    """One task's scores in one run; fractions in [0, 1] as the results file holds them."""

    task: str
    n: int
    full_size: int | None  # the task's size, when the run recorded it
    strict: float | None
    compat: float | None
    strict_ci: tuple[float, float] | None = None
    compat_ci: tuple[float, float] | None = None
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)
    synthetic: bool = False

    def value(self, scoring: str) -> float | None:
        return self.strict if scoring == "strict" else self.compat

    def ci(self, scoring: str) -> tuple[float, float] | None:
        return self.strict_ci if scoring == "strict" else self.compat_ci

    @property
    def partial(self) -> bool:
        return self.full_size is not None and self.n < self.full_size


@dataclass(frozen=True)
class Run:
    directory: Path
    system: str
    label: str | None
    date: datetime
    limit: float | None
    tasks: dict[str, TaskScore]
    protocol: str = HARNESS  # the evaluation protocol the run followed (paper or harness)
    complete: bool = True  # every sample a model outcome (results.json's "complete")
    incomplete: tuple[str, ...] = ()  # why not, in words

    @property
    def key(self) -> str:
        """The name that matches paper rows: the label where given, else the system."""
        return self.label or self.system

    def is_partial(self, task: str) -> bool:
        score = self.tasks[task]
        return score.partial or (self.limit is not None and score.full_size is None)

    def describe_partial(self, task: str) -> str:
        score = self.tasks[task]
        size = f"{score.n} of {score.full_size}" if score.full_size is not None else f"{score.n}"
        why = f"--limit {self.limit:g}" if self.limit is not None else "the run did not finish"
        return f"{size} samples ({why})"


@dataclass(frozen=True)
class Choice:
    run: Run
    score: TaskScore
    others: tuple[Run, ...] = ()  # the other runs that matched the same row and task

    @property
    def partial(self) -> bool:
        return self.run.is_partial(self.score.task)

    @property
    def flagged(self) -> bool:
        """Ours is not a number for the whole benchmark: part of it, or an incomplete run."""
        return self.partial or not self.run.complete

    def describe_flag(self) -> str:
        if not self.run.complete:
            return "an incomplete run (" + "; ".join(self.run.incomplete) + ")"
        return self.run.describe_partial(self.score.task)


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise LeaderboardError(f"{where}: expected a number, got {value!r}")
    return None if math.isnan(value) else float(value)


def _interval(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise LeaderboardError(f"{where}: expected [low, high], got {value!r}")
    low, high = _fraction(value[0], where), _fraction(value[1], where)
    return None if low is None or high is None else (low, high)


def _date(text: Any, where: str) -> datetime:
    if not text:
        return _OLDEST
    try:
        date = datetime.fromisoformat(str(text))
    except ValueError:
        raise LeaderboardError(f"{where}: date {text!r} is not an ISO date") from None
    return date if date.tzinfo else date.replace(tzinfo=timezone.utc)


def read_run(path: Path) -> Run:
    """A run from its ``results.json``; the error names the file and the field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaderboardError(f"{path}: not a readable results file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise LeaderboardError(f"{path}: no 'results' object")
    config = data.get("config") or {}
    system = config.get("system")
    if not system or not isinstance(system, str):
        raise LeaderboardError(f"{path}: config.system is missing (not a results file of `python -m harness run`?)")
    label = config.get("label") or None
    if label is not None and not isinstance(label, str):
        raise LeaderboardError(f"{path}: config.label must be a string, got {label!r}")
    tasks = {}
    for task, entry in data["results"].items():
        where = f"{path}: results.{task}"
        if not isinstance(entry, dict):
            raise LeaderboardError(f"{where}: expected an object")
        metric = next(iter((data.get("higher_is_better") or {}).get(task) or {"accuracy": True}))
        sizes = (data.get("n-samples") or {}).get(task) or {}
        dataset = ((data.get("configs") or {}).get(task) or {}).get("dataset") or {}
        score = TaskScore(
            task=task, n=int(entry.get("n_scored", entry.get("n", 0)) or 0), full_size=sizes.get("original"),
            strict=_fraction(entry.get(f"{metric},strict"), f"{where}.{metric},strict"),
            compat=_fraction(entry.get(f"{metric},compat"), f"{where}.{metric},compat"),
            strict_ci=_interval(entry.get(f"{metric}_ci95,strict"), f"{where}.{metric}_ci95,strict"),
            compat_ci=_interval(entry.get(f"{metric}_ci95,compat"), f"{where}.{metric}_ci95,compat"),
            subsets=entry.get("subsets") or {}, synthetic=dataset.get("kind") == "synthetic")
        if score.strict is None and score.compat is None:
            log.warning("%s: no score for %s; left out", path, task)
            continue
        tasks[task] = score
    limit = config.get("limit")
    protocol = data.get("protocol", HARNESS)
    if protocol not in PROTOCOLS:
        raise LeaderboardError(f"{path}: protocol {protocol!r} is none of {', '.join(PROTOCOLS)}")
    complete, incomplete = _completeness(data)
    return Run(path.parent, system, label, _date(data.get("date"), f"{path}: date"),
               float(limit) if limit is not None else None, tasks, protocol, complete, incomplete)


def _completeness(data: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
    """Whether a results file is complete, and why not. Files from before the field existed are
    judged by their statuses and load errors."""
    if "complete" in data:
        return bool(data["complete"]), tuple(str(r) for r in data.get("incomplete") or ())
    reasons = [f"{task}: not run ({error})" for task, error in (data.get("errors") or {}).items()]
    for task, entry in data["results"].items():
        counts = entry.get("status_counts") if isinstance(entry, dict) else None
        failed = {s: n for s, n in (counts or {}).items() if s in Status.INFRASTRUCTURE and n}
        if failed:
            reasons.append(f"{task}: {sum(failed.values())} infrastructure failures")
    return not reasons, tuple(reasons)


def find_results(roots: Iterable[Path], name: str = RESULTS_FILE) -> list[Path]:
    """Files called ``name`` under the folders (a root that is such a file counts itself)."""
    files: set[Path] = set()
    for root in roots:
        if not root.exists():
            raise LeaderboardError(f"{root}: no such folder")
        files.update(([root] if root.name == name else []) if root.is_file() else root.rglob(name))
    return sorted(files)


class RunIndex:
    """Every run found, and the one used for each (row, task). Incomplete runs are skipped
    (``skipped``) unless ``include_incomplete``."""

    def __init__(self, runs: Sequence[Run], include_incomplete: bool = False) -> None:
        self.runs = [run for run in runs if run.complete or include_incomplete]
        self.skipped = [run for run in runs if not (run.complete or include_incomplete)]
        self._by_key: dict[str, list[Run]] = {}
        for run in self.runs:
            self._by_key.setdefault(run.key, []).append(run)

    @classmethod
    def from_folders(cls, roots: Iterable[Path], include_incomplete: bool = False) -> "RunIndex":
        return cls([read_run(path) for path in find_results(roots)], include_incomplete)

    def keys(self) -> list[str]:
        return sorted(self._by_key)

    def tasks(self, key: str) -> list[str]:
        return sorted({task for run in self._by_key.get(key, []) for task in run.tasks})

    def choose(self, key: str, task: str, protocol: str | None = None) -> Choice | None:
        """The newest complete run of ``key`` on the whole of ``task``; else the newest on part of it;
        incomplete runs (when included) only after those. With ``protocol``, a run of that protocol
        wins over any run of another. The choice names the other runs that matched."""
        matching = [run for run in self._by_key.get(key, []) if task in run.tasks]
        if not matching:
            return None
        ranked = sorted(matching, reverse=True, key=lambda run: (
            run.protocol == protocol, run.complete, not run.is_partial(task), run.date, str(run.directory)))
        return Choice(ranked[0], ranked[0].tasks[task], tuple(ranked[1:]))
