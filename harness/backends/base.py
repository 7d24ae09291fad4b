"""The interface every chat backend implements, and the error they all raise.

A :class:`ChatBackend` answers chat messages (:mod:`harness.backends.messages`)
with the reply text, from plain code or from asyncio code, or raises
:class:`BackendError`; none ever invents an answer. Backends that answer a
whole list at once (one engine call, a batch, a cache lookup) derive from
:class:`BatchChatBackend`.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from harness.backends.messages import Message, parse_messages
from harness.requirements import HubRepo, Requirement

_T = TypeVar("_T")


class BackendError(RuntimeError):
    """A model call failed for good (after any retries). The message says what
    happened; ``status`` is the last HTTP status (None when there was none) and
    ``attempts`` the number of requests made."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


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

    @classmethod
    def requirements(cls, options: Mapping[str, Any], purpose: str) -> list[Requirement]:
        """What a backend of this kind built with ``options`` needs (packages, a GPU, key variables,
        an endpoint, model weights), checked before a run starts; ``purpose`` says who uses it."""
        return []

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

    def close(self) -> None:
        """Release connections or models."""

    def __enter__(self) -> "ChatBackend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# The files of a model repository a run reads (weights, configs, tokenizers, chat templates): not
# its other formats (.bin, .onnx, .gguf) or pictures.
MODEL_FILES = ("*.json", "*.txt", "*.safetensors", "*.model", "*.tiktoken", "*.jinja", "*.pth", "*.pt")


def model_weights(name: Any, purpose: str, option: tuple[str, ...], revision: Any = None,
                  revision_option: tuple[str, ...] = (), **extra: Any) -> list[Requirement]:
    """The hub repository a model option names, or nothing when it names a local folder."""
    if not isinstance(name, str) or not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return []
    return [HubRepo(name, "model", revision if isinstance(revision, str) else None, MODEL_FILES, purpose=purpose,
                    option=option, revision_option=revision_option, **extra)]


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
