"""Chat backends by name: the registry and :func:`make_chat_backend`.

The one module that knows every backend: the others never import it. Entries
are lazy, so a backend's module (and whatever it imports when used: torch,
vllm, google-genai) is loaded only when that kind is first asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.backends.base import ChatBackend
from harness.backends.cached import with_cache
from harness.backends.openai_chat import OpenAIChat
from harness.registry import Registry

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
    return with_cache(backend, None if cache is True else cache)
