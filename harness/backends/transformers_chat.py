"""Local Hugging Face chat models: vision-language (image-text-to-text) or text-only (causal LM).

torch and transformers are imported when a model is first used, never at start-up.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Mapping, Sequence

from harness.backends.base import BackendError, BatchChatBackend, model_weights
from harness.backends.messages import Message, Turn, parse_messages, rgb_image
from harness.backends.digest import request_digest, request_seed
from harness.devices import resolve_device, resolve_dtype
from harness.requirements import Gpu, Package, Requirement

log = logging.getLogger(__name__)

MODEL_CLASSES = ("auto", "causal_lm", "image_text_to_text")

# Names that only mean something when sampling; dropped for greedy decoding so
# generate does not warn about settings it ignores.
_SAMPLING_ONLY = ("top_p", "top_k", "min_p")


class _SeededSampler:
    """Samples the next token of each row with that row's own generator, then
    leaves only the sampled token to greedy decoding.

    Why not ``do_sample=True`` under one global seed: in a batch, the draws of
    one row depend on how many rows came before it, so a request's reply would
    change with its batch. Here request ``i`` always draws from a generator
    seeded with its own seed, alone or in any batch, so seeded sampling is as
    reproducible as greedy decoding and safe to cache. The warpers (temperature,
    top-k, top-p, min-p) are transformers' own, in generate's order.
    """

    def __init__(self, seeds: Sequence[int], warpers: Sequence[Any]) -> None:
        self.seeds = list(seeds)
        self.warpers = list(warpers)
        self._generators: list[Any] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if scores.shape[0] != len(self.seeds):
            raise RuntimeError(f"seeded sampling expected {len(self.seeds)} rows, got {scores.shape[0]}")
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(seed) for seed in self.seeds]
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        picks = torch.cat([torch.multinomial(probs[row], 1, generator=generator)
                           for row, generator in enumerate(self._generators)])
        only = torch.full_like(scores, float("-inf"))
        only.scatter_(1, picks[:, None], 0.0)
        return only


class TransformersChat(BatchChatBackend):
    """A Hugging Face chat model in this process: an image-text-to-text model
    (Qwen2.5-VL, LLaVA, ...) through its processor, or a text-only causal LM
    (Qwen3, Llama, ...) through its tokenizer.

    ``model_class``: ``auto`` reads the checkpoint's config and picks
    ``image_text_to_text`` for architectures transformers lists as such,
    ``causal_lm`` otherwise. ``chat_template_kwargs`` go to the chat template
    (``{"enable_thinking": False}`` for Qwen3, as the paper's evaluation ran it).

    The model loads on first use, once; calls from many threads are served one
    at a time (a lock around generation: one model, one device). Decoding is
    greedy unless ``temperature > 0`` (here or per call); ``top_p``, ``top_k``,
    ``min_p`` and ``repetition_penalty`` apply when sampling, unset ones taking
    the checkpoint's generation config. With a ``seed`` each request samples
    from its own generator, seeded from the seed and the request's content, so
    its reply is the same alone or in any batch. ``max_tokens`` is
    ``max_new_tokens``.

    ``complete_many`` sorts requests by length and generates them in batches of
    up to ``batch_size`` (left padding, one ``generate`` call per batch). If a
    batch fails (out of memory, a template refusing one request), its requests
    are retried one by one so that only the culprit fails.
    """

    @classmethod
    def requirements(cls, options: Mapping[str, Any], purpose: str) -> list[Requirement]:
        """torch and transformers, the checkpoint's weights, and a GPU unless the device is the CPU."""
        install = 'pip install -e ".[tools]"'
        gpu = str(options.get("device", "auto"))
        return [Package("torch", install, purpose), Package("transformers", install, purpose),
                *([] if gpu == "cpu" else [Gpu(purpose, required=gpu.startswith("cuda"))]),
                *model_weights(options.get("checkpoint"), purpose, ("checkpoint",), options.get("revision"),
                               ("revision",))]

    def __init__(self, checkpoint: str, device: str = "auto", dtype: str = "auto", max_new_tokens: int = 64,
                 revision: str | None = None, processor_options: dict[str, Any] | None = None, *,
                 model_class: str = "auto", chat_template_kwargs: dict[str, Any] | None = None,
                 batch_size: int = 8, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 seed: int | None = None) -> None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ImportError("TransformersChat needs torch and transformers: pip install -e '.[tools]'") from exc
        if not checkpoint:
            raise ValueError("TransformersChat needs a checkpoint (a hub id or a local folder)")
        if model_class not in MODEL_CLASSES:
            raise ValueError(f"model_class must be one of {', '.join(MODEL_CLASSES)}, got {model_class!r}")
        if int(batch_size) < 1 or int(max_new_tokens) < 1:
            raise ValueError("need batch_size >= 1 and max_new_tokens >= 1")
        self.checkpoint = str(checkpoint)
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = int(max_new_tokens)
        self.processor_options = dict(processor_options or {})
        self.model_class = model_class
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.batch_size = int(batch_size)
        self._defaults = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                          "repetition_penalty": repetition_penalty, "seed": seed}
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None  # the processor of a VLM, the tokenizer of a text-only model
        self._kind: str | None = None

    # ------------------------------------------------------------------ identity

    @property
    def fingerprint(self) -> str:
        # The device and batch size are left out on purpose: the same weights in
        # the same dtype answer alike on any GPU and in any batch, and a cache
        # filled on one should serve another.
        extras = []
        if self.processor_options:
            extras.append(json.dumps(self.processor_options, sort_keys=True, default=str))
        if self.model_class != "auto":
            extras.append(f"class={self.model_class}")
        if self.chat_template_kwargs:
            extras.append("template=" + json.dumps(self.chat_template_kwargs, sort_keys=True, default=str))
        defaults = {k: v for k, v in self._defaults.items() if v is not None}
        if defaults:
            extras.append("sampling=" + json.dumps(defaults, sort_keys=True, default=str))
        return (f"transformers:{self.checkpoint}@{self.revision or 'default'}|dtype={self.dtype}"
                f"|max_new_tokens={self.max_new_tokens}" + "".join("|" + extra for extra in extras))

    def default_sampling(self) -> dict[str, Any]:
        defaults = dict(self._defaults)
        # Greedy unless a temperature is set: say so in the terms callers test.
        defaults["temperature"] = defaults["temperature"] or 0.0
        return defaults

    @property
    def kind(self) -> str | None:
        """``causal_lm`` or ``image_text_to_text`` once loaded (None before)."""
        return self._kind

    # ------------------------------------------------------------------ loading

    def _resolve_kind(self) -> str:
        if self.model_class != "auto":
            return self.model_class
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        config = AutoConfig.from_pretrained(self.checkpoint, revision=self.revision)
        return "image_text_to_text" if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES else "causal_lm"

    def _ensure_loaded(self) -> None:
        """Load processor (or tokenizer) and model (caller holds the lock)."""
        if self._model is not None:
            return
        import torch
        import transformers

        try:
            kind = self._resolve_kind()
            log.info("loading %s (%s) on %s (%s)", self.checkpoint, kind, self.device, self.dtype)
            if kind == "image_text_to_text":
                processor = transformers.AutoProcessor.from_pretrained(self.checkpoint, revision=self.revision,
                                                                       **self.processor_options)
                model_cls = transformers.AutoModelForImageTextToText
                tokenizer = processor.tokenizer
            else:
                processor = tokenizer = transformers.AutoTokenizer.from_pretrained(
                    self.checkpoint, revision=self.revision, **self.processor_options)
                model_cls = transformers.AutoModelForCausalLM
            model = model_cls.from_pretrained(self.checkpoint, revision=self.revision, dtype=getattr(torch, self.dtype))
        except Exception as exc:
            raise BackendError(f"{self.checkpoint}: could not load the model: {type(exc).__name__}: {exc}") from exc
        # Batched generation appends new tokens on the right, so prompts must be
        # padded on the left; a tokenizer without a pad token pads with EOS.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._model = model.to(self.device).eval()
        self._processor = processor
        self._kind = kind

    @property
    def _tokenizer(self) -> Any:
        return self._processor if self._kind == "causal_lm" else self._processor.tokenizer

    # ------------------------------------------------------------------ decoding options

    def generation_options(self, sampling: Mapping[str, Any], seeds: Sequence[int] | None = None) -> dict[str, Any]:
        """Our sampling names (OpenAI's) mapped onto ``generate`` arguments.

        ``seeds`` (one per row) switch seeded sampling on when sampling: see
        :class:`_SeededSampler`. Unknown names pass through to ``generate``.
        """
        merged = {k: v for k, v in {**self._defaults, **sampling}.items() if v is not None}
        merged.pop("seed", None)  # per-row seeds come in ``seeds``
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        for name in ("max_tokens", "max_new_tokens"):
            if name in merged:
                options["max_new_tokens"] = int(merged.pop(name))
        temperature = merged.pop("temperature", None)
        if not temperature or float(temperature) <= 0:
            for name in _SAMPLING_ONLY:
                merged.pop(name, None)
            options.update(merged)
            return options
        if seeds is None:
            options.update(do_sample=True, temperature=float(temperature))
            options.update(merged)
            return options
        from transformers import (LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                  TopPLogitsWarper)

        # Unset warpers take the checkpoint's values, as generate's own sampling would.
        config = self._model.generation_config if self._model is not None else None
        top_k = merged.pop("top_k", getattr(config, "top_k", None))
        top_p = merged.pop("top_p", getattr(config, "top_p", None))
        min_p = merged.pop("min_p", getattr(config, "min_p", None))
        warpers: list[Any] = []
        if float(temperature) != 1.0:
            warpers.append(TemperatureLogitsWarper(float(temperature)))
        if top_k:
            warpers.append(TopKLogitsWarper(int(top_k)))
        if top_p is not None and float(top_p) < 1.0:
            warpers.append(TopPLogitsWarper(float(top_p)))
        if min_p:
            warpers.append(MinPLogitsWarper(float(min_p)))
        options.update(merged)
        options["logits_processor"] = LogitsProcessorList([_SeededSampler(seeds, warpers)])
        return options

    def _sampling_seed(self, sampling: Mapping[str, Any]) -> int | None:
        seed = sampling["seed"] if "seed" in sampling else self._defaults["seed"]
        return None if seed is None else int(seed)

    # ------------------------------------------------------------------ encoding

    def _encode(self, batch: list[list[Turn]]) -> Any:
        """Token ids (left-padded) and pixel values of a batch of conversations."""
        import torch

        if self._kind == "causal_lm":
            # Text-only chat templates (Qwen3's among them) expect string contents.
            chats = [[{"role": turn.role, "content": "\n".join(turn.parts)} for turn in turns] for turns in batch]
            inputs = self._processor.apply_chat_template(
                chats, add_generation_prompt=True, tokenize=True, padding=True, return_dict=True,
                return_tensors="pt", **self.chat_template_kwargs)
        else:
            chats = [[{"role": turn.role,
                       "content": [{"type": "text", "text": part} if isinstance(part, str)
                                   else {"type": "image", "image": rgb_image(part)} for part in turn.parts]}
                      for turn in turns] for turns in batch]
            # The processor's own chat path places the image tokens and handles
            # special tokens (BOS) the way the checkpoint's template expects.
            inputs = self._processor.apply_chat_template(
                chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs={"padding": True}, **self.chat_template_kwargs)
        moved = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                # Pixel values follow the model's dtype; token ids stay integers.
                value = value.to(self.device, dtype=self._model.dtype) if value.is_floating_point() \
                    else value.to(self.device)
            moved[name] = value
        return moved

    def _generate(self, batch: list[list[Turn]], sampling: Mapping[str, Any],
                  seeds: Sequence[int] | None) -> list[str]:
        import torch

        inputs = self._encode(batch)
        options = self.generation_options(sampling, seeds)
        options.setdefault("pad_token_id", self._tokenizer.pad_token_id)
        with torch.inference_mode():
            output = self._model.generate(**inputs, **options)
        # Left padding: every prompt ends at the same column.
        return self._processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    # ------------------------------------------------------------------ calls

    def complete_many(self, requests: list[list[Message]], **sampling: Any) -> list[str | BackendError]:
        conversations = [parse_messages(messages) for messages in requests]
        if not conversations:
            return []
        seed = self._sampling_seed(sampling)
        seeds = None if seed is None else [request_seed(seed, request_digest(messages)) for messages in requests]
        replies: list[str | BackendError | None] = [None] * len(requests)
        with self._lock:
            self._ensure_loaded()
            todo = []
            for index, turns in enumerate(conversations):
                if self._kind == "causal_lm" and any(not isinstance(p, str) for turn in turns for p in turn.parts):
                    replies[index] = BackendError(f"{self.checkpoint} is a text-only model (causal_lm): "
                                                  "it cannot read the image in this request")
                else:
                    todo.append(index)
            # Similar lengths together: less padding, and a batch's cost is its longest prompt.
            todo.sort(key=lambda i: sum(len(p) if isinstance(p, str) else 1024
                                        for turn in conversations[i] for p in turn.parts))
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                for index, reply in zip(chunk, self._run_chunk(chunk, conversations, sampling, seeds), strict=True):
                    replies[index] = reply
        return replies  # type: ignore[return-value]

    def _run_chunk(self, chunk: list[int], conversations: list[list[Turn]], sampling: Mapping[str, Any],
                   seeds: list[int] | None) -> list[str | BackendError]:
        """Replies for one batch (caller holds the lock); one by one if the batch fails."""
        try:
            texts = self._generate([conversations[i] for i in chunk], sampling,
                                   None if seeds is None else [seeds[i] for i in chunk])
        except Exception as exc:  # out of memory, a template that refuses the messages, ...
            if len(chunk) > 1:
                log.warning("%s: a batch of %d failed (%s: %s); generating its requests one by one",
                            self.checkpoint, len(chunk), type(exc).__name__, exc)
                return [reply for index in chunk
                        for reply in self._run_chunk([index], conversations, sampling, seeds)]
            return [BackendError(f"{self.checkpoint}: generation failed: {type(exc).__name__}: {exc}")]
        return [text if text.strip() else BackendError(f"{self.checkpoint}: the model generated no text")
                for text in texts]

    def close(self) -> None:
        with self._lock:
            on_gpu = self._model is not None and self.device.startswith("cuda")
            self._model = self._processor = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()
