"""Oracle vision tools: ``gd_detect``, ``depth`` and ``vqa`` answered from ground truth.

Arguments arrive checked and normalised by :mod:`harness.tools.api` (phrases
as a list, boxes and points as lists of floats); the image argument is the
caller's business.

They follow the same contract as the real tools (pixel boxes, metric camera
depth, short lowercase answers), so a program that is right with them is
right about the scene, and a wrong answer is a reasoning error, not a
grounding error. An optional seeded noise model (one knob, ``noise`` in
[0, 1]) degrades them the way real perception fails: jittered and missed
boxes, spurious detections, depth error, wrong attributes. The noise depends
only on (noise_seed, key, tool, arguments), so re-running gives the same
outputs, and with ``noise = 0`` nothing is drawn at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.synthetic.scene import COLORS, SHAPES, Scene, SceneObject
from harness.tools.api import probe_pixel

# ----------------------------------------------------------------------------- vocabulary

COLOR_WORDS: dict[str, str] = {c: c for c in COLORS} | {"violet": "purple"}
SHAPE_WORDS: dict[str, str] = {
    "cube": "cube", "block": "cube", "box": "cube", "cuboid": "cube",
    "sphere": "sphere", "ball": "sphere", "orb": "sphere",
    "cylinder": "cylinder", "pillar": "cylinder", "tube": "cylinder",
    "cone": "cone",
}
GENERIC_WORDS = {"object", "thing", "item", "shape", "solid"}
FILLER_WORDS = {"a", "an", "the", "any", "all", "some"}
_WORD = re.compile(r"[a-z]+")


def singular(word: str) -> str:
    """'boxes' -> 'box', 'spheres' -> 'sphere'; words we do not know stay as they are."""
    known = COLOR_WORDS.keys() | SHAPE_WORDS.keys() | GENERIC_WORDS
    if word in known:
        return word
    for suffix in ("es", "s"):
        if word.endswith(suffix) and word[: -len(suffix)] in known:
            return word[: -len(suffix)]
    return word


@dataclass(frozen=True)
class Phrase:
    """What a noun phrase asks for; None means any."""

    color: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (self.color is None or obj.color == self.color) and (self.shape is None or obj.shape == self.shape)


def parse_phrase(text: str) -> Phrase | None:
    """A detector phrase ("red cube", "balls", "red objects", "things"), or None
    when it holds a word the oracle cannot ground or asks for two colours or shapes."""
    colors, shapes = set(), set()
    words = [singular(w) for w in _WORD.findall(text.lower()) if w not in FILLER_WORDS]
    if not words:
        return None
    for word in words:
        if word in COLOR_WORDS:
            colors.add(COLOR_WORDS[word])
        elif word in SHAPE_WORDS:
            shapes.add(SHAPE_WORDS[word])
        elif word not in GENERIC_WORDS:
            return None
    if len(colors) > 1 or len(shapes) > 1:
        return None
    return Phrase(next(iter(colors), None), next(iter(shapes), None))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# Noise model: each effect at full strength (noise = 1); every one scales linearly.
MISS_RATE = 0.25  # chance a true detection is dropped
JITTER = 0.15  # box-corner standard deviation, relative to the box size
SPURIOUS_RATE = 0.3  # chance per phrase of one extra detection that is not the asked object
DEPTH_ERROR = 0.15  # standard deviation of the log depth error of one call
DEPTH_SCALE_ERROR = 0.1  # standard deviation of a per-image log scale error (monocular scale ambiguity)
VQA_ERROR_RATE = 0.3  # chance an answer names a wrong attribute


class OracleTools:
    """Ground-truth tools for one scene."""

    def __init__(self, scene: Scene | dict, depth_map: np.ndarray, image_size: tuple[int, int] | None = None,
                 noise: float = 0.0, noise_seed: int = 0, key: str = "") -> None:
        self.scene = scene if isinstance(scene, Scene) else Scene.from_dict(scene)
        self.depth_map = np.asarray(depth_map)
        self.width, self.height = image_size or (self.scene.camera.width, self.scene.camera.height)
        if self.depth_map.shape != (self.height, self.width):
            raise ValueError(f"depth map of shape {self.depth_map.shape} does not match the image size "
                             f"{self.width}x{self.height}")
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be a number in [0, 1], got {noise!r}")
        self.noise = float(noise)
        self.noise_seed = int(noise_seed)
        self.key = str(key)
        self._objects = [o for o in self.scene.objects if o.visible_box is not None]

    @classmethod
    def from_files(cls, scene_json: str | Path, depth_file: str | Path, **kwargs: Any) -> "OracleTools":
        scene = Scene.from_dict(json.loads(Path(scene_json).read_text(encoding="utf-8")))
        with np.load(depth_file) as data:
            depth_map = data["depth"]
        kwargs.setdefault("key", Path(scene_json).stem)
        return cls(scene, depth_map, **kwargs)

    # ------------------------------------------------------------------ noise

    def _rng(self, tool: str, *arguments: Any) -> np.random.Generator:
        blob = json.dumps([self.noise_seed, self.key, tool, arguments], sort_keys=True, default=repr)
        return np.random.default_rng(int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big"))

    # ------------------------------------------------------------------ gd_detect

    def gd_detect(self, phrases: list[str]) -> list[dict[str, Any]]:
        rng = self._rng("gd_detect", phrases) if self.noise > 0 else None
        detections = []
        for name in phrases:
            phrase = parse_phrase(name)
            if phrase is None:
                continue  # like a detector that finds nothing for a phrase it cannot ground
            matched = [o for o in self._objects if phrase.matches(o)]
            for obj in matched:
                box = [float(v) for v in obj.visible_box]
                score = 0.6 + 0.35 * obj.visible_fraction
                if rng is not None:
                    if rng.random() < MISS_RATE * self.noise:
                        continue
                    box = self._jitter(box, rng)
                    score -= abs(rng.normal(0.0, 0.15 * self.noise))
                detections.append({"box": box, "label": name, "score": round(min(max(score, 0.05), 0.99), 4)})
            if rng is not None and rng.random() < SPURIOUS_RATE * self.noise:
                others = [o for o in self._objects if o not in matched]
                detections.append({"box": self._spurious_box(others, rng), "label": name,
                                   "score": round(float(rng.uniform(0.3, 0.6)), 4)})
        detections.sort(key=lambda d: -d["score"])  # stable: ties keep scene order
        return detections

    def _jitter(self, box: list[float], rng: np.random.Generator) -> list[float]:
        w, h = box[2] - box[0], box[3] - box[1]
        x1, y1, x2, y2 = (v + rng.normal(0.0, JITTER * self.noise * s) for v, s in zip(box, (w, h, w, h)))
        x1, x2 = sorted((min(max(x1, 0.0), self.width - 1.0), min(max(x2, 1.0), float(self.width))))
        y1, y2 = sorted((min(max(y1, 0.0), self.height - 1.0), min(max(y2, 1.0), float(self.height))))
        return [round(x1, 2), round(y1, 2), round(max(x2, x1 + 1), 2), round(max(y2, y1 + 1), 2)]

    def _spurious_box(self, others: list[SceneObject], rng: np.random.Generator) -> list[float]:
        """A plausible wrong box: another object (a confusion) or an object-sized patch near the horizon."""
        if others and rng.random() < 0.5:
            return [float(v) for v in others[int(rng.integers(len(others)))].visible_box]
        h = float(rng.uniform(15, 60))
        w = h * float(rng.uniform(0.6, 1.4))
        bottom = self.height / 2 + float(rng.uniform(3, 30))
        cx = float(rng.uniform(w / 2, self.width - w / 2))
        return [round(cx - w / 2, 2), round(bottom - h, 2), round(cx + w / 2, 2), round(bottom, 2)]

    # ------------------------------------------------------------------ depth

    def depth(self, box_or_point: list[float]) -> float:
        values = box_or_point
        col, row = probe_pixel(values, self.width, self.height)
        value = float(self.depth_map[row, col])
        if self.noise > 0 and math.isfinite(value):
            scale = self._rng("depth-scale").normal(0.0, DEPTH_SCALE_ERROR * self.noise)
            value *= math.exp(scale + self._rng("depth", values).normal(0.0, DEPTH_ERROR * self.noise))
        return value

    # ------------------------------------------------------------------ vqa

    def vqa(self, box: list[float] | None, question: str) -> str:
        if box is None:
            answer = self._image_answer(question)
        else:
            answer = self._object_answer(self._object_in(box), question, box)
        if self.noise > 0:
            rng = self._rng("vqa", box, question)
            if rng.random() < VQA_ERROR_RATE * self.noise:
                answer = _wrong_answer(answer, rng)
        return answer

    def _object_in(self, box: list[float]) -> SceneObject | None:
        """The object whose visible box overlaps the asked box best."""
        best, best_iou = None, 0.0
        for obj in self._objects:
            iou = box_iou(box, obj.visible_box)
            if iou > best_iou:
                best, best_iou = obj, iou
        return best

    def _object_answer(self, obj: SceneObject | None, question: str, box: list[float] | None) -> str:
        q = _Question(question)
        if q.counting:
            inside = [o for o in self._objects if box is None or _centre_inside(o.visible_box, box)]
            return str(sum(q.phrase.matches(o) for o in inside))
        if obj is None:
            return "no" if q.yes_no else "nothing"
        if q.alternatives:
            for option in q.alternatives:
                if option in (obj.color, obj.shape):
                    return option
        if q.yes_no:
            return "yes" if q.phrase.matches(obj) else "no"
        if q.asks_color:
            return obj.color
        if q.asks_shape:
            return obj.shape
        return obj.name

    def _image_answer(self, question: str) -> str:
        q = _Question(question)
        matching = [o for o in self._objects if q.phrase.matches(o)]
        if q.counting:
            return str(len(matching))
        if q.existence:
            return "yes" if matching else "no"
        if not matching:
            return "no" if q.yes_no else "nothing"
        # The most visible matching object is what a VQA model would talk about.
        return self._object_answer(max(matching, key=lambda o: o.visible_pixels), question, None)


def _centre_inside(inner: Sequence[float], outer: Sequence[float]) -> bool:
    x, y = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= x <= outer[2] and outer[1] <= y <= outer[3]


_STOP = {"are", "is", "there", "in", "on", "can", "do", "does", "you", "of", "visible", "be", "to", "this",
         "that", "these", "those", "here", "shown", "see", "image", "picture", "box", "region"}
_YES_NO_START = {"is", "are", "does", "do", "can", "was", "were", "has", "have"}


class _Question:
    """The few things the rule-based VQA reads from a question (vqa is lenient:
    words it does not know are ignored, unlike detector phrases)."""

    def __init__(self, text: str) -> None:
        raw_words = _WORD.findall(text.lower())
        words = [singular(w) for w in raw_words]
        self.asks_color = "color" in words or "colour" in words
        self.asks_shape = "shape" in words or any(w in words for w in ("kind", "type"))
        self.counting = "how many" in " ".join(raw_words)
        self.existence = raw_words[:2] in (["is", "there"], ["are", "there"])
        self.yes_no = bool(raw_words) and raw_words[0] in _YES_NO_START
        scope = words
        if self.counting:
            start = " ".join(raw_words).split("how many", 1)[1].split()
            scope = []
            for word in start:
                if word in _STOP:
                    break
                scope.append(singular(word))
        colors = [COLOR_WORDS[w] for w in scope if w in COLOR_WORDS]
        shapes = [SHAPE_WORDS[w] for w in scope if w in SHAPE_WORDS and not (w == "box" and not self.counting)]
        # "Is it red or blue?" / "a cube or a sphere?" name alternatives, not a conjunction.
        self.alternatives: list[str] = []
        if "or" in words and (len(set(colors)) > 1 or len(set(shapes)) > 1):
            self.alternatives = list(dict.fromkeys(colors if len(set(colors)) > 1 else shapes))
        self.phrase = Phrase(colors[0] if len(set(colors)) == 1 else None,
                             shapes[0] if len(set(shapes)) == 1 else None)


def _wrong_answer(answer: str, rng: np.random.Generator) -> str:
    """A plausible wrong answer of the same kind."""
    def other(value: str, pool: Sequence[str]) -> str:
        choices = [p for p in pool if p != value]
        return choices[int(rng.integers(len(choices)))]

    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if answer.isdigit():
        n = int(answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    if answer in COLORS:
        return other(answer, list(COLORS))
    if answer in SHAPES:
        return other(answer, SHAPES)
    parts = answer.split()
    if len(parts) == 2 and parts[0] in COLORS and parts[1] in SHAPES:
        return f"{other(parts[0], list(COLORS))} {parts[1]}"
    return answer
