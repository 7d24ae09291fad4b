"""JSON Lines files: reading objects with errors that name the file and the line, and appending
records crash-safely."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def json_objects(path: str | Path, error: type[Exception] = ValueError,
                 torn_tail_ok: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line.

    A line that is not a JSON object raises ``error`` naming it. With
    ``torn_tail_ok``, an unreadable last line without a newline (a write cut
    short by a crash) is skipped with a warning instead.
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if torn_tail_ok and not raw.endswith(b"\n"):
                    log.warning("%s: skipping a torn last line", where)
                    return
                raise error(f"{where}: not JSON ({exc})") from None
            if not isinstance(entry, dict):
                raise error(f"{where}: expected an object, got {type(entry).__name__}")
            yield number, entry


class JsonlAppender:
    """Appends JSON lines, flushing each. Opening an existing file reads its
    records and cuts off a torn last line (the trace of a killed run), so the
    next line starts clean."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            good = 0
            with path.open("rb") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.endswith(b"\n"):
                        log.warning("%s: dropping torn last line %d from an interrupted run", path, number)
                        break
                    if line.strip():
                        try:
                            self.records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
                    good += len(line)
            if good != path.stat().st_size:
                os.truncate(path, good)
        self._file = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
