"""A crash-safe key-value cache for model and judge responses (SQLite in WAL mode).

Each entry is committed on its own, so a killed process loses at most the
request in flight, and several processes of one host may share one file (WAL mode
shares its index through memory, so processes of other hosts must not open it: they
reach it through :func:`open_caches_with`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol


def default_cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "valor-harness"))


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CacheError(RuntimeError):
    """A cache file that cannot be used; the message names it and how to recover."""


class CacheStore(Protocol):
    """Where a :class:`ResponseCache` keeps its entries when not in its own file."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


_opener: Callable[[Path], CacheStore] | None = None


def open_caches_with(opener: Callable[[Path], CacheStore] | None) -> None:
    """Keep the entries of every :class:`ResponseCache` this process opens from now on in
    ``opener(path)`` instead of the file itself (None: in the file again). A distributed
    run's replicas on other hosts than the driver's reach the driver's files this way."""
    global _opener
    _opener = opener


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._store = _opener(self.path) if _opener is not None else None
        if self._store is not None:
            return
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)"
            )
            self._conn.commit()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> CacheError:
        return CacheError(f"cache file {self.path} cannot be used ({exc}); it holds only cached replies: delete it, "
                          f"or point HARNESS_CACHE_DIR at another folder")

    def get(self, key: str) -> Any | None:
        if self._store is not None:
            return self._store.get(key)
        try:
            with self._lock:
                row = self._conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError):  # a damaged entry is a miss; the next put replaces it
            return None

    def put(self, key: str, value: Any) -> None:
        if self._store is not None:
            return self._store.put(key, value)
        blob = json.dumps(value, ensure_ascii=False)
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                    (key, blob, time.time()),
                )
                self._conn.commit()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def __len__(self) -> int:
        if self._store is not None:
            return len(self._store)
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        if self._store is not None:
            return self._store.close()
        with self._lock:
            self._conn.close()
