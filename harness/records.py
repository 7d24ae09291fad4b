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


# One encoder and decoder for every record: json.dumps and json.loads with options build
# new ones on every call, a good part of what a record costs to write and read.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=to_jsonable)
_decode = json.JSONDecoder().decode
_TAIL_CHUNK = 1 << 16


def _parse(line: bytes, path: Path, number: int) -> dict:
    try:
        record = _decode(line.decode("utf-8", "surrogatepass"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordsError(f"{path}: line {number} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or "id" not in record:
        raise RecordsError(f"{path}: line {number} is not a record (an object with an 'id')")
    return record


def dumps(record: dict) -> str:
    return _ENCODER.encode(record)


def complete_length(path: Path) -> int:
    """The bytes of a file up to the end of its last complete line (read from the end)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        end = size
        while end > 0:
            start = max(end - _TAIL_CHUNK, 0)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


class RecordWriter:
    """Appends records to a JSONL file; with ``resume`` it continues an existing one, after
    cutting off a torn last line (the trace of a kill in mid-write). Which samples the file
    already holds is the caller's to know (:func:`harness.runstate.prepare_resume` reads them)."""

    def __init__(self, path: str | Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            if not resume:
                raise FileExistsError(f"{self.path} already holds records; pass --resume to continue that run")
            good_bytes = complete_length(self.path)
            if good_bytes != self.path.stat().st_size:
                log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", self.path,
                            self.path.stat().st_size - good_bytes)
                os.truncate(self.path, good_bytes)
        self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        try:
            self._file.write(dumps(record) + "\n")  # one write per line, so lines never interleave
            self._file.flush()
        except OSError as exc:  # a full disk: name the file (a resume redoes a line cut short)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

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


_RECORD_START = b'\n{"id": '  # how every line this harness writes begins (the file's start reads as a "\n")
_SCAN_CHUNK = 1 << 24


def _scan(f: Any, length: int, needle: bytes) -> tuple[bool, list[int]]:
    """One pass over the first ``length`` bytes of a file (its complete lines), with byte counts and
    searches only: whether every line begins as this harness writes a record, and where the lines
    holding ``needle`` (which begins with a newline) start."""
    f.seek(0)
    lines = starts = 0
    found: list[int] = []
    tail = b"\n"  # the end of the previous chunk; the file's start reads as a newline
    offset = 0  # of the chunk in the file
    while length > 0 and (chunk := f.read(min(_SCAN_CHUNK, length))):
        length -= len(chunk)
        lines += chunk.count(b"\n")
        starts += chunk.count(_RECORD_START)
        # Matches that cross the chunk's start: in a window of the tail and the chunk's first bytes
        # too short to hold a whole match on either side.
        for pattern in (_RECORD_START, needle):
            window = tail[1 - len(pattern):] + chunk[:len(pattern) - 1]
            base = offset - len(tail[1 - len(pattern):])
            at = window.find(pattern)
            while at >= 0:
                if pattern is _RECORD_START:
                    starts += 1
                else:
                    found.append(base + at + 1)
                at = window.find(pattern, at + 1)
        at = chunk.find(needle)
        while at >= 0:
            found.append(offset + at + 1)
            at = chunk.find(needle, at + 1)
        tail = (tail + chunk)[-len(needle):] if len(chunk) < len(needle) else chunk[-len(needle):]
        offset += len(chunk)
    return starts == lines, found


def find_records(path: str | Path, sample_id: str) -> list[dict]:
    """The records of one sample in a file. When every line begins as this harness writes records
    (checked with byte counts in the same pass), the lines holding the sample's ``"id": ...`` text
    are found with a byte search and only they are parsed; any other file is read whole (and a
    damaged line is reported as :func:`read_records` reports it)."""
    path = Path(path)
    if not path.stat().st_size:
        return []
    needle = _RECORD_START + json.dumps(sample_id, ensure_ascii=False).encode("utf-8", "surrogatepass")
    found = []
    with path.open("rb") as f:
        records_only, starts = _scan(f, complete_length(path), needle)  # a torn last line is no record
        if not records_only:
            return [r for r in read_records(path) if r["id"] == sample_id]
        for start in starts:
            f.seek(start)
            line = f.readline()
            try:
                record = _parse(line, path, 0)
            except RecordsError:  # a line that begins as a record and is not one: named by its number
                f.seek(0)
                _parse(line, path, f.read(start).count(b"\n") + 1)
                raise
            if record["id"] == sample_id:
                found.append(record)
    return found


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
