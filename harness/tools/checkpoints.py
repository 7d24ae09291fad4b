"""What the model-backed tools share: device choice, fingerprints, loading once; and the
folders that trained checkpoints of every recipe become before a backend loads them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.devices import resolve_device

log = logging.getLogger(__name__)


def checkpoint_fingerprint(checkpoint: str, revision: str | None, settings: dict[str, Any]) -> str:
    """Identifies a model and its settings without loading it. A local checkpoint
    adds its files' names, sizes and modification times; a hub checkpoint is
    identified by its name and ``revision`` (pin one for caches that must never
    outlive a change on the hub)."""
    parts: dict[str, Any] = {"checkpoint": checkpoint, "revision": revision, "settings": settings}
    path = Path(checkpoint)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts["files"] = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                          for p in files]
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class LazyModel:
    """A model built from frozen settings (with ``checkpoint``, ``revision`` and
    ``device``), loaded once, on first use, whichever thread asks first."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._model: Any = None
        self._device: str | None = None
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Computed once: a tool server asks for it on every call, and a local checkpoint's
        fingerprint walks its folder. Once per process is also what it identifies: the
        model loads once, so files changed later are not the weights that answer."""
        if self._fingerprint is None:
            settings = asdict(self.settings)
            for key in ("checkpoint", "revision", "device"):  # identified separately, or not affecting answers
                settings.pop(key)
            self._fingerprint = checkpoint_fingerprint(self.settings.checkpoint, self.settings.revision,
                                                       {type(self).__name__: settings})
        return self._fingerprint

    def _load(self) -> None:
        with self._lock:
            if self._model is None:
                self._device = resolve_device(self.settings.device)
                log.info("loading %s %s on %s", type(self).__name__, self.settings.checkpoint, self._device)
                self._model = self._build()

    def _build(self) -> Any:
        """Load and return the model (on ``self._device``)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- trained language models

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_VERL_MARKER = "latest_checkpointed_iteration.txt"


class CheckpointError(ValueError):
    """A local folder that is no model checkpoint we can evaluate; the message says what to do."""


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(any(folder.glob(pattern)) for pattern in _WEIGHTS)


def _verl_actor(folder: Path) -> Path | None:
    """The actor folder of a verl checkpoint given as its root (newest step), a ``global_step_N``
    folder or the ``actor`` folder itself; None when ``folder`` is none of these."""
    if (folder / _VERL_MARKER).is_file():
        step = (folder / _VERL_MARKER).read_text(encoding="utf-8").strip()
        folder = folder / f"global_step_{step}"
    if folder.name.startswith("global_step_") and (folder / "actor").is_dir():
        folder = folder / "actor"
    if folder.name == "actor" and folder.parent.name.startswith("global_step_"):
        return folder
    return None


def local_model(path: str) -> str:
    """A folder that ``from_pretrained`` and vLLM load, for any checkpoint a training recipe
    writes: a model folder as it is (TRL's ``output_dir`` or ``checkpoint-N``, a merged verl
    model), a LoRA adapter folder (PEFT's ``adapter_config.json``: merged into its base model
    once, into the cache), or a verl checkpoint (its root, ``global_step_N`` or ``actor``: the
    Hugging Face copy verl saved beside it, its LoRA adapter merged, or its FSDP shards merged
    with verl's model merger, once, into the cache). A hub id is returned as it is."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if folder.exists() or path.startswith((".", "/", "~")):
            raise CheckpointError(f"{path} is not a model folder")
        return path  # a hub id
    if _has_weights(folder):
        return str(folder)
    if (folder / "adapter_config.json").is_file():
        return _merged_adapter(folder)
    actor = _verl_actor(folder)
    if actor is not None:
        if _has_weights(actor / "huggingface"):
            return str(actor / "huggingface")
        if (actor / "lora_adapter" / "adapter_config.json").is_file():
            return _merged_adapter(actor / "lora_adapter", tokenizer_from=actor / "huggingface")
        return _merged_verl(actor)
    raise CheckpointError(f"{path} holds no model: expected a model folder (config.json and weights), a LoRA "
                          f"adapter (adapter_config.json) or a verl checkpoint (global_step_N/actor)")


def _cache_folder(kind: str, source: Path) -> Path:
    from harness.cache import default_cache_dir

    key = checkpoint_fingerprint(str(source.resolve()), None, {"kind": kind})
    return default_cache_dir() / "merged-models" / f"{source.name}-{key}"


def _merged_adapter(adapter: Path, tokenizer_from: Path | None = None) -> str:
    """The adapter merged into its base model (``base_model_name_or_path``), saved once with
    the adapter's tokenizer (or ``tokenizer_from``'s, or the base's)."""
    out = _cache_folder("lora", adapter)
    if _has_weights(out):
        return str(out)
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise CheckpointError(f"{adapter} is a LoRA adapter; merging it needs peft: pip install -e \".[train]\"") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_name = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base_name:
        raise CheckpointError(f"{adapter}/adapter_config.json names no base_model_name_or_path")
    log.info("merging the LoRA adapter %s into %s -> %s", adapter, base_name, out)
    base = AutoModelForCausalLM.from_pretrained(base_name, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer_source = next((str(p) for p in (adapter, tokenizer_from) if p is not None
                             and (p / "tokenizer_config.json").is_file()), base_name)
    partial = out.with_name(out.name + f".part{os.getpid()}")
    merged.save_pretrained(partial)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(partial)
    partial.replace(out) if not out.exists() else shutil.rmtree(partial)
    return str(out)


def _merged_verl(actor: Path) -> str:
    """verl's FSDP shards merged into a model folder with verl's own merger, once."""
    import importlib.util
    import subprocess
    import sys

    out = _cache_folder("verl", actor)
    if _has_weights(out):
        return str(out)
    if importlib.util.find_spec("verl") is None:
        raise CheckpointError(f"{actor} is a verl FSDP checkpoint: merge it where verl is installed "
                              f"(bash recipes/reasoning_grpo_verl/merge.sh CHECKPOINT_DIR TARGET_DIR) and "
                              f"evaluate TARGET_DIR")
    partial = out.with_name(out.name + f".part{os.getpid()}")
    log.info("merging the verl checkpoint %s -> %s", actor, out)
    subprocess.run([sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir",
                    str(actor), "--target_dir", str(partial)], check=True)
    partial.replace(out) if not out.exists() else shutil.rmtree(partial)
    return str(out)


# vLLM's engine options, which the transformers backend does not take.
_VLLM_ONLY = ("gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "engine_options", "image_format",
              "use_model_defaults", "use_tqdm")


def backend_options(kind: str, options: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """A chat backend's options as the backend takes them: for ``transformers``, ``model``
    names the ``checkpoint`` and vLLM's engine options (inherited from a vLLM system file)
    are dropped, so one ``--system-args`` switches a system between the two backends."""
    options = dict(options)
    if kind == "transformers":
        if "model" in options:
            if options.get("checkpoint") not in (None, options["model"]):
                raise CheckpointError("llm.model and llm.checkpoint name two models; give one")
            options["checkpoint"] = options.pop("model")
        dropped = [name for name in _VLLM_ONLY if options.pop(name, None) is not None]
        if dropped and not quiet:
            log.info("transformers backend: vLLM-only settings ignored: %s", ", ".join(dropped))
    return options


def chat_model_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """A chat backend's options (:func:`backend_options`) with its model made loadable (:func:`local_model`)."""
    options = backend_options(kind, options)
    key = "checkpoint" if kind == "transformers" else "model"
    if kind in ("transformers", "vllm") and isinstance(options.get(key), str):
        options[key] = local_model(options[key])
    return options
