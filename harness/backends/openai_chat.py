"""Chat completions from any OpenAI-compatible endpoint (OpenAI, Gemini's
compatibility endpoint, ``vllm serve``): the request the SDK would send, sent
with plain httpx2 from an event loop (the caller's, or for plain code the
backend's own), retried and bounded by :class:`~harness.backends.remote.RemoteChatBackend`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any, Mapping, cast

from harness.backends.base import BackendError
from harness.backends.http11 import HttpError, Http11Pool, proxy_for
from harness.backends.messages import Message, Turn, image_data_uri, parse_messages
from harness.backends.remote import RemoteChatBackend
from harness.backends.retry import AttemptFailure, RetryPolicy, attempt_count, retry_after_seconds
from harness.requirements import Endpoint, EnvVar, Requirement, is_local_url

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the OpenAI SDK's default


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
    """The httpx2 clients of one event loop for one URL, used where a proxy applies (the lean
    client connects directly only): ``size`` connections in all, split into pools of at most
    ``_CONNECTIONS_PER_POOL``. A request goes to the least busy pool; as at most ``size``
    requests are in flight (the loop's slots), that pool always has a free connection, so no
    request waits for one."""

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

    @property
    def is_closed(self) -> bool:
        return all(client.is_closed for client in self._clients)


class OpenAIChat(RemoteChatBackend):
    """Chat completions from any OpenAI-compatible endpoint.

    ``temperature=None`` leaves it unset (OpenAI's reasoning models accept only
    their default). ``max_tokens`` is sent as ``max_tokens``; OpenAI's reasoning
    models want ``extra={"max_completion_tokens": N}`` instead. ``extra`` holds
    further request fields: those the OpenAI SDK knows (``reasoning_effort``,
    ``seed``, ``extra_body``, ...) go as they are, others (vLLM's ``top_k``,
    ``mm_processor_kwargs``) are merged into ``extra_body`` so they still reach
    the server.

    Retries: every call makes at most ``1 + max_retries`` requests. A request
    still unanswered ``timeout_s`` after it started (connecting, sending and
    reading the whole reply: a server trickling its reply does not extend it),
    a connection failure, HTTP 408, 409, 429 or any 5xx is retried after the
    wait the server asks for (``retry-after-ms`` or ``retry-after``), or else
    after an exponential backoff with jitter: ``backoff_s * 2**(n-1)`` capped
    at ``max_backoff_s``, times a random factor in [0.5, 1]. A server asking
    for more than ``max_retry_after_s`` is not waited for. Other statuses, and
    replies that are not a chat completion with text, fail at once.

    Requests are built as the SDK builds them and sent from the running event
    loop (``acomplete``, ``acomplete_many``) or, for ``complete`` and
    ``complete_many``, from the backend's own loop thread, over a lean HTTP/1.1
    client (:mod:`harness.backends.http11`; httpx2, the SDK's own HTTP library,
    where a ``*_PROXY`` variable applies): no thread per request, no SDK models,
    kept-alive connections. That takes a small fraction of the CPU time per
    request of the SDK's ``AsyncOpenAI``, so that even 2 cores keep hundreds of
    requests in flight. At most ``max_concurrency`` requests are in flight per event loop
    (all threads share the backend's loop); ``requests_per_minute`` (None:
    unlimited) paces them on the client's side.

    ``seed`` (here or per call) is sent when set; servers that honour it
    (vLLM, OpenAI on a best-effort basis) then sample reproducibly.

    ``api="responses"`` sends the same turns to OpenAI's Responses API instead
    (``/responses``: ``input`` items of ``input_text`` and ``input_image``
    parts; fields such as ``reasoning={"effort": "medium"}`` go in ``extra``),
    as the paper's evaluation called GPT-5-mini; the reply is its output text.
    """

    APIS = ("chat", "responses")

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 4, max_concurrency: int = 8,
                 temperature: float | None = 0.0, max_tokens: int | None = None,
                 extra: dict[str, Any] | None = None, *, seed: int | None = None, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0,
                 requests_per_minute: float | None = None, api: str = "chat") -> None:
        from openai import OpenAI

        if not isinstance(model, str) or not model:
            raise ValueError("OpenAIChat needs a model name")
        if api not in self.APIS:
            raise ValueError(f"OpenAIChat: api must be one of {', '.join(self.APIS)}, got {api!r}")
        self.api = api
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
        endpoint = self._client.responses if api == "responses" else self._client.chat.completions
        self._sdk_fields = frozenset(inspect.signature(endpoint.create).parameters)
        self._where = f"{model} at {self.base_url}"
        # The async path sends the SDK's headers (key, organisation and project
        # when set, user agent) but not its X-Stainless telemetry, whose checks
        # on every request cost more CPU than they are worth.
        self._async_headers = {name: value for name, value in {**self._client.default_headers,
                                                               **self._client.auth_headers}.items()
                               if isinstance(value, str) and not name.lower().startswith("x-stainless")}
        self._ssl_context: Any = None  # made once, on the first loop's first async call

    @classmethod
    def requirements(cls, options: Mapping[str, Any], purpose: str) -> list[Requirement]:
        """A key in ``api_key_env`` (a hosted API; a server on this machine takes any key) and an
        endpoint that accepts connections."""
        base_url = options.get("base_url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        needed: list[Requirement] = []
        if not is_local_url(base_url):
            variable = options.get("api_key_env") or "OPENAI_API_KEY"
            needed.append(EnvVar((variable,), purpose, f"export {variable}=<your API key>"))
        needed.append(Endpoint(str(base_url), purpose))
        return needed

    @property
    def fingerprint(self) -> str:
        settings = {k: v for k, v in self._settings.items() if v is not None}
        api = "" if self.api == "chat" else f"|api={self.api}"  # chat keys stay as they were, so caches still serve
        return f"openai:{self.model}@{self.base_url}{api}|{json.dumps(settings, sort_keys=True, default=str)}"

    # ------------------------------------------------------------------ request

    @staticmethod
    def _wire_message(turn: Turn) -> dict[str, Any]:
        if turn.plain:
            # Text-only servers and the judge's endpoints take plain strings.
            return {"role": turn.role, "content": turn.parts[0]}
        parts = [{"type": "text", "text": part} if isinstance(part, str)
                 else {"type": "image_url", "image_url": {"url": image_data_uri(part)}} for part in turn.parts]
        return {"role": turn.role, "content": parts}

    @staticmethod
    def _input_item(turn: Turn) -> dict[str, Any]:
        """A turn as a Responses API input item: always a list of typed parts."""
        parts = [{"type": "input_text", "text": part} if isinstance(part, str)
                 else {"type": "input_image", "image_url": image_data_uri(part)} for part in turn.parts]
        return {"role": turn.role, "content": parts}

    def _wire(self, messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
        """The request's turns under the field name its API expects."""
        turns = parse_messages(messages)
        if self.api == "responses":
            return "input", [self._input_item(turn) for turn in turns]
        return "messages", [self._wire_message(turn) for turn in turns]

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
        """Keyword arguments of ``post`` (the lean client's or httpx2's) for the request the SDK
        would send: one JSON body of the SDK's fields and ``extra_body``'s (which
        wins, as in the SDK); ``extra_headers``, ``extra_query`` and ``timeout``
        set the request's headers, query and timeout, as they do in the SDK."""
        key, wire = self._wire(messages)
        fields = self._request_fields(sampling)
        request: dict[str, Any] = {}
        for field_name, option in (("extra_headers", "headers"), ("extra_query", "params"), ("timeout", "timeout")):
            if field_name in fields:
                request[option] = fields.pop(field_name)
        extra_body = fields.pop("extra_body", {})
        body = {"model": self.model, key: wire, **fields, **extra_body}
        request["content"] = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return request

    # ------------------------------------------------------------------ call

    async def acomplete(self, messages: list[Message], **sampling: Any) -> str:
        request = self._http_request(messages, sampling)
        clients = cast(Http11Pool | _PooledClients, (await self._loop_state()).transport)

        async def send() -> tuple[str, int]:
            response = await clients.post(**request)
            if not response.is_success:  # the SDK's rule: any status but 2xx is an error
                raise _ErrorStatus(response)
            return response.text, response.status_code

        (body, status), attempt = await self._acall_with_retries(send)
        return self._reply_text(body, status, attempt)

    def _open_transport(self) -> Http11Pool | _PooledClients:
        import httpx2

        url = f"{self.base_url}{'responses' if self.api == 'responses' else 'chat/completions'}"
        # Loading the CA bundle takes tens of milliseconds: once per backend, not per loop. It is
        # the one httpx2 (and so the SDK) verifies servers with.
        if self._ssl_context is None and (url.startswith("https:") or proxy_for(url)):
            self._ssl_context = httpx2.create_ssl_context()
        if proxy_for(url) is None:
            return Http11Pool(url, self.retry.max_concurrency, self._async_headers, self._ssl_context)
        # The SDK's client settings: its timeout for each phase, redirects followed.
        return _PooledClients(url, self.retry.max_concurrency, headers=self._async_headers, verify=self._ssl_context,
                              timeout=httpx2.Timeout(self.timeout_s), follow_redirects=True)

    def _failure(self, exc: Exception) -> AttemptFailure | None:
        import httpx2

        if isinstance(exc, _ErrorStatus):
            status = exc.status_code
            hint = f"; no API key was found in ${self.api_key_env}" if status == 401 and self._no_key else ""
            return AttemptFailure.http(status, _error_detail(exc), retry_after_seconds(exc.response.headers), hint)
        if isinstance(exc, httpx2.TimeoutException):
            return AttemptFailure.timeout(self.timeout_s)
        if isinstance(exc, httpx2.ConnectError):
            # The async stack says only "All connection attempts failed"; the
            # reason (refused, unreachable, unknown host) is the innermost cause.
            cause: BaseException = exc
            while cause.__cause__ or cause.__context__:
                cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            return AttemptFailure.connection(cause)
        if isinstance(exc, httpx2.RequestError):  # what the SDK reports as APIConnectionError
            return AttemptFailure.connection(exc)
        if isinstance(exc, (HttpError, OSError, EOFError)):  # the lean client's: refused, reset, cut off
            return AttemptFailure.connection(exc)
        return None

    def _reply_text(self, body: str, status: int, attempt: int) -> str:
        """The first choice's text, or BackendError for anything else. Malformed
        replies are not retried: they come from a misconfigured server or model
        (wrong URL, a proxy's page, a token budget spent on reasoning), which a
        second request would not fix."""

        def fail(what: str) -> BackendError:
            return BackendError(f"{self._where}: {what} (HTTP {status}, {attempt_count(attempt)})",
                                status=status, attempts=attempt)

        try:
            data = json.loads(body)
        except (json.JSONDecodeError, TypeError):
            raise fail(f"the reply is not JSON: {body[:200]!r}") from None
        if not isinstance(data, dict):
            raise fail(f"the reply is not a chat completion: {body[:200]!r}")
        if self.api == "responses":
            return self._output_text(data, body, fail)
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

    @staticmethod
    def _output_text(data: dict[str, Any], body: str, fail: Any) -> str:
        """A Responses API reply's text: its ``output_text`` parts of ``message`` items, joined
        (what the SDK's ``output_text`` reads)."""
        output = data.get("output")
        if not isinstance(output, list):
            error = data.get("error")
            raise fail(f"the server reported an error: {str(error)[:300]}" if error
                       else f"the reply is not a response: {body[:200]!r}")
        text = "".join(part.get("text") or "" for item in output if isinstance(item, dict) and item.get("type") == "message"
                       for part in item.get("content") or [] if isinstance(part, dict) and part.get("type") == "output_text")
        if not text.strip():
            details = data.get("incomplete_details")
            raise fail(f"the reply has no text (status={data.get('status')!r}"
                       + (f", {details}" if details else "") + ")")
        return text

    def close(self) -> None:
        self._client.close()
        super().close()
