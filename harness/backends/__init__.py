"""Model backends shared by tools, direct-answer systems and program writers.

A :class:`ChatBackend` turns chat messages (text and PIL images) into reply
text. ``make_chat_backend("openai", model=...)`` reaches any OpenAI-compatible
endpoint; ``make_chat_backend("transformers", checkpoint=...)`` runs a local
Hugging Face vision-language model. Heavy libraries (torch, transformers) are
imported only when a local model is first used.
"""

from __future__ import annotations

from harness.backends.chat import (
    CHAT_BACKENDS,
    BackendError,
    ChatBackend,
    OpenAIChat,
    TransformersChat,
    image_data_uri,
    make_chat_backend,
)

__all__ = [
    "CHAT_BACKENDS", "BackendError", "ChatBackend", "OpenAIChat", "TransformersChat", "image_data_uri",
    "make_chat_backend",
]
