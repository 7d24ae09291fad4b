"""The oracle tool backend: ground-truth tools for samples of the synthetic benchmark."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.synthetic.oracle import OracleTools
from harness.synthetic.scene import Scene
from harness.tools import ToolBackend, ToolContext


@functools.lru_cache(maxsize=64)
def load_scene(scene_json: str, depth_file: str) -> tuple[Scene, np.ndarray]:
    scene = Scene.from_dict(json.loads(Path(scene_json).read_text(encoding="utf-8")))
    with np.load(depth_file) as data:
        return scene, data["depth"]


def depth_file_for(scene_json: str) -> str:
    """The depth map stored beside a scene file (``3.json`` -> ``3.depth.npz``)."""
    path = Path(scene_json)
    return str(path.with_name(path.stem + ".depth.npz"))


class OracleBackend(ToolBackend):
    """Answers from the scene named by the sample (``meta["scene"]``, ``meta["depth"]``).

    ``noise`` in [0, 1] turns on the seeded grounding-noise model; the noise of
    a call depends on (noise_seed, sample, tool, arguments) only.
    """

    def __init__(self, noise: float = 0.0, noise_seed: int = 0) -> None:
        self.noise = float(noise)
        self.noise_seed = int(noise_seed)

    def oracle(self, context: ToolContext) -> OracleTools:
        meta = context.sample.meta if context.sample is not None else {}
        if not meta.get("scene"):
            raise ValueError("the oracle tools need the scene's ground truth; this sample has none "
                             "(only the synthetic benchmark has scenes; `harness exec` takes --scene)")
        scene, depth_map = load_scene(meta["scene"], meta.get("depth") or depth_file_for(meta["scene"]))
        return OracleTools(scene, depth_map, context.image_size, noise=self.noise, noise_seed=self.noise_seed,
                           key=context.key)

    def gd_detect(self, context: ToolContext, phrases: list[str]) -> list[dict[str, Any]]:
        return self.oracle(context).gd_detect(phrases)

    def depth(self, context: ToolContext, box_or_point: list[float]) -> float:
        return self.oracle(context).depth(box_or_point)

    def vqa(self, context: ToolContext, box: list[float] | None, question: str) -> str:
        return self.oracle(context).vqa(box, question)

    def describe(self) -> dict[str, Any]:
        return {"backend": "oracle", "noise": self.noise, "noise_seed": self.noise_seed}


class SceneOracleBackend(OracleBackend):
    """Oracle tools for one scene held in memory (while the benchmark is being generated)."""

    def __init__(self, tools: OracleTools) -> None:
        super().__init__(tools.noise, tools.noise_seed)
        self._tools = tools

    def oracle(self, context: ToolContext) -> OracleTools:
        return self._tools
