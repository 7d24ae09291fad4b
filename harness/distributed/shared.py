"""What the replicas of a distributed run share: the API rate limits and the response caches.

Both live in one small actor on the driver's node (:class:`RunServices`).

- **Rate limits.** A backend's ``requests_per_minute`` is the API's limit, so it must hold
  for the whole cluster, not for each replica: every replica's backends book their send
  times in one bucket per model, endpoint and rate (:class:`SharedPacer`).
- **Caches.** The response and tool caches are SQLite files in WAL mode, which serves the
  processes of one host only. Replicas on the driver's node open the driver's files
  directly (no cost, one cache with the local runs and resumes); replicas on other nodes
  read and write the same files through the actor (:class:`RemoteCacheStore`, one short
  call per lookup), so that no file is ever opened from two hosts and every replica sees
  what any other has paid for. A replica that dies loses nothing: each entry is committed
  when it is written.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from harness.backends.retry import share_rate_limits
from harness.cache import ResponseCache, open_caches_with

# Threads of the actor: lookups and bookings are short, but many replicas ask at once.
SERVICE_THREADS = 64


class RunServices:
    """The run's shared rate buckets and cache files (a Ray actor on the driver's node)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[tuple[str, float], float] = {}  # bucket -> monotonic time its next token is ready
        self._caches: dict[str, ResponseCache] = {}

    def reserve(self, scope: str, requests_per_minute: float) -> float:
        """Takes the next token of the bucket of ``scope`` at this rate: seconds to wait."""
        bucket = (scope, float(requests_per_minute))
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(bucket, float("-inf")))
            self._next[bucket] = start + 60.0 / bucket[1]
        return start - now

    def _cache(self, path: str) -> ResponseCache:
        with self._lock:
            if path not in self._caches:
                self._caches[path] = ResponseCache(path)
            return self._caches[path]

    def cache_get(self, path: str, key: str) -> Any | None:
        return self._cache(path).get(key)

    def cache_put(self, path: str, key: str, value: Any) -> None:
        self._cache(path).put(key, value)

    def cache_len(self, path: str) -> int:
        return len(self._cache(path))

    def close(self) -> None:
        with self._lock:
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()


class SharedPacer:
    """A backend's pacer whose bucket is the run's, shared by every replica."""

    def __init__(self, services: Any, requests_per_minute: float, scope: str) -> None:
        self.services, self.requests_per_minute, self.scope = services, requests_per_minute, scope

    def reserve(self) -> float:
        import ray

        return ray.get(self.services.reserve.remote(self.scope, self.requests_per_minute))


class RemoteCacheStore:
    """A cache file on the driver's node, reached through the run's services."""

    def __init__(self, services: Any, path: Path) -> None:
        self.services, self.path = services, str(path)

    def get(self, key: str) -> Any | None:
        import ray

        return ray.get(self.services.cache_get.remote(self.path, key))

    def put(self, key: str, value: Any) -> None:
        import ray

        ray.get(self.services.cache_put.remote(self.path, key, value))

    def __len__(self) -> int:
        import ray

        return ray.get(self.services.cache_len.remote(self.path))

    def close(self) -> None:
        """The file stays open in the services until the run ends."""


def use_services(services: Any, on_driver_node: bool, driver_cwd: str) -> None:
    """Make this process (a replica) pace its API calls in the run's shared buckets and,
    away from the driver's node, keep its cache entries in the driver's files (a relative
    cache path means what it means in the driver's working folder)."""
    share_rate_limits(lambda requests_per_minute, scope: SharedPacer(services, requests_per_minute, scope))
    if not on_driver_node:
        open_caches_with(lambda path: RemoteCacheStore(services, Path(driver_cwd) / path))
