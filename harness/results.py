"""Per-task summaries and the run's results file.

The results file follows the layout of lm-evaluation-harness's results files
(``results``, ``configs``, ``versions``, ``n-samples``, ``higher_is_better``,
``config``, ``git_hash``, ``task_hashes``) so existing tooling can read it.
Metric keys are ``"<metric>,<scoring>"`` with scoring ``strict`` or ``compat``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from harness.idset import IdSet
from harness.protocol import HARNESS, HEADLINE_SCORE
from harness.rundir import RESULTS_FILE, RUN_FILE, samples_file  # noqa: F401  (read here by most)
from harness.stats import MeanAccumulator, ci95
from harness.types import Status

SCORINGS = ("strict", "compat")
_HASH_MOD = 1 << 256


JUDGE_ERROR = "judge_error"  # an infrastructure failure of scoring: the judge gave no verdict


def infrastructure_failure(record: dict) -> str | None:
    """What failed in the infrastructure for this record (its status, or ``judge_error`` when a
    judge gave no verdict), or None when the record is a model outcome. Such records are never
    scored as wrong answers, make a run incomplete, and are redone by ``--resume``."""
    status = record.get("status")
    if status in Status.INFRASTRUCTURE:
        return status
    if record.get("parse") == JUDGE_ERROR:
        return JUDGE_ERROR
    paper = record.get("paper_judge")
    if isinstance(paper, dict) and paper.get("score") is None:
        return JUDGE_ERROR
    return None


_HASH_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # json.dumps(..., default=str), built once


def sample_hash(record: dict) -> int:
    blob = _HASH_ENCODER.encode([record["id"], record["question"], record.get("gold")])
    return int.from_bytes(hashlib.sha256(blob.encode()).digest(), "big")


@dataclass
class TaskSummary:
    """Streaming summary of one task's records: :meth:`add` for records of any origin (a
    second record of a sample is counted as a duplicate and ignored), :meth:`count` for
    records the caller knows to be the first of their sample (a run, as it writes them)."""

    clustered: bool
    scores: dict[str, MeanAccumulator] = field(default_factory=lambda: {s: MeanAccumulator() for s in SCORINGS})
    subsets: dict[str, dict[str, MeanAccumulator]] = field(default_factory=dict)
    status: Counter = field(default_factory=Counter)
    parse: Counter = field(default_factory=Counter)
    judges: Counter = field(default_factory=Counter)
    infrastructure: Counter = field(default_factory=Counter)
    sample_set_hash: int = 0  # order-independent: the sum of per-sample hashes
    scored: int = 0
    n: int = 0
    duplicates: int = 0  # records of a sample already counted (a file written by two processes): ignored
    _ids: IdSet = field(default_factory=IdSet, repr=False)

    def add(self, record: dict) -> None:
        if not self._ids.add(record["id"]):
            self.duplicates += 1
            return
        self.count(record)

    def count(self, record: dict) -> None:
        self.n += 1
        self.status[record["status"]] += 1
        self.parse[record.get("parse") or "none"] += 1
        self.sample_set_hash = (self.sample_set_hash + sample_hash(record)) % _HASH_MOD
        failure = infrastructure_failure(record)
        if failure is not None:  # never scored (records of older versions may carry a 0 for it)
            self.infrastructure[failure] += 1
            return
        if record.get("judge"):
            self.judges[record["judge"]["name"]] += 1
        scores = record.get("scores") or {}
        if scores.get("strict") is None:
            return
        self.scored += 1
        cluster = record.get("cluster") if self.clustered else None
        subset = self.subsets.get(record.get("subset") or "")
        if subset is None:
            subset = self.subsets[record.get("subset") or ""] = {s: MeanAccumulator() for s in SCORINGS}
        for scoring in SCORINGS:
            if scores.get(scoring) is not None:  # e.g. the paper judge failed: no paper-compatible score
                self.scores[scoring].add(float(scores[scoring]), cluster)
                subset[scoring].add(float(scores[scoring]))

    def state(self) -> dict[str, Any]:
        """Everything the summary holds but its ids, as JSON (:meth:`from_state` reads it back)."""
        return {"clustered": self.clustered, "n": self.n, "scored": self.scored, "duplicates": self.duplicates,
                "sample_set_hash": f"{self.sample_set_hash:064x}",
                "scores": {s: asdict(acc) for s, acc in self.scores.items()},
                "subsets": {name: {s: asdict(acc) for s, acc in accs.items()} for name, accs in self.subsets.items()},
                **{name: dict(getattr(self, name)) for name in _COUNTERS}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TaskSummary":
        summary = cls(clustered=bool(state["clustered"]), n=int(state["n"]), scored=int(state["scored"]),
                      duplicates=int(state["duplicates"]), sample_set_hash=int(state["sample_set_hash"], 16),
                      scores={s: MeanAccumulator(**acc) for s, acc in state["scores"].items()},
                      subsets={name: {s: MeanAccumulator(**acc) for s, acc in accs.items()}
                               for name, accs in state["subsets"].items()},
                      **{name: Counter(state[name]) for name in _COUNTERS})
        return summary

    @property
    def model_failures(self) -> int:
        """Samples the system failed for reasons of its own (an exception, a timeout, no answer, ...)."""
        return sum(n for status, n in self.status.items()
                   if status != Status.OK and status not in Status.INFRASTRUCTURE)

    def to_dict(self, metric: str = "accuracy") -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "n_scored": self.scored, "n_model_failures": self.model_failures,
                               "n_infrastructure_failures": sum(self.infrastructure.values()),
                               "infrastructure_counts": dict(sorted(self.infrastructure.items()))}
        if self.duplicates:
            out["duplicate_records_ignored"] = self.duplicates
        for scoring, acc in self.scores.items():
            se = acc.clustered_stderr if self.clustered else acc.stderr
            out[f"{metric},{scoring}"] = acc.mean
            out[f"{metric}_stderr,{scoring}"] = acc.stderr
            if self.clustered:
                out[f"{metric}_clustered_stderr,{scoring}"] = acc.clustered_stderr
            out[f"{metric}_ci95,{scoring}"] = ci95(acc.mean, se)
        out["status_counts"] = dict(sorted(self.status.items()))
        out["parse_counts"] = dict(sorted(self.parse.items()))
        if self.judges:
            out["judges"] = dict(self.judges)
        if len(self.subsets) > 1:
            out["subsets"] = {
                name: {"n": accs["strict"].n, **{f"{metric},{s}": accs[s].mean for s in SCORINGS}}
                for name, accs in sorted(self.subsets.items())
            }
        return out


_COUNTERS = ("status", "parse", "judges", "infrastructure")


def summarize_records(records: Iterable[dict], clustered: bool) -> TaskSummary:
    summary = TaskSummary(clustered=clustered)
    for record in records:
        summary.add(record)
    return summary


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    packages = {}
    for name in ("valor-harness", "numpy", "datasets", "huggingface-hub", "pillow", "torch", "transformers", "openai"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": packages}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomically(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def incomplete_reasons(run: dict[str, Any], summaries: dict[str, TaskSummary]) -> list[str]:
    """Why a run's numbers are not the whole benchmark's (empty: the run is complete): a task
    not loaded or not recorded, samples missing, infrastructure failures, an early stop."""
    reasons = []
    task_meta = run.get("task_meta", {})
    errors = run.get("errors") or {}
    for task in run["tasks"]:
        summary = summaries.get(task)
        if task in errors:
            reasons.append(f"{task}: not run ({errors[task]})")
            continue
        if summary is None:
            reasons.append(f"{task}: no records")
            continue
        expected = task_meta.get(task, {}).get("expected")
        if expected is not None and summary.n < expected:
            reasons.append(f"{task}: {summary.n} of {expected} samples recorded")
        if summary.infrastructure:
            counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(summary.infrastructure.items()))
            reasons.append(f"{task}: {sum(summary.infrastructure.values())} infrastructure failures ({counts})")
    if run.get("stopped"):
        reasons.append(f"stopped early: {run['stopped']}")
    return reasons


def build_results(run: dict[str, Any], summaries: dict[str, TaskSummary]) -> dict[str, Any]:
    """The results file from the run description (run.json) and the task summaries."""
    configs = run["task_configs"]
    task_meta = run.get("task_meta", {})
    incomplete = incomplete_reasons(run, summaries)
    results, n_samples, hashes = {}, {}, {}
    for task, summary in summaries.items():
        metric = configs[task].get("metric", "accuracy")
        results[task] = {"alias": task, **summary.to_dict(metric)}
        n_samples[task] = {"original": task_meta.get(task, {}).get("size"), "effective": summary.n}
        hashes[task] = {"config": task_meta.get(task, {}).get("fingerprint"),
                        "samples": f"{summary.sample_set_hash:064x}"}
    return {
        "results": results,
        "groups": {},
        "configs": {t: configs[t] for t in summaries},
        "versions": {t: configs[t].get("version") for t in summaries},
        "n-samples": n_samples,
        "higher_is_better": {t: {configs[t].get("metric", "accuracy"): True} for t in summaries},
        "protocol": run.get("protocol", HARNESS),
        # The score each task's headline number reads: the original's rule under the paper protocol.
        "headline": HEADLINE_SCORE[run.get("protocol", HARNESS)],
        "config": {k: run.get(k) for k in ("system", "label", "system_config", "tasks", "limit", "seed", "judge",
                                           "protocol")},
        "task_hashes": hashes,
        "task_revisions": {t: task_meta.get(t, {}).get("revision") for t in summaries},
        "errors": run.get("errors", {}),
        # Complete: every sample of every task recorded as a model outcome. The leaderboard and
        # `check` use only complete runs unless told otherwise.
        "complete": not incomplete,
        "incomplete": incomplete,
        "infrastructure_failures": sum(sum(s.infrastructure.values()) for s in summaries.values()),
        "git_hash": run.get("git_hash"),
        "date": now_iso(),
        "started": run.get("started"),
        "environment": run.get("environment"),
    }
