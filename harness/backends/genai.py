"""Gemini through Google's google-genai SDK (the Gemini API or Vertex AI).

google-genai is imported when a backend is built, never at start-up:
``pip install -e ".[api]"``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
from typing import Any, Mapping

from harness.backends.base import BackendError
from harness.backends.messages import Message, parse_messages, png_bytes
from harness.backends.remote import RemoteChatBackend
from harness.backends.retry import AttemptFailure, RetryPolicy, attempt_count, retry_after_seconds
from harness.requirements import Endpoint, EnvVar, Package, Requirement

log = logging.getLogger(__name__)

DEFAULT_KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")

# Our sampling names that the SDK spells differently.
_ALIASES = {"max_tokens": "max_output_tokens", "stop": "stop_sequences"}


def build_genai_request(messages: list[Message], sampling: Mapping[str, Any] | None = None,
                        defaults: Mapping[str, Any] | None = None) -> tuple[list[Any], Any]:
    """``(contents, config)`` for ``client.models.generate_content``.

    System messages become the ``system_instruction`` (joined by blank lines),
    assistant turns the ``model`` role, images inline PNG parts.
    ``thinking_budget`` becomes a ``ThinkingConfig`` (0 turns thinking off on
    2.5 Flash models); other settings are ``GenerateContentConfig`` fields
    (``temperature``, ``top_p``, ``max_output_tokens`` alias ``max_tokens``,
    ``seed``, ``response_mime_type``, ...). A None value removes a setting.
    """
    from google.genai import types

    system: list[str] = []
    contents = []
    for turn in parse_messages(messages):
        if turn.role == "system":
            if not all(isinstance(part, str) for part in turn.parts):
                raise ValueError("Gemini takes text only in system messages")
            system.append("\n".join(turn.parts))  # type: ignore[arg-type]
            continue
        parts = [types.Part.from_text(text=part) if isinstance(part, str)
                 else types.Part.from_bytes(data=png_bytes(part), mime_type="image/png") for part in turn.parts]
        contents.append(types.Content(role="model" if turn.role == "assistant" else "user", parts=parts))
    if not contents:
        raise ValueError("a Gemini request needs a user message")
    merged: dict[str, Any] = {}
    for name, value in {**(defaults or {}), **(sampling or {})}.items():
        merged[_ALIASES.get(name, name)] = value
    merged = {name: value for name, value in merged.items() if value is not None}
    budget = merged.pop("thinking_budget", None)
    if budget is not None:
        merged["thinking_config"] = types.ThinkingConfig(thinking_budget=int(budget))
    unknown = sorted(set(merged) - set(types.GenerateContentConfig.model_fields) - {"system_instruction"})
    if unknown:
        raise ValueError(f"unknown Gemini generation settings: {', '.join(unknown)}")
    if system:
        merged["system_instruction"] = "\n\n".join(system)
    return contents, types.GenerateContentConfig(**merged)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Transport failures worth another try: timeouts and broken connections, from
    whichever HTTP stacks the SDK may use (its async client uses aiohttp when that
    is installed, and before Python 3.11 asyncio's TimeoutError is not the builtin)."""
    classes: list[type[BaseException]] = [TimeoutError, asyncio.TimeoutError, ConnectionError]
    for module_name, names in (("httpx", ("TransportError",)), ("httpx2", ("TransportError",)),
                               ("aiohttp", ("ClientConnectionError",)),
                               ("google.auth.exceptions", ("TransportError",))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        classes += [getattr(module, name) for name in names if isinstance(getattr(module, name, None), type)]
    return tuple(classes)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


def _retry_delay(exc: Any) -> float | None:
    """The wait a failed call asks for: the ``retry-after`` headers, else the
    ``RetryInfo`` detail Google's APIs attach to 429s (``"retryDelay": "23s"``)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    wait = retry_after_seconds(headers) if headers is not None else None
    if wait is not None:
        return wait
    found = re.search(r"""['"]retryDelay['"]\s*:\s*['"]([0-9.]+)s['"]""", json.dumps(getattr(exc, "details", None),
                                                                               default=str))
    return float(found.group(1)) if found else None


class GeminiChat(RemoteChatBackend):
    """Gemini models through google-genai's ``generate_content``.

    Credentials: an API key from ``api_key_env`` (default: ``GOOGLE_API_KEY``,
    then ``GEMINI_API_KEY``), or Vertex AI with ``vertexai=True``, ``project``
    and ``location`` (default: ``GOOGLE_CLOUD_PROJECT`` and
    ``GOOGLE_CLOUD_LOCATION``) and the machine's Google credentials.
    Settings, overridable per call: ``temperature`` (default 0),
    ``top_p``, ``max_output_tokens``, ``seed``, ``thinking_budget`` (0 turns
    thinking off on 2.5 Flash models) and ``response_mime_type``.

    Retries as :class:`~harness.backends.openai_chat.OpenAIChat`: at most
    ``1 + max_retries`` requests per call; HTTP 408, 409, 429, any 5xx, timeouts
    (each request has ``timeout_s`` in all) and connection failures are retried
    after the wait the server asks for (``retry-after`` or Google's
    ``RetryInfo``), else after an exponential backoff with jitter. The SDK's own
    retries are switched off so that attempts are counted here. Every request
    goes through the SDK's async client (``client.aio``): from the caller's
    event loop for ``acomplete``, from the backend's own loop thread for
    ``complete``, so a request past its deadline is cancelled, not abandoned.
    At most ``max_concurrency`` requests are in flight per loop;
    ``complete_many`` uses them all. ``requests_per_minute`` (None: unlimited)
    paces requests on the client's side. ``base_url`` points the SDK at a
    gateway or proxy; ``client`` replaces the SDK client (tests).
    """

    def __init__(self, model: str, api_key_env: str | None = None, vertexai: bool = False,
                 project: str | None = None, location: str | None = None, temperature: float | None = 0.0,
                 top_p: float | None = None, max_output_tokens: int | None = None, seed: int | None = None,
                 thinking_budget: int | None = None, response_mime_type: str | None = None, *,
                 timeout_s: float = 120, max_retries: int = 4, max_concurrency: int = 8, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0,
                 requests_per_minute: float | None = None, base_url: str | None = None, client: Any = None) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError("GeminiChat needs a model name, e.g. gemini-2.5-flash")
        super().__init__(RetryPolicy(timeout_s=timeout_s, max_retries=max_retries, max_concurrency=max_concurrency,
                                     backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                     max_retry_after_s=max_retry_after_s, requests_per_minute=requests_per_minute))
        self.model = model
        self._settings = {"temperature": temperature, "top_p": top_p, "max_output_tokens": max_output_tokens,
                          "seed": seed, "thinking_budget": thinking_budget, "response_mime_type": response_mime_type}
        self._where = f"{model} ({'Vertex AI' if vertexai else 'Gemini API'})"
        self.base_url = base_url
        self._client = client if client is not None else self._make_client(api_key_env, vertexai, project, location)
        self._transient = _transient_errors()

    def _make_client(self, api_key_env: str | None, vertexai: bool, project: str | None,
                     location: str | None) -> Any:
        try:
            from google import genai
            from google.genai import types
        except ImportError as exc:
            raise ImportError('GeminiChat needs google-genai: pip install -e ".[api]"') from exc
        # attempts=1: the SDK makes one request per call; RemoteChatBackend's loop retries.
        http = types.HttpOptions(timeout=int(self.timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=1),
                                 base_url=self.base_url)
        if vertexai:
            project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
            location = location or os.environ.get("GOOGLE_CLOUD_LOCATION")
            if not project or not location:
                raise ValueError("GeminiChat on Vertex AI needs a project and a location "
                                 "(or $GOOGLE_CLOUD_PROJECT and $GOOGLE_CLOUD_LOCATION)")
            return genai.Client(vertexai=True, project=project, location=location, http_options=http)
        names = (api_key_env,) if api_key_env else DEFAULT_KEY_ENVS
        key = next((os.environ[name] for name in names if os.environ.get(name)), None)
        if not key:
            # Fail when the backend is built, not once per sample of a run.
            raise ValueError(f"GeminiChat needs an API key in ${' or $'.join(names)}, "
                             "or vertexai=True with a project and a location")
        return genai.Client(api_key=key, http_options=http)

    @classmethod
    def requirements(cls, options: Mapping[str, Any], purpose: str) -> list[Requirement]:
        """google-genai, and the Gemini API's key, or Vertex AI's project, location and credentials."""
        needed: list[Requirement] = [Package("google.genai", 'pip install -e ".[api]"', purpose)]
        if options.get("vertexai"):
            for option, variable in (("project", "GOOGLE_CLOUD_PROJECT"), ("location", "GOOGLE_CLOUD_LOCATION")):
                if not options.get(option):
                    needed.append(EnvVar((variable,), purpose, f"export {variable}=... (or set the backend's "
                                                                f"{option})"))
            adc = os.path.expanduser("~/.config/gcloud/application_default_credentials.json")
            if not os.path.isfile(adc):
                needed.append(EnvVar(("GOOGLE_APPLICATION_CREDENTIALS",), purpose,
                                     "export GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account.json, or run "
                                     "`gcloud auth application-default login`"))
            location = options.get("location") or os.environ.get("GOOGLE_CLOUD_LOCATION") or "us-central1"
            url = options.get("base_url") or f"https://{location}-aiplatform.googleapis.com"
        else:
            names = (options["api_key_env"],) if options.get("api_key_env") else DEFAULT_KEY_ENVS
            needed.append(EnvVar(tuple(names), purpose, f"export {names[0]}=<your Gemini API key>"))
            url = options.get("base_url") or "https://generativelanguage.googleapis.com"
        needed.append(Endpoint(str(url), purpose))
        return needed

    @property
    def fingerprint(self) -> str:
        settings = {k: v for k, v in self._settings.items() if v is not None}
        return f"genai:{self.model}|{json.dumps(settings, sort_keys=True, default=str)}"

    async def acomplete(self, messages: list[Message], **sampling: Any) -> str:
        contents, config = build_genai_request(messages, sampling, self._settings)
        # The SDK's async client keeps a connection pool per event loop itself.
        response, attempt = await self._acall_with_retries(
            lambda: self._client.aio.models.generate_content(model=self.model, contents=contents, config=config))
        return self._reply_text(response, attempt)

    def _failure(self, exc: Exception) -> AttemptFailure | None:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            detail = " ".join(str(exc.message or exc.status or exc).split())[:300]
            return AttemptFailure.http(exc.code, detail, _retry_delay(exc))
        if isinstance(exc, self._transient):
            return AttemptFailure.timeout(self.timeout_s) if _is_timeout(exc) else AttemptFailure.connection(exc)
        return None

    def _reply_text(self, response: Any, attempt: int) -> str:
        """The first candidate's text (thoughts left out), or BackendError. An empty
        or blocked reply is not retried: the same request would be blocked again."""
        candidates = getattr(response, "candidates", None) or []
        if not candidates:
            feedback = getattr(response, "prompt_feedback", None)
            reason = getattr(feedback, "block_reason", None)
            raise BackendError(f"{self._where}: the reply has no candidates"
                               + (f" (prompt blocked: {reason})" if reason else "")
                               + f" ({attempt_count(attempt)})", status=200, attempts=attempt)
        candidate = candidates[0]
        parts = getattr(getattr(candidate, "content", None), "parts", None) or []
        text = "".join(part.text for part in parts
                       if getattr(part, "text", None) and not getattr(part, "thought", None))
        if not text.strip():
            raise BackendError(f"{self._where}: the reply has no text (finish_reason="
                               f"{getattr(candidate, 'finish_reason', None)!s}) ({attempt_count(attempt)})",
                               status=200, attempts=attempt)
        return text

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # closing is best effort; nothing is lost
                log.debug("closing the genai client failed", exc_info=True)
        super().close()
