"""A system that reads answers produced elsewhere, so they are scored, tabled and
compared like any other run.

Formats (``params.format``, ``--predictions-format``):

- ``jsonl`` (default), this project's own: each line
  ``{"task": "countbenchqa", "id": "17", "prediction": 3}``. ``task`` may be left
  out when ids are unique across the selected tasks; ``answer`` is accepted for
  ``prediction``; optional keys: ``raw``, ``status``, ``detail``, ``plan``,
  ``program``, ``answer_pytype``.
- ``lm-eval``, ``lmms-eval``: their ``--log_samples`` files (a file, or the folder
  holding them); ``vlmevalkit``: its prediction sheets. Each reply is read the way
  our direct-VLM systems read theirs (``harness.systems.direct.extract_answer``);
  rows are tied to samples by ``harness.interop.matching``. ``params.task`` names
  our task when a file's name does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.interop.logs import FORMATS, VLMEVALKIT_FAILURE, ForeignFile, PredictionsFileError, find_files, read_file
from harness.interop.matching import Match, index_task, match_file, named_task
from harness.systems.base import System
from harness.systems.direct import extract_answer
from harness.systems.params import typed
from harness.types import Prediction, Sample, Status

__all__ = ["PredictionsFileError", "PredictionsSystem"]

_OPTIONAL = ("raw", "detail", "plan", "program", "answer_pytype")
JSONL = "jsonl"


class PredictionsSystem(System):
    kind = "predictions"
    reads_images = False
    parameters = {"path": typed(str | None), "format": typed(str | None, (JSONL, *FORMATS)),
                  "task": typed(str | None)}

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, params, seed)
        if not params.get("path"):
            raise PredictionsFileError("the predictions system needs a file: pass --predictions FILE")
        self.path = Path(params["path"])
        self.format = str(params.get("format") or JSONL)
        self.task_name = params.get("task")
        if self.format not in (JSONL, *FORMATS):
            raise PredictionsFileError(f"unknown predictions format {self.format!r}; "
                                       f"choose one of {JSONL}, {', '.join(FORMATS)}")
        if self.format == JSONL and not self.path.is_file():
            raise PredictionsFileError(f"predictions file {self.path} does not exist")
        self._offsets: dict[tuple[str, str], int] = {}  # (task, id) -> byte offset of its line
        self._file = None
        # Foreign files are read whole up front: run.json records what they are before anything runs.
        self._foreign: list[ForeignFile] = [] if self.format == JSONL else \
            [read_file(p, self.format) for p in find_files(self.path, self.format)]
        self._matches: dict[tuple[str, str], Match] = {}

    # ----------------------------------------------------------------- this project's JSONL

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
                    if isinstance(row, dict) and "doc_id" in row and "id" not in row:
                        raise PredictionsFileError(f"{self.path}: line {number} looks like an lm-eval or lmms-eval "
                                                   "samples file; pass --predictions-format lm-eval or lmms-eval")
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

    def _prepare_jsonl(self, tasks: Sequence[Any]) -> None:
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

    def _predict_jsonl(self, sample: Sample) -> Prediction:
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

    # ----------------------------------------------------------------- other harnesses' files

    def _task_of(self, file: ForeignFile, selected: list[str], known: list[str]) -> str | None:
        """Our task a file answers; None for a file of a task of ours this run does not select."""
        if self.task_name:
            if self.task_name not in selected:
                raise PredictionsFileError(f"task={self.task_name!r} is not one of the selected tasks "
                                           f"({', '.join(selected)})")
            return self.task_name
        named = named_task(file, known)
        if named is not None:
            return named if named in selected else None
        if len(selected) == 1:
            return selected[0]
        raise PredictionsFileError(f"{file.path}: its task {file.task!r} is none of ours; run one task at a time "
                                   "or say which with --system-args task=NAME")

    def _prepare_foreign(self, tasks: Sequence[Any]) -> None:
        from harness.tasks import TaskRegistry

        selected = [t.name for t in tasks]
        known = sorted(set(TaskRegistry().names()) | set(selected))
        by_task: dict[str, list[ForeignFile]] = {}
        ignored: list[str] = []
        for file in self._foreign:
            name = self._task_of(file, selected, known)
            if name is None:
                ignored.append(f"{file.path.name} (task {named_task(file, known)})")
            else:
                by_task.setdefault(name, []).append(file)
        for task in tasks:
            files = by_task.get(task.name)
            if not files:
                held = f"; the files hold {', '.join(sorted(by_task))}" if by_task else ""
                also = f"; files of tasks not selected: {', '.join(ignored)} (pass --system-args " \
                       f"task={task.name} to read them as this task)" if ignored else ""
                raise PredictionsFileError(f"{self.path}: no {self.format} file holds task {task.name!r}{held}{also}")
            index = index_task(task)
            for file in files:
                for sample_id, match in match_file(file, index).items():
                    if (task.name, sample_id) in self._matches:
                        first = self._matches[(task.name, sample_id)]
                        raise PredictionsFileError(
                            f"sample {task.name}/{sample_id} is answered twice: {first.file.path} {first.row.where} "
                            f"and {file.path} {match.row.where}")
                    self._matches[(task.name, sample_id)] = match

    def _predict_foreign(self, sample: Sample) -> Prediction:
        match = self._matches.get((sample.task, sample.id))
        if match is None:
            return Prediction(sample.id, status=Status.MISSING, detail=f"no row for this sample in {self.path}")
        row = match.row
        origin = {"file": str(match.file.path), "row": row.where, "key": match.key, **row.extra}
        if row.response is None:
            return Prediction(sample.id, status=Status.NO_ANSWER, detail=f"{match.file.path} {row.where}: no reply",
                              extra={"source": origin})
        if match.file.format == "vlmevalkit" and row.response.startswith(VLMEVALKIT_FAILURE):
            return Prediction(sample.id, status=Status.API_ERROR, raw=row.response,
                              detail=f"{match.file.path} {row.where}: the model call failed", extra={"source": origin})
        answer = extract_answer(row.response, sample.answer_type, sample.choices)
        return Prediction(sample.id, answer=answer, raw=row.response, extra={"source": origin})

    # ----------------------------------------------------------------- the System interface

    def prepare(self, tasks: Sequence[Any]) -> None:
        if self.format == JSONL:
            self._prepare_jsonl(tasks)
        else:
            self._prepare_foreign(tasks)

    def predict_one(self, sample: Sample) -> Prediction:
        return self._predict_jsonl(sample) if self.format == JSONL else self._predict_foreign(sample)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._foreign:
            info["source"] = {"format": self.format, "files": [f.describe() for f in self._foreign]}
        else:
            info["source"] = {"format": self.format, "files": [{"path": str(self.path.resolve())}]}
        return info

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
