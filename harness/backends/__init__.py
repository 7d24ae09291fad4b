"""Model backends shared by tools, direct-answer systems and program writers.

A :class:`ChatBackend` turns chat messages (text and PIL images) into reply
text, one request at a time (``complete``) or many (``complete_many``, in
order, a failed request giving its :class:`BackendError` in its place).
``make_chat_backend(kind, **options)`` builds one by kind:

- ``openai``: any OpenAI-compatible endpoint (OpenAI, Gemini's compatibility
  endpoint, ``vllm serve``), concurrent and retried;
- ``transformers``: a local Hugging Face VLM or text-only LLM, batched;
- ``vllm``: offline vLLM, a whole list of requests in one engine call;
- ``genai``: Gemini through google-genai (API key or Vertex AI);
- ``scripted``: recorded replies from a JSONL file, for tests and demos.

``make_chat_backend(..., cache=True)`` or :func:`with_cache` adds a crash-safe
on-disk cache of deterministic requests (:class:`CachedChat`). Heavy libraries
(torch, transformers, vllm, google-genai) are imported only when a backend
needing them is first used.

One module a concern: ``messages`` (the message format, image encoding),
``base`` (the interface, :class:`BackendError`), ``retry`` (retries, backoff,
rate limits), ``remote`` (the plumbing of remote backends), one module per
backend, ``digest`` and ``cached`` (request identity, the cache), and
``factory`` (the registry of kinds, the only module that imports them all).
"""

from __future__ import annotations

from harness.backends.base import BackendError, BatchChatBackend, ChatBackend
from harness.backends.cached import CachedChat, is_deterministic, with_cache
from harness.backends.digest import request_digest, request_seed
from harness.backends.factory import CHAT_BACKENDS, make_chat_backend
from harness.backends.genai import GeminiChat
from harness.backends.messages import image_data_uri
from harness.backends.openai_chat import OpenAIChat
from harness.backends.remote import RemoteChatBackend
from harness.backends.retry import RetryPolicy
from harness.backends.scripted import ScriptedChat
from harness.backends.transformers_chat import TransformersChat
from harness.backends.vllm import VLLMChat, build_vllm_request

__all__ = [
    "CHAT_BACKENDS", "BackendError", "BatchChatBackend", "CachedChat", "ChatBackend", "GeminiChat", "OpenAIChat",
    "RemoteChatBackend", "RetryPolicy", "ScriptedChat", "TransformersChat", "VLLMChat", "build_vllm_request",
    "image_data_uri", "is_deterministic", "make_chat_backend", "request_digest", "request_seed", "with_cache",
]
