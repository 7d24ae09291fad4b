"""Scene records: the camera, the objects and their geometry.

Everything is in OpenCV camera coordinates: x right, y down, z forward, the
camera at the origin with its optical axis horizontal (pitch 0). The ground is
the plane y = +elevation (0.15 m), so the camera sits low and every object's
top (at least 0.22 m tall) is above it. With that camera the front of a cube or
a cylinder projects to a box whose pixel height times the depth at its centre,
over the focal length, is its true height: the "3D = 2D x depth" rule of the
paper's programs is exact for those shapes, which the size questions rely on.

The generator that lays scenes out is :mod:`harness.synthetic.layout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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
