"""The plumbing every remote backend shares: retried, deadline-bounded and paced
calls from threads and from asyncio code, connections kept per event loop, and
the interruption of every request in flight.

A subclass of :class:`RemoteChatBackend` (:mod:`harness.backends.openai_chat`,
:mod:`harness.backends.genai`) sends one request as a coroutine; this module
bounds each attempt by a total deadline and retries it under its
:class:`~harness.backends.retry.RetryPolicy`. Calls from plain code run on the
backend's own event-loop thread, so that they too can be cancelled mid-request:
a server that trickles its reply one byte at a time cannot hold a request past
its deadline, and :func:`interrupt_requests` (Ctrl-C) ends them all at once.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Protocol, TypeVar

from harness.backends.base import BackendError, ChatBackend
from harness.backends.messages import Message, parse_messages
from harness.backends.retry import AttemptFailure, Pacer, RetryPolicy, attempt_count, rate_limiter

_T = TypeVar("_T")

# Set by interrupt_requests(): no request starts or retries until reset_interrupt().
_INTERRUPTED = threading.Event()
# Every backend whose event-loop thread may hold requests in flight.
_LIVE: "weakref.WeakSet[RemoteChatBackend]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


# Called with (endpoint, None) after each call that got a reply and (endpoint, error) after each
# that failed for good: a run's circuit breaker listens (see watch_calls).
_WATCHERS: list[Callable[[str, BackendError | None], None]] = []


@contextlib.contextmanager
def watch_calls(watcher: Callable[[str, BackendError | None], None]) -> Iterator[None]:
    """Tell ``watcher`` the outcome of every remote call while the block runs."""
    _WATCHERS.append(watcher)
    try:
        yield
    finally:
        _WATCHERS.remove(watcher)


def _tell_watchers(endpoint: str, error: BackendError | None) -> None:
    for watcher in list(_WATCHERS):
        watcher(endpoint, error)


def interrupt_requests() -> None:
    """Cancel every request of every remote backend in flight on their own loops, and
    refuse new ones (each fails at once with a BackendError saying so) until
    :func:`reset_interrupt`. Safe to call from a signal handler."""
    _INTERRUPTED.set()
    with _LIVE_LOCK:
        backends = list(_LIVE)
    for backend in backends:
        backend._cancel_in_flight()


def reset_interrupt() -> None:
    _INTERRUPTED.clear()


def interrupted() -> bool:
    return _INTERRUPTED.is_set()


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
    ``loop.shutdown_asyncgens()``, as does the backend's own loop thread), and a
    loop that is still running closes one that is dropped: either way
    ``transport`` is closed while its loop can still run the close, instead of
    leaving its sockets to the garbage collector."""
    try:
        yield
    finally:
        await transport.aclose()


class _LoopThread:
    """An event loop running on a daemon thread, for a backend's calls from plain code."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()  # a forked child gets a copy of the object but not the thread
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, _T]) -> "concurrent.futures.Future[_T]":
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def cancel_all(self) -> None:
        def cancel() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(cancel)
            except RuntimeError:  # closed in between
                pass

    def stop(self) -> None:
        if self._thread is threading.current_thread():
            self.loop.stop()
            return
        self.cancel_all()
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass
        self._thread.join(timeout=10)


if sys.version_info >= (3, 11):
    async def _within(coroutine: Awaitable[_T], seconds: float) -> _T:
        """``coroutine``'s result, cancelled after ``seconds`` (TimeoutError): on the calling task,
        without the task and callbacks ``asyncio.wait_for`` adds to every request."""
        async with asyncio.timeout(seconds):
            return await coroutine
else:
    _within = asyncio.wait_for


def _policy_setting(name: str) -> property:
    return property(lambda self: getattr(self.retry, name), doc=f"``retry.{name}``")


class RemoteChatBackend(ChatBackend):
    """A backend whose requests go to a remote API under a :class:`RetryPolicy`.

    A subclass sets ``_where`` (the model and endpoint, for messages) and
    ``_settings`` (its request defaults, which a call's sampling overlays),
    implements ``acomplete`` with one request sent through
    :meth:`_acall_with_retries`, and says in :meth:`_failure` how its client's
    exceptions read. Every attempt has a total deadline of ``timeout_s``
    (connecting, sending and reading the whole reply), after which it is
    cancelled and counts as a timeout.

    ``complete`` and ``complete_many`` run the same coroutines on the backend's
    own event-loop thread (started on first use) and wait for them: one code
    path, the same deadlines, and cancellation for plain code as for asyncio
    code. ``complete_many`` sends all its requests at once, ``max_concurrency``
    in flight, replies in order.

    ``max_concurrency`` bounds the requests of each event loop (asyncio
    primitives belong to one loop): the backend's own loop, serving every
    thread, and any loop that awaits ``acomplete`` directly, each with its own
    slots and connections. The rate limit (``requests_per_minute``) is one
    bucket for all of them (or one for every backend of a cluster calling the
    same model and endpoint: see :func:`~harness.backends.retry.share_rate_limits`).
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
        self._pacer: Pacer | None = None
        self._loops: dict[int, _LoopState] = {}  # by id(loop)
        self._loops_lock = threading.Lock()
        self._own_loop: _LoopThread | None = None

    def _rate(self) -> Pacer | None:
        """The request pacer (None: no limit), made on first use: it is named by ``_where``,
        which a subclass sets after this class's ``__init__``."""
        if self.retry.requests_per_minute is None:
            return None
        with self._loops_lock:
            if self._pacer is None:
                self._pacer = rate_limiter(self.retry.requests_per_minute, self._where)
            return self._pacer

    @property
    def endpoint(self) -> str:
        """The model and where it is served, as failures name it."""
        return self._where

    def default_sampling(self) -> dict[str, Any]:
        return dict(self._settings)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt``: see :func:`exponential_backoff`."""
        return self.retry.backoff_delay(attempt)

    # ------------------------------------------------------------------ calls from plain code

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        parse_messages(messages)
        return self._wait(self.acomplete(messages, **sampling))

    def complete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """All requests at once, ``max_concurrency`` in flight, replies in order."""
        for messages in requests:
            parse_messages(messages)
        if not requests:
            return []
        try:
            return self._wait(self.acomplete_many(requests, **sampling))
        except BackendError as exc:  # the whole batch was cancelled (interrupted): each request failed
            return [exc] * len(requests)

    def _wait(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the backend's loop thread and wait for its result. An
        interrupted wait (Ctrl-C in the main thread) cancels it; a call cancelled by
        :func:`interrupt_requests` fails with a BackendError."""
        loop = self._loop_thread()
        future = loop.submit(coroutine)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise BackendError(f"{self._where}: the request was cancelled (interrupted)") from None
        except BaseException:
            future.cancel()
            raise

    def _loop_thread(self) -> _LoopThread:
        with self._loops_lock:
            if self._own_loop is None or self._own_loop.pid != os.getpid():
                self._own_loop = _LoopThread(f"{type(self).__name__}-requests")
                with _LIVE_LOCK:
                    _LIVE.add(self)
            return self._own_loop

    def _cancel_in_flight(self) -> None:
        own = self._own_loop
        if own is not None and own.pid == os.getpid():
            own.cancel_all()

    # ------------------------------------------------------------------ one call, retried

    @abc.abstractmethod
    def _failure(self, exc: Exception) -> AttemptFailure | None:
        """How a request's exception reads; None for one that is not a failed
        request (a bug, an interrupted call), which is raised as it is."""

    async def _acall_with_retries(self, send: Callable[[], Awaitable[_T]]) -> tuple[_T, int]:
        """``send()``'s result and the attempt (1-based) that got it; BackendError
        once the failures are final or the attempts are spent. Each attempt holds
        one of the running loop's ``max_concurrency`` slots (not across backoff
        sleeps, so a waiting call does not keep others from the endpoint) and is
        cancelled when its deadline passes; the rate is paced inside the slot,
        before the deadline starts, so requests leave when they are paced."""
        slots = (await self._loop_state()).slots
        attempt = 0
        while True:
            attempt += 1
            if _INTERRUPTED.is_set():
                raise BackendError(f"{self._where}: not sent: the run was interrupted", attempts=attempt - 1)
            try:
                async with slots:
                    pacer = self._rate()
                    if pacer is not None:  # a shared pacer's reserve is one short call to where it lives
                        await asyncio.sleep(pacer.reserve())
                    result = await _within(send(), self.retry.timeout_s)
                _tell_watchers(self._where, None)
                return result, attempt
            except asyncio.TimeoutError as exc:  # ours, or a transport timeout inside the deadline
                failure: AttemptFailure | None = AttemptFailure.timeout(self.retry.timeout_s)
                delay = self._final_or_delay(failure, exc, attempt)
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    raise
                delay = self._final_or_delay(failure, exc, attempt)
            await asyncio.sleep(delay)

    def _final_or_delay(self, failure: AttemptFailure, exc: BaseException, attempt: int) -> float:
        try:
            return self._retry_delay(failure, exc, attempt)
        except BackendError as error:
            _tell_watchers(self._where, error)
            raise

    def _retry_delay(self, failure: AttemptFailure, exc: BaseException, attempt: int) -> float:
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
        if not failure.retryable or attempt == attempts or _INTERRUPTED.is_set():
            if not _INTERRUPTED.is_set():  # after Ctrl-C, one line says so; not one per request
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
        # The own loop thread closes its transports as it shuts down; dropped
        # closers of other loops are closed by those loops if they still run, and
        # transports of loops that have ended were closed at their shutdown.
        with self._loops_lock:
            own, self._own_loop = self._own_loop, None
        if own is not None and own.pid == os.getpid():
            own.stop()
        with self._loops_lock:
            self._loops.clear()
        with _LIVE_LOCK:
            _LIVE.discard(self)
