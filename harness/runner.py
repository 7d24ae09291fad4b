"""Running a system over tasks: samples in, one scored record per sample out.

A run directory holds ``run.json`` (what was asked for), one
``samples_<task>.jsonl`` per task (records appended as samples finish) and
``results.json`` (written at the end and by ``harness score``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from harness import __version__
from harness.distributed.settings import RaySettings
from harness.protocol import HARNESS
from harness.records import RecordWriter, read_records, to_jsonable, write_records_atomically
from harness.results import (
    RESULTS_FILE, RUN_FILE, build_results, environment, git_hash, now_iso, samples_file, summarize_records,
    write_json_atomically,
)
from harness.scoring import JudgeSpec, Scorer, make_scorer
from harness.systems import SystemRegistry
from harness.systems.base import System
from harness.tasks import Task, TaskRegistry
from harness.tasks.sources import data_dir_from_env
from harness.tasks.task import resolve_limit
from harness.types import Prediction, Sample, Status

log = logging.getLogger(__name__)

# What must match for --resume to continue a run rather than mix two.
_IDENTITY = ("system", "system_config", "tasks", "limit", "seed", "judge", "protocol")


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why."""


@dataclass
class RunOptions:
    system: str
    tasks: list[str]
    output_path: Path
    system_args: dict[str, Any] = field(default_factory=dict)
    limit: float | None = None
    seed: int = 1234
    data_dir: str | None = None
    resume: bool = False
    log_samples: bool = False
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    include_paths: list[str] = field(default_factory=list)
    label: str | None = None  # names the run for the leaderboard (a variant of a system, e.g. valor-rl-n40)
    protocol: str | None = None  # paper or harness; None: the one the system file names
    ray: RaySettings | None = None  # serve the system from replicas on a Ray cluster (docs/scaling.md)


def build_record(sample: Sample, prediction: Prediction, log_samples: bool) -> dict[str, Any]:
    record = {
        "id": sample.id,
        "task": sample.task,
        "subset": sample.subset,
        "cluster": sample.cluster,
        "question": sample.question,
        "answer_type": sample.answer_type,
        "choices": sample.choices,
        "gold": sample.answer,
        "compat_gold": to_jsonable(sample.compat_gold),
        "compat_meta": sample.meta.get("compat") or {},
        "prediction": to_jsonable(prediction.answer),
        "answer_pytype": prediction.answer_pytype,
        "prediction_typed": prediction.answer_typed,
        "status": prediction.status,
        "detail": prediction.detail,
        "raw": prediction.raw,
        "plan": prediction.plan,
        "program": prediction.program,
        "tool_calls": prediction.tool_calls,
        "isolation": prediction.isolation,
        "stdout": prediction.stdout,  # a program's own prints, and the step traces of VisProg-style programs
        "timings": dict(prediction.timings),
    }
    if log_samples:  # the bulky part: the full request sent to the model
        record["extra"] = to_jsonable(prediction.extra)
    return record


def _load_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def _start_run(options: RunOptions, system: System, registry: TaskRegistry) -> dict[str, Any]:
    run_dir = options.output_path
    data_dir = data_dir_from_env(options.data_dir)
    run = {
        "system": options.system,
        "label": options.label,
        "system_config": system.describe(),
        "tasks": options.tasks,
        "limit": options.limit,
        "seed": options.seed,
        "judge": options.judge.to_dict(),
        "protocol": system.protocol,
        "log_samples": options.log_samples,
        "task_configs": {t: registry.config(t).to_dict() for t in options.tasks},
        "task_meta": {},
        # Where the datasets were read from, so that later readers (the report) find the images too.
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "errors": {},
        "started": now_iso(),
        "harness_version": __version__,
        "git_hash": git_hash(),
        "environment": environment(),
    }
    if (run_dir / RUN_FILE).exists():
        if not options.resume:
            raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-path")
        previous = _load_run(run_dir)
        changed = [k for k in _IDENTITY if json.dumps(previous.get(k), sort_keys=True, default=str)
                   != json.dumps(run.get(k), sort_keys=True, default=str)]
        if changed:
            raise RunError(f"cannot resume {run_dir}: these settings differ from the original run: "
                           f"{', '.join(changed)}")
        previous["errors"] = {}
        if options.label is not None:  # a label names the run without changing it, so it may change on resume
            previous["label"] = options.label
        previous["resumed"] = previous.get("resumed", []) + [now_iso()]
        run = previous
    elif options.resume:
        log.info("nothing to resume in %s; starting a new run", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(run_dir / RUN_FILE, run)
    return run


def _score(record: dict, compat: str | None, scorer: Scorer) -> dict:
    start = time.perf_counter()
    try:
        scorer.score(record, compat)
    except Exception as exc:  # a bug in scoring costs this sample its score, never the run its records
        log.exception("scoring %s/%s failed", record["task"], record["id"])
        record.update(status=Status.SCORING_ERROR, scores={"strict": None, "compat": None}, parse=None,
                      extracted=None, judge=None,
                      detail=f"scoring failed: {type(exc).__name__}: {exc}" + (
                          f" (the prediction's status was {record['status']})" if record["status"] != Status.OK else ""))
    record["timings"]["score_s"] = time.perf_counter() - start
    return record


def _run_task(task: Task, system: System, options: RunOptions, scorer: Scorer) -> None:
    config = task.config
    writer = RecordWriter(samples_file(options.output_path, task.name), resume=options.resume)
    pending: dict[str, Sample] = {}
    progress = tqdm(total=resolve_limit(options.limit, len(task)), initial=len(writer.done), desc=task.name, unit="sample", disable=None)

    def feed() -> Iterator[Sample]:
        for sample in task.samples(options.limit):
            if sample.id in writer.done:
                continue
            if sample.error:  # unusable rows are finished samples: record them and move on
                failed = Prediction(sample.id, status=Status.DATA_ERROR, detail=sample.error)
                writer.append(_score(build_record(sample, failed, options.log_samples), config.compat, scorer))
                progress.update()
                continue
            pending[sample.id] = sample
            yield sample

    try:
        for prediction in system.predict(feed()):
            sample = pending.pop(prediction.sample_id, None)
            if sample is None:
                raise RunError(f"system {system.name} answered sample {prediction.sample_id!r} of task "
                               f"{task.name}, which it was not asked or already answered")
            record = build_record(sample, prediction, options.log_samples)
            writer.append(_score(record, config.compat, scorer))
            progress.update()
        for sample in pending.values():
            missing = Prediction(sample.id, status=Status.SYSTEM_ERROR, detail="the system returned no prediction")
            writer.append(_score(build_record(sample, missing, options.log_samples), config.compat, scorer))
            progress.update()
    finally:
        progress.close()
        writer.close()


def summarize_run(run_dir: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Read every samples file of a run and write its results file."""
    summaries = {}
    for task in run["tasks"]:
        path = samples_file(run_dir, task)
        if path.is_file():
            clustered = bool(run["task_configs"][task]["fields"].get("cluster"))
            summaries[task] = summarize_records(read_records(path), clustered)
    results = build_results(run, summaries)
    write_json_atomically(run_dir / RESULTS_FILE, results)
    return results


def evaluate(options: RunOptions, tasks: TaskRegistry | None = None,
             systems: SystemRegistry | None = None) -> dict[str, Any]:
    tasks = tasks or TaskRegistry(options.include_paths)
    systems = systems or SystemRegistry(options.include_paths)
    for name in options.tasks:
        if not tasks.config(name).answers:
            raise RunError(f"task {name!r} holds training questions without answers; it cannot be scored")
    random.seed(options.seed)
    system = systems.build(options.system, options.system_args, options.seed, options.protocol)
    system.data_dir = data_dir_from_env(options.data_dir)
    if options.ray is not None:
        from harness.distributed.system import RaySystem

        system = RaySystem(system, options.ray, options.system_args, options.protocol, options.include_paths)
    run = _start_run(options, system, tasks)
    scorer = make_scorer(options.judge, system.protocol, system.data_dir)
    try:
        loaded = []
        for name in options.tasks:
            task = tasks.task(name, options.data_dir, system.protocol)
            try:
                run["task_meta"][name] = {"size": len(task), "revision": task.revision,
                                          "fingerprint": task.fingerprint()}
                loaded.append(task)
            except Exception as exc:  # one unavailable dataset must not stop the others
                log.error("%s", exc)
                run["errors"][name] = str(exc)
        write_json_atomically(options.output_path / RUN_FILE, run)
        system.prepare(loaded)
        for task in loaded:
            _run_task(task, system, options, scorer)
    finally:
        system.close()
    run["finished"] = now_iso()
    write_json_atomically(options.output_path / RUN_FILE, run)
    return summarize_run(options.output_path, run)


def rescore(run_dir: Path, judge_spec: JudgeSpec | None = None) -> dict[str, Any]:
    """Score a run's saved predictions again, with the current rules and an optional new judge."""
    run = _load_run(run_dir)
    if judge_spec is not None:
        run["judge"] = judge_spec.to_dict()
        write_json_atomically(run_dir / RUN_FILE, run)
    scorer = make_scorer(JudgeSpec(**run["judge"]), run.get("protocol", HARNESS), run.get("data_dir"))
    for task in run["tasks"]:
        path = samples_file(run_dir, task)
        if path.is_file():
            compat = run["task_configs"][task].get("compat")
            count = write_records_atomically(path, (scorer.score(r, compat) for r in read_records(path)))
            log.info("re-scored %d records of %s", count, task)
    return summarize_run(run_dir, run)


def run_info(run_dir: Path) -> dict[str, Any]:
    """A run's description (run.json)."""
    return _load_run(run_dir)


def find_records(run_dir: Path, sample_id: str, task: str | None = None) -> list[dict[str, Any]]:
    run = _load_run(run_dir)
    names = [task] if task else run["tasks"]
    found = []
    for name in names:
        path = samples_file(run_dir, name)
        if path.is_file():
            found += [r for r in read_records(path) if r["id"] == sample_id]
    return found
