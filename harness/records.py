"""Per-sample run records: one JSON line per sample, appended and flushed at once.

A record reaches the operating system as soon as its sample is scored, so a
killed run (even ``kill -9``) loses only the samples in flight. On resume a
torn last line, the trace of a kill in mid-write, is cut off and redone.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """JSON-safe form of a value a program may return (numpy scalars, tuples, sets, NaN)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_jsonable(value.tolist())
    return str(value)


class RecordsError(ValueError):
    """A records file with a line that is not a record; the message names the file and the line."""


def _parse(line: bytes, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordsError(f"{path}: line {number} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or "id" not in record:
        raise RecordsError(f"{path}: line {number} is not a record (an object with an 'id')")
    return record


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=to_jsonable)


def _scan(path: Path) -> tuple[set[str], int]:
    """Ids of the complete records in a file and the byte length they occupy."""
    done: set[str] = set()
    good_bytes = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                log.warning("%s: dropping torn last line %d (%d bytes) from an interrupted run",
                            path, number, len(line))
                break
            done.add(_parse(line, path, number)["id"])
            good_bytes += len(line)
    return done, good_bytes


class RecordWriter:
    """Appends records to a JSONL file; with ``resume`` it continues an existing one."""

    def __init__(self, path: str | Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()  # ids recorded: by the run being resumed, then by this writer
        if self.path.exists() and self.path.stat().st_size:
            if not resume:
                raise FileExistsError(f"{self.path} already holds records; pass --resume to continue that run")
            self.done, good_bytes = _scan(self.path)
            if good_bytes != self.path.stat().st_size:
                os.truncate(self.path, good_bytes)
        self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        if record["id"] in self.done:
            raise ValueError(f"{self.path}: sample {record['id']!r} is already recorded")
        try:
            self._file.write(dumps(record) + "\n")  # one write per line, so lines never interleave
            self._file.flush()
        except OSError as exc:  # a full disk: name the file (a resume redoes a line cut short)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self.done.add(record["id"])

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | Path) -> Iterator[dict]:
    """Complete records of a file, one at a time; a torn last line is skipped."""
    path = Path(path)
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                log.warning("%s: skipping torn last line %d", path, number)
                return
            yield _parse(line, path, number)


def write_records_atomically(path: str | Path, records: Iterator[dict]) -> int:
    """Replace a records file in one step (used when re-scoring); returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(dumps(record) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return count
