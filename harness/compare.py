"""Regression check of a candidate run against a baseline run (``harness check``).

Both runs must have scored the same samples of the same task versions; each
task is then compared sample by sample. 0/1 scores get McNemar's test
(clustered when the task's questions share images), partial-credit scores a
paired bootstrap. A task fails only when its drop is larger than the tolerance
*and* significant after the correction across tasks: a CI gate should neither
pass a real regression nor block a checkpoint for noise.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tabulate import tabulate

from harness.idset import DIGEST, digest
from harness.records import read_records
from harness.protocol import HARNESS
from harness.results import RESULTS_FILE, RUN_FILE, SCORINGS, samples_file
from harness.stats import Z_95, MeanAccumulator, clustered_mcnemar, holm, mcnemar, paired_bootstrap

CORRECTIONS = ("holm", "none")
_EXAMPLES = 5  # ids named in a message about differing sample sets


class CheckRefused(ValueError):
    """The two runs cannot be compared; the message says why."""


@dataclass
class CheckOptions:
    scoring: str = "strict"
    max_drop: float = 1.0  # percentage points
    alpha: float = 0.05
    correction: str = "holm"
    tasks: list[str] | None = None  # None: every task of both runs
    seed: int = 1234
    bootstrap: int = 10_000
    allow_incomplete: bool = False  # compare runs with infrastructure failures (their unscored samples left out)

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise CheckRefused(f"scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
        if self.correction not in CORRECTIONS:
            raise CheckRefused(f"correction must be one of {', '.join(CORRECTIONS)}, not {self.correction!r}")
        if not 0 < self.alpha < 1:
            raise CheckRefused(f"alpha must be between 0 and 1, not {self.alpha}")
        if self.max_drop < 0:
            raise CheckRefused(f"max-drop must not be negative, not {self.max_drop}")
        if self.bootstrap < 100:
            raise CheckRefused(f"bootstrap needs at least 100 resamples, not {self.bootstrap}")


@dataclass
class TaskComparison:
    """One task's paired comparison; accuracies and differences in percentage points."""

    task: str
    n: int  # samples scored in both runs
    n_unscored: int  # shared samples left out: no score in one run or both
    n_clusters: int | None  # None: the task's questions are independent
    baseline: float
    candidate: float
    delta: float  # candidate minus baseline
    ci95: tuple[float, float] | None  # of delta
    test: str
    p_value: float  # one-sided, for a drop
    discordant: tuple[int, int] | None = None  # 0/1 scores: (only the baseline right, only the candidate right)
    p_adjusted: float = math.nan
    decision: str = ""  # "pass" or "fail"
    reason: str = ""

    @property
    def drop(self) -> float:
        return -self.delta


@dataclass
class CheckReport:
    baseline: str
    candidate: str
    options: CheckOptions
    comparisons: list[TaskComparison]
    not_compared: dict[str, str] = field(default_factory=dict)  # task -> why
    protocol: str = HARNESS  # both runs'

    @property
    def failed(self) -> list[TaskComparison]:
        return [c for c in self.comparisons if c.decision == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "candidate": self.candidate, "protocol": self.protocol,
                "options": asdict(self.options),
                "passed": not self.failed, "tasks": [asdict(c) for c in self.comparisons],
                "not_compared": self.not_compared}


# --------------------------------------------------------------------------- reading runs


def load_results(run_dir: Path, allow_incomplete: bool = False) -> dict[str, Any]:
    """A finished run's results file; refuses runs that are unfinished or not runs, and (unless
    ``allow_incomplete``) runs with infrastructure failures or an early stop."""
    if not run_dir.is_dir():
        raise CheckRefused(f"{run_dir}: no such run directory")
    run_path, results_path = run_dir / RUN_FILE, run_dir / RESULTS_FILE
    if not results_path.is_file():
        if run_path.is_file():
            raise CheckRefused(f"{run_dir} has no {RESULTS_FILE}: the run is still going, or it stopped before the "
                               f"end (crashed or killed); finish it with `python -m harness run ... --resume "
                               f"--output-path {run_dir}`")
        raise CheckRefused(f"{run_dir} is not a run directory (no {RUN_FILE}, no {RESULTS_FILE})")
    if run_path.is_file():
        run = _read_json(run_path)
        resumed = run.get("resumed") or []
        if resumed and (not run.get("finished") or max(resumed) > run["finished"]):
            raise CheckRefused(f"{run_dir}: the run was resumed at {max(resumed)} and has not finished since: "
                               f"it is still going, or the resumed run crashed; its {RESULTS_FILE} is out of date")
    results = _read_json(results_path)
    for key in ("results", "versions", "task_hashes"):
        if not isinstance(results.get(key), dict):
            raise CheckRefused(f"{results_path}: no {key!r} mapping; not a results file of this harness")
    if results.get("complete") is False and not allow_incomplete:
        raise CheckRefused(f"{run_dir} is incomplete ({'; '.join(results.get('incomplete') or [])}): finish it with "
                           f"`python -m harness run ... --resume --output-path {run_dir}`, or pass --allow-incomplete")
    return results


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckRefused(f"{path} is not valid JSON ({exc})") from None


@dataclass
class TaskScores:
    """What a comparison reads of one run's task, in a few bytes a sample (a run of a million
    samples is not held as records): each sample's id digest and score (NaN: unscored), in the
    file's order, and for a clustered task each sample's cluster key."""

    keys: np.ndarray  # DIGEST
    scores: np.ndarray  # float64
    clusters: list[str] | None


def _check_path(run_dir: Path, task: str) -> Path:
    path = samples_file(run_dir, task)
    if not path.is_file():
        raise CheckRefused(f"{path} is missing, though {RESULTS_FILE} lists task {task}")
    return path


def _read(path: Path) -> Iterator[dict]:
    try:
        yield from read_records(path)
    except ValueError as exc:
        raise CheckRefused(str(exc)) from exc


def task_scores(run_dir: Path, task: str, scoring: str, clustered: bool) -> TaskScores:
    path = _check_path(run_dir, task)
    keys, scores = bytearray(), array("d")
    clusters: list[str] | None = [] if clustered else None
    for record in _read(path):
        keys += digest(str(record["id"]))
        value = (record.get("scores") or {}).get(scoring)
        scores.append(math.nan if value is None else float(value))
        if clusters is not None:  # a record without a cluster is a cluster of its own
            clusters.append(f"cluster:{record['cluster']}" if record.get("cluster") is not None
                            else f"sample:{record['id']}")
    digests = np.frombuffer(bytes(keys), dtype=DIGEST)
    ordered = np.sort(digests)
    if len(ordered) and (ordered[1:] == ordered[:-1]).any():
        raise CheckRefused(f"{path}: sample {_first_repeated(path)!r} is recorded twice")
    return TaskScores(digests, np.frombuffer(scores, dtype=np.float64), clusters)


def _first_repeated(path: Path) -> str:
    seen = set()
    for record in _read(path):
        if record["id"] in seen:
            return record["id"]
        seen.add(record["id"])
    raise AssertionError(f"{path}: no id is repeated")


def _ids(run_dir: Path, task: str) -> set[str]:
    """A task's sample ids (only when the runs' sample sets differ, to name the differences)."""
    ids = set()
    for record in _read(_check_path(run_dir, task)):
        if record["id"] in ids:
            raise CheckRefused(f"{samples_file(run_dir, task)}: sample {record['id']!r} is recorded twice")
        ids.add(record["id"])
    return ids


def _some(ids: set[str]) -> str:
    shown = ", ".join(sorted(ids)[:_EXAMPLES])
    return shown + (", ..." if len(ids) > _EXAMPLES else "")


def _mismatches(task: str, base: dict, cand: dict, base_dir: Path, cand_dir: Path) -> list[str]:
    """Why the two runs' versions of a task cannot be compared (empty when they can)."""
    problems = []
    if base["versions"].get(task) != cand["versions"].get(task):
        problems.append(f"{task}: task version {base['versions'].get(task)!r} in the baseline, "
                        f"{cand['versions'].get(task)!r} in the candidate")
    base_hash, cand_hash = base["task_hashes"].get(task) or {}, cand["task_hashes"].get(task) or {}
    if base_hash.get("config") != cand_hash.get("config"):
        problems.append(f"{task}: the task configuration differs (fingerprint {base_hash.get('config')} in the "
                        f"baseline, {cand_hash.get('config')} in the candidate)")
    if base_hash.get("samples") != cand_hash.get("samples"):
        base_ids, cand_ids = _ids(base_dir, task), _ids(cand_dir, task)
        only_base, only_cand = base_ids - cand_ids, cand_ids - base_ids
        if only_base or only_cand:
            parts = [f"{len(only_base)} ids only in the baseline" + (f" ({_some(only_base)})" if only_base else ""),
                     f"{len(only_cand)} only in the candidate" + (f" ({_some(only_cand)})" if only_cand else "")]
            problems.append(f"{task}: the sample sets differ: {', '.join(parts)}; "
                            f"were both run with the same --limit and data?")
        else:
            problems.append(f"{task}: the same {len(base_ids)} sample ids, but their questions or gold answers "
                            f"differ (another dataset revision?)")
    return problems


# --------------------------------------------------------------------------- comparing one task


def _delta_interval(differences: np.ndarray, clusters: list[str] | None) -> tuple[float, float] | None:
    """Normal 95% interval of the mean difference, cluster-robust when clustered."""
    acc = MeanAccumulator()
    for i, value in enumerate(differences.tolist()):
        acc.add(value, None if clusters is None else clusters[i])
    se = acc.clustered_stderr if clusters is not None else acc.stderr
    if acc.mean is None or se is None:
        return None
    return 100 * (acc.mean - Z_95 * se), 100 * (acc.mean + Z_95 * se)


def compare_task(task: str, baseline: TaskScores, candidate: TaskScores, options: CheckOptions) -> TaskComparison | str:
    """The paired comparison of one task (the samples both runs hold, in the baseline's order), or
    why it cannot be made."""
    _, in_base, in_cand = np.intersect1d(baseline.keys, candidate.keys, assume_unique=True, return_indices=True)
    order = np.argsort(in_base)
    in_base, in_cand = in_base[order], in_cand[order]
    both = ~np.isnan(baseline.scores[in_base]) & ~np.isnan(candidate.scores[in_cand])
    if not both.any():
        return f"no sample has a {options.scoring} score in both runs ({len(in_base)} shared)"
    base, cand = baseline.scores[in_base[both]], candidate.scores[in_cand[both]]
    clusters = None if baseline.clusters is None else [baseline.clusters[i] for i in in_base[both].tolist()]
    binary = bool(np.isin(base, (0.0, 1.0)).all() and np.isin(cand, (0.0, 1.0)).all())
    common = dict(task=task, n=len(base), n_unscored=len(in_base) - len(base),
                  n_clusters=len(set(clusters)) if clusters else None,
                  baseline=100 * float(base.mean()), candidate=100 * float(cand.mean()),
                  delta=100 * float(cand.mean() - base.mean()))
    if not binary:
        boot = paired_bootstrap(base, cand, clusters, options.bootstrap, options.seed)
        return TaskComparison(**common, ci95=(-100 * boot.ci95[1], -100 * boot.ci95[0]), test=boot.method,
                              p_value=boot.p_value)
    lost = (base == 1) & (cand == 0)
    gained = (base == 0) & (cand == 1)
    if clusters is None:
        test = mcnemar(int(lost.sum()), int(gained.sum()))
    else:
        codes = np.unique(clusters, return_inverse=True)[1]
        per_cluster = np.bincount(codes, weights=lost.astype(float) - gained.astype(float))
        test = clustered_mcnemar(np.rint(per_cluster).astype(int))
    return TaskComparison(**common, ci95=_delta_interval(cand - base, clusters), test=test.method,
                          p_value=test.p_value, discordant=(int(lost.sum()), int(gained.sum())))


def _tolerance(points: float) -> str:
    return f"{points:.1f}" if round(points, 1) == points else f"{points:g}"


def decide(comparison: TaskComparison, options: CheckOptions) -> None:
    """Fill the decision and its reason in words (after the p-values are adjusted)."""
    drop, p, tolerance = comparison.drop, comparison.p_adjusted, _tolerance(options.max_drop)
    comparison.decision = "pass"
    if abs(drop) < 1e-9:
        comparison.reason = "no change"
    elif drop < 0:
        comparison.reason = "improved"
    elif drop <= options.max_drop:
        comparison.reason = f"drop {drop:.1f} pts within tolerance {tolerance}"
    elif p < options.alpha:
        comparison.decision = "fail"
        comparison.reason = f"drop {drop:.1f} pts > {tolerance} and significant (p={p:.2g})"
    else:
        comparison.reason = f"drop {drop:.1f} pts not significant (p={p:.2g})"


# --------------------------------------------------------------------------- the check


def check_runs(baseline: Path, candidate: Path, options: CheckOptions | None = None) -> CheckReport:
    """Compare every task the two runs share; raises :class:`CheckRefused` when they cannot be compared."""
    options = options or CheckOptions()
    base, cand = load_results(baseline, options.allow_incomplete), load_results(candidate, options.allow_incomplete)
    protocols = (base.get("protocol", HARNESS), cand.get("protocol", HARNESS))
    if protocols[0] != protocols[1]:
        raise CheckRefused(f"the baseline {baseline} follows the {protocols[0]} protocol and the candidate "
                           f"{candidate} the {protocols[1]} protocol: their questions, tools and scoring differ; "
                           f"run the candidate with --protocol {protocols[0]}")
    base_tasks, cand_tasks = list(base["results"]), list(cand["results"])
    wanted = options.tasks or list(dict.fromkeys(base_tasks + cand_tasks))
    unknown = [t for t in wanted if t not in base_tasks and t not in cand_tasks]
    if unknown:
        raise CheckRefused(f"task(s) {', '.join(unknown)} in neither run; the runs hold "
                           f"{', '.join(dict.fromkeys(base_tasks + cand_tasks))}")
    not_compared = {t: "only in the baseline" if t in base_tasks else "only in the candidate"
                    for t in wanted if (t in base_tasks) != (t in cand_tasks)}
    shared = [t for t in wanted if t in base_tasks and t in cand_tasks]
    if not shared:
        listed = "; ".join(f"{t} {why}" for t, why in not_compared.items())
        raise CheckRefused(f"the runs share no task ({listed})")
    problems = [p for t in shared for p in _mismatches(t, base, cand, baseline, candidate)]
    if problems:
        raise CheckRefused("the runs are not comparable:\n  " + "\n  ".join(problems))

    comparisons = []
    for task in shared:
        clustered = bool(((base.get("configs") or {}).get(task) or {}).get("fields", {}).get("cluster"))
        outcome = compare_task(task, task_scores(baseline, task, options.scoring, clustered),
                               task_scores(candidate, task, options.scoring, clustered), options)
        if isinstance(outcome, str):
            not_compared[task] = outcome
        else:
            comparisons.append(outcome)
    raw = [c.p_value for c in comparisons]
    adjusted = holm(raw) if options.correction == "holm" else raw
    for comparison, p in zip(comparisons, adjusted):
        comparison.p_adjusted = p
        decide(comparison, options)
    return CheckReport(str(baseline), str(candidate), options, comparisons, not_compared, protocols[0])


def _pts(value: float) -> str:
    return f"{value:+.1f}"


def format_report(report: CheckReport) -> str:
    """The table a person reads: one row per task, saying why it passed or failed."""
    p_header = "p (Holm)" if report.options.correction == "holm" else "p"
    rows = [[c.task, c.n, f"{c.baseline:.1f}", f"{c.candidate:.1f}", _pts(c.delta),
             "-" if c.ci95 is None else f"[{_pts(c.ci95[0])}, {_pts(c.ci95[1])}]",
             c.test, f"{c.p_adjusted:.3g}", c.decision, c.reason] for c in report.comparisons]
    headers = ["task", "n", "baseline", "candidate", "delta", "95% CI", "test", p_header, "decision", "reason"]
    lines = [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)]
    lines += [f"{c.task}: {c.n_unscored} shared samples without a {report.options.scoring} score in one run or "
              f"both were left out" for c in report.comparisons if c.n_unscored]
    lines += [f"{task}: not compared, {why}" for task, why in report.not_compared.items()]
    failed, options = report.failed, report.options
    verdict = (f"FAIL: {len(failed)} task(s) regressed: {', '.join(c.task for c in failed)}" if failed
               else "PASS: no significant drop beyond the tolerance")
    lines.append(f"\n{verdict} ({options.scoring} scores, {report.protocol} protocol, "
                 f"tolerance {_tolerance(options.max_drop)} pts, "
                 f"alpha {options.alpha:g}, correction {options.correction})")
    return "\n".join(lines)
