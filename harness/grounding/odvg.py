"""Reading pseudo-labels in ODVG detection format, the files the detector trains on.

One JSON object per line and image::

    {"filename": "images/vsr_train/000000123.jpg", "height": 480, "width": 640, "source": "vsr_train",
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 3, "category": "red mug"}, ...]}}

Boxes are absolute pixels (xyxy) of the stored image; ``label`` indexes the
``label_map.json`` beside the file (``{"0": "chair", ...}``) when there is one,
and ``category`` is the phrase. Image paths are relative to the file's folder.
A line without ``source`` takes the file's name (``vsr.odvg.jsonl`` -> ``vsr``).
Every problem is an :class:`OdvgError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from harness.jsonl import json_objects

log = logging.getLogger(__name__)

ODVG_FILE = "labels.odvg.jsonl"
LABEL_MAP_FILE = "label_map.json"
# Boxes from a detector may overshoot the image by rounding; more than this is an error.
EDGE_TOLERANCE_PX = 0.5


class OdvgError(ValueError):
    """A pseudo-label file that cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class OdvgBox:
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    category: str  # the phrase, lower-cased and whitespace-normalised
    label: int | None = None  # its index in the file's label map


@dataclass(frozen=True)
class OdvgImage:
    path: Path
    width: int
    height: int
    source: str
    boxes: tuple[OdvgBox, ...]
    origin: str  # "file:line", for messages

    @property
    def categories(self) -> list[str]:
        """The image's phrases, each once, in the order of first appearance."""
        return list(dict.fromkeys(box.category for box in self.boxes))


@dataclass
class OdvgDataset:
    images: list[OdvgImage]
    phrases: list[str]  # every phrase of the label maps and the boxes, sorted: the pool of negatives
    files: list[str] = field(default_factory=list)

    def sources(self) -> dict[str, list[int]]:
        """Image indices per source, sources sorted by name."""
        out: dict[str, list[int]] = {}
        for index, image in enumerate(self.images):
            out.setdefault(image.source, []).append(index)
        return dict(sorted(out.items()))

    def counts(self) -> dict[str, dict[str, int]]:
        return {source: {"images": len(indices), "boxes": sum(len(self.images[i].boxes) for i in indices)}
                for source, indices in self.sources().items()}

    def subset(self, amount: int | float | None, seed: int) -> "OdvgDataset":
        """``amount`` images (an int) or that share of them (a float in (0, 1]), drawn with a seeded
        permutation, so that with one seed a smaller subset lies inside every larger one."""
        if amount is None:
            return self
        count = subset_size(amount, len(self.images))
        order = np.random.default_rng(seed).permutation(len(self.images))
        return OdvgDataset([self.images[i] for i in sorted(order[:count].tolist())], self.phrases, self.files)


def subset_size(amount: int | float, total: int) -> int:
    """An int is a count (at most ``total``), a float in (0, 1] a share of ``total`` (rounded up)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
        raise ValueError(f"a subset is a count (an int >= 1) or a share (a float in (0, 1]), got {amount!r}")
    if isinstance(amount, float):
        if amount > 1:
            raise ValueError(f"a share of the images must be at most 1.0, got {amount}; write counts as integers")
        return max(1, int(np.ceil(amount * total - 1e-9)))
    return min(amount, total)


def odvg_path(path: str | Path) -> Path:
    """A pseudo-label folder stands for its ``labels.odvg.jsonl``."""
    path = Path(path)
    return path / ODVG_FILE if path.is_dir() else path


def source_from_name(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl", ".odvg"):
        name = name.removesuffix(suffix)
    return name


def read_label_map(path: Path) -> dict[int, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OdvgError(f"{path}: not a readable label map ({exc})") from None
    if not isinstance(raw, dict):
        raise OdvgError(f"{path}: a label map is an object {{\"0\": \"phrase\", ...}}")
    out: dict[int, str] = {}
    for key, phrase in raw.items():
        if not str(key).isdigit() or not isinstance(phrase, str) or not phrase.strip():
            raise OdvgError(f"{path}: entry {key!r}: {phrase!r} is not an integer id and a phrase")
        out[int(key)] = normalise(phrase)
    return out


def normalise(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _read_box(raw: Any, where: str, width: int, height: int, label_map: dict[int, str] | None) -> OdvgBox:
    if not isinstance(raw, dict):
        raise OdvgError(f"{where}: an instance must be an object, got {raw!r}")
    bbox = raw.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        raise OdvgError(f"{where}: field 'bbox' must be [x1, y1, x2, y2] in pixels, got {bbox!r}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not (x1 < x2 and y1 < y2):
        raise OdvgError(f"{where}: field 'bbox' {bbox} is empty (x1 < x2 and y1 < y2 are required)")
    t = EDGE_TOLERANCE_PX
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise OdvgError(f"{where}: field 'bbox' {bbox} lies outside the {width}x{height} image")
    label = raw.get("label")
    if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
        raise OdvgError(f"{where}: field 'label' must be an integer, got {label!r}")
    category = raw.get("category")
    if label_map is not None and label is not None:
        if label not in label_map:
            raise OdvgError(f"{where}: field 'label' {label} is not in the label map ({len(label_map)} labels)")
        if category is None:
            category = label_map[label]
        elif normalise(str(category)) != label_map[label]:
            raise OdvgError(f"{where}: field 'category' {category!r} differs from label {label} of the label map "
                            f"({label_map[label]!r})")
    if not isinstance(category, str) or not category.strip():
        raise OdvgError(f"{where}: field 'category' (the phrase) is missing" +
                        ("" if label_map is None else " and 'label' names none"))
    return OdvgBox((max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)),
                   normalise(category), label)


def _read_line(entry: dict[str, Any], where: str, folder: Path, default_source: str,
               label_map: dict[int, str] | None, check_images: bool) -> OdvgImage:
    if "detection" not in entry:
        raise OdvgError(f"{where}: field 'detection' is missing (only detection-style ODVG lines are read)")
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise OdvgError(f"{where}: field 'filename' is missing")
    path = folder / filename
    if not path.is_file():
        raise OdvgError(f"{where}: field 'filename': image {path} does not exist")
    width, height = entry.get("width"), entry.get("height")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise OdvgError(f"{where}: field {name!r} must be a positive integer, got {value!r}")
    if check_images:
        try:
            with Image.open(path) as image:
                actual = image.size
        except OSError as exc:
            raise OdvgError(f"{where}: field 'filename': image {path} cannot be read ({exc})") from None
        if actual != (width, height):
            raise OdvgError(f"{where}: fields 'width', 'height' say {width}x{height}, but {path} is "
                            f"{actual[0]}x{actual[1]}")
    instances = (entry["detection"] or {}).get("instances") if isinstance(entry["detection"], dict) else None
    if not isinstance(instances, list):
        raise OdvgError(f"{where}: field 'detection.instances' must be a list")
    boxes = tuple(_read_box(raw, f"{where}: detection.instances[{i}]", width, height, label_map)
                  for i, raw in enumerate(instances))
    source = entry.get("source", default_source)
    if not isinstance(source, str) or not source:
        raise OdvgError(f"{where}: field 'source' must be a non-empty string, got {source!r}")
    return OdvgImage(path, width, height, source, boxes, where)


def read_odvg(paths: str | Path | Sequence[str | Path], check_images: bool = True) -> OdvgDataset:
    """Every image with at least one box of one or several ODVG files (or pseudo-label folders).
    ``check_images`` opens each image's header to compare its size with the line's."""
    files = [odvg_path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not files:
        raise OdvgError("no ODVG file given")
    images: list[OdvgImage] = []
    phrases: set[str] = set()
    for path in files:
        if not path.is_file():
            raise OdvgError(f"ODVG file {path} does not exist")
        map_file = path.parent / LABEL_MAP_FILE
        label_map = read_label_map(map_file) if map_file.is_file() else None
        phrases.update(label_map.values() if label_map else ())
        empty = 0
        for number, entry in json_objects(path, OdvgError):
            image = _read_line(entry, f"{path}:{number}", path.parent, source_from_name(path), label_map, check_images)
            if not image.boxes:
                empty += 1
                continue
            phrases.update(image.categories)
            images.append(image)
        if empty:
            log.info("%s: %d images without boxes left out", path, empty)
    if not images:
        raise OdvgError(f"no image with a box in {', '.join(map(str, files))}")
    return OdvgDataset(images, sorted(phrases), [str(f) for f in files])

