"""A chat backend wrapped in the crash-safe on-disk response cache.

Only deterministic requests are cached: temperature 0 (greedy), or an explicit
seed. A sampled request without a seed is meant to differ from call to call,
so it always goes to the model and is never stored. Failures are never stored
either: a request that failed is asked again next time.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.backends.base import BackendError, BatchChatBackend, ChatBackend
from harness.backends.messages import Message
from harness.backends.digest import request_digest
from harness.cache import ResponseCache, cache_key, default_cache_dir

log = logging.getLogger(__name__)

# Part of every key: bump when what a cached value means changes.
_KEY_VERSION = "chat-cache-v1"


def default_chat_cache_path() -> Path:
    return default_cache_dir() / "chat.sqlite"


def is_deterministic(backend: ChatBackend, sampling: Mapping[str, Any]) -> bool:
    """Whether a call may be answered from the cache: its effective temperature
    (the call's, else the backend's default) is exactly 0, or it has a seed."""
    merged = {**backend.default_sampling(), **sampling}
    if merged.get("seed") is not None:
        return True
    temperature = merged.get("temperature")
    return temperature is not None and float(temperature) == 0.0


@dataclass
class _Lookup:
    """One call's requests against the cache."""

    replies: list[str | BackendError | None]  # hits so far; None: not answered yet
    keys: list[str | None]  # None: not cacheable
    send: list[int] = field(default_factory=list)  # indices asked of the inner backend
    first_of: dict[str, int] = field(default_factory=dict)  # key -> the index that asks for it
    copies: dict[str, list[int]] = field(default_factory=dict)  # key -> later indices with that key
    hits: int = 0

    def sent(self, requests: list[list[Message]]) -> list[list[Message]]:
        return [requests[index] for index in self.send]


class CachedChat(BatchChatBackend):
    """``inner`` with replies to deterministic requests kept in a SQLite (WAL) file.

    A key is the inner backend's fingerprint (model and settings), the request's
    :func:`request_digest` (roles, texts, image pixels) and the full sampling
    parameters (the backend's defaults overlaid by the call's). Each reply is
    committed as it arrives, so a killed run loses nothing it paid for, and a
    resumed run (or another process) given the same file reuses it.
    ``complete_many`` serves the hits and sends only the misses, each distinct
    one once, to the inner backend in a single call; ``acomplete_many`` does the
    same through the inner backend's ``acomplete_many``.
    """

    def __init__(self, inner: ChatBackend, cache_path: str | Path | None = None) -> None:
        if not isinstance(inner, ChatBackend):
            raise TypeError(f"CachedChat wraps a ChatBackend, got {type(inner).__name__}")
        self.inner = inner
        self.path = Path(cache_path) if cache_path is not None else default_chat_cache_path()
        self._cache = ResponseCache(self.path)
        self._stats_lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "uncached": 0}

    @property
    def fingerprint(self) -> str:
        # A cache changes nothing about the answers.
        return self.inner.fingerprint

    def default_sampling(self) -> dict[str, Any]:
        return self.inner.default_sampling()

    def key(self, messages: list[Message], sampling: Mapping[str, Any]) -> str | None:
        """The cache key of a request, or None when it must not be cached."""
        if not is_deterministic(self.inner, sampling):
            return None
        merged = {**self.inner.default_sampling(), **sampling}
        return cache_key(_KEY_VERSION, self.inner.fingerprint, request_digest(messages), merged)

    def complete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        lookup = self._look_up(requests, sampling)
        answers = self.inner.complete_many(lookup.sent(requests), **sampling) if lookup.send else []
        return self._settle(lookup, answers)

    async def acomplete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """``complete_many`` for asyncio code: the misses go to the inner backend's
        ``acomplete_many``. Digests (image pixels) and SQLite run on a worker thread,
        so the event loop keeps serving other requests meanwhile."""
        lookup = await self._in_worker(functools.partial(self._look_up, requests, sampling))
        answers = await self.inner.acomplete_many(lookup.sent(requests), **sampling) if lookup.send else []
        return await self._in_worker(functools.partial(self._settle, lookup, answers))

    def _look_up(self, requests: list[list[Message]], sampling: Mapping[str, Any]) -> _Lookup:
        """The hits, and the requests to send: each distinct miss once, and every
        uncacheable request."""
        lookup = _Lookup([None] * len(requests), [self.key(messages, sampling) for messages in requests])
        for index, key in enumerate(lookup.keys):
            if key is None:
                lookup.send.append(index)
                continue
            if key in lookup.first_of:
                lookup.copies.setdefault(key, []).append(index)
                continue
            stored = self._cache.get(key)
            if isinstance(stored, dict) and isinstance(stored.get("response"), str):
                lookup.replies[index] = stored["response"]
                lookup.hits += 1
            else:
                lookup.first_of[key] = index
                lookup.send.append(index)
        return lookup

    def _settle(self, lookup: _Lookup, answers: list[str | BackendError]) -> list[str | BackendError]:
        """Every reply in order, once the inner backend has answered the sent requests:
        successes are stored, repeats share their first's answer."""
        replies, keys, send = lookup.replies, lookup.keys, lookup.send
        if len(answers) != len(send):
            raise RuntimeError(f"{self.inner.fingerprint}: the backend returned {len(answers)} replies "
                               f"for {len(send)} requests")
        for index, answer in zip(send, answers, strict=True):
            replies[index] = answer
            key = keys[index]
            if key is not None and isinstance(answer, str):
                self._cache.put(key, {"response": answer})
        for key, later in lookup.copies.items():
            # A key repeated within one call was a miss the first time: its
            # duplicates share the one answer (or the one failure).
            for index in later:
                replies[index] = replies[lookup.first_of[key]]
        misses = sum(1 for i in send if keys[i] is not None)
        with self._stats_lock:
            self.stats["hits"] += lookup.hits + sum(len(later) for later in lookup.copies.values())
            self.stats["misses"] += misses
            self.stats["uncached"] += len(send) - misses
        log.debug("%s: %d cached, %d sent", self.inner.fingerprint, len(replies) - len(send), len(send))
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self._cache.close()


def with_cache(backend: ChatBackend, path: str | Path | None = None) -> CachedChat:
    """``backend`` answering deterministic requests from the cache file ``path``
    (default: ``chat.sqlite`` in the harness cache directory)."""
    return CachedChat(backend, path)
