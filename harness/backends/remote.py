"""The plumbing every remote backend shares: retried, bounded and paced calls
from threads and from asyncio code, and connections kept per event loop.

A subclass of :class:`RemoteChatBackend` (:mod:`harness.backends.openai_chat`,
:mod:`harness.backends.genai`) sends one request; this module retries it under
its :class:`~harness.backends.retry.RetryPolicy`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from harness.backends.base import BackendError, ChatBackend
from harness.backends.messages import Message
from harness.backends.retry import AttemptFailure, Pacer, RetryPolicy, attempt_count, rate_limiter

_T = TypeVar("_T")


class AsyncTransport(Protocol):
    """Connections a backend opens for one event loop (see :meth:`RemoteChatBackend._open_transport`)."""

    async def aclose(self) -> None: ...


@dataclass
class _LoopState:
    """What a backend's async calls share within one event loop: asyncio primitives
    and async connections belong to the loop that made them."""

    loop: asyncio.AbstractEventLoop  # held, so its id cannot be reused while the entry lives
    slots: asyncio.Semaphore
    transport: AsyncTransport | None
    closer: AsyncIterator[None] | None = None


async def _close_with_the_loop(transport: AsyncTransport) -> AsyncIterator[None]:
    """Stays suspended for the life of an event loop. Loops close unfinished async
    generators when they shut down (``asyncio.run`` ends with
    ``loop.shutdown_asyncgens()``), and a loop that is still running closes one
    that is dropped: either way ``transport`` is closed while its loop can still
    run the close, instead of leaving its sockets to the garbage collector."""
    try:
        yield
    finally:
        await transport.aclose()


def _policy_setting(name: str) -> property:
    return property(lambda self: getattr(self.retry, name), doc=f"``retry.{name}``")


class RemoteChatBackend(ChatBackend):
    """A backend whose requests go to a remote API under a :class:`RetryPolicy`.

    A subclass sets ``_where`` (the model and endpoint, for messages) and
    ``_settings`` (its request defaults, which a call's sampling overlays),
    sends one request through :meth:`_call_with_retries` (``complete``) and
    :meth:`_acall_with_retries` (``acomplete``), which retry alike, and says in
    :meth:`_failure` how its client's exceptions read. ``complete_many`` sends
    its requests on ``max_concurrency`` threads at once, ``acomplete_many`` as
    that many concurrent requests of the running event loop; replies in order.

    ``max_concurrency`` bounds the requests of all threads together, and
    separately those of each event loop (asyncio primitives belong to one
    loop): one backend serves several ``asyncio.run`` calls, or loops of
    different threads, each with its own slots and connections. The rate limit
    (``requests_per_minute``) is one bucket for all of them (or one for every
    backend of a cluster calling the same model and endpoint: see
    :func:`~harness.backends.retry.share_rate_limits`).
    """

    _where: str
    _settings: dict[str, Any]

    # Read-only views of the policy, under the names these backends have always had.
    timeout_s = _policy_setting("timeout_s")
    max_retries = _policy_setting("max_retries")
    max_concurrency = _policy_setting("max_concurrency")
    backoff_s = _policy_setting("backoff_s")
    max_backoff_s = _policy_setting("max_backoff_s")
    max_retry_after_s = _policy_setting("max_retry_after_s")
    requests_per_minute = _policy_setting("requests_per_minute")

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self._slots = threading.BoundedSemaphore(retry.max_concurrency)
        self._pacer: Pacer | None = None
        self._loops: dict[int, _LoopState] = {}  # by id(loop)
        self._loops_lock = threading.Lock()

    def default_sampling(self) -> dict[str, Any]:
        return dict(self._settings)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt``: see :func:`exponential_backoff`."""
        return self.retry.backoff_delay(attempt)

    def _rate(self) -> Pacer | None:
        """The request pacer (None: no limit), made on first use: it is named by ``_where``,
        which a subclass sets after this class's ``__init__``."""
        if self.retry.requests_per_minute is None:
            return None
        with self._loops_lock:
            if self._pacer is None:
                self._pacer = rate_limiter(self.retry.requests_per_minute, self._where)
            return self._pacer

    def complete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """All requests at once, ``max_concurrency`` in flight, replies in order."""
        return self._complete_concurrently(requests, sampling, self.retry.max_concurrency)

    @abc.abstractmethod
    def _failure(self, exc: Exception) -> AttemptFailure | None:
        """How a request's exception reads; None for one that is not a failed
        request (a bug, an interrupted call), which is raised as it is."""

    def _call_with_retries(self, send: Callable[[], _T]) -> tuple[_T, int]:
        """``send()``'s result and the attempt (1-based) that got it; BackendError
        once the failures are final or the attempts are spent."""
        attempt = 0
        while True:  # _retry_delay raises once the attempts are spent
            attempt += 1
            try:
                # A slot is held per request, not across backoff sleeps, so a
                # waiting call does not keep others from the endpoint. The rate
                # is paced inside the slot, so requests leave when they are paced.
                with self._slots:
                    pacer = self._rate()
                    if pacer is not None:
                        time.sleep(pacer.reserve())
                    return send(), attempt
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    raise
                delay = self._retry_delay(failure, exc, attempt)
            time.sleep(delay)

    async def _acall_with_retries(self, send: Callable[[], Awaitable[_T]]) -> tuple[_T, int]:
        """:meth:`_call_with_retries` for asyncio code: the same attempts, waits and
        errors, holding one of the running loop's ``max_concurrency`` slots per
        request and sleeping without blocking the loop."""
        slots = (await self._loop_state()).slots
        attempt = 0
        while True:
            attempt += 1
            try:
                async with slots:
                    pacer = self._rate()
                    if pacer is not None:  # a shared pacer's reserve is one short call to where it lives
                        await asyncio.sleep(pacer.reserve())
                    return await send(), attempt
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    raise
                delay = self._retry_delay(failure, exc, attempt)
            await asyncio.sleep(delay)

    def _retry_delay(self, failure: AttemptFailure, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt ``attempt``, or the
        BackendError (caused by ``exc``) when the failure is final."""
        # Logged under the subclass's module, where its reader will look.
        logger = logging.getLogger(type(self).__module__)
        attempts = self.retry.attempts
        wait = failure.wait
        if failure.retryable and wait is not None and wait > self.retry.max_retry_after_s and attempt < attempts:
            raise BackendError(
                f"{self._where}: {failure.text}; the server asked to wait {wait:g} s, more than "
                f"max_retry_after_s={self.retry.max_retry_after_s:g}; gave up after {attempt_count(attempt)}",
                status=failure.status, attempts=attempt) from exc
        if not failure.retryable or attempt == attempts:
            logger.warning("%s: %s after %s", self._where, failure.text, attempt_count(attempt))
            raise BackendError(f"{self._where}: {failure.text} after {attempt_count(attempt)}{failure.hint}",
                               status=failure.status, attempts=attempt) from exc
        delay = wait if wait is not None else self.backoff_delay(attempt)
        logger.warning("%s: %s on attempt %d of %d; retrying in %.2f s", self._where, failure.text, attempt,
                       attempts, delay)
        return delay

    # ------------------------------------------------------------------ per event loop

    def _open_transport(self) -> AsyncTransport | None:
        """Connections for async requests from the running loop, opened once per
        loop and closed when it shuts down; None (the default): the subclass's
        client needs none of its own."""
        return None

    async def _loop_state(self) -> _LoopState:
        """The running loop's slots and transport, made on its first call."""
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            state = self._loops.get(id(loop))
            if state is not None:
                return state
            # Forget loops that have ended, letting their objects go.
            for key in [key for key, old in self._loops.items() if old.loop.is_closed()]:
                del self._loops[key]
            state = _LoopState(loop, asyncio.Semaphore(self.retry.max_concurrency), self._open_transport())
            self._loops[id(loop)] = state
        if state.transport is not None:
            state.closer = _close_with_the_loop(state.transport)
            await state.closer.__anext__()
        return state

    def close(self) -> None:
        # Dropped closers are closed by their loops if those still run; transports
        # of loops that have ended were closed at their shutdown.
        with self._loops_lock:
            self._loops.clear()
