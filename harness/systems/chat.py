"""What systems that talk to a chat model share: the backend and the sampling settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.backends import CHAT_BACKENDS, ChatBackend, make_chat_backend
from harness.requirements import Requirement, localized
from harness.tools.checkpoints import chat_model_options


class ChatSystemMixin:
    """A system that talks to a chat backend (``llm`` or ``vlm`` params) with fixed sampling."""

    name: str
    params: dict[str, Any]
    seed: int
    data_dir: Path | None
    backend_key = "llm"
    _chat: ChatBackend | None = None

    def chat_requirements(self) -> list[Requirement]:
        options = dict(self.params[self.backend_key])
        kind = options.pop("backend")
        return CHAT_BACKENDS.get(kind).requirements(options, f"the {self.backend_key} of system {self.name}")

    @property
    def chat(self) -> ChatBackend:
        if self._chat is None:
            options = dict(self.params[self.backend_key])
            kind = options.pop("backend")
            # Weights under the run's data dir are read from there (a GPU node without internet).
            options = localized(options, self.chat_requirements(), self.data_dir)
            # A trained checkpoint (LoRA adapter, verl checkpoint) becomes a loadable folder, and
            # `model` works for the transformers backend too (harness.tools.checkpoints).
            options = chat_model_options(kind, options)
            # Deterministic requests (temperature 0, or a seed, which every run sets) are
            # served from the response cache on a repeated or resumed run.
            self._chat = make_chat_backend(kind, cache=self.params.get("cache", True), **options)
        return self._chat

    @property
    def sampling(self) -> dict[str, Any]:
        sampling = dict(self.params.get("sampling") or {})
        sampling.setdefault("seed", self.seed)
        return sampling

    def close_chat(self) -> None:
        if self._chat is not None:
            self._chat.close()
