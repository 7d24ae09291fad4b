"""The tool server: real models behind the tool API, batched and cached.

One ``ModelBackend`` in the parent process answers the tool calls of every
running program (the sandbox forwards them). Models load once per process, on
first use. Concurrent detector and depth requests are gathered into batches
(``max_batch``, waiting at most ``max_wait_ms``). Every answer is cached on disk
(SQLite, one row per answer, so an interrupted run keeps what it computed and
runs share the file), keyed by the image's content hash, the tool, the
arguments and the model fingerprint: re-running an evaluation or an ablation
with the same programs makes no repeated model calls. VQA failures are never
cached; they reach the program as a ToolError.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from harness.backends import CHAT_BACKENDS
from harness.backends.base import model_weights
from harness.cache import ResponseCache, cache_key, default_cache_dir
from harness.devices import resolve_device
from harness.tools import ToolBackend, ToolContext
from harness.tools.batching import MicroBatcher
from harness.requirements import Gpu, Package, Requirement
from harness.tools.depth import DEFAULT_MOGE, DepthModel, DepthSettings, depth_at
from harness.tools.detector import DEFAULT_CHECKPOINT, DetectorSettings, GroundingDinoDetector

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _shared_detector(settings: DetectorSettings) -> GroundingDinoDetector:
    return GroundingDinoDetector(**settings.__dict__)


@functools.lru_cache(maxsize=None)
def _shared_depth(settings: DepthSettings) -> DepthModel:
    return DepthModel(**settings.__dict__)


def _nested(requirement: Requirement, prefix: tuple[str, ...]) -> Requirement:
    """A chat backend's requirement with its option paths under ``prefix`` (the ``vqa`` settings)."""
    option = getattr(requirement, "option", ())
    if not option:
        return requirement
    return dataclasses.replace(requirement, option=prefix + option,  # type: ignore[type-var]
                               revision_option=prefix + requirement.revision_option if requirement.revision_option
                               else ())


class ModelBackend(ToolBackend):
    """``tools: real`` in a system file; ``tool_options`` configure each model:

    ``detector`` (checkpoint, box_threshold, text_threshold, label_match, nms_iou),
    ``depth`` (backend moge|transformers, checkpoint, resolution_level),
    ``vqa`` (backend openai|transformers, model or checkpoint, base_url, ...),
    ``device`` (auto, cpu, cuda, cuda:1, ...), ``cache``, ``cache_dir``,
    ``max_batch``, ``max_wait_ms``, ``depth_max_batch`` (default: ``max_batch``
    on a GPU, 1 on the CPU, where a batched MoGe forward pass measured slower
    than the same images one by one).
    """

    @classmethod
    def requirements(cls, options: dict[str, Any], purpose: str) -> list[Requirement]:
        """torch and transformers; the detector's weights (a local copy of an original-format
        checkpoint converted by ``download``), and for one in the original format the architecture
        it converts into; MoGe and its weights; the VQA backend's needs; a GPU where asked for."""
        from harness.tools.vqa import DEFAULT_BACKEND_OPTIONS

        tools = 'pip install -e ".[tools]"'
        needed: list[Requirement] = [Package("torch", tools, purpose), Package("transformers", tools, purpose)]
        device = str(options.get("device", "auto"))
        if device != "cpu":
            needed.append(Gpu(purpose, required=device.startswith("cuda")))
        detector = options.get("detector") or {}
        checkpoint = detector.get("checkpoint", DEFAULT_CHECKPOINT)
        original = detector.get("original_config", DEFAULT_CHECKPOINT)
        needed += model_weights(checkpoint, f"{purpose}: gd_detect", ("detector", "checkpoint"),
                                detector.get("revision"), ("detector", "revision"), needs="config.json",
                                needs_fix="convert it: `python -m harness download --data-dir DIR` with the same "
                                          "system converts a downloaded original-format checkpoint in place")
        local = Path(str(checkpoint)).expanduser()
        converted = local.is_dir() and (local / "config.json").is_file()  # a transformers folder needs nothing else
        if checkpoint != original and not converted:  # an original-format checkpoint is converted into it
            needed += model_weights(original, f"{purpose}: gd_detect (the architecture of an original-format "
                                              f"checkpoint)", ("detector", "original_config"))
        depth = options.get("depth") or {}
        if depth.get("backend", "moge") == "moge":
            needed += [Package("moge", 'pip install -e ".[depth]" && pip install --no-deps -r '
                                       'requirements/moge-no-deps.txt', f"{purpose}: depth"),
                       Package("cv2", 'pip install -e ".[depth]"', f"{purpose}: depth")]
        needed += model_weights(depth.get("checkpoint", DEFAULT_MOGE), f"{purpose}: depth", ("depth", "checkpoint"),
                                depth.get("revision"), ("depth", "revision"))
        vqa = dict(options.get("vqa") or {})
        kind = vqa.pop("backend", "openai")
        vqa = {**DEFAULT_BACKEND_OPTIONS.get(kind, {}), **vqa}
        needed += [_nested(r, ("vqa",)) for r in CHAT_BACKENDS.get(kind).requirements(vqa, f"{purpose}: vqa")]
        return needed

    def __init__(self, device: str = "auto", detector: dict | None = None, depth: dict | None = None,
                 vqa: dict | None = None, cache: bool = True, cache_dir: str | None = None, max_batch: int = 8,
                 max_wait_ms: float = 10.0, depth_max_batch: int | None = None, depth_maps_in_memory: int = 32) -> None:
        self.detector = _shared_detector(DetectorSettings(**{"device": device, **(detector or {})}))
        self.depth_model = _shared_depth(DepthSettings(**{"device": device, **(depth or {})}))
        self._vqa_options = dict(vqa or {})
        self._vqa_tool = None
        self._cache = ResponseCache(Path(cache_dir or default_cache_dir()) / "tools.sqlite") if cache else None
        # A request's failure (e.g. a phrase too long to read) is returned in its place, not
        # raised, so the batcher hands it to that program alone.
        self._detect = MicroBatcher(functools.partial(self.detector.detect_batch, errors="return"), max_batch,
                                    max_wait_ms / 1000, "detector-batches")
        self._detect_caption = MicroBatcher(self._original_batch, max_batch, max_wait_ms / 1000, "caption-batches")
        if depth_max_batch is None:
            on_gpu = resolve_device(self.depth_model.settings.device).startswith("cuda")
            depth_max_batch = max_batch if on_gpu else 1
        self._depth = MicroBatcher(self._depth_batch, depth_max_batch, max_wait_ms / 1000, "depth-batches")
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._maps_limit = depth_maps_in_memory
        self._pending_maps: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.stats: Counter = Counter()

    # ------------------------------------------------------------------ caching

    def _cached(self, tool: str, context: ToolContext, arguments: Any, fingerprint: str,
                compute: Callable[[], Any]) -> Any:
        key = cache_key(tool, context.image_hash(), arguments, fingerprint) if self._cache is not None else None
        if key is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self.stats[f"{tool}_cache_hits"] += 1
                return hit
        result = compute()
        self.stats[f"{tool}_computed"] += 1
        if key is not None:
            self._cache.put(key, result)
        return result

    # ------------------------------------------------------------------ tools

    def gd_detect(self, context: ToolContext, phrases: list[str]) -> list[dict[str, Any]]:
        return self._cached("gd_detect", context, phrases, self.detector.fingerprint,
                            lambda: self._detect.submit((context.pil(), phrases)))

    def detect_caption(self, context: ToolContext, caption: str, box_threshold: float,
                       text_threshold: float) -> list[tuple[list[float], str]]:
        """The original GroundingDINO ``predict`` on the caption (the paper protocol's gd_detect)."""
        def compute() -> list[list[Any]]:
            found = self._detect_caption.submit((context.pil(), caption, box_threshold, text_threshold))
            return [[d["cxcywh"], d["phrase"]] for d in found]

        found = self._cached("gd_caption", context, [caption, box_threshold, text_threshold],
                             self.detector.fingerprint, compute)
        return [(box, phrase) for box, phrase in found]

    def _original_batch(self, items: Sequence[tuple[Image.Image, str, float, float]]) -> list[Any]:
        """Captions on images, one model pass per pair of thresholds (the paper's are always the same)."""
        results: list[Any] = [None] * len(items)
        for thresholds in dict.fromkeys((box, text) for _, _, box, text in items):
            chosen = [i for i, item in enumerate(items) if item[2:] == thresholds]
            found = self.detector.original_predictions([items[i][:2] for i in chosen], errors="return",
                                                       box_threshold=thresholds[0], text_threshold=thresholds[1])
            for i, result in zip(chosen, found):
                results[i] = result
        return results

    def depth(self, context: ToolContext, box_or_point: list[float]) -> float:
        return self._cached("depth", context, box_or_point, self.depth_model.fingerprint,
                            lambda: depth_at(self._depth_map(context), box_or_point))

    def vqa(self, context: ToolContext, box: list[float] | None, question: str) -> str:
        tool = self.vqa_tool
        return self._cached("vqa", context, [box, question], tool.fingerprint,
                            lambda: tool.answer(context.pil(), box, question))

    def ask_region(self, context: ToolContext, region: tuple[int, int, int, int] | None, text: str,
                   question: str) -> str:
        tool = self.vqa_tool
        image = context.pil()
        return self._cached("vqa_region", context, [list(region) if region else None, text], tool.fingerprint,
                            lambda: tool.ask(image.crop(region) if region else image, text))

    @property
    def vqa_tool(self):
        with self._lock:
            if self._vqa_tool is None:
                from harness.tools.vqa import VqaTool

                self._vqa_tool = VqaTool(**self._vqa_options)
            return self._vqa_tool

    # ------------------------------------------------------------------ depth maps, one per image

    def _depth_map(self, context: ToolContext) -> np.ndarray:
        """The image's depth map: from memory, from a computation already under way
        for another program on the same image, or computed now (batched)."""
        key = context.image_hash()
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
            pending = self._pending_maps.get(key)
            owner = pending is None
            if owner:
                pending = self._pending_maps[key] = Future()
        if not owner:
            return pending.result()
        try:
            depth_map = self._depth.submit(context.pil())
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._pending_maps.pop(key, None)
        with self._lock:
            self._maps[key] = depth_map
            while len(self._maps) > self._maps_limit:
                self._maps.popitem(last=False)
        pending.set_result(depth_map)
        return depth_map

    def _depth_batch(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        self.stats["depth_maps"] += len(images)
        return self.depth_model.depth_maps(images)

    # ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"backend": "real", "detector": self.detector.settings.__dict__,
                "depth": self.depth_model.settings.__dict__, "vqa": self._vqa_options}

    def close(self) -> None:
        self._detect.close()
        self._detect_caption.close()
        self._depth.close()
        if self._vqa_tool is not None:
            self._vqa_tool.close()
        if self._cache is not None:
            self._cache.close()
