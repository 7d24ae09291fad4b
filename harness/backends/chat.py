"""Chat with images: one small interface, a remote and a local implementation.

Messages are plain dicts, the same for every backend::

    {"role": "system" | "user" | "assistant",
     "content": "text" | [{"type": "text", "text": ...}, {"type": "image", "image": <PIL.Image>}, ...]}

:class:`OpenAIChat` sends them to any OpenAI-compatible endpoint (OpenAI,
Gemini's compatibility endpoint, ``vllm serve``), with bounded concurrency and
retries. The other backends live in their own modules (``transformers_chat``,
``vllm``, ``genai``, ``scripted``, ``cached``) and are registered here by name,
imported only when first asked for. Every backend returns the reply text or
raises :class:`BackendError`; none ever invents an answer.

Every backend also answers from asyncio code (``acomplete``,
``acomplete_many``): the remote ones natively, the others on worker threads.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import email.utils
import functools
import inspect
import io
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Protocol, TypeVar, cast

from PIL import Image

from harness.registry import Registry

log = logging.getLogger(__name__)

Message = dict[str, Any]

ROLES = ("system", "user", "assistant")

_T = TypeVar("_T")


class BackendError(RuntimeError):
    """A model call failed for good (after any retries). The message says what
    happened; ``status`` is the last HTTP status (None when there was none) and
    ``attempts`` the number of requests made."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Turn:
    """One checked message: its role and its parts (text or images), in order."""

    role: str
    parts: tuple[str | Image.Image, ...]
    plain: bool  # content was a single string


def parse_messages(messages: list[Message]) -> list[Turn]:
    """Check messages against the format above (ValueError naming the culprit)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {index}: role must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            turns.append(Turn(role, (content,), plain=True))
            continue
        if not isinstance(content, (list, tuple)) or not content:
            raise ValueError(f"message {index}: content must be a string or a non-empty list of parts")
        parts: list[str | Image.Image] = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "image" and isinstance(part.get("image"), Image.Image):
                parts.append(part["image"])
            else:
                raise ValueError(f"message {index}, part {number}: expected {{'type': 'text', 'text': str}} or "
                                 f"{{'type': 'image', 'image': PIL.Image}}, got {part!r:.200}")
        turns.append(Turn(role, tuple(parts), plain=False))
    return turns


def _rgb(image: Image.Image) -> Image.Image:
    # Vision encoders expect three channels; palette, grey and alpha images are
    # converted here so every backend sees the same pixels.
    return image if image.mode == "RGB" else image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """The image as RGB PNG bytes (lossless, so a remote model sees our exact pixels)."""
    buffer = io.BytesIO()
    _rgb(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_data_uri(image: Image.Image) -> str:
    """The image as a PNG data URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# ----------------------------------------------------------------------------- interface


# Guards the lazy creation of each backend's worker threads.
_WORKERS_LOCK = threading.Lock()


class ChatBackend(abc.ABC):
    """Maps chat messages to the model's reply text, from plain code (``complete``,
    ``complete_many``) or from asyncio code (``acomplete``, ``acomplete_many``)."""

    # Threads of this backend that run blocking calls for the async methods: more
    # than the event loop's default executor (a handful on a small machine), so
    # slow blocking calls overlap, yet bounded, so a burst of coroutines cannot
    # start thousands of threads. Created on first use.
    async_threads: int = 16
    _async_workers: ThreadPoolExecutor | None = None

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Names the model and every setting that changes its answers, for cache keys."""

    @abc.abstractmethod
    def complete(self, messages: list[Message], **sampling: Any) -> str:
        """The reply to ``messages``; ``sampling`` overrides the backend's settings for
        this call (temperature, max_tokens, ...). Raises BackendError on failure."""

    def complete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """Replies to many requests, in order; a failed request gives its BackendError
        in its place instead of failing the others. Backends that can batch or run
        requests concurrently override this; the default asks one at a time."""
        replies: list[str | BackendError] = []
        for messages in requests:
            try:
                replies.append(self.complete(messages, **sampling))
            except BackendError as exc:
                replies.append(exc)
        return replies

    async def acomplete(self, messages: list[Message], **sampling: Any) -> str:
        """``complete`` for asyncio code: the reply, or BackendError. Backends with an
        async client override this; the default runs ``complete`` on one of this
        backend's ``async_threads`` worker threads, so the event loop never blocks."""
        return await self._in_worker(functools.partial(self.complete, messages, **sampling))

    async def acomplete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """``complete_many`` for asyncio code: ``acomplete`` for every request at once,
        replies in order, a failed request giving its BackendError in its place.
        Messages are checked first, as in ``complete_many``. Backends that batch
        override this."""
        for messages in requests:
            parse_messages(messages)

        async def one(messages: list[Message]) -> str | BackendError:
            try:
                return await self.acomplete(messages, **sampling)
            except BackendError as exc:
                return exc

        tasks = [asyncio.ensure_future(one(messages)) for messages in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # A bug in one request fails the call: the others stop rather than
            # going on sending requests that nobody will read.
            for task in tasks:
                task.cancel()
            raise

    async def _in_worker(self, call: Callable[[], _T]) -> _T:
        """``call()`` on one of this backend's worker threads."""
        if self._async_workers is None:
            with _WORKERS_LOCK:
                if self._async_workers is None:
                    self._async_workers = ThreadPoolExecutor(max_workers=self.async_threads,
                                                             thread_name_prefix=f"{type(self).__name__}-async")
        return await asyncio.get_running_loop().run_in_executor(self._async_workers, call)

    def default_sampling(self) -> dict[str, Any]:
        """The sampling settings a call inherits unless it overrides them (at least
        ``temperature`` and ``seed`` where the backend has them), so a wrapper can
        tell whether a call is deterministic. Empty: nothing is known."""
        return {}

    def _complete_concurrently(self, requests: list[list[Message]], sampling: Mapping[str, Any],
                               workers: int) -> list[str | BackendError]:
        """``complete`` for each request on up to ``workers`` threads, replies in order.

        Messages are checked first, so a malformed request fails the call before
        anything is sent rather than after some requests were paid for.
        """
        for messages in requests:
            parse_messages(messages)

        def one(messages: list[Message]) -> str | BackendError:
            try:
                return self.complete(messages, **sampling)
            except BackendError as exc:
                return exc

        if len(requests) <= 1 or workers <= 1:
            return [one(messages) for messages in requests]
        with ThreadPoolExecutor(max_workers=min(workers, len(requests)),
                                thread_name_prefix=type(self).__name__) as pool:
            return list(pool.map(one, requests))

    def close(self) -> None:
        """Release connections or models."""

    def __enter__(self) -> "ChatBackend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class BatchChatBackend(ChatBackend):
    """A backend that answers a list of requests at once (one engine call, a batch,
    a cache lookup): ``complete`` is ``complete_many`` of a single request."""

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        reply = self.complete_many([messages], **sampling)[0]
        if isinstance(reply, BackendError):
            raise reply
        return reply

    @abc.abstractmethod
    def complete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """Replies to many requests, in order, a failed one giving its BackendError."""

    async def acomplete(self, messages: list[Message], **sampling: Any) -> str:
        reply = (await self.acomplete_many([messages], **sampling))[0]
        if isinstance(reply, BackendError):
            raise reply
        return reply

    async def acomplete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        """``complete_many`` on a worker thread, so the whole list stays one engine
        call or batch."""
        return await self._in_worker(functools.partial(self.complete_many, requests, **sampling))


# ----------------------------------------------------------------------------- retries of remote calls

# 408 request timeout, 409 lock conflict and 429 rate limit are transient by
# definition; every 5xx is retried as well. Other 4xx are our fault: retrying
# them only wastes quota.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def _retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


def _count(attempts: int) -> str:
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
    (``requests_per_minute``) is one bucket for all of them.
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
        self._rate = RateLimiter(retry.requests_per_minute) if retry.requests_per_minute is not None else None
        self._loops: dict[int, _LoopState] = {}  # by id(loop)
        self._loops_lock = threading.Lock()

    def default_sampling(self) -> dict[str, Any]:
        return dict(self._settings)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt``: see :func:`exponential_backoff`."""
        return self.retry.backoff_delay(attempt)

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
                    if self._rate is not None:
                        time.sleep(self._rate.reserve())
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
                    if self._rate is not None:
                        await asyncio.sleep(self._rate.reserve())
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
                f"max_retry_after_s={self.retry.max_retry_after_s:g}; gave up after {_count(attempt)}",
                status=failure.status, attempts=attempt) from exc
        if not failure.retryable or attempt == attempts:
            logger.warning("%s: %s after %s", self._where, failure.text, _count(attempt))
            raise BackendError(f"{self._where}: {failure.text} after {_count(attempt)}{failure.hint}",
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


# ----------------------------------------------------------------------------- OpenAI-compatible endpoints


def _error_detail(exc: Any) -> str:
    """The server's own words for a failed request, shortened."""
    body = getattr(exc, "body", None)
    detail = None
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        detail = inner.get("message") if isinstance(inner, Mapping) else inner
    elif body is not None:
        detail = body
    if not detail:
        response = getattr(exc, "response", None)
        try:
            detail = response.text if response is not None else None
        except Exception:  # a body that cannot be read says nothing more
            detail = None
    text = " ".join(str(detail or getattr(exc, "message", "") or type(exc).__name__).split())
    return text if len(text) <= 300 else text[:297] + "..."


class _ErrorStatus(Exception):
    """A reply with an error status on the async path, carrying what
    :func:`_error_detail` reads from the SDK's errors, read as the SDK reads it
    (``body``: the JSON's ``error`` object, else the JSON, else the text), so
    that both paths word a failure alike."""

    def __init__(self, response: Any) -> None:
        text = response.text.strip()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        self.body = body.get("error", body) if isinstance(body, Mapping) else body
        self.response = response
        self.status_code: int = response.status_code
        self.message = f"Error code: {response.status_code}"
        super().__init__(self.message)


# httpx's connection pool walks all its connections, probing every idle socket,
# whenever a request starts or ends. In one pool of 256 connections that walk
# took two thirds of the client's CPU time (1,280 requests, 256 in flight, on 2
# cores); pools of at most this many connections keep it short.
_CONNECTIONS_PER_POOL = 16


class _PooledClients:
    """The httpx2 clients of one event loop for one URL: ``size`` connections in
    all, split into pools of at most ``_CONNECTIONS_PER_POOL``. A request goes to
    the least busy pool; as at most ``size`` requests are in flight (the loop's
    slots), that pool always has a free connection, so no request waits for one."""

    def __init__(self, url: str, size: int, **client_options: Any) -> None:
        import httpx2

        self._url = httpx2.URL(url)  # parsed once, not per request
        count = -(-size // _CONNECTIONS_PER_POOL)
        per_pool = -(-size // count)
        limits = httpx2.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self._clients = [httpx2.AsyncClient(limits=limits, **client_options) for _ in range(count)]
        self._busy = [0] * count

    async def post(self, **request: Any) -> Any:
        """``httpx2.AsyncClient.post`` to the URL on the least busy pool: the whole response."""
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            return await self._clients[index].post(self._url, **request)
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class OpenAIChat(RemoteChatBackend):
    """Chat completions from any OpenAI-compatible endpoint.

    ``temperature=None`` leaves it unset (OpenAI's reasoning models accept only
    their default). ``max_tokens`` is sent as ``max_tokens``; OpenAI's reasoning
    models want ``extra={"max_completion_tokens": N}`` instead. ``extra`` holds
    further request fields: those the OpenAI SDK knows (``reasoning_effort``,
    ``seed``, ``extra_body``, ...) go as they are, others (vLLM's ``top_k``,
    ``mm_processor_kwargs``) are merged into ``extra_body`` so they still reach
    the server.

    Retries: every call makes at most ``1 + max_retries`` requests. A timeout
    (``timeout_s`` per request), a connection failure, HTTP 408, 409, 429 or any
    5xx is retried after the wait the server asks for (``retry-after-ms`` or
    ``retry-after``), or else after an exponential backoff with jitter:
    ``backoff_s * 2**(n-1)`` capped at ``max_backoff_s``, times a random factor
    in [0.5, 1]. A server asking for more than ``max_retry_after_s`` is not
    waited for. Other statuses, and replies that are not a chat completion with
    text, fail at once. At most ``max_concurrency`` requests of this backend
    are in flight at any time, whatever the number of calling threads;
    ``complete_many`` sends its requests on that many threads at once.
    ``requests_per_minute`` (None: unlimited) paces them on the client's side.

    ``acomplete`` and ``acomplete_many`` send the same request with plain httpx2
    (the SDK's own HTTP library) from the running event loop: no thread per
    request, no SDK models, small connection pools (:class:`_PooledClients`).
    That takes about a third of the CPU time per request of the SDK's
    ``AsyncOpenAI``, so that even 2 cores keep hundreds of requests in flight.
    They retry, time out, bound (per loop) and word failures as ``complete`` does.

    ``seed`` (here or per call) is sent when set; servers that honour it
    (vLLM, OpenAI on a best-effort basis) then sample reproducibly.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 4, max_concurrency: int = 8,
                 temperature: float | None = 0.0, max_tokens: int | None = None,
                 extra: dict[str, Any] | None = None, *, seed: int | None = None, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0,
                 requests_per_minute: float | None = None) -> None:
        from openai import OpenAI

        if not isinstance(model, str) or not model:
            raise ValueError("OpenAIChat needs a model name")
        super().__init__(RetryPolicy(timeout_s=timeout_s, max_retries=max_retries, max_concurrency=max_concurrency,
                                     backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                     max_retry_after_s=max_retry_after_s, requests_per_minute=requests_per_minute))
        self.model = model
        self.api_key_env = api_key_env
        self._settings = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed, **(extra or {})}
        api_key = os.environ.get(api_key_env)
        self._no_key = not api_key
        if self._no_key:
            # Local servers (vLLM) take any key; a hosted API will answer 401,
            # and that error names the missing variable.
            log.info("no API key in $%s; sending a placeholder", api_key_env)
        # The SDK's own retries are off: ours (RemoteChatBackend's) count attempts,
        # name the final status and use backoff settings that tests can shorten.
        self._client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=self.timeout_s, max_retries=0)
        self.base_url = str(self._client.base_url)
        self._sdk_fields = frozenset(inspect.signature(self._client.chat.completions.create).parameters)
        self._where = f"{model} at {self.base_url}"
        # The async path sends the SDK's headers (key, organisation and project
        # when set, user agent) but not its X-Stainless telemetry, whose checks
        # on every request cost more CPU than they are worth.
        self._async_headers = {name: value for name, value in {**self._client.default_headers,
                                                               **self._client.auth_headers}.items()
                               if isinstance(value, str) and not name.lower().startswith("x-stainless")}
        self._ssl_context: Any = None  # made once, on the first loop's first async call

    @property
    def fingerprint(self) -> str:
        settings = {k: v for k, v in self._settings.items() if v is not None}
        return f"openai:{self.model}@{self.base_url}|{json.dumps(settings, sort_keys=True, default=str)}"

    # ------------------------------------------------------------------ request

    @staticmethod
    def _wire_message(turn: Turn) -> dict[str, Any]:
        if turn.plain:
            # Text-only servers and the judge's endpoints take plain strings.
            return {"role": turn.role, "content": turn.parts[0]}
        parts = [{"type": "text", "text": part} if isinstance(part, str)
                 else {"type": "image_url", "image_url": {"url": image_data_uri(part)}} for part in turn.parts]
        return {"role": turn.role, "content": parts}

    def _request_fields(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        merged = {k: v for k, v in {**self._settings, **sampling}.items() if v is not None}
        merged.pop("model", None)
        merged.pop("messages", None)
        extra_body = dict(merged.pop("extra_body", None) or {})
        fields = {}
        for name, value in merged.items():
            if name in self._sdk_fields:
                fields[name] = value
            else:
                extra_body[name] = value
        if extra_body:
            fields["extra_body"] = extra_body
        return fields

    def _http_request(self, messages: list[Message], sampling: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``httpx2.AsyncClient.post`` for the request the SDK
        would send: one JSON body of the SDK's fields and ``extra_body``'s (which
        wins, as in the SDK); ``extra_headers``, ``extra_query`` and ``timeout``
        set the request's headers, query and timeout, as they do in the SDK."""
        wire = [self._wire_message(turn) for turn in parse_messages(messages)]
        fields = self._request_fields(sampling)
        request: dict[str, Any] = {}
        for field_name, option in (("extra_headers", "headers"), ("extra_query", "params"), ("timeout", "timeout")):
            if field_name in fields:
                request[option] = fields.pop(field_name)
        extra_body = fields.pop("extra_body", {})
        body = {"model": self.model, "messages": wire, **fields, **extra_body}
        request["content"] = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return request

    # ------------------------------------------------------------------ call

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        wire = [self._wire_message(turn) for turn in parse_messages(messages)]
        fields = self._request_fields(sampling)

        def send() -> tuple[str, int]:
            raw = self._client.chat.completions.with_raw_response.create(model=self.model, messages=wire, **fields)
            return raw.text, raw.status_code

        (body, status), attempt = self._call_with_retries(send)
        return self._reply_text(body, status, attempt)

    async def acomplete(self, messages: list[Message], **sampling: Any) -> str:
        request = self._http_request(messages, sampling)
        clients = cast(_PooledClients, (await self._loop_state()).transport)

        async def send() -> tuple[str, int]:
            response = await clients.post(**request)
            if not response.is_success:  # the SDK's rule: any status but 2xx is an error
                raise _ErrorStatus(response)
            return response.text, response.status_code

        (body, status), attempt = await self._acall_with_retries(send)
        return self._reply_text(body, status, attempt)

    def _open_transport(self) -> _PooledClients:
        import httpx2

        # Loading the CA bundle takes tens of milliseconds: once per backend, not per loop.
        if self._ssl_context is None:
            self._ssl_context = httpx2.create_ssl_context()
        # The SDK's client settings: its timeout for each phase, redirects followed.
        return _PooledClients(f"{self.base_url}chat/completions", self.retry.max_concurrency,
                              headers=self._async_headers, verify=self._ssl_context,
                              timeout=httpx2.Timeout(self.timeout_s), follow_redirects=True)

    def _failure(self, exc: Exception) -> AttemptFailure | None:
        import httpx2
        import openai

        if isinstance(exc, (openai.APIStatusError, _ErrorStatus)):
            status = exc.status_code
            hint = f"; no API key was found in ${self.api_key_env}" if status == 401 and self._no_key else ""
            return AttemptFailure.http(status, _error_detail(exc), retry_after_seconds(exc.response.headers), hint)
        if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
            return AttemptFailure.timeout(self.timeout_s)
        if isinstance(exc, openai.APIConnectionError):  # after its subclass APITimeoutError
            return AttemptFailure.connection(exc.__cause__ or exc)
        if isinstance(exc, httpx2.ConnectError):
            # The async stack says only "All connection attempts failed"; the
            # reason (refused, unreachable, unknown host) is the innermost cause.
            cause: BaseException = exc
            while cause.__cause__ or cause.__context__:
                cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            return AttemptFailure.connection(cause)
        if isinstance(exc, httpx2.RequestError):  # what the SDK reports as APIConnectionError
            return AttemptFailure.connection(exc)
        return None

    def _reply_text(self, body: str, status: int, attempt: int) -> str:
        """The first choice's text, or BackendError for anything else. Malformed
        replies are not retried: they come from a misconfigured server or model
        (wrong URL, a proxy's page, a token budget spent on reasoning), which a
        second request would not fix."""

        def fail(what: str) -> BackendError:
            return BackendError(f"{self._where}: {what} (HTTP {status}, {_count(attempt)})",
                                status=status, attempts=attempt)

        try:
            data = json.loads(body)
        except (json.JSONDecodeError, TypeError):
            raise fail(f"the reply is not JSON: {body[:200]!r}") from None
        if not isinstance(data, dict):
            raise fail(f"the reply is not a chat completion: {body[:200]!r}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = data.get("error")
            if error:
                raise fail(f"the server reported an error: {str(error)[:300]}")
            raise fail(f"the reply has no choices: {body[:200]!r}")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            refusal = message.get("refusal")
            reason = f"finish_reason={choice.get('finish_reason')!r}" + (f", refusal: {refusal}" if refusal else "")
            raise fail(f"the reply has no text ({reason})")
        return content

    def close(self) -> None:
        self._client.close()
        super().close()


# ----------------------------------------------------------------------------- registry

# Lazy entries: a backend's module (and whatever it imports when used: torch,
# vllm, google-genai) is loaded only when that kind is first asked for.
CHAT_BACKENDS: Registry[type[ChatBackend]] = Registry("chat backend")
CHAT_BACKENDS.register("openai", OpenAIChat)
CHAT_BACKENDS.register("transformers", "harness.backends.transformers_chat:TransformersChat")
CHAT_BACKENDS.register("vllm", "harness.backends.vllm:VLLMChat")
CHAT_BACKENDS.register("genai", "harness.backends.genai:GeminiChat")
CHAT_BACKENDS.register("scripted", "harness.backends.scripted:ScriptedChat")


def make_chat_backend(kind: str, *, cache: bool | str | Path | None = None, **options: Any) -> ChatBackend:
    """``make_chat_backend("openai", model="gpt-5-mini")``,
    ``make_chat_backend("transformers", checkpoint="Qwen/Qwen2.5-VL-7B-Instruct")``.

    ``cache=True`` (the default file under the harness cache directory) or a
    path wraps the backend in a :class:`~harness.backends.cached.CachedChat`,
    which serves repeated deterministic requests from disk.
    """
    cls = CHAT_BACKENDS.get(kind)
    try:
        backend = cls(**options)
    except TypeError as exc:
        raise TypeError(f"chat backend {kind!r}: {exc}") from None
    if cache is None or cache is False:
        return backend
    from harness.backends.cached import with_cache

    return with_cache(backend, None if cache is True else cache)
