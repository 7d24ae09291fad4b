"""The deterministic procedural scene generator: what objects a scene holds and
where they stand, drawn until every object is clearly visible.

Visibility is decided by ray casting (:mod:`harness.synthetic.render`), so a
layout depends on the renderer, and the scene records (:mod:`harness.synthetic.scene`)
depend on neither.
"""

from __future__ import annotations

import math

import numpy as np

from harness.synthetic.render import annotate_visibility
from harness.synthetic.scene import COLORS, SHAPES, Camera, Scene, SceneObject, make_object

NEAREST_Z, FARTHEST_Z = 1.5, 5.5  # object centres lie between these depths (metres)
FOOTPRINT_GAP = 0.15  # metres between footprint circles
MIN_VISIBLE_FRACTION = 0.6  # of an object's own silhouette left after occlusion
MIN_VISIBLE_PIXELS = 150
BORDER_PIXELS = 2  # every silhouette stays this far inside the image
LAYOUT_ATTEMPTS = 400


def _attribute_plan(rng: np.random.Generator) -> list[tuple[str, str]]:
    """(shape, colour) of each object. One group shares a colour, a shape or both,
    so that counting questions with answers 2, 3 and 4 exist, not only 0 and 1."""
    count = int(rng.integers(3, 8))
    colors, shapes = list(COLORS), list(SHAPES)
    kind = ("color", "shape", "both")[int(rng.integers(3))]
    group = min(count, int(rng.choice([1, 2, 3, 4], p=[0.1, 0.25, 0.3, 0.35])))
    color0, shape0 = colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))]
    plan = []
    for i in range(count):
        shape = shapes[int(rng.integers(len(shapes)))]
        color = colors[int(rng.integers(len(colors)))]
        if i < group:
            shape = shape0 if kind in ("shape", "both") else shape
            color = color0 if kind in ("color", "both") else color
        plan.append((shape, color))
    return [plan[i] for i in rng.permutation(count)]


def _sample_size(rng: np.random.Generator, shape: str) -> dict[str, float]:
    """Metric sizes; every object is at least 0.24 m tall, above the 0.15 m camera."""
    if shape == "cube":
        return {"side": float(rng.uniform(0.25, 0.6))}
    if shape == "sphere":
        return {"radius": float(rng.uniform(0.14, 0.3))}
    if shape == "cylinder":
        return {"radius": float(rng.uniform(0.1, 0.25)), "height": float(rng.uniform(0.25, 0.8))}
    return {"radius": float(rng.uniform(0.14, 0.3)), "height": float(rng.uniform(0.3, 0.8))}


def _frontal_area(obj: SceneObject) -> float:
    r = obj.radius or 0.0
    return {"cube": obj.width * obj.height, "sphere": math.pi * r * r,
            "cylinder": 2 * r * obj.height, "cone": r * obj.height}[obj.shape]


def _image_interval(obj: SceneObject, camera: Camera) -> tuple[float, float]:
    """A generous horizontal pixel interval covering the object's silhouette."""
    x, z, r = obj.center[0], obj.center[2], obj.footprint_radius
    f = camera.focal
    lo = min((x - r) / (z - r), (x - r) / (z + r))
    hi = max((x + r) / (z - r), (x + r) / (z + r))
    return camera.cx + f * lo, camera.cx + f * hi


def _fits(obj: SceneObject, placed: list[SceneObject], camera: Camera) -> bool:
    """Cheap checks before ray casting: in view, big enough, apart, and not hidden."""
    x, z, r = obj.center[0], obj.center[2], obj.footprint_radius
    top = camera.cy + camera.focal * (camera.elevation - obj.height) / (z - r)
    if top < BORDER_PIXELS + 2:
        return False
    if _frontal_area(obj) * (camera.focal / z) ** 2 < 1.5 * MIN_VISIBLE_PIXELS:
        return False
    lo, hi = _image_interval(obj, camera)
    for other in placed:
        if math.hypot(x - other.center[0], z - other.center[2]) < r + other.footprint_radius + FOOTPRINT_GAP:
            return False
        # The camera is low, so a nearer object hides whatever is behind it in the
        # same columns; keep most of each object's columns free of nearer ones.
        olo, ohi = _image_interval(other, camera)
        overlap = max(0.0, min(hi, ohi) - max(lo, olo))
        farther_width = (hi - lo) if z > other.center[2] else (ohi - olo)
        if overlap > 0.3 * farther_width:
            return False
    return True


def _place(rng: np.random.Generator, camera: Camera, plan: list[tuple[str, str]]) -> list[SceneObject] | None:
    half_tan = math.tan(math.radians(camera.hfov_deg) / 2)
    placed: list[SceneObject] = []
    for object_id, (shape, color) in enumerate(plan):
        for _ in range(60):
            size = _sample_size(rng, shape)
            z = float(rng.uniform(NEAREST_Z, FARTHEST_Z))
            probe = make_object(object_id, shape, color, 0.0, z, size, camera)
            r = probe.footprint_radius
            x_max = (z - r) * half_tan * 0.92 - r
            if x_max <= 0:
                continue
            obj = make_object(object_id, shape, color, float(rng.uniform(-x_max, x_max)), z, size, camera)
            if _fits(obj, placed, camera):
                placed.append(obj)
                break
        else:
            return None
    return placed


def _clearly_visible(objects: list[SceneObject], touches_border: list[bool]) -> bool:
    return all(o.visible_pixels >= MIN_VISIBLE_PIXELS and o.visible_fraction >= MIN_VISIBLE_FRACTION
               and not border for o, border in zip(objects, touches_border))


def generate_scene(seed: int, index: int, camera: Camera = Camera()) -> Scene:
    """Scene ``index`` of the benchmark with seed ``seed``: a pure function of both.

    Layouts are drawn until every object is clearly visible (ray cast, so
    occlusion is exact); a layout that keeps failing loses its last object.
    """
    rng = np.random.default_rng([seed, index])
    plan = _attribute_plan(rng)
    for attempt in range(LAYOUT_ATTEMPTS):
        if attempt and attempt % 40 == 0 and len(plan) > 3:
            plan = plan[:-1]
        objects = _place(rng, camera, plan)
        if objects is None:
            continue
        scene = Scene(seed, index, camera, objects)
        touches_border = annotate_visibility(scene)
        if _clearly_visible(objects, touches_border):
            return scene
    raise RuntimeError(f"no clearly visible layout for scene {index} (seed {seed})")
