"""What a report reads from a run directory: run.json, results.json and every record, the
records as a stream (a first pass counts them, a second renders them page by page).

Records are read tolerantly: a line that is not JSON, not an object, or an
object whose fields have the wrong shape becomes an entry that carries its
problems, so the page can show it instead of failing on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.report.errors import ReportError
from harness.report.boxes import detections
from harness.results import RESULTS_FILE, RUN_FILE, TaskSummary, build_results, samples_file

log = logging.getLogger(__name__)

RAW_SHOWN = 2000  # characters of a malformed line kept for the page


@dataclass
class Entry:
    """One line of a samples file: a record, or what went wrong reading it."""

    task: str
    line: int
    record: dict[str, Any] | None  # None when the line is not a JSON object
    problems: list[str] = field(default_factory=list)
    raw: str | None = None  # the line as read, kept only when it is not a JSON object
    scorable: bool = False  # its id, status, question and scores can be summarised

    @property
    def sample_id(self) -> str | None:
        if self.record is None or not isinstance(self.record.get("id"), (str, int)):
            return None
        return str(self.record["id"])


@dataclass
class TaskLines:
    """What the first pass over a task's records learns: how many there are, how many have
    problems, how many name a sample, and the first samples whose images the page shows."""

    entries: int = 0
    with_problems: int = 0
    usable: int = 0  # entries with a sample id
    image_ids: list[str] = field(default_factory=list)


@dataclass
class RunData:
    run_dir: Path
    run: dict[str, Any]
    results: dict[str, Any]
    results_note: str | None  # set when results.json could not be used and the records were summarised
    lines: dict[str, TaskLines]  # per task

    def entries(self, task: str) -> Iterator[Entry]:
        """A task's entries, in file order, read again from its file."""
        path = samples_file(self.run_dir, task)
        return iter_entries(path, task) if path.is_file() else iter(())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read as JSON ({exc})") from None


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise ReportError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    run = _read_json(path)
    if not isinstance(run, dict):
        raise ReportError(f"{path}: expected a JSON object")
    tasks, configs = run.get("tasks"), run.get("task_configs")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ReportError(f"{path}: field 'tasks' must be a list of task names")
    if not isinstance(configs, dict) or any(not isinstance(configs.get(t), dict) for t in tasks):
        raise ReportError(f"{path}: field 'task_configs' must hold the configuration of every task")
    return run


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_problems(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What in a record has a shape the report does not expect: problems of the fields a summary reads,
    and problems of the rest (choices, tool calls)."""
    problems = []
    if not isinstance(record.get("id"), (str, int)) or isinstance(record.get("id"), bool):
        problems.append(f"field 'id' must be a string, got {record.get('id')!r}")
    if not isinstance(record.get("status"), str):
        problems.append(f"field 'status' must be a string, got {record.get('status')!r}")
    if not isinstance(record.get("question"), str):
        problems.append(f"field 'question' must be a string, got {type(record.get('question')).__name__}")
    scores = record.get("scores")
    if scores is not None and (not isinstance(scores, dict)
                               or any(v is not None and not _is_number(v) for v in scores.values())
                               or (scores.get("strict") is not None and not _is_number(scores.get("compat")))):
        problems.append(f"field 'scores' must map 'strict' and 'compat' to numbers, got {scores!r}"[:300])
    others = [f"field {key!r} must be a list, got {type(record[key]).__name__}" for key in ("choices", "tool_calls")
              if record.get(key) is not None and not isinstance(record[key], list)]
    if isinstance(record.get("tool_calls"), list):
        others += detections(record["tool_calls"])[1]
    return problems, others


def iter_entries(path: Path, task: str) -> Iterator[Entry]:
    """The entries of a records file, one line at a time, in file order."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", errors="replace")
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                torn = "" if raw.endswith(b"\n") else " (a last line without a newline: the run was cut off mid-write)"
                yield Entry(task, number, None, [f"not JSON: {exc}{torn}"], text[:RAW_SHOWN])
                continue
            if not isinstance(value, dict):
                yield Entry(task, number, None, [f"expected a JSON object, got {type(value).__name__}"],
                            text[:RAW_SHOWN])
                continue
            summarised, others = record_problems(value)
            yield Entry(task, number, value, summarised + others, scorable=not summarised)


def _usable_results(results: Any, tasks: list[str]) -> str | None:
    """Why a results file cannot be shown as it is, or None when it can."""
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
        return "it has no 'results' object"
    missing = [t for t in tasks if t not in results["results"]]
    return f"it has no results for {', '.join(missing)}" if missing else None


def _first_pass(run_dir: Path, task: str, image_count: int, summary: TaskSummary | None) -> TaskLines:
    """Count a task's entries, choose the first ``image_count`` distinct samples for images, and
    add its scorable records to ``summary`` when one is given."""
    lines = TaskLines()
    path = samples_file(run_dir, task)
    if not path.is_file():
        return lines
    chosen: dict[str, None] = {}
    for entry in iter_entries(path, task):
        lines.entries += 1
        lines.with_problems += bool(entry.problems)
        sample_id = entry.sample_id
        if sample_id is not None:
            lines.usable += 1
            if len(chosen) < image_count:
                chosen.setdefault(sample_id)
        if summary is not None and entry.scorable:
            summary.add(entry.record)
    lines.image_ids = list(chosen)
    return lines


def load_run(run_dir: Path, image_count: int) -> RunData:
    """The run, its results (from results.json, else summarised from the records) and what a first
    pass over its records counts; ``image_count`` samples per task are chosen for images."""
    run = read_run(run_dir)
    results_path = run_dir / RESULTS_FILE
    if results_path.is_file():
        try:
            results = _read_json(results_path)
            reason = _usable_results(results, [t for t in run["tasks"] if _has_records(run_dir, t)])
        except ReportError as exc:
            results, reason = None, str(exc)
    else:
        results, reason = None, "the run has no results.json (it did not finish, or was never scored)"
    summaries: dict[str, TaskSummary] = {}
    lines = {}
    for task in run["tasks"]:
        clustered = bool((run["task_configs"][task].get("fields") or {}).get("cluster"))
        summary = TaskSummary(clustered) if reason is not None else None
        lines[task] = _first_pass(run_dir, task, image_count, summary)
        if summary is not None and lines[task].entries:
            summaries[task] = summary
    note = None
    if reason is not None:
        note = f"Summary computed from the records: {reason}."
        log.warning("%s: %s", run_dir, note)
        results = build_results(run, summaries)
    return RunData(run_dir, run, results, note, lines)


def _has_records(run_dir: Path, task: str) -> bool:
    """Whether a task's records file holds a line that is not blank."""
    path = samples_file(run_dir, task)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return any(line.strip() for line in handle)
