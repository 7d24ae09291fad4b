"""A chat backend wrapped in the crash-safe on-disk response cache.

Only deterministic requests are cached: temperature 0 (greedy), or an explicit
seed. A sampled request without a seed is meant to differ from call to call,
so it always goes to the model and is never stored. Failures are never stored
either: a request that failed is asked again next time.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping

from harness.backends.chat import BackendError, BatchChatBackend, ChatBackend, Message
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


class CachedChat(BatchChatBackend):
    """``inner`` with replies to deterministic requests kept in a SQLite (WAL) file.

    A key is the inner backend's fingerprint (model and settings), the request's
    :func:`request_digest` (roles, texts, image pixels) and the full sampling
    parameters (the backend's defaults overlaid by the call's). Each reply is
    committed as it arrives, so a killed run loses nothing it paid for, and a
    resumed run (or another process) given the same file reuses it.
    ``complete_many`` serves the hits and sends only the misses, each distinct
    one once, to the inner backend in a single call.
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
        replies: list[str | BackendError | None] = [None] * len(requests)
        keys = [self.key(messages, sampling) for messages in requests]
        send: list[int] = []  # indices asked of the inner backend
        first_of: dict[str, int] = {}  # key -> the index that asks for it
        copies: dict[str, list[int]] = {}  # key -> later indices with that key
        hits = 0
        for index, key in enumerate(keys):
            if key is None:
                send.append(index)
                continue
            if key in first_of:
                copies.setdefault(key, []).append(index)
                continue
            stored = self._cache.get(key)
            if isinstance(stored, dict) and isinstance(stored.get("response"), str):
                replies[index] = stored["response"]
                hits += 1
            else:
                first_of[key] = index
                send.append(index)
        if send:
            answers = self.inner.complete_many([requests[i] for i in send], **sampling)
            if len(answers) != len(send):
                raise RuntimeError(f"{self.inner.fingerprint}: complete_many returned {len(answers)} replies "
                                   f"for {len(send)} requests")
            for index, answer in zip(send, answers, strict=True):
                replies[index] = answer
                key = keys[index]
                if key is not None and isinstance(answer, str):
                    self._cache.put(key, {"response": answer})
        for key, later in copies.items():
            # A key repeated within one call was a miss the first time: its
            # duplicates share the one answer (or the one failure).
            for index in later:
                replies[index] = replies[first_of[key]]
        misses = sum(1 for i in send if keys[i] is not None)
        with self._stats_lock:
            self.stats["hits"] += hits + sum(len(later) for later in copies.values())
            self.stats["misses"] += misses
            self.stats["uncached"] += len(send) - misses
        log.debug("%s: %d cached, %d sent", self.inner.fingerprint, len(requests) - len(send), len(send))
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
