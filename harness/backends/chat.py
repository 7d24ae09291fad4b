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
"""

from __future__ import annotations

import abc
import base64
import email.utils
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
from typing import Any, Callable, Mapping, TypeVar

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


class ChatBackend(abc.ABC):
    """Maps chat messages to the model's reply text."""

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
    ``rng`` draws the jitter.
    """

    timeout_s: float = 60.0
    max_retries: int = 4
    max_concurrency: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_concurrency < 1 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("need max_retries >= 0, max_concurrency >= 1, timeout_s > 0 and backoff_s >= 0")
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


def _policy_setting(name: str) -> property:
    return property(lambda self: getattr(self.retry, name), doc=f"``retry.{name}``")


class RemoteChatBackend(ChatBackend):
    """A backend whose requests go to a remote API under a :class:`RetryPolicy`.

    A subclass sets ``_where`` (the model and endpoint, for messages) and
    ``_settings`` (its request defaults, which a call's sampling overlays),
    sends one request through :meth:`_call_with_retries` and says in
    :meth:`_failure` how its client's exceptions read. ``complete_many`` sends
    its requests on ``max_concurrency`` threads at once, replies in order.
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

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self._slots = threading.BoundedSemaphore(retry.max_concurrency)

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
        # Logged under the subclass's module, where its reader will look.
        logger = logging.getLogger(type(self).__module__)
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                # A slot is held per request, not across backoff sleeps, so a
                # waiting call does not keep others from the endpoint.
                with self._slots:
                    return send(), attempt
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    raise
                last = exc
            wait = failure.wait
            if failure.retryable and wait is not None and wait > self.retry.max_retry_after_s and attempt < attempts:
                raise BackendError(
                    f"{self._where}: {failure.text}; the server asked to wait {wait:g} s, more than "
                    f"max_retry_after_s={self.retry.max_retry_after_s:g}; gave up after {_count(attempt)}",
                    status=failure.status, attempts=attempt) from last
            if not failure.retryable or attempt == attempts:
                break
            delay = wait if wait is not None else self.backoff_delay(attempt)
            logger.warning("%s: %s on attempt %d of %d; retrying in %.2f s", self._where, failure.text, attempt,
                           attempts, delay)
            time.sleep(delay)
        logger.warning("%s: %s after %s", self._where, failure.text, _count(attempt))
        raise BackendError(f"{self._where}: {failure.text} after {_count(attempt)}{failure.hint}",
                           status=failure.status, attempts=attempt) from last


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

    ``seed`` (here or per call) is sent when set; servers that honour it
    (vLLM, OpenAI on a best-effort basis) then sample reproducibly.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 4, max_concurrency: int = 8,
                 temperature: float | None = 0.0, max_tokens: int | None = None,
                 extra: dict[str, Any] | None = None, *, seed: int | None = None, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0) -> None:
        from openai import OpenAI

        if not isinstance(model, str) or not model:
            raise ValueError("OpenAIChat needs a model name")
        super().__init__(RetryPolicy(timeout_s=timeout_s, max_retries=max_retries, max_concurrency=max_concurrency,
                                     backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                     max_retry_after_s=max_retry_after_s))
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

    # ------------------------------------------------------------------ call

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        wire = [self._wire_message(turn) for turn in parse_messages(messages)]
        fields = self._request_fields(sampling)

        def send() -> tuple[str, int]:
            raw = self._client.chat.completions.with_raw_response.create(model=self.model, messages=wire, **fields)
            return raw.text, raw.status_code

        (body, status), attempt = self._call_with_retries(send)
        return self._reply_text(body, status, attempt)

    def _failure(self, exc: Exception) -> AttemptFailure | None:
        import openai

        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            hint = f"; no API key was found in ${self.api_key_env}" if status == 401 and self._no_key else ""
            return AttemptFailure.http(status, _error_detail(exc), retry_after_seconds(exc.response.headers), hint)
        if isinstance(exc, openai.APITimeoutError):
            return AttemptFailure.timeout(self.timeout_s)
        if isinstance(exc, openai.APIConnectionError):  # after its subclass APITimeoutError
            return AttemptFailure.connection(exc.__cause__ or exc)
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
