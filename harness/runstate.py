"""A run across processes: what must not change for ``--resume`` to continue it, which
recorded samples a resume keeps, scores again or runs again, and the saved summary that
spares a resume of a finished task from reading its records."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.idset import IdSet
from harness.records import read_records, write_records_atomically
from harness.results import JUDGE_ERROR, TaskSummary, infrastructure_failure, write_json_atomically
from harness.rundir import RunError
from harness.scoring import JudgeSpec

log = logging.getLogger(__name__)

# What must match for --resume to continue a run rather than mix two (the judge is compared
# without its operational settings, and task configurations and the data dir task by task).
IDENTITY = ("system", "system_config", "tasks", "limit", "seed", "protocol")
# Parts of a task's configuration that say nothing about its samples (where its file lies, its prose).
_TASK_PROSE = ("description", "notes", "source_file", "tags")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def changes_since(previous: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """What differs between the run being resumed and the one asked for, in words."""
    changed = [f"{key} ({json.dumps(previous.get(key), default=str)[:80]} before, "
               f"{json.dumps(run.get(key), default=str)[:80]} now)"
               for key in IDENTITY if not _same(previous.get(key), run.get(key))]
    before_judge = {k: v for k, v in (previous.get("judge") or {}).items() if k not in JudgeSpec.OPERATIONAL}
    now_judge = {k: v for k, v in run["judge"].items() if k not in JudgeSpec.OPERATIONAL}
    if not _same(before_judge, now_judge):
        keys = sorted(k for k in set(before_judge) | set(now_judge) if before_judge.get(k) != now_judge.get(k))
        changed.append("the judge (" + ", ".join(f"{k}: {before_judge.get(k)!r} before, {now_judge.get(k)!r} now"
                                                 for k in keys) + ")")
    for task, config in run["task_configs"].items():
        before = (previous.get("task_configs") or {}).get(task)
        before = {k: v for k, v in before.items() if k not in _TASK_PROSE} if isinstance(before, dict) else None
        config = {k: v for k, v in config.items() if k not in _TASK_PROSE}
        if before is not None and not _same(before, config):
            keys = sorted(k for k in set(before) | set(config) if not _same(before.get(k), config.get(k)))
            changed.append(f"the configuration of task {task} ({', '.join(keys)})")
    if previous.get("data_dir") != run.get("data_dir"):
        changed.append(f"the data dir ({previous.get('data_dir') or 'none'} before, {run.get('data_dir') or 'none'} "
                       f"now)")
    return changed


@dataclass
class Resumption:
    """What a resumed task carries over: records kept as they are (their ids and their
    summary), and records to score again."""

    summary: TaskSummary
    kept: IdSet = field(default_factory=IdSet)
    rescore: list[dict] = field(default_factory=list)
    redo: int = 0
    duplicates: int = 0

    def recorded(self, sample_id: str) -> bool:
        """Whether a sample is recorded for good (kept), so the resumed run skips it."""
        return sample_id in self.kept


def prepare_resume(path: Path, clustered: bool) -> Resumption:
    """Read a task's records once for a resume: model outcomes are kept (and summarised),
    records whose only failure is the judge's are scored again, other infrastructure failures
    are dropped so their samples are run again, and any second record of a sample is dropped
    (the file is rewritten without them, which takes a second pass only when there are any)."""
    outcome = Resumption(TaskSummary(clustered))
    if not path.is_file() or not path.stat().st_size:
        return outcome
    seen = IdSet()
    try:
        for record in read_records(path):
            if not seen.add(record["id"]):
                outcome.duplicates += 1
                continue
            failure = infrastructure_failure(record)
            if failure is None:
                outcome.kept.add(record["id"])
                outcome.summary.count(record)
            elif failure == JUDGE_ERROR:
                outcome.rescore.append(record)
            else:
                outcome.redo += 1
        if outcome.rescore or outcome.redo or outcome.duplicates:
            write_records_atomically(path, _kept(read_records(path)))
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return outcome


def _kept(records: Iterator[dict]) -> Iterator[dict]:
    seen = IdSet()
    for record in records:
        if seen.add(record["id"]) and infrastructure_failure(record) is None:
            yield record


# --------------------------------------------------------------------------- a task's summary, saved

# Beside each records file, once its task has run to the end: the task's summary, and the size,
# time and last bytes of the records file it summarises. A resume of a task whose every sample is
# recorded reads that instead of the records; any change to the records file voids it.
_TAIL = 1 << 16


def summary_file(records: Path) -> Path:
    return records.with_name(records.stem + ".summary.json")


def _file_state(path: Path) -> dict[str, Any]:
    stat = path.stat()
    with path.open("rb") as f:
        f.seek(max(stat.st_size - _TAIL, 0))
        tail = hashlib.sha256(f.read()).hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "tail_sha256": tail}


def save_summary(records: Path, summary: TaskSummary) -> None:
    if records.is_file():
        write_json_atomically(summary_file(records), {"records": _file_state(records), "summary": summary.state()})


def saved_summary(records: Path) -> TaskSummary | None:
    """The saved summary of a records file, or None when there is none or the file changed since."""
    path = summary_file(records)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not records.is_file() or saved["records"] != _file_state(records):
            return None
        return TaskSummary.from_state(saved["summary"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable: the records are read instead
        log.warning("%s: not used (%s: %s)", path, type(exc).__name__, exc)
        return None
