"""Reading JSON Lines files of objects with errors that name the file and the line."""

from __future__ import annotations

import json
import logging
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
