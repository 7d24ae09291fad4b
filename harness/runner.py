"""Running a system over tasks: samples in, one scored record per sample out.

A run directory holds ``run.json`` (what was asked for), one
``samples_<task>.jsonl`` per task (records appended as samples finish),
``results.json`` (written at the end and by ``harness score``) and ``.lock``
(held by the one process writing the run).

A run starts only when everything it needs is in place (the system file, the
preflight checks of :mod:`harness.preflight`): a start that fails leaves no
directory behind. Infrastructure failures (an API that does not answer, an
unreadable image, a judge without a verdict, :func:`harness.results.infrastructure_failure`)
are recorded as such, never scored, make the run incomplete, and are redone by
``--resume``; a run of them in a row stops the run early (the circuit breaker).
Ctrl-C cancels every request in flight and leaves a run that ``--resume``
continues.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from harness import __version__
from harness.backends.remote import reset_interrupt, watch_calls
from harness.distributed.settings import RaySettings
from harness.preflight import run_preflight
from harness.records import RecordWriter, read_records, to_jsonable
from harness.results import (
    RESULTS_FILE, RUN_FILE, TaskSummary, build_results, environment, git_hash, now_iso, samples_file,
    summarize_records, write_json_atomically, write_text_atomically,
)
from harness.rundir import DEFAULT_MAX_CONSECUTIVE_FAILURES, RunError, load_run
from harness.runlock import LOCK_FILE, RunLock
from harness.runstate import Resumption, changes_since, prepare_resume, save_summary, saved_summary
from harness.scoring import JudgeSpec, Scorer, make_scorer
from harness.stopping import CircuitBreaker, Closer, Interruption, StopRun
from harness.systems import SystemRegistry
from harness.systems.base import System
from harness.tasks import Task, TaskRegistry
from harness.tasks.sources import data_dir_from_env
from harness.tasks.task import resolve_limit
from harness.types import Prediction, Sample, Status

log = logging.getLogger(__name__)


class RunInterrupted(RuntimeError):
    """Ctrl-C: the run stopped, its records are kept and ``--resume`` continues it."""


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
    # Stop after this many infrastructure failures in a row (records or remote calls); 0: never.
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES
    preflight: bool = True
    # Files to write into the run directory once it is claimed (name -> text), unless they
    # exist: e.g. the resolved experiment file, so a failed start leaves nothing behind.
    extra_files: dict[str, str] = field(default_factory=dict)
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


def _new_run(options: RunOptions, system: System, registry: TaskRegistry, data_dir: Path | None) -> dict[str, Any]:
    return {
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


def _resumed(previous: dict[str, Any], run: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    changed = changes_since(previous, run)
    if changed:
        raise RunError(f"cannot resume {options.output_path}: changed since the run started: {'; '.join(changed)}. "
                       f"Run it as it was, or start a new run in another --output-path")
    previous["errors"] = {}
    previous.pop("stopped", None)
    previous["judge"] = run["judge"]  # its operational settings (timeout, retries, concurrency) may change
    if options.label is not None:  # a label names the run without changing it, so it may change on resume
        previous["label"] = options.label
    previous["resumed"] = previous.get("resumed", []) + [now_iso()]
    return previous


def score_guarded(record: dict, compat: str | None, scorer: Scorer) -> dict:
    start = time.perf_counter()
    try:
        scorer.score(record, compat)
    except Exception as exc:  # a bug in scoring costs this sample its score, never the run its records
        log.exception("scoring %s/%s failed", record["task"], record["id"])
        detail = f"scoring failed: {type(exc).__name__}: {exc}"
        if record["status"] != Status.OK:
            detail += f" (the prediction's status was {record['status']})"
        record.update(status=Status.SCORING_ERROR, scores={"strict": None, "compat": None}, parse=None,
                      extracted=None, judge=None, detail=detail)
    record.setdefault("timings", {})["score_s"] = time.perf_counter() - start
    return record


class _Recorder:
    """Scores records, appends them and adds them to the task's summary. When a judge calls a
    model, records are scored on ``scorer.concurrency`` threads while the system goes on; they
    are written here, by the calling thread, as their scores arrive (never two writers)."""

    def __init__(self, writer: RecordWriter, summary: TaskSummary, scorer: Scorer, compat: str | None,
                 breaker: CircuitBreaker, progress: tqdm) -> None:
        self.writer, self.summary, self.scorer, self.compat = writer, summary, scorer, compat
        self.breaker, self.progress = breaker, progress
        self.pool = ThreadPoolExecutor(scorer.concurrency, thread_name_prefix="scoring") if scorer.remote else None
        self.pending: set[Future] = set()

    def add(self, record: dict) -> None:
        if self.pool is None:
            self._write(score_guarded(record, self.compat, self.scorer))
            return
        self.pending.add(self.pool.submit(score_guarded, record, self.compat, self.scorer))
        self._collect(block=len(self.pending) >= 2 * self.scorer.concurrency)

    def _collect(self, block: bool) -> None:
        done = {f for f in self.pending if f.done()}
        if not done and block:
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
        for future in done:
            self.pending.discard(future)
            self._write(future.result())

    def finish(self) -> None:
        while self.pending:
            self._collect(block=True)

    def _write(self, record: dict) -> None:
        self.writer.append(record)
        self.summary.count(record)  # the first record of its sample: the feed and the writer see to that
        self.progress.update()
        self.breaker.record(record)
        if self.breaker.tripped:
            raise StopRun(self.breaker.tripped)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _run_task(task: Task, system: System, options: RunOptions, scorer: Scorer, breaker: CircuitBreaker,
              resumption: Resumption, close: Closer) -> None:
    """Run one task, adding each record to ``resumption.summary`` as it is written."""
    config = task.config
    path = samples_file(options.output_path, task.name)
    writer = RecordWriter(path, resume=options.resume)
    pending: dict[str, Sample] = {}
    progress = tqdm(total=resolve_limit(options.limit, len(task)), initial=resumption.summary.n, desc=task.name,
                    unit="sample", disable=None)
    recorder = _Recorder(writer, resumption.summary, scorer, config.compat, breaker, progress)
    # Recorded, but the judge gave no verdict: only the judging is redone (on the scoring threads).
    rejudged = {record["id"] for record in resumption.rescore}
    for record in resumption.rescore:
        recorder.add(record)

    def feed() -> Iterator[Sample]:
        for sample in task.samples(options.limit):  # ids are unique within a task (Task.samples)
            if sample.id in rejudged or resumption.recorded(sample.id):
                continue
            if sample.error:  # unusable rows are finished samples: record them and move on
                recorder.add(build_record(sample, Prediction(sample.id, status=Status.DATA_ERROR,
                                                             detail=sample.error), options.log_samples))
                continue
            pending[sample.id] = sample
            yield sample

    predictions = system.predict(feed())
    finished = False
    try:
        for prediction in predictions:
            if breaker.tripped:
                raise StopRun(breaker.tripped)
            sample = pending.pop(prediction.sample_id, None)
            if sample is None:
                raise RunError(f"system {system.name} answered sample {prediction.sample_id!r} of task "
                               f"{task.name}, which it was not asked or already answered")
            recorder.add(build_record(sample, prediction, options.log_samples))
        for sample in list(pending.values()):
            missing = Prediction(sample.id, status=Status.SYSTEM_ERROR, detail="the system returned no prediction")
            recorder.add(build_record(sample, missing, options.log_samples))
        recorder.finish()
        finished = True
    except BaseException:
        # Stop what is running now (programs in the sandbox, requests) so that the system's
        # generator closes at once, instead of waiting for work nobody will record.
        close()
        raise
    finally:
        predictions.close()
        recorder.close()
        progress.close()
        writer.close()
    if finished:
        save_summary(path, resumption.summary)


def summarize_run(run_dir: Path, run: dict[str, Any],
                  summaries: dict[str, TaskSummary] | None = None) -> dict[str, Any]:
    """Write a run's results file from its tasks' summaries: those given (a run's, accumulated
    as it wrote its records), else those saved beside the records, else read from the records."""
    found = {}
    for task in run["tasks"]:
        path = samples_file(run_dir, task)
        if not path.is_file():
            continue  # never started: the results say so
        if summaries and task in summaries:
            found[task] = summaries[task]
        else:
            clustered = bool(run["task_configs"][task]["fields"].get("cluster"))
            found[task] = saved_summary(path) or summarize_records(read_records(path), clustered)
    results = build_results(run, found)
    write_json_atomically(run_dir / RESULTS_FILE, results)
    return results


def _load_tasks(options: RunOptions, registry: TaskRegistry, system: System, run: dict[str, Any]) -> list[Task]:
    loaded = []
    for name in options.tasks:
        try:
            task = registry.task(name, options.data_dir, system.protocol)
            run["task_meta"][name] = {"size": len(task), "expected": resolve_limit(options.limit, len(task)),
                                      "revision": task.revision, "fingerprint": task.fingerprint()}
            loaded.append(task)
        except Exception as exc:  # one unavailable dataset must not stop the others
            log.error("%s", exc)
            run["errors"][name] = str(exc)
    return loaded


def _claim_directory(run_dir: Path, resume: bool) -> tuple[RunLock, bool]:
    """The run directory, created when new, and its lock; whether it was created here."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    except OSError as exc:
        raise RunError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
    if (run_dir / RUN_FILE).exists() and not resume:
        lock.release()
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-path")
    return lock, created


def _remove_unstarted(run_dir: Path, created: bool, resuming: bool, written: list[str]) -> None:
    """Undo a start that failed before any record was written, so the corrected command can run:
    the folder when this start made it, else the files it wrote (a resumed run keeps its own)."""
    if any(run_dir.glob("samples_*.jsonl")):
        return
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    ours = [LOCK_FILE] if resuming else [LOCK_FILE, RUN_FILE, RESULTS_FILE, RUN_FILE + ".tmp", RESULTS_FILE + ".tmp"]
    for name in ours + written:
        (run_dir / name).unlink(missing_ok=True)


def evaluate(options: RunOptions, tasks: TaskRegistry | None = None,
             systems: SystemRegistry | None = None) -> dict[str, Any]:
    """Run ``options.system`` on its tasks and return the results (also written to
    ``results.json``). Raises RunError when the run cannot start, PreflightError when
    something it needs is missing, RunInterrupted on Ctrl-C."""
    tasks = tasks or TaskRegistry(options.include_paths)
    systems = systems or SystemRegistry(options.include_paths)
    for name in options.tasks:
        if not tasks.config(name).answers:
            raise RunError(f"task {name!r} holds training questions without answers; it cannot be scored")
    random.seed(options.seed)
    data_dir = data_dir_from_env(options.data_dir)
    system = systems.build(options.system, options.system_args, options.seed, options.protocol)
    system.data_dir = data_dir
    close = Closer(system)
    try:
        if options.preflight:
            run_preflight(system, [tasks.config(t) for t in options.tasks], options.judge, data_dir,
                          devices_here=options.ray is None)
        if options.ray is not None:  # the same system, served by replicas on a Ray cluster
            from harness.distributed.system import RaySystem

            system = RaySystem(system, options.ray, options.system_args, options.protocol, options.include_paths)
            close.system = system
        run_dir = options.output_path
        resuming = options.resume and (run_dir / RUN_FILE).is_file()
        if options.resume and not resuming:
            log.info("nothing to resume in %s; starting a new run", run_dir)
        lock, created = _claim_directory(run_dir, resuming)
        run: dict[str, Any] | None = None
        written: list[str] = []  # extra files this start wrote
        try:
            with Interruption():
                try:
                    run = _new_run(options, system, tasks, data_dir)
                    if resuming:
                        run = _resumed(load_run(run_dir), run, options)
                    for name, text in options.extra_files.items():
                        if not (run_dir / name).exists():
                            write_text_atomically(run_dir / name, text)
                            written.append(name)
                    return _execute(options, system, tasks, run, resuming, close)
                except KeyboardInterrupt:
                    if run is None or not any(run_dir.glob("samples_*.jsonl")):
                        close()
                        _remove_unstarted(run_dir, created, resuming, written)
                        raise RunInterrupted("interrupted before the first sample; nothing was recorded") from None
                    _stop(close, options, run, "interrupted (Ctrl-C)")
                    raise RunInterrupted(_interrupted_message(run_dir)) from None
                except BaseException:
                    _remove_unstarted(run_dir, created, resuming, written)
                    raise
        finally:
            lock.release()
            reset_interrupt()
    finally:
        close()


def _interrupted_message(run_dir: Path) -> str:
    recorded = 0
    for path in run_dir.glob("samples_*.jsonl"):
        with path.open("rb") as f:
            recorded += sum(1 for line in f if line.endswith(b"\n"))
    return (f"interrupted: {recorded} samples recorded in {run_dir}; continue with the same command and "
            f"--resume --output-path {run_dir}")


def _stop(close: Closer, options: RunOptions, run: dict[str, Any], why: str,
          summaries: dict[str, TaskSummary] | None = None) -> dict[str, Any]:
    """Close the system and write what the run has so far (results marked incomplete)."""
    close()
    run["stopped"] = why
    run["finished"] = now_iso()
    write_json_atomically(options.output_path / RUN_FILE, run)
    return summarize_run(options.output_path, run, summaries)


def _finished(run_dir: Path, run: dict[str, Any]) -> dict[str, TaskSummary] | None:
    """The saved summaries of a resumed run whose every task has every sample recorded as a model
    outcome (nothing to run, so its datasets are not read again); None when anything is left."""
    summaries = {}
    for task in run["tasks"]:
        summary = saved_summary(samples_file(run_dir, task))
        expected = (run.get("task_meta") or {}).get(task, {}).get("expected")
        if summary is None or summary.n != expected or summary.infrastructure or summary.duplicates:
            return None
        summaries[task] = summary
    return summaries


def _execute(options: RunOptions, system: System, registry: TaskRegistry, run: dict[str, Any],
             resuming: bool, close: Closer) -> dict[str, Any]:
    run_dir = options.output_path
    finished = _finished(run_dir, run) if resuming else None
    if finished is not None:
        log.info("every sample of %s is recorded already: nothing to run", ", ".join(run["tasks"]))
        close()
        run["finished"] = now_iso()
        write_json_atomically(run_dir / RUN_FILE, run)
        return summarize_run(run_dir, run, finished)
    scorer = make_scorer(options.judge, system.protocol, system.data_dir)
    write_json_atomically(run_dir / RUN_FILE, run)
    loaded = _load_tasks(options, registry, system, run)
    write_json_atomically(run_dir / RUN_FILE, run)
    resumptions = {}
    for task in loaded:
        clustered = bool(task.config.fields.cluster)
        resumptions[task.name] = prepare_resume(samples_file(run_dir, task.name), clustered) if resuming \
            else Resumption(TaskSummary(clustered))
    for name, resumption in resumptions.items():
        if resumption.redo or resumption.rescore or resumption.duplicates:
            log.info("%s: redoing %d samples that failed for the infrastructure's sake, judging %d again%s", name,
                     resumption.redo, len(resumption.rescore),
                     f", dropping {resumption.duplicates} duplicate records" if resumption.duplicates else "")
    summaries = {name: resumption.summary for name, resumption in resumptions.items()}
    system.prepare(loaded)
    breaker = CircuitBreaker(options.max_consecutive_failures)
    try:
        with watch_calls(breaker.call):
            for task in loaded:
                _run_task(task, system, options, scorer, breaker, resumptions[task.name], close)
    except StopRun as stop:
        return _stop(close, options, run, str(stop), summaries)
    finally:
        scorer.close()
    close()
    run["finished"] = now_iso()
    write_json_atomically(run_dir / RUN_FILE, run)
    return summarize_run(run_dir, run, summaries)
