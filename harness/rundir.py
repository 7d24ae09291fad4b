"""What every reader and writer of runs shares, with no import beyond the standard library (so
``show`` and ``--help`` answer at once): the files of a run directory, reading its ``run.json``,
and the runner's defaults that the command line shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
# Infrastructure failures in a row (records or remote calls) that stop a run; 0: never.
DEFAULT_MAX_CONSECUTIVE_FAILURES = 10


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why."""


def samples_file(run_dir: Path, task: str) -> Path:
    return run_dir / f"samples_{task}.jsonl"


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
