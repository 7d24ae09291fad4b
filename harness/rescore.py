"""Scoring a finished run again (``python -m harness score``) from its records alone, under the
run's lock, with the judge it recorded or a new one."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.idset import IdSet
from harness.protocol import HARNESS
from harness.records import read_records, write_records_atomically
from harness.results import RUN_FILE, TaskSummary, samples_file, write_json_atomically
from harness.rundir import RunError, load_run
from harness.runlock import RunLock
from harness.runner import score_guarded, summarize_run
from harness.runstate import save_summary
from harness.scoring import JudgeSpec, make_scorer

log = logging.getLogger(__name__)


def recorded_judge(run_dir: Path) -> JudgeSpec:
    """The judge a run was scored with (its run.json)."""
    return _judge_spec(load_run(run_dir), run_dir)


def _judge_spec(run: dict[str, Any], run_dir: Path) -> JudgeSpec:
    recorded = run.get("judge") or {}
    known = {f.name for f in dataclasses.fields(JudgeSpec)}
    try:
        return JudgeSpec(**{k: v for k, v in recorded.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise RunError(f"{run_dir / RUN_FILE}: the recorded judge is not readable ({exc})") from None


def rescore(run_dir: Path, judge_spec: JudgeSpec | None = None) -> dict[str, Any]:
    """Score a run's saved predictions again, with the current rules and an optional new judge
    (judged on the judge's ``max_concurrency`` threads). Records stream through: a few are held at
    a time, whatever the run's size, and each task's summary is kept as its records are written."""
    run = load_run(run_dir)
    if judge_spec is not None:
        run["judge"] = judge_spec.to_dict()
    scorer = make_scorer(_judge_spec(run, run_dir), run.get("protocol", HARNESS), run.get("data_dir"))
    summaries: dict[str, TaskSummary] = {}
    with RunLock(run_dir), contextlib.closing(scorer):
        write_json_atomically(run_dir / RUN_FILE, run)
        with ThreadPoolExecutor(scorer.concurrency, thread_name_prefix="scoring") as pool:
            for task in run["tasks"]:
                path = samples_file(run_dir, task)
                if path.is_file():
                    compat = run["task_configs"][task].get("compat")
                    summary = summaries[task] = TaskSummary(bool(run["task_configs"][task]["fields"].get("cluster")))
                    records = _unique(read_records(path))
                    if scorer.remote:  # a judge that calls a model: its requests overlap on the pool
                        scored = _in_order(pool, lambda r: score_guarded(r, compat, scorer), records,
                                           2 * scorer.concurrency)
                    else:  # local rules: a thread's hand-off would cost more than the scoring
                        scored = (score_guarded(record, compat, scorer) for record in records)
                    count = write_records_atomically(path, _counted(scored, summary))
                    save_summary(path, summary)
                    log.info("re-scored %d records of %s", count, task)
        return summarize_run(run_dir, run, summaries)


def _in_order(pool: ThreadPoolExecutor, work: Callable[[dict], dict], records: Iterator[dict],
              ahead: int) -> Iterator[dict]:
    """``work`` on each record on the pool, results in the records' order, at most ``ahead``
    records in flight (``Executor.map`` would read them all first)."""
    pending: deque[Future] = deque()
    for record in records:
        pending.append(pool.submit(work, record))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _counted(records: Iterator[dict], summary: TaskSummary) -> Iterator[dict]:
    for record in records:
        summary.count(record)
        yield record


def _unique(records: Iterator[dict]) -> Iterator[dict]:
    """The first record of each sample (a second one, from a file two processes wrote, is dropped)."""
    seen = IdSet()
    for record in records:
        if seen.add(record["id"]):
            yield record
