"""A system that reads answers from a JSONL file, so results produced elsewhere
can be scored, tabled and compared like any other run.

Each line: ``{"task": "countbenchqa", "id": "17", "prediction": 3}``. ``task``
may be left out when ids are unique across the selected tasks; ``answer`` is
accepted for ``prediction``; optional keys: ``raw``, ``status``, ``detail``,
``plan``, ``program``, ``answer_pytype``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.protocol import PROTOCOLS
from harness.systems.base import System
from harness.systems.params import typed
from harness.types import Prediction, Sample, Status

_OPTIONAL = ("raw", "detail", "plan", "program", "answer_pytype")


class PredictionsFileError(ValueError):
    """A predictions file that cannot be matched to the tasks; names lines and ids."""


class PredictionsSystem(System):
    kind = "predictions"
    reads_images = False
    parameters = {"path": typed(str | None), "protocol": typed(str, PROTOCOLS)}

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, params, seed)
        if not params.get("path"):
            raise PredictionsFileError("the predictions system needs a file: pass --predictions FILE")
        self.path = Path(params["path"])
        if not self.path.is_file():
            raise PredictionsFileError(f"predictions file {self.path} does not exist")
        self._offsets: dict[tuple[str, str], int] = {}  # (task, id) -> byte offset of its line
        self._file = None

    def _read_index(self) -> Iterator[tuple[int, str | None, str, int]]:
        """(line number, task, id, byte offset) of every line."""
        with self.path.open("rb") as f:
            offset = 0
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except UnicodeDecodeError as exc:
                        raise PredictionsFileError(f"{self.path}: line {number} is not UTF-8 text ({exc.reason} "
                                                   f"at byte {exc.start}); save the file as UTF-8") from None
                    except json.JSONDecodeError as exc:
                        raise PredictionsFileError(f"{self.path}: line {number} is not valid JSON ({exc})") from exc
                    if not isinstance(row, dict) or "id" not in row:
                        raise PredictionsFileError(f"{self.path}: line {number} has no 'id'")
                    if "prediction" not in row and "answer" not in row and "status" not in row:
                        raise PredictionsFileError(f"{self.path}: line {number} (id {row['id']!r}) has no 'prediction'")
                    status = row.get("status", Status.OK)
                    if status not in Status.ALL:
                        raise PredictionsFileError(
                            f"{self.path}: line {number} (id {row['id']!r}) has unknown status {status!r}")
                    task = row.get("task")
                    yield number, None if task is None else str(task), str(row["id"]), offset
                offset += len(line)

    def prepare(self, tasks: Sequence[Any]) -> None:
        ids_by_task = {task.name: set(task.ids()) for task in tasks}
        unknown: list[str] = []
        seen: dict[tuple[str, str], int] = {}
        for number, task, sample_id, offset in self._read_index():
            if task is not None and task not in ids_by_task:
                continue  # predictions for tasks not selected in this run
            owners = [task] if task is not None else [t for t, ids in ids_by_task.items() if sample_id in ids]
            owners = [t for t in owners if sample_id in ids_by_task[t]]
            if not owners:
                unknown.append(f"line {number}: id {sample_id!r}" + (f" (task {task})" if task else ""))
                continue
            if len(owners) > 1:
                raise PredictionsFileError(
                    f"{self.path}: line {number}: id {sample_id!r} exists in tasks {', '.join(owners)}; "
                    "add a 'task' key to say which")
            key = (owners[0], sample_id)
            if key in seen:
                raise PredictionsFileError(
                    f"{self.path}: line {number}: a second prediction for {owners[0]}/{sample_id} "
                    f"(first on line {seen[key]})")
            seen[key] = number
            self._offsets[key] = offset
        if unknown:
            shown = "; ".join(unknown[:10]) + (f"; and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise PredictionsFileError(
                f"{self.path}: {len(unknown)} predictions match no sample of the selected tasks "
                f"({', '.join(ids_by_task)}): {shown}")

    def predict_one(self, sample: Sample) -> Prediction:
        offset = self._offsets.get((sample.task, sample.id))
        if offset is None:
            return Prediction(sample.id, status=Status.MISSING, detail=f"no prediction in {self.path}")
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(offset)
        row = json.loads(self._file.readline())
        return Prediction(
            sample.id,
            answer=row.get("prediction", row.get("answer")),
            status=row.get("status", Status.OK),
            **{key: row.get(key) for key in _OPTIONAL},
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
