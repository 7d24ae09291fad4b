"""Metric depth maps: MoGe-2 (the paper's choice) or a transformers depth model.

A depth map is computed once per image and kept per image (never one global map
reused for later images, the original code's bug). Reading it:

- at a box, the centre pixel; at a point, that pixel (clamped into the image);
- where the model has no valid depth there (MoGe masks sky and undefined
  regions as ``inf``; NaN and non-positive values are treated alike), the
  median of the valid depths in the box's central half (for a point, a
  5x5 window around it) is used instead;
- if nothing valid is found, ``float("inf")``, which programs can test with
  ``math.isinf``.
The result is always a Python float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from harness.tools.api import probe_pixel
from harness.tools.checkpoints import LazyModel


DEFAULT_MOGE = "Ruicheng/moge-2-vitl-normal"


def depth_at(depth_map: np.ndarray, box_or_point: Sequence[float]) -> float:
    """The depth the tool reports at a box or point (see the module docstring)."""
    height, width = depth_map.shape
    col, row = probe_pixel(box_or_point, width, height)
    value = float(depth_map[row, col])
    if math.isfinite(value) and value > 0:
        return value
    if len(box_or_point) == 4:
        x1, y1, x2, y2 = box_or_point
        qw, qh = (x2 - x1) / 4, (y2 - y1) / 4
        cols = slice(max(int(x1 + qw), 0), min(max(int(math.ceil(x2 - qw)), int(x1 + qw) + 1), width))
        rows = slice(max(int(y1 + qh), 0), min(max(int(math.ceil(y2 - qh)), int(y1 + qh) + 1), height))
    else:
        cols, rows = slice(max(col - 2, 0), col + 3), slice(max(row - 2, 0), row + 3)
    region = depth_map[rows, cols]
    valid = region[np.isfinite(region) & (region > 0)]
    return float(np.median(valid)) if valid.size else float("inf")


@dataclass(frozen=True)
class DepthSettings:
    backend: str = "moge"  # moge | transformers
    checkpoint: str = DEFAULT_MOGE
    revision: str | None = None
    device: str = "auto"
    resolution_level: int = 9  # MoGe's speed/detail trade-off (0-9)
    num_tokens: int | None = None  # MoGe: overrides resolution_level with an explicit token budget
    use_fp16: bool | None = None  # MoGe: None = on GPU only (CPU half precision is very slow)


class DepthModel(LazyModel):
    """Produces metric depth maps (metres, camera z) for batches of images."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(DepthSettings(**settings))
        if self.settings.backend not in ("moge", "transformers"):
            raise ValueError(f"depth backend must be 'moge' or 'transformers', got {self.settings.backend!r}")
        self._processor = None

    def _build(self) -> Any:
        s = self.settings
        if s.backend == "moge":
            from moge.model.v2 import MoGeModel

            kwargs = {"revision": s.revision} if s.revision else {}
            return MoGeModel.from_pretrained(s.checkpoint, **kwargs).to(self._device).eval()
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self._processor = AutoImageProcessor.from_pretrained(s.checkpoint, revision=s.revision, backend="pil")
        return AutoModelForDepthEstimation.from_pretrained(s.checkpoint, revision=s.revision).to(self._device).eval()

    def depth_maps(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One (height, width) float32 map per image, batched where sizes agree."""
        self._load()
        maps: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():
            group = [images[i] for i in indices]
            run = self._moge if self.settings.backend == "moge" else self._transformers
            for index, depth_map in zip(indices, run(group)):
                maps[index] = depth_map
        return maps  # type: ignore[return-value]

    def _moge(self, images: list[Image.Image]) -> list[np.ndarray]:
        import torch

        batch = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self._device)
        use_fp16 = self.settings.use_fp16 if self.settings.use_fp16 is not None else self._device.startswith("cuda")
        with torch.inference_mode():
            output = self._model.infer(tensor, num_tokens=self.settings.num_tokens,
                                       resolution_level=self.settings.resolution_level, use_fp16=use_fp16)
        depth = output["depth"].float().cpu().numpy()
        return [depth[i].astype(np.float32) for i in range(len(images))]

    def _transformers(self, images: list[Image.Image]) -> list[np.ndarray]:
        import torch

        inputs = self._processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self._model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        processed = self._processor.post_process_depth_estimation(outputs, target_sizes=sizes)
        return [p["predicted_depth"].float().cpu().numpy().astype(np.float32) for p in processed]
