"""A run across processes: what must not change for ``--resume`` to continue it, and
which recorded samples a resume keeps, scores again or runs again."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.records import read_records, write_records_atomically
from harness.results import JUDGE_ERROR, RUN_FILE, infrastructure_failure
from harness.scoring import JudgeSpec

# What must match for --resume to continue a run rather than mix two (the judge is compared
# without its operational settings, and task configurations and the data dir task by task).
IDENTITY = ("system", "system_config", "tasks", "limit", "seed", "protocol")
# Parts of a task's configuration that say nothing about its samples (where its file lies, its prose).
_TASK_PROSE = ("description", "notes", "source_file", "tags")


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why."""


def load_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is not a readable run file ({exc})") from None
    if not isinstance(run, dict) or not isinstance(run.get("tasks"), list):
        raise RunError(f"{path} is not a run file of this harness")
    return run


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
    """What a resumed task carries over: records kept as they are, and records to score again."""

    rescore: list[dict] = field(default_factory=list)
    redo: int = 0
    duplicates: int = 0


def prepare_resume(path: Path) -> Resumption:
    """Rewrite a task's records for a resume: model outcomes are kept, records whose only
    failure is the judge's are scored again, other infrastructure failures are dropped so
    their samples are run again, and any second record of a sample is dropped."""
    outcome = Resumption()
    if not path.is_file() or not path.stat().st_size:
        return outcome
    kept: list[dict] = []
    seen: set[str] = set()
    try:
        for record in read_records(path):
            if record["id"] in seen:
                outcome.duplicates += 1
                continue
            seen.add(record["id"])
            failure = infrastructure_failure(record)
            if failure is None:
                kept.append(record)
            elif failure == JUDGE_ERROR:
                outcome.rescore.append(record)
            else:
                outcome.redo += 1
    except ValueError as exc:
        raise RunError(str(exc)) from None
    if outcome.rescore or outcome.redo or outcome.duplicates:
        write_records_atomically(path, iter(kept))
    return outcome
