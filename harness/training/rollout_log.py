"""Every rollout's reward, as the training ran, in one JSONL file: ``rollouts.jsonl``.

verl 0.9 logs the reward's extra keys only during validation, which the recipe
turns off, so the reward function itself writes each rollout's score, six parts,
verifier failures and exclusion here, with the training step it belongs to.
``python -m harness plot-rewards DIR/rollouts.jsonl --out FILE.png`` plots it (the
entries of one step are averaged) and ``python -m harness.training.rollout_log
DIR`` prints a table per step.

Many reward workers (processes, possibly on several nodes sharing the folder)
append at once, so each append holds an exclusive lock on ``DIR/.lock``. The
step of a rollout comes from the order of scoring: a synchronous trainer scores
exactly ``rollouts_per_step`` rollouts per step (64 prompts x 5) and finishes a
step's rollouts before the next step's begin, so the n-th rollout of a run (from
0) belongs to step ``start + n // rollouts_per_step + 1``. A *run* is one launch
(``run`` names it); its first rollout reads the step it resumes from (the
checkpoint folder's ``latest_checkpointed_iteration.txt``) and drops the lines of
any later step that an earlier, killed launch logged but never finished: after a
resume the file holds one set of rollouts per step, as an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

LOG_FILE = "rollouts.jsonl"
STATE_FILE = "rollouts.state.json"
LOCK_FILE = ".lock"
CHECKPOINT_MARKER = "latest_checkpointed_iteration.txt"  # verl's newest saved step
PARTS_KEYS = ("score", "format", "syntax", "logic", "attribute", "spatial", "adherence")


def resumed_step(checkpoint_dir: str | Path | None) -> int:
    """The step a launch resumes after: verl's newest saved step (0 without a checkpoint)."""
    if not checkpoint_dir:
        return 0
    marker = Path(checkpoint_dir) / CHECKPOINT_MARKER
    try:
        return int(marker.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return 0


class RolloutLog:
    """Appends rollouts of one run to ``DIR/rollouts.jsonl`` with their step."""

    def __init__(self, directory: str | Path, run: str, rollouts_per_step: int,
                 checkpoint_dir: str | Path | None = None) -> None:
        if rollouts_per_step < 1:
            raise ValueError(f"rollouts_per_step must be at least 1, got {rollouts_per_step}")
        self.directory = Path(directory)
        self.run = str(run)
        self.rollouts_per_step = int(rollouts_per_step)
        self.checkpoint_dir = checkpoint_dir
        self.directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"runs": {}}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.directory / f"{STATE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(self.directory / STATE_FILE)

    def _start(self, state: dict[str, Any]) -> dict[str, Any]:
        """Register this run: the step it resumes after, and the file without later steps' lines."""
        start = resumed_step(self.checkpoint_dir)
        path = self.directory / LOG_FILE
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= start]
            tmp = path.with_name(f"{LOG_FILE}.{os.getpid()}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(path)
        entry = {"start_step": start, "count": 0, "started": time.time()}
        state["runs"][self.run] = entry
        return entry

    def append(self, fields: dict[str, Any]) -> int:
        """Log one rollout's reward fields; returns its step."""
        with self._locked():
            state = self._state()
            entry = state["runs"].get(self.run) or self._start(state)
            step = entry["start_step"] + entry["count"] // self.rollouts_per_step + 1
            entry["count"] += 1
            line = {"step": step, "run": self.run, "time": round(time.time(), 3), **fields}
            with open(self.directory / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, allow_nan=False) + "\n")
            self._write_state(state)
        return step


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf  # a torn line of a killed writer: dropped with the unfinished steps


def read_rollouts(path: str | Path) -> list[dict[str, Any]]:
    """The log's entries (a torn last line is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def summarize(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: rollouts, the mean of the score and of each part (over the rollouts that have
    it), verifier failures and excluded rollouts."""
    steps: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        steps.setdefault(int(entry["step"]), []).append(entry)
    rows = []
    for step, group in sorted(steps.items()):
        row: dict[str, Any] = {"step": step, "rollouts": len(group)}
        for key in PARTS_KEYS:
            values = [e[key] for e in group if isinstance(e.get(key), (int, float))]
            row[key] = sum(values) / len(values) if values else None
        row["verifier_failures"] = int(sum(e.get("verifier_failures") or 0 for e in group))
        row["excluded"] = int(sum(bool(e.get("excluded")) for e in group))
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from tabulate import tabulate

    parser = argparse.ArgumentParser(description="per-step summary of a rollout log (rollouts.jsonl)")
    parser.add_argument("log", type=Path, help="the log, or the folder holding rollouts.jsonl")
    args = parser.parse_args(argv)
    path = args.log / LOG_FILE if args.log.is_dir() else args.log
    if not path.is_file():
        print(f"error: no rollout log at {path}", file=sys.stderr)
        return 2
    rows = summarize(read_rollouts(path))
    headers = ["step", "rollouts", *PARTS_KEYS, "verifier_failures", "excluded"]
    print(tabulate([[r[h] for h in headers] for r in rows], headers=headers, tablefmt="github", floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
