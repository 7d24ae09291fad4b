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
from array import array
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from harness.idset import DIGEST, digest
from harness.interop.logs import FORMATS, VLMEVALKIT_FAILURE, ForeignFile, PredictionsFileError, find_files, read_file
from harness.interop.matching import Match, index_task, match_file, named_task
from harness.systems.base import System
from harness.systems.direct import extract_answer
from harness.systems.params import typed
from harness.types import Prediction, Sample, Status

__all__ = ["PredictionsFileError", "PredictionsSystem"]

_OPTIONAL = ("raw", "detail", "plan", "program", "answer_pytype")
_decode = json.JSONDecoder().decode
# A line of a JSONL predictions file in the index: its id's digest (16 bytes), its task (2 bytes:
# 0 for none, else 1 + the task's position) and its byte offset (8 bytes), big-endian so that
# sorting the bytes sorts by id, task and place in the file.
_LINE = np.dtype("S26")
_SLICE = 1 << 13  # lines checked against a task's ids at a time


def _task_bytes(task: int) -> bytes:
    return (task + 1).to_bytes(2, "big")


def _offset_bytes(offset: int) -> bytes:
    return offset.to_bytes(8, "big")


def _digests(ids: Iterator[str]) -> np.ndarray:
    """The sorted digests of some ids (gathered in a bytearray, which grows without copying)."""
    packed = bytearray()
    for sample_id in ids:
        packed += digest(sample_id)
    digests = np.frombuffer(packed, dtype=DIGEST)
    digests.sort()
    return digests


def _task_numbers(fields: np.ndarray) -> np.ndarray:
    """The task of each line (-1: none), from the index's bytes."""
    return ((fields[:, 16].astype(np.int16) << 8) | fields[:, 17]) - 1


def _task_field(tasks: np.ndarray) -> np.ndarray:
    stored = tasks.astype(np.uint16) + 1
    return np.stack([stored >> 8, stored & 0xFF], axis=1).astype(np.uint8)


def _repeats(fields: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The lines filed under a task whose id and task are those of the line before (sorted index)."""
    found = [np.empty(0, dtype=np.int64)]
    for lo in range(1, len(fields), _SLICE):
        hi = min(lo + _SLICE, len(fields))
        same = (fields[lo:hi, :18] == fields[lo - 1:hi - 1, :18]).all(axis=1) & (owner[lo:hi] >= 0)
        found.append(np.flatnonzero(same) + lo)
    return np.concatenate(found)


def _offsets(fields: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(fields[rows, 18:]).view(">u8").ravel().astype(np.int64)
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
        self._lines: np.ndarray | None = None  # the index of the lines (see _LINE), sorted
        self._task_positions: dict[str, int] = {}
        self._file = None
        # Foreign files are read whole up front: run.json records what they are before anything runs.
        self._foreign: list[ForeignFile] = [] if self.format == JSONL else \
            [read_file(p, self.format) for p in find_files(self.path, self.format)]
        self._matches: dict[tuple[str, str], Match] = {}

    # ----------------------------------------------------------------- this project's JSONL

    def _read_index(self) -> Iterator[tuple[int, str | None, str, int]]:
        """(line number, task, id, byte offset) of every line, each line checked."""
        with self.path.open("rb") as f:
            offset = 0
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = _decode(line.decode("utf-8"))
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
        """Check every line against the selected tasks' ids and index the lines by sample, in 26
        bytes a line (see ``_LINE``): a file of a million predictions is not held in memory.
        Problems are reported as if the lines were checked one by one: the first ambiguous or
        repeated id in file order, else every unknown one."""
        names = [task.name for task in tasks]
        position = {name: i for i, name in enumerate(names)}
        packed = bytearray()
        for _, task, sample_id, offset in self._read_index():
            if task is not None and task not in position:
                continue  # predictions for tasks not selected in this run
            packed += digest(sample_id) + _task_bytes(-1 if task is None else position[task]) + _offset_bytes(offset)
        lines = np.frombuffer(packed, dtype=_LINE)
        lines.sort()
        fields = lines.view(np.uint8).reshape(-1, _LINE.itemsize)
        named = _task_numbers(fields)
        # member[t, line]: the line's id is one of task t's (checked a slice at a time, to keep memory flat).
        member = np.zeros((len(names), len(lines)), dtype=bool)
        for t, task in enumerate(tasks):
            ids = _digests(task.iter_ids())
            for lo in range(0, len(lines) if len(ids) else 0, _SLICE):
                ours = np.ascontiguousarray(fields[lo:lo + _SLICE, :16]).view(DIGEST).ravel()
                member[t, lo:lo + _SLICE] = ids[np.minimum(ids.searchsorted(ours), len(ids) - 1)] == ours
            del ids
        if len(names) == 1:  # (the usual case, without the temporary arrays of the general one)
            owner, known = np.zeros(len(lines), dtype=np.int16), member[0]
        else:
            owner = np.where(named >= 0, named, member.argmax(axis=0) if names else -1).astype(np.int16)
            known = member[np.maximum(owner, 0), np.arange(len(lines))] if names else np.zeros(len(lines), bool)
        ambiguous = (named < 0) & (member.sum(axis=0, dtype=np.int16) > 1)
        problems: list[tuple[int, Callable[[], str]]] = []  # (offset of the line, its message)
        if ambiguous.any():
            rows = np.flatnonzero(ambiguous)
            earliest = int(np.argmin(_offsets(fields, rows)))
            first = int(_offsets(fields, rows[earliest:earliest + 1])[0])
            owners = ", ".join(names[t] for t in np.flatnonzero(member[:, rows[earliest]]))
            problems.append((first, lambda first=first, owners=owners: (
                f"{self.path}: line {self._line_number(first)}: id {self._row_id(first)!r} exists in tasks "
                f"{owners}; add a 'task' key to say which")))
        # Each line is filed under its owner (unknown and ambiguous ones under none) and sorted
        # again: the lines of one sample are neighbours, in file order.
        owner[~known | ambiguous] = -1
        del member, named, known, ambiguous
        for lo in range(0, len(lines), _SLICE):
            fields[lo:lo + _SLICE, 16:18] = _task_field(owner[lo:lo + _SLICE])
        del owner
        lines.sort()
        owner = _task_numbers(fields)
        repeats = _repeats(fields, owner)
        if len(repeats):  # a second line of a sample; the earliest such line is the one reported
            seconds = _offsets(fields, repeats)
            at = int(np.argmin(seconds))
            first, again = int(_offsets(fields, repeats[at:at + 1] - 1)[0]), int(seconds[at])
            task = names[int(owner[repeats[at]])]
            problems.append((again, lambda first=first, again=again, task=task: (
                f"{self.path}: line {self._line_number(again)}: a second prediction for {task}/{self._row_id(again)} "
                f"(first on line {self._line_number(first)})")))
        indexed = owner >= 0
        del owner
        if problems:
            raise PredictionsFileError(min(problems, key=lambda problem: problem[0])[1]())
        unknown = np.sort(_offsets(fields, np.flatnonzero(~indexed)))
        if len(unknown):
            shown = []
            for offset in unknown[:10].tolist():
                row = self._row(offset)
                shown.append(f"line {self._line_number(offset)}: id {str(row['id'])!r}"
                             + (f" (task {row['task']})" if row.get("task") is not None else ""))
            more = f"; and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise PredictionsFileError(
                f"{self.path}: {len(unknown)} predictions match no sample of the selected tasks "
                f"({', '.join(names)}): {'; '.join(shown)}{more}")
        self._lines, self._task_positions = lines, position

    def _row(self, offset: int) -> dict:
        with self.path.open("rb") as f:
            f.seek(offset)
            return _decode(f.readline().decode("utf-8"))

    def _row_id(self, offset: int) -> str:
        return str(self._row(offset)["id"])

    def _line_number(self, offset: int) -> int:
        with self.path.open("rb") as f:
            return f.read(offset).count(b"\n") + 1

    def _predict_jsonl(self, sample: Sample) -> Prediction:
        if self._file is None:
            self._file = self.path.open("rb")
        # A file in the samples' order is read straight through: the next line is this sample's
        # when it names its id (and its task, or none: an id of two tasks was refused above).
        row = self._next_row()
        if row is None or str(row["id"]) != sample.id or row.get("task", sample.task) != sample.task:
            offset = self._offset(sample)
            if offset is None:
                return Prediction(sample.id, status=Status.MISSING, detail=f"no prediction in {self.path}")
            self._file.seek(offset)  # within the read buffer when it is near: no system call
            row = self._next_row()
        return Prediction(
            sample.id,
            answer=row.get("prediction", row.get("answer")),
            status=row.get("status", Status.OK),
            **{key: row.get(key) for key in _OPTIONAL},
        )

    def _next_row(self) -> dict | None:
        line = self._file.readline()
        return _decode(line.decode("utf-8")) if line.strip() else None

    def _offset(self, sample: Sample) -> int | None:
        """Where the sample's line starts, from the index."""
        if self._lines is None or sample.task not in self._task_positions:
            return None
        key = digest(sample.id) + _task_bytes(self._task_positions[sample.task])
        at = int(self._lines.searchsorted(np.array(key, dtype=_LINE)))
        if at == len(self._lines):
            return None
        found = self._lines.view(np.uint8).reshape(-1, _LINE.itemsize)[at]
        return int.from_bytes(found[18:].tobytes(), "big") if found[:18].tobytes() == key else None

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
