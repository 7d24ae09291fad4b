"""The tool server: real models behind the tool API, batched and cached.

One ``ModelBackend`` in the parent process answers the tool calls of every
running program (the sandbox forwards them). Models load once per process, on
first use. Concurrent detector and depth requests are gathered into batches per
model, each dispatched when it is full, when every program in flight waits on a
tool, or after ``max_wait_ms`` (:mod:`harness.tools.batching`); a batch never
changes a result (the detector and depth models put only requests of the same
shapes in one forward pass). Every answer is cached on disk
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
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
from PIL import Image

from harness.backends import CHAT_BACKENDS
from harness.backends.base import model_weights
from harness.cache import ResponseCache, cache_key, default_cache_dir
from harness.devices import resolve_device
from harness.tools import ToolBackend, ToolContext
from harness.tools.batching import MicroBatcher, Occupancy
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


def _device_name(device: str) -> str:
    """One name per device ("cuda" is "cuda:0"), so models on it take turns."""
    device = resolve_device(device)
    return "cuda:0" if device == "cuda" else device


class ModelBackend(ToolBackend):
    """``tools: real`` in a system file; ``tool_options`` configure each model:

    ``detector`` (checkpoint, box_threshold, text_threshold, label_match, nms_iou),
    ``depth`` (backend moge|transformers, checkpoint, resolution_level),
    ``vqa`` (backend openai|transformers, model or checkpoint, base_url, ...),
    ``device`` (auto, cpu, cuda, cuda:1, ...), ``cache``, ``cache_dir``,
    ``max_batch`` (requests per batch), ``max_wait_ms`` (the longest a request
    waits for others while some program in flight still computes),
    ``depth_max_batch`` (default ``max_batch``) and ``depth_pass_images``
    (images per depth forward pass; default: the whole batch on a GPU, 1 on the
    CPU, where a MoGe pass over several images measured slower per image than
    one pass each: its activations leave the caches).

    Programs run under :meth:`in_flight` let the batchers dispatch as soon as
    every one of them waits on a tool; ``ProgramSystem`` runs
    :meth:`programs_to_keep_busy` of them at once unless told otherwise.
    """

    @classmethod
    def programs_to_keep_busy(cls, options: dict[str, Any]) -> int | None:
        """Two batches' worth of programs: one batch forms while the other is computed."""
        batch = int(options.get("max_batch", 8))
        return 2 * max(batch, int(options.get("depth_max_batch") or batch))

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
                 max_wait_ms: float = 10.0, depth_max_batch: int | None = None, depth_pass_images: int | None = None,
                 depth_maps_in_memory: int = 32) -> None:
        self.detector = _shared_detector(DetectorSettings(**{"device": device, **(detector or {})}))
        self.depth_model = _shared_depth(DepthSettings(**{"device": device, **(depth or {})}))
        self._vqa_options = dict(vqa or {})
        self._vqa_tool = None
        self._cache = ResponseCache(Path(cache_dir or default_cache_dir()) / "tools.sqlite") if cache else None
        self.occupancy = Occupancy()
        # A request's failure (e.g. a phrase too long to read) is returned in its place, not
        # raised, so the batcher hands it to that program alone.
        # Models on one device take turns; each batcher knows its model's device without loading it.
        detector_device = _device_name(self.detector.settings.device)
        depth_device = _device_name(self.depth_model.settings.device)
        self._detect = MicroBatcher(functools.partial(self.detector.detect_batch, errors="return"), max_batch,
                                    max_wait_ms / 1000, "detector-batches", self.occupancy, detector_device)
        self._detect_caption = MicroBatcher(self._original_batch, max_batch, max_wait_ms / 1000, "caption-batches",
                                            self.occupancy, detector_device)
        depth_max_batch = depth_max_batch or max_batch
        if depth_pass_images is None:
            depth_pass_images = depth_max_batch if depth_device.startswith("cuda") else 1
        if depth_pass_images < 1:
            raise ValueError(f"depth_pass_images must be at least 1, got {depth_pass_images}")
        self._depth_pass_images = depth_pass_images
        self._depth = MicroBatcher(self._depth_batch, depth_max_batch, max_wait_ms / 1000, "depth-batches",
                                   self.occupancy, depth_device)
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

    def in_flight(self) -> ContextManager[None]:
        return self.occupancy.program()

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
        image = context.pil()

        def answer() -> str:
            with self.occupancy.blocked():  # a remote call: the program waits
                return tool.answer(image, box, question)

        return self._cached("vqa", context, [box, question], tool.fingerprint, answer)

    def ask_region(self, context: ToolContext, region: tuple[int, int, int, int] | None, text: str,
                   question: str) -> str:
        tool = self.vqa_tool
        image = context.pil()

        def ask() -> str:
            crop = image.crop(region) if region else image
            with self.occupancy.blocked():
                return tool.ask(crop, text)

        return self._cached("vqa_region", context, [list(region) if region else None, text], tool.fingerprint, ask)

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
            with self.occupancy.blocked():  # another program's request computes this map
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
        step = self._depth_pass_images
        maps: list[np.ndarray] = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            self.stats["depth_passes"] += len({image.size for image in chunk})  # one pass per size
            maps += self.depth_model.depth_maps(chunk)
        return maps

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
