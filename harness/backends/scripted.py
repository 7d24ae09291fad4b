"""Replies read from a file of recorded responses: deterministic end-to-end tests and demos.

The file is JSON Lines, one recorded reply per line::

    {"prompt_sha256": "<request_digest(messages)>", "response": "..."}
    {"match": "How many red cubes", "response": "..."}
    {"match": "unanswerable", "error": "the model refused"}

``response`` is the reply; ``error`` makes the request fail with that message
(a BackendError), to script failures. The selector is either the request's
digest (:func:`~harness.backends.digest.request_digest`: roles, texts and image
pixels) or ``match``, a substring of the last user message. A request takes
the line with its digest, else the first ``match`` line (in file order) found
in its last user message; a request that matches nothing fails, naming its
digest so that a line for it is easy to add.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.backends.base import BackendError, ChatBackend
from harness.backends.messages import Message
from harness.backends.digest import last_user_text, request_digest
from harness.jsonl import json_objects
from harness.requirements import LocalPath, Requirement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Line:
    number: int
    response: str | None
    error: str | None


def script_entry(messages: list[Message], response: str) -> dict[str, str]:
    """A line of a script answering exactly these messages with ``response``."""
    return {"prompt_sha256": request_digest(messages), "response": response}


class ScriptedChat(ChatBackend):
    """A backend answering from ``path`` (JSON Lines, see the module's docstring).

    The file is read once, when the backend is built; sampling settings are
    accepted and ignored (the replies are fixed). The fingerprint holds the
    file's content hash, so caches and records tell scripts apart.
    """

    @classmethod
    def requirements(cls, options: Mapping[str, Any], purpose: str) -> list[Requirement]:
        return [LocalPath(str(options.get("path")), purpose, "write the replies file, or fix its path")]

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ValueError(f"scripted chat: cannot read {self.path}: {exc}") from exc
        self.content_sha256 = hashlib.sha256(data).hexdigest()
        self._by_digest: dict[str, _Line] = {}
        self._matches: list[tuple[str, _Line]] = []
        for number, entry in json_objects(self.path):
            self._add(number, entry)
        if not self._by_digest and not self._matches:
            raise ValueError(f"{self.path}: no recorded responses")

    def _add(self, number: int, entry: dict) -> None:
        where = f"{self.path}:{number}"
        unknown = set(entry) - {"prompt_sha256", "match", "response", "error"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        outcomes = [name for name in ("response", "error") if name in entry]
        if len(outcomes) != 1 or not isinstance(entry[outcomes[0]], str):
            raise ValueError(f"{where}: needs exactly one of 'response' or 'error', a string")
        selectors = [name for name in ("prompt_sha256", "match") if name in entry]
        if len(selectors) != 1 or not isinstance(entry[selectors[0]], str) or not entry[selectors[0]]:
            raise ValueError(f"{where}: needs exactly one selector, 'prompt_sha256' or 'match', a non-empty string")
        line = _Line(number, entry.get("response"), entry.get("error"))
        if selectors[0] == "match":
            self._matches.append((entry["match"], line))
            return
        digest = entry["prompt_sha256"].lower()
        if digest in self._by_digest:
            raise ValueError(f"{where}: prompt_sha256 {digest} is already recorded on line "
                             f"{self._by_digest[digest].number}")
        self._by_digest[digest] = line

    @property
    def fingerprint(self) -> str:
        return f"scripted:{self.content_sha256}"

    def _find(self, messages: list[Message]) -> tuple[str, str, _Line | None]:
        """The request's digest, its last user message and the line answering it."""
        digest = request_digest(messages)
        text = last_user_text(messages)
        line = self._by_digest.get(digest)
        if line is None:
            line = next((candidate for needle, candidate in self._matches if needle in text), None)
        return digest, text, line

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        digest, text, line = self._find(messages)
        if line is None:
            start = " ".join(text.split())[:80]
            raise BackendError(f"scripted chat {self.path.name}: no recorded response for request "
                               f"prompt_sha256={digest} (last user message: {start!r})")
        if line.error is not None:
            raise BackendError(f"scripted chat {self.path.name}:{line.number}: {line.error}")
        return line.response  # type: ignore[return-value]
