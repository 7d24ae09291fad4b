"""Chat with images: one small interface, a remote and a local implementation.

Messages are plain dicts, the same for every backend::

    {"role": "system" | "user" | "assistant",
     "content": "text" | [{"type": "text", "text": ...}, {"type": "image", "image": <PIL.Image>}, ...]}

:class:`OpenAIChat` sends them to any OpenAI-compatible endpoint (OpenAI,
Gemini's compatibility endpoint, ``vllm serve``), with bounded concurrency and
retries; :class:`TransformersChat` runs a Hugging Face vision-language model
in this process. Both return the reply text or raise :class:`BackendError`;
neither ever invents an answer.
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
from dataclasses import dataclass
from typing import Any, Mapping

from PIL import Image

from harness.devices import resolve_device, resolve_dtype
from harness.registry import Registry

log = logging.getLogger(__name__)

Message = dict[str, Any]

ROLES = ("system", "user", "assistant")


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


def image_data_uri(image: Image.Image) -> str:
    """The image as a PNG data URI (lossless, so a remote model sees our exact pixels)."""
    buffer = io.BytesIO()
    _rgb(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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

    def close(self) -> None:
        """Release connections or models."""

    def __enter__(self) -> "ChatBackend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- OpenAI-compatible endpoints

# 408 request timeout, 409 lock conflict and 429 rate limit are transient by
# definition; every 5xx is retried as well. Other 4xx are our fault: retrying
# them only wastes quota.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def _retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


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


class OpenAIChat(ChatBackend):
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
    are in flight at any time, whatever the number of calling threads.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 4, max_concurrency: int = 8,
                 temperature: float | None = 0.0, max_tokens: int | None = None,
                 extra: dict[str, Any] | None = None, *, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_retry_after_s: float = 120.0) -> None:
        from openai import OpenAI

        if not isinstance(model, str) or not model:
            raise ValueError("OpenAIChat needs a model name")
        if max_retries < 0 or max_concurrency < 1 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need max_retries >= 0, max_concurrency >= 1, timeout_s > 0 and backoff_s >= 0")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self._settings = {"temperature": temperature, "max_tokens": max_tokens, **(extra or {})}
        api_key = os.environ.get(api_key_env)
        self._no_key = not api_key
        if self._no_key:
            # Local servers (vLLM) take any key; a hosted API will answer 401,
            # and that error names the missing variable.
            log.info("no API key in $%s; sending a placeholder", api_key_env)
        # The SDK's own retries are off: ours below count attempts, name the
        # final status and use backoff settings that tests can shorten.
        self._client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=self.timeout_s, max_retries=0)
        self.base_url = str(self._client.base_url)
        self._sdk_fields = frozenset(inspect.signature(self._client.chat.completions.create).parameters)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._random = random.Random()
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

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) when the server
        named no wait: exponential, capped, with jitter so that many threads
        rejected together do not return together."""
        ceiling = min(self.backoff_s * 2.0 ** (attempt - 1), self.max_backoff_s)
        return ceiling * self._random.uniform(0.5, 1.0)

    # ------------------------------------------------------------------ call

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        import openai

        wire = [self._wire_message(turn) for turn in parse_messages(messages)]
        fields = self._request_fields(sampling)
        attempts = self.max_retries + 1
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            status: int | None = None
            wait: float | None = None
            try:
                # A slot is held per request, not across backoff sleeps, so a
                # waiting call does not keep others from the endpoint.
                with self._slots:
                    raw = self._client.chat.completions.with_raw_response.create(
                        model=self.model, messages=wire, **fields)
                    body = raw.text
            except openai.APIStatusError as exc:
                status, last = exc.status_code, exc
                failure = f"HTTP {status} ({_error_detail(exc)})"
                retryable = _retryable(status)
                wait = retry_after_seconds(exc.response.headers)
                if retryable and wait is not None and wait > self.max_retry_after_s and attempt < attempts:
                    raise BackendError(
                        f"{self._where}: {failure}; the server asked to wait {wait:g} s, more than "
                        f"max_retry_after_s={self.max_retry_after_s:g}; gave up after {_count(attempt)}",
                        status=status, attempts=attempt) from exc
            except openai.APITimeoutError as exc:
                failure, retryable, last = f"no response within {self.timeout_s:g} s", True, exc
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                failure, retryable, last = f"connection failed ({type(cause).__name__}: {cause})", True, exc
            else:
                return self._reply_text(body, raw.status_code, attempt)
            if not retryable or attempt == attempts:
                break
            delay = wait if wait is not None else self.backoff_delay(attempt)
            log.warning("%s: %s on attempt %d of %d; retrying in %.2f s", self._where, failure, attempt, attempts, delay)
            time.sleep(delay)
        hint = ""
        if status == 401 and self._no_key:
            hint = f"; no API key was found in ${self.api_key_env}"
        log.warning("%s: %s after %s", self._where, failure, _count(attempt))
        raise BackendError(f"{self._where}: {failure} after {_count(attempt)}{hint}",
                           status=status, attempts=attempt) from last

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


def _count(attempts: int) -> str:
    return f"{attempts} attempt" + ("" if attempts == 1 else "s")


# ----------------------------------------------------------------------------- local transformers models


class TransformersChat(ChatBackend):
    """A Hugging Face image-text-to-text model (Qwen2.5-VL, LLaVA, ...) in this process.

    The model loads on first use, once; calls from many threads are served one
    at a time (a lock around generation: one model, one device). Decoding is
    greedy unless a call passes ``temperature > 0``.
    """

    def __init__(self, checkpoint: str, device: str = "auto", dtype: str = "auto", max_new_tokens: int = 64,
                 revision: str | None = None, processor_options: dict[str, Any] | None = None) -> None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ImportError("TransformersChat needs torch and transformers: pip install -e '.[tools]'") from exc
        if not checkpoint:
            raise ValueError("TransformersChat needs a checkpoint (a hub id or a local folder)")
        self.checkpoint = str(checkpoint)
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = int(max_new_tokens)
        self.processor_options = dict(processor_options or {})
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None

    @property
    def fingerprint(self) -> str:
        # The device is left out on purpose: the same weights in the same dtype
        # answer alike on any GPU, and a cache filled on one should serve another.
        options = json.dumps(self.processor_options, sort_keys=True, default=str) if self.processor_options else ""
        return (f"transformers:{self.checkpoint}@{self.revision or 'default'}|dtype={self.dtype}"
                f"|max_new_tokens={self.max_new_tokens}{'|' + options if options else ''}")

    def _ensure_loaded(self) -> None:
        """Load processor and model (caller holds the lock)."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        log.info("loading %s on %s (%s)", self.checkpoint, self.device, self.dtype)
        try:
            processor = AutoProcessor.from_pretrained(self.checkpoint, revision=self.revision,
                                                      **self.processor_options)
            model = AutoModelForImageTextToText.from_pretrained(self.checkpoint, revision=self.revision,
                                                                dtype=getattr(torch, self.dtype))
        except Exception as exc:
            raise BackendError(f"{self.checkpoint}: could not load the model: {type(exc).__name__}: {exc}") from exc
        self._model = model.to(self.device).eval()
        self._processor = processor

    def generation_options(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        """Our sampling names (OpenAI's) mapped onto ``generate`` arguments."""
        sampling = dict(sampling)
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        for name in ("max_tokens", "max_new_tokens"):
            if sampling.get(name) is not None:
                options["max_new_tokens"] = int(sampling.pop(name))
            sampling.pop(name, None)
        temperature = sampling.pop("temperature", None)
        if temperature:
            options.update(do_sample=True, temperature=float(temperature))
        options.update({name: value for name, value in sampling.items() if value is not None})
        return options

    def _encode(self, turns: list[Turn]) -> Any:
        chat = []
        for turn in turns:
            parts = [{"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": _rgb(part)}
                     for part in turn.parts]
            chat.append({"role": turn.role, "content": parts})
        # The processor's own chat path places the image tokens and handles
        # special tokens (BOS) the way the checkpoint's template expects.
        inputs = self._processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True, return_tensors="pt")
        import torch

        moved = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                # Pixel values follow the model's dtype; token ids stay integers.
                value = value.to(self.device, dtype=self._model.dtype) if value.is_floating_point() \
                    else value.to(self.device)
            moved[name] = value
        return moved

    def complete(self, messages: list[Message], **sampling: Any) -> str:
        import torch

        turns = parse_messages(messages)
        options = self.generation_options(sampling)
        with self._lock:
            self._ensure_loaded()
            try:
                inputs = self._encode(turns)
                with torch.inference_mode():
                    output = self._model.generate(**inputs, **options)
                new_tokens = output[:, inputs["input_ids"].shape[1]:]
                text = self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
            except Exception as exc:  # out of memory, a template that refuses the messages, ...
                raise BackendError(f"{self.checkpoint}: generation failed: {type(exc).__name__}: {exc}") from exc
        if not text.strip():
            raise BackendError(f"{self.checkpoint}: the model generated no text")
        return text

    def close(self) -> None:
        with self._lock:
            on_gpu = self._model is not None and self.device.startswith("cuda")
            self._model = self._processor = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- registry

CHAT_BACKENDS: Registry[type[ChatBackend]] = Registry("chat backend")
CHAT_BACKENDS.register("openai", OpenAIChat)
CHAT_BACKENDS.register("transformers", TransformersChat)


def make_chat_backend(kind: str, **options: Any) -> ChatBackend:
    """``make_chat_backend("openai", model="gpt-5-mini")``,
    ``make_chat_backend("transformers", checkpoint="Qwen/Qwen2.5-VL-7B-Instruct")``."""
    cls = CHAT_BACKENDS.get(kind)
    try:
        return cls(**options)
    except TypeError as exc:
        raise TypeError(f"chat backend {kind!r}: {exc}") from None
