"""Reading a finished run again: its recorded judge, its records by sample, and re-scoring
(``python -m harness score``) from the records alone, under the run's lock."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from harness.protocol import HARNESS
from harness.records import read_records, write_records_atomically
from harness.results import RUN_FILE, samples_file, write_json_atomically
from harness.runlock import RunLock
from harness.runner import score_guarded, summarize_run
from harness.runstate import RunError, load_run
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
    (judged on the judge's ``max_concurrency`` threads)."""
    run = load_run(run_dir)
    if judge_spec is not None:
        run["judge"] = judge_spec.to_dict()
    scorer = make_scorer(_judge_spec(run, run_dir), run.get("protocol", HARNESS), run.get("data_dir"))
    with RunLock(run_dir), contextlib.closing(scorer):
        write_json_atomically(run_dir / RUN_FILE, run)
        with ThreadPoolExecutor(scorer.concurrency if scorer.remote else 1, thread_name_prefix="scoring") as pool:
            for task in run["tasks"]:
                path = samples_file(run_dir, task)
                if path.is_file():
                    compat = run["task_configs"][task].get("compat")
                    scored = pool.map(lambda r: score_guarded(r, compat, scorer), _unique(read_records(path)))
                    count = write_records_atomically(path, scored)
                    log.info("re-scored %d records of %s", count, task)
        return summarize_run(run_dir, run)


def _unique(records: Iterator[dict]) -> Iterator[dict]:
    """The first record of each sample (a second one, from a file two processes wrote, is dropped)."""
    seen: set[str] = set()
    for record in records:
        if record["id"] not in seen:
            seen.add(record["id"])
            yield record


def find_records(run_dir: Path, sample_id: str, task: str | None = None) -> list[dict[str, Any]]:
    run = load_run(run_dir)
    names = [task] if task else run["tasks"]
    found = []
    for name in names:
        path = samples_file(run_dir, name)
        if path.is_file():
            found += [r for r in read_records(path) if r["id"] == sample_id]
    return found
