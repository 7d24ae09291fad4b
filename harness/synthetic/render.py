"""A small numpy ray caster for the synthetic scenes.

One ray per pixel centre, all pixels at once. Primary rays are written as
d = ((u + 0.5 - cx) / f, (v + 0.5 - cy) / f, 1), so the hit parameter t *is*
the camera-frame depth z: the depth map needs no conversion. Intersections are
analytic (sphere, vertical cylinder with its top cap, cone with the apex up,
axis-aligned box, ground plane); the nearest hit wins, which is occlusion.
Shading is Lambert from one directional light plus ambient, with shadow rays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from harness.synthetic.scene import COLORS, Camera, Scene, SceneObject

EPS = 1e-6
SHADOW_OFFSET = 1e-4  # shadow rays start this far off the surface, so they do not hit it
# Towards the light: up, to the left and a little behind the camera, so fronts are lit
# and shadows fall to the right where the camera sees them.
LIGHT = np.array([-0.75, -0.9, -0.25]) / np.linalg.norm([-0.75, -0.9, -0.25])
AMBIENT, DIFFUSE = 0.38, 0.72
TILE = 0.5  # metres; a subtle checker on the ground so distance reads
GROUND = np.array([0.58, 0.56, 0.52])
SKY_HORIZON, SKY_ZENITH = np.array([0.82, 0.88, 0.95]), np.array([0.42, 0.60, 0.88])
FOG_DISTANCE = 45.0  # metres; far ground fades into the horizon colour

SIDE, CAP = 0, 1  # surface parts of cylinders (cones use SIDE only; boxes use the slab axis)


@dataclass
class Trace:
    """Nearest hit per pixel (flattened, row-major)."""

    t: np.ndarray  # camera depth z, inf where nothing is hit
    ids: np.ndarray  # object index, -1 for ground and sky
    parts: np.ndarray  # which surface of the object was hit
    full_pixels: list[int]  # pixels each object would cover if alone
    touches_border: list[bool]  # whether an object's own silhouette reaches the image border


@dataclass
class Rendering:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, camera z in metres, inf for sky
    ids: np.ndarray  # (H, W) int16, object index or -1


@lru_cache(maxsize=4)
def primary_directions(camera: Camera) -> np.ndarray:
    u = (np.arange(camera.width) + 0.5 - camera.cx) / camera.focal
    v = (np.arange(camera.height) + 0.5 - camera.cy) / camera.focal
    du, dv = np.meshgrid(u, v)
    dirs = np.stack([du.ravel(), dv.ravel(), np.ones(du.size)], axis=1)
    dirs.setflags(write=False)
    return dirs


# ----------------------------------------------------------------------------- intersections
# Each takes origins and directions that broadcast to (N, 3) and returns (t, part),
# t = inf where the ray misses.

def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    disc = b * b - 4 * a * c
    real = disc >= 0
    root = np.sqrt(np.where(real, disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (-b - root) / (2 * a), (-b + root) / (2 * a)
    lo, hi = np.fmin(t0, t1), np.fmax(t0, t1)
    lo = np.where(real & np.isfinite(lo), lo, np.inf)
    hi = np.where(real & np.isfinite(hi), hi, np.inf)
    return lo, hi


def _first_valid(candidates: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The smallest positive t among (t, valid, part) candidates."""
    best = np.full(np.shape(candidates[0][0]), np.inf)
    part = np.zeros(best.shape, dtype=np.int8)
    for t, valid, which in candidates:
        better = valid & (t > EPS) & (t < best)
        best = np.where(better, t, best)
        part = np.where(better, which, part)
    return best, part


def _sphere(obj: SceneObject, origin: np.ndarray, direction: np.ndarray):
    oc = origin - np.asarray(obj.center)
    a = np.sum(direction * direction, axis=-1)
    b = 2 * np.sum(direction * oc, axis=-1)
    c = np.sum(oc * oc, axis=-1) - obj.radius ** 2
    lo, hi = _quadratic_roots(a, b, c)
    return _first_valid([(lo, np.isfinite(lo), SIDE), (hi, np.isfinite(hi), SIDE)])


def _cylinder(obj: SceneObject, origin: np.ndarray, direction: np.ndarray, ground: float):
    xc, _, zc = obj.center
    top = ground - obj.height
    ox, oy, oz = origin[..., 0] - xc, origin[..., 1], origin[..., 2] - zc
    dx, dy, dz = direction[..., 0], direction[..., 1], direction[..., 2]
    lo, hi = _quadratic_roots(dx * dx + dz * dz, 2 * (ox * dx + oz * dz), ox * ox + oz * oz - obj.radius ** 2)

    def on_side(t):
        y = oy + t * dy
        return np.isfinite(t) & (y >= top) & (y <= ground)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (top - oy) / dy
    cap_x, cap_z = ox + t_cap * dx, oz + t_cap * dz
    on_cap = np.isfinite(t_cap) & (cap_x * cap_x + cap_z * cap_z <= obj.radius ** 2)
    return _first_valid([(lo, on_side(lo), SIDE), (hi, on_side(hi), SIDE), (t_cap, on_cap, CAP)])


def _cone(obj: SceneObject, origin: np.ndarray, direction: np.ndarray, ground: float):
    # Points with (x - xc)^2 + (z - zc)^2 = k (y - apex)^2 between the apex and the ground.
    xc, _, zc = obj.center
    apex = ground - obj.height
    k = (obj.radius / obj.height) ** 2
    ox, oy, oz = origin[..., 0] - xc, origin[..., 1] - apex, origin[..., 2] - zc
    dx, dy, dz = direction[..., 0], direction[..., 1], direction[..., 2]
    a = dx * dx + dz * dz - k * dy * dy
    b = 2 * (ox * dx + oz * dz - k * oy * dy)
    c = ox * ox + oz * oz - k * oy * oy
    lo, hi = _quadratic_roots(a, b, c)

    def on_side(t):
        y = oy + t * dy  # measured from the apex, downwards
        return np.isfinite(t) & (y >= 0) & (y <= obj.height)

    return _first_valid([(lo, on_side(lo), SIDE), (hi, on_side(hi), SIDE)])


def _box(obj: SceneObject, origin: np.ndarray, direction: np.ndarray):
    centre = np.asarray(obj.center)
    half = np.array([obj.width, obj.height, obj.depth]) / 2
    safe = np.where(direction == 0, 1e-12, direction)
    t1 = (centre - half - origin) / safe
    t2 = (centre + half - origin) / safe
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_enter, t_exit = near.max(axis=-1), far.min(axis=-1)
    axis = near.argmax(axis=-1).astype(np.int8)
    hit = (t_exit >= t_enter) & (t_exit > EPS)
    t = np.where(hit, np.where(t_enter > EPS, t_enter, t_exit), np.inf)
    return t, axis


def intersect(obj: SceneObject, origin: np.ndarray, direction: np.ndarray, ground: float):
    if obj.shape == "sphere":
        return _sphere(obj, origin, direction)
    if obj.shape == "cylinder":
        return _cylinder(obj, origin, direction, ground)
    if obj.shape == "cone":
        return _cone(obj, origin, direction, ground)
    return _box(obj, origin, direction)


def surface_normals(obj: SceneObject, points: np.ndarray, parts: np.ndarray, directions: np.ndarray,
                    ground: float) -> np.ndarray:
    """Unit outward normals at hit points on ``obj``."""
    centre = np.asarray(obj.center)
    if obj.shape == "sphere":
        normals = points - centre
    elif obj.shape == "cylinder":
        normals = points - centre
        normals[:, 1] = 0.0
        normals[parts == CAP] = (0.0, -1.0, 0.0)
    elif obj.shape == "cone":
        apex = ground - obj.height
        k = (obj.radius / obj.height) ** 2
        normals = np.stack([points[:, 0] - centre[0], -k * (points[:, 1] - apex), points[:, 2] - centre[2]], axis=1)
    else:
        normals = np.zeros_like(points)
        rows = np.arange(len(points))
        normals[rows, parts] = -np.sign(directions[rows, parts])
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- tracing and shading

def _corners(obj: SceneObject) -> np.ndarray:
    """The 8 corners of the object's axis-aligned bounding box."""
    centre = np.asarray(obj.center)
    half = np.array([obj.width, obj.height, obj.depth]) / 2
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return centre + signs * half


def pixel_window(obj: SceneObject, camera: Camera) -> tuple[int, int, int, int]:
    """Columns [c0, c1) and rows [r0, r1) that contain the object's silhouette.

    The projection of a convex body lies inside the hull of its bounding box's
    projected corners, so tracing only this window loses nothing.
    """
    corners = _corners(obj)
    u = camera.cx + camera.focal * corners[:, 0] / corners[:, 2]
    v = camera.cy + camera.focal * corners[:, 1] / corners[:, 2]
    c0, c1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 1, camera.width)
    r0, r1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 1, camera.height)
    return c0, max(c1, c0), r0, max(r1, r0)


def _window_indices(window: tuple[int, int, int, int], width: int) -> np.ndarray:
    c0, c1, r0, r1 = window
    return (np.arange(r0, r1)[:, None] * width + np.arange(c0, c1)[None, :]).ravel()


def trace(scene: Scene) -> Trace:
    camera, ground = scene.camera, scene.camera.elevation
    dirs = primary_directions(camera)
    origin = np.zeros(3)
    best = np.full(len(dirs), np.inf)
    ids = np.full(len(dirs), -1, dtype=np.int16)
    parts = np.zeros(len(dirs), dtype=np.int8)
    full, border = [], []
    margin = 2
    for index, obj in enumerate(scene.objects):
        window = pixel_window(obj, camera)
        pixels = _window_indices(window, camera.width)
        t, part = intersect(obj, origin, dirs[pixels], ground)
        mask = np.isfinite(t)
        full.append(int(mask.sum()))
        hit_rows, hit_cols = np.divmod(pixels[mask], camera.width)
        border.append(bool(hit_rows.size and (hit_rows.min() < margin or hit_cols.min() < margin
                                             or hit_rows.max() >= camera.height - margin
                                             or hit_cols.max() >= camera.width - margin)))
        closer = t < best[pixels]
        target = pixels[closer]
        best[target] = t[closer]
        ids[target] = index
        parts[target] = part[closer]
    # No object surface lies below the ground, so the ground only shows where no object was hit.
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 1] > 0, ground / dirs[:, 1], np.inf)
    best = np.where(ids < 0, t_ground, best)
    return Trace(best, ids, parts, full, border)


def visible_boxes(ids: np.ndarray, count: int) -> list[tuple[tuple[int, int, int, int] | None, int]]:
    """Per object: the bounding box of its pixels (edges: max index + 1) and its pixel count."""
    result = []
    for index in range(count):
        rows, cols = np.nonzero(ids == index)
        if rows.size == 0:
            result.append((None, 0))
            continue
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        result.append((box, int(rows.size)))
    return result


def annotate_visibility(scene: Scene, traced: Trace | None = None) -> list[bool]:
    """Fill each object's visible box and pixel counts; returns which ones touch the border."""
    traced = traced or trace(scene)
    grid = traced.ids.reshape(scene.camera.height, scene.camera.width)
    for obj, (box, pixels), full in zip(scene.objects, visible_boxes(grid, len(scene.objects)), traced.full_pixels):
        obj.visible_box, obj.visible_pixels, obj.full_pixels = box, pixels, full
    return traced.touches_border


def _shadow_bounds(obj: SceneObject, ground: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the volume the object shades: its box swept away from the light to the ground."""
    corners = _corners(obj)
    steps = (ground - corners[:, 1]) / -LIGHT[1]  # along -LIGHT, which points down
    swept = corners - steps[:, None] * LIGHT
    points = np.vstack([corners, swept])
    return points.min(axis=0) - 1e-3, points.max(axis=0) + 1e-3


def _shadowed(scene: Scene, points: np.ndarray) -> np.ndarray:
    """Whether the way from each point towards the light is blocked by an object.

    Only points inside an object's shadow bounds are traced against it.
    """
    blocked = np.zeros(len(points), dtype=bool)
    ground = scene.camera.elevation
    bounds = [_shadow_bounds(obj, ground) for obj in scene.objects]
    if not bounds:
        return blocked
    # One cheap cut first: most ground pixels lie beyond every shadow.
    reach = max(hi[2] for _, hi in bounds)
    near_all = np.nonzero(points[:, 2] <= reach)[0]
    x, y, z = (points[near_all, k] for k in range(3))
    for obj, (lo, hi) in zip(scene.objects, bounds):
        inside = ((x >= lo[0]) & (x <= hi[0]) & (z >= lo[2]) & (z <= hi[2]) & (y >= lo[1]) & (y <= hi[1]))
        near = near_all[inside]
        if near.size:
            t, _ = intersect(obj, points[near], LIGHT, ground)
            blocked[near[np.isfinite(t)]] = True
    return blocked


def _ground_albedo(points: np.ndarray) -> np.ndarray:
    tiles = (np.floor(points[:, 0] / TILE) + np.floor(points[:, 2] / TILE)) % 2
    # Tile contrast fades with distance, so far tiles do not alias into moire.
    contrast = 0.045 * np.exp(-points[:, 2] / 12.0)
    return GROUND[None, :] * (1 + contrast * (2 * tiles - 1))[:, None]


@lru_cache(maxsize=4)
def _sky(camera: Camera) -> np.ndarray:
    rows = np.repeat(np.arange(camera.height) + 0.5, camera.width)
    up = np.clip((camera.cy - rows) / camera.cy, 0.0, 1.0)[:, None]
    sky = SKY_HORIZON * (1 - up) + SKY_ZENITH * up
    sky.setflags(write=False)
    return sky


def render(scene: Scene) -> Rendering:
    camera, ground = scene.camera, scene.camera.elevation
    traced = trace(scene)
    annotate_visibility(scene, traced)
    dirs = primary_directions(camera)
    t, ids = traced.t, traced.ids
    hit = np.nonzero(np.isfinite(t))[0]  # shading works on hit pixels only; the rest is sky
    hit_ids = ids[hit]
    points = dirs[hit] * t[hit, None]

    normals = np.empty_like(points)
    albedo = np.empty_like(points)
    on_ground = hit_ids < 0
    normals[on_ground] = (0.0, -1.0, 0.0)
    albedo[on_ground] = _ground_albedo(points[on_ground])
    for index, obj in enumerate(scene.objects):
        mask = hit_ids == index
        if mask.any():
            normals[mask] = surface_normals(obj, points[mask], traced.parts[hit[mask]], dirs[hit[mask]], ground)
            albedo[mask] = COLORS[obj.color]

    lambert = np.clip(normals @ LIGHT, 0.0, None)
    lit = np.nonzero(lambert > 0)[0]
    shadow = _shadowed(scene, points[lit] + SHADOW_OFFSET * normals[lit])
    lambert[lit[shadow]] = 0.0
    shaded = albedo * (AMBIENT + DIFFUSE * lambert)[:, None]
    fog = (1 - np.exp(-t[hit][on_ground] / FOG_DISTANCE))[:, None]
    shaded[on_ground] = shaded[on_ground] * (1 - fog) + SKY_HORIZON * fog

    colour = _sky(camera).copy()
    colour[hit] = shaded
    shape = (camera.height, camera.width)
    rgb = np.round(np.clip(colour, 0.0, 1.0) * 255).astype(np.uint8).reshape(*shape, 3)
    return Rendering(rgb=rgb, depth=t.astype(np.float32).reshape(shape), ids=ids.reshape(shape))
