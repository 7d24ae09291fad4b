"""Scene records and the deterministic procedural scene generator.

Everything is in OpenCV camera coordinates: x right, y down, z forward, the
camera at the origin with its optical axis horizontal (pitch 0). The ground is
the plane y = +elevation (0.15 m), so the camera sits low and every object's
top (at least 0.22 m tall) is above it. With that camera the front of a cube or
a cylinder projects to a box whose pixel height times the depth at its centre,
over the focal length, is its true height: the "3D = 2D x depth" rule of the
paper's programs is exact for those shapes, which the size questions rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHAPES = ("cube", "sphere", "cylinder", "cone")
# Albedos far apart in hue, so every colour stays recognisable under shading.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.15, 0.68, 0.22),
    "blue": (0.14, 0.30, 0.92),
    "yellow": (0.95, 0.85, 0.12),
    "purple": (0.55, 0.20, 0.75),
    "orange": (0.98, 0.50, 0.08),
}

NEAREST_Z, FARTHEST_Z = 1.5, 5.5  # object centres lie between these depths (metres)
FOOTPRINT_GAP = 0.15  # metres between footprint circles
MIN_VISIBLE_FRACTION = 0.6  # of an object's own silhouette left after occlusion
MIN_VISIBLE_PIXELS = 150
BORDER_PIXELS = 2  # every silhouette stays this far inside the image
LAYOUT_ATTEMPTS = 400


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with square pixels and the principal point at the image centre."""

    width: int = 320
    height: int = 240
    hfov_deg: float = 55.0
    elevation: float = 0.15  # metres above the ground; the ground plane is y = +elevation

    @property
    def focal(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)

    @property
    def cx(self) -> float:
        return self.width / 2

    @property
    def cy(self) -> float:
        return self.height / 2

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """Continuous pixel coordinates (pixel centres sit at half-integers)."""
        return self.cx + self.focal * x / z, self.cy + self.focal * y / z

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "fx": self.focal, "fy": self.focal,
                "cx": self.cx, "cy": self.cy, "hfov_deg": self.hfov_deg, "pitch_deg": 0.0,
                "height_above_ground": self.elevation, "ground_plane": f"y = {self.elevation}",
                "coordinates": "OpenCV camera frame: x right, y down, z forward, metres"}


@dataclass
class SceneObject:
    """One primitive resting on the ground. Cubes are axis-aligned to the camera."""

    id: int
    shape: str
    color: str
    center: tuple[float, float, float]  # centre of the solid, camera coordinates
    width: float  # extent along x
    height: float  # extent along y
    depth: float  # extent along z
    radius: float | None = None  # spheres, cylinders and cones
    # Filled by the renderer: the occlusion-aware 2D box [x1, y1, x2, y2] in pixel
    # edges, the visible pixel count, and the pixels the object would cover alone.
    visible_box: tuple[int, int, int, int] | None = None
    visible_pixels: int = 0
    full_pixels: int = 0

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def footprint_radius(self) -> float:
        """Radius of the circle on the ground that contains the object."""
        return self.radius if self.radius is not None else math.hypot(self.width, self.depth) / 2

    @property
    def nearest_z(self) -> float:
        """Camera depth of the object's nearest surface point."""
        return self.center[2] - self.depth / 2

    @property
    def distance(self) -> float:
        """Euclidean distance from the camera to the object's centre."""
        return math.sqrt(sum(c * c for c in self.center))

    @property
    def visible_fraction(self) -> float:
        return self.visible_pixels / self.full_pixels if self.full_pixels else 0.0

    def dimensions(self) -> dict[str, float]:
        dims = {"width": self.width, "height": self.height, "depth": self.depth}
        if self.radius is not None:
            dims["radius"] = self.radius
        return dims

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "shape": self.shape, "color": self.color, "name": self.name,
                "center": list(self.center), "dimensions": self.dimensions(),
                "visible_box": list(self.visible_box) if self.visible_box else None,
                "visible_pixels": self.visible_pixels, "full_pixels": self.full_pixels,
                "visible_fraction": round(self.visible_fraction, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SceneObject":
        dims = data["dimensions"]
        box = data.get("visible_box")
        return cls(id=int(data["id"]), shape=data["shape"], color=data["color"],
                   center=tuple(float(c) for c in data["center"]), width=float(dims["width"]),
                   height=float(dims["height"]), depth=float(dims["depth"]),
                   radius=float(dims["radius"]) if "radius" in dims else None,
                   visible_box=tuple(int(b) for b in box) if box else None,
                   visible_pixels=int(data.get("visible_pixels", 0)), full_pixels=int(data.get("full_pixels", 0)))


@dataclass
class Scene:
    seed: int
    index: int
    camera: Camera
    objects: list[SceneObject] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "index": self.index, "camera": self.camera.to_dict(),
                "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        cam = data["camera"]
        camera = Camera(width=int(cam["width"]), height=int(cam["height"]), hfov_deg=float(cam["hfov_deg"]),
                        elevation=float(cam["height_above_ground"]))
        return cls(int(data["seed"]), int(data["index"]), camera,
                   [SceneObject.from_dict(o) for o in data["objects"]])


def make_object(object_id: int, shape: str, color: str, x: float, z: float, size: dict[str, float],
                camera: Camera) -> SceneObject:
    """An object standing on the ground at (x, z) with the given size parameters."""
    ground = camera.elevation
    if shape == "cube":
        side = size["side"]
        return SceneObject(object_id, shape, color, (x, ground - side / 2, z), side, side, side)
    radius = size["radius"]
    height = 2 * radius if shape == "sphere" else size["height"]
    return SceneObject(object_id, shape, color, (x, ground - height / 2, z), 2 * radius, height, 2 * radius,
                       radius=radius)


# ----------------------------------------------------------------------------- sampling

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
    from harness.synthetic.render import annotate_visibility  # render depends on this module

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

