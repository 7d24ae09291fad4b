"""Retries, backoff and rate limits of remote model calls.

A :class:`RetryPolicy` says how many requests a call may make, how long to wait
between them and how many may be in flight; :class:`AttemptFailure` is one
failed request as the retry loop of :class:`~harness.backends.remote.RemoteChatBackend`
reads it; :class:`RateLimiter` spaces requests on the client's side.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol


# 408 request timeout, 409 lock conflict and 429 rate limit are transient by
# definition; every 5xx is retried as well. Other 4xx are our fault: retrying
# them only wastes quota.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def _retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


def attempt_count(attempts: int) -> str:
    """"1 attempt", "3 attempts": how failures are worded by every remote backend."""
    return f"{attempts} attempt" + ("" if attempts == 1 else "s")


def exponential_backoff(attempt: int, backoff_s: float, max_backoff_s: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) when the server
    named no wait: exponential, capped, with jitter (a factor in [0.5, 1]) so
    that many threads rejected together do not return together."""
    ceiling = min(backoff_s * 2.0 ** (attempt - 1), max_backoff_s)
    return ceiling * rng.uniform(0.5, 1.0)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a server asks for: ``retry-after-ms`` (OpenAI's), else ``retry-after``
    in seconds or as an HTTP date. None when absent or unreadable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):
                continue
        if seconds != seconds:  # NaN
            continue
        return max(seconds, 0.0)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How a remote backend retries and shares its endpoint.

    Every call makes at most ``1 + max_retries`` requests of at most
    ``timeout_s`` each, and at most ``max_concurrency`` requests are in flight.
    A transient failure is retried after the wait the server asks for (not
    waited for at all when that is more than ``max_retry_after_s``), else after
    :func:`exponential_backoff` from ``backoff_s`` capped at ``max_backoff_s``.
    ``requests_per_minute`` (None: no limit) spaces requests, retries included,
    at least ``60 / requests_per_minute`` seconds apart (:class:`RateLimiter`).
    ``rng`` draws the jitter.
    """

    timeout_s: float = 60.0
    max_retries: int = 4
    max_concurrency: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0
    requests_per_minute: float | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_concurrency < 1 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("need max_retries >= 0, max_concurrency >= 1, timeout_s > 0 and backoff_s >= 0")
        if self.requests_per_minute is not None:
            if not float(self.requests_per_minute) > 0:
                raise ValueError(f"requests_per_minute must be positive or None, got {self.requests_per_minute!r}")
            object.__setattr__(self, "requests_per_minute", float(self.requests_per_minute))
        # Settings may come from YAML or the command line as other number types.
        for name, kind in (("timeout_s", float), ("max_retries", int), ("max_concurrency", int),
                           ("backoff_s", float), ("max_backoff_s", float), ("max_retry_after_s", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    @property
    def attempts(self) -> int:
        return self.max_retries + 1

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt``: see :func:`exponential_backoff`."""
        return exponential_backoff(attempt, self.backoff_s, self.max_backoff_s, self.rng)


@dataclass(frozen=True)
class AttemptFailure:
    """One failed request as the retry loop reads it."""

    text: str  # what happened, for messages: "HTTP 503 (overloaded)"
    status: int | None = None  # None: no response came
    retryable: bool = True
    wait: float | None = None  # seconds the server asked us to wait, when it said
    hint: str = ""  # appended to the final error only

    @classmethod
    def http(cls, status: int | None, detail: str, wait: float | None = None, hint: str = "") -> "AttemptFailure":
        """An error status: 408, 409, 429 and 5xx are retried, others are final."""
        return cls(f"HTTP {status} ({detail})", status, isinstance(status, int) and _retryable(status), wait, hint)

    @classmethod
    def timeout(cls, timeout_s: float) -> "AttemptFailure":
        return cls(f"no response within {timeout_s:g} s")

    @classmethod
    def connection(cls, cause: BaseException) -> "AttemptFailure":
        return cls(f"connection failed ({type(cause).__name__}: {cause})")


class RateLimiter:
    """A client-side request rate: a token bucket holding one token, refilled every
    ``60 / requests_per_minute`` seconds, so requests leave evenly spaced and no
    minute ever holds more than the limit. Thread-safe, and the same bucket paces
    threads and coroutines: :meth:`reserve` books the next free send time and
    says how long to wait for it, which the caller sleeps as it can
    (``time.sleep`` or ``asyncio.sleep``)."""

    def __init__(self, requests_per_minute: float) -> None:
        if not requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be positive, got {requests_per_minute!r}")
        self.interval = 60.0 / requests_per_minute
        self._lock = threading.Lock()
        self._next = float("-inf")  # monotonic time at which the next token is ready

    def reserve(self) -> float:
        """Takes the next token: seconds to wait before sending (0: send now)."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        return start - now


class Pacer(Protocol):
    """What paces a backend's requests: :class:`RateLimiter`, or a shared bucket."""

    def reserve(self) -> float: ...


_shared: Callable[[float, str], Pacer] | None = None


def share_rate_limits(factory: Callable[[float, str], Pacer] | None) -> None:
    """Make the rate limits of the backends this process builds from now on come from
    ``factory(requests_per_minute, scope)`` (None: a :class:`RateLimiter` each again).
    ``scope`` names the model and endpoint; a distributed run's replicas pass a factory
    whose buckets live in one place, so that the limit holds for the whole cluster."""
    global _shared
    _shared = factory


def rate_limiter(requests_per_minute: float, scope: str) -> Pacer:
    """The pacer of a backend calling ``scope`` (model and endpoint)."""
    return RateLimiter(requests_per_minute) if _shared is None else _shared(requests_per_minute, scope)
