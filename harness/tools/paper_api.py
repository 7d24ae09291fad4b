"""The tool API as the original VALOR evaluation showed it to programs (the paper protocol).

Programs written for the original call ``gd_detect(img_pth, prompt)``,
``vqa(img_pth, box=None, prompt="", fmt="xyxy", pad=0.25)`` and
``depth(img_pth, bbox)``, and read ``det["bbox"]`` and ``det["label"]``. This
module is the second face of the one checked call layer: it binds a call to
those signatures, turns it into a request to the same backends that serve our
own API (:mod:`harness.tools.api`), and shapes the answer as the original did:

- ``gd_detect``: each comma-separated part stripped, its spaces turned into
  "-", the parts joined with " . " into the detector's caption; boxes at box
  threshold 0.35 and text threshold 0.25; a box's corners rounded to three
  decimals in normalised coordinates, scaled by the image size, truncated to
  integers and clipped to ``W-1``/``H-1``; its label the detector's decoded
  phrase with " - " read as " " (a single-word phrase in the prompt's own case).
  The original returned *every* box as soon as one box's phrase named a prompt
  part; ``label_filter="original"`` keeps that, the default keeps only the
  boxes whose phrase names a prompt part.
- ``vqa``: the box read with ``int()``, corners ordered and clamped to the
  image; a box with no area left means the whole image; the crop padded by
  ``pad`` times the box size (``pad <= 1``) or by ``pad`` pixels, floored and
  ceiled outwards; the original's whole-image or crop instruction (fetched from
  the pinned upstream file) then "; " then the prompt; the reply stripped,
  lowercased and rid of one trailing "." or ",".
- ``depth``: the metric depth at the pixel ``(int((x1+x2)/2), int((y1+y2)/2))``
  of the image itself (the original kept the first image's depth map for every
  later image, a bug not reproduced); a negative index counts from the end, as
  tensor indexing does.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

from harness.protocol import LABEL_FILTERS
from harness.tools import ToolBackend, ToolContext
from harness.tools.api import bind_arguments
from harness.upstream import PaperTexts

PAPER_BOX_THRESHOLD = 0.35
PAPER_TEXT_THRESHOLD = 0.25


def gd_detect(img_pth, prompt):
    """Signature of the original ``gd_detect``."""


def vqa(img_pth, box=None, prompt="", fmt="xyxy", pad=0.25):
    """Signature of the original ``vqa``."""


def depth(img_pth, bbox):
    """Signature of the original ``depth``."""


PAPER_API: dict[str, Callable] = {"gd_detect": gd_detect, "vqa": vqa, "depth": depth}
_SIGNATURES = {name: inspect.signature(function) for name, function in PAPER_API.items()}  # built once


def detector_caption(prompt: str) -> tuple[str, list[str]]:
    """The caption the original sent to GroundingDINO for a prompt, and the prompt
    parts a decoded phrase must equal (spaces as "-", the prompt's own case)."""
    parts = [part.strip().replace(" ", "-") for part in prompt.split(",")]
    caption = " . ".join(parts)
    return caption, [piece.strip() for piece in caption.split(".") if piece.strip()]


def paper_box(centre_box: list[float], width: int, height: int) -> list[int]:
    """A normalised (cx, cy, w, h) box as the original returned it: integer pixel corners."""
    cx, cy, w, h = (float(v) for v in centre_box)
    corners = [round(cx - w / 2, 3), round(cy - h / 2, 3), round(cx + w / 2, 3), round(cy + h / 2, 3)]
    x1, y1, x2, y2 = int(corners[0] * width), int(corners[1] * height), int(corners[2] * width), int(corners[3] * height)
    return [max(0, min(x1, width - 1)), max(0, min(y1, height - 1)),
            max(0, min(x2, width - 1)), max(0, min(y2, height - 1))]


def paper_label(phrase: str, parts: list[str]) -> str:
    label = phrase.replace(" - ", " ")
    for part in parts:
        if label == part.lower():
            label = part
    return label


def shape_detections(raw: list[tuple[list[float], str]], prompt_parts: list[str], size: tuple[int, int],
                     label_filter: str = "fixed") -> list[dict[str, Any]]:
    """Raw detector output (normalised centre boxes, decoded phrases) -> the original's list of dicts."""
    named = [phrase.replace(" - ", "-") in prompt_parts for _, phrase in raw]
    if not any(named):
        return []
    keep = raw if label_filter == "original" else [item for item, ok in zip(raw, named) if ok]
    width, height = size
    return [{"bbox": paper_box(box, width, height), "label": paper_label(phrase, prompt_parts)} for box, phrase in keep]


def vqa_region(box: Any, fmt: Any, pad: Any, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The crop the original sent for a box (left, top, right, bottom), or None for the whole image."""
    if box is None:
        return None
    width, height = size
    try:
        if fmt == "xyxy":
            x1, y1, x2, y2 = map(int, box)
        elif fmt == "xywh":
            x, y, w, h = map(int, box)
            x1, y1, x2, y2 = x, y, x + w, y + h
        else:
            raise ValueError(f"box format {fmt!r} is neither xyxy nor xywh")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"vqa(): cannot read box {box!r} as four integers ({exc})") from None
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not math.isfinite(pad):
        raise ValueError(f"vqa(): pad must be a finite number, got {pad!r}")
    box_w, box_h = max(1, x2 - x1), max(1, y2 - y1)
    pad_x, pad_y = (pad * box_w, pad * box_h) if pad <= 1.0 else (float(pad), float(pad))
    left, top = max(0, int(math.floor(x1 - pad_x))), max(0, int(math.floor(y1 - pad_y)))
    right, bottom = min(width, int(math.ceil(x2 + pad_x))), min(height, int(math.ceil(y2 + pad_y)))
    if right <= left:
        right = min(width, left + 1)
    if bottom <= top:
        bottom = min(height, top + 1)
    return left, top, right, bottom


def finish_vqa_reply(text: str) -> str:
    reply = text.strip().lower()
    return reply[:-1] if reply and reply[-1] in (".", ",") else reply


def depth_pixel(bbox: Any, size: tuple[int, int]) -> tuple[int, int]:
    """(column, row) the original read, negative indices counted from the end."""
    try:
        x1, y1, x2, y2 = bbox
        column, row = int((x1 + x2) / 2), int((y1 + y2) / 2)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"depth(): cannot read bbox {bbox!r} as [x1, y1, x2, y2] ({exc})") from None
    width, height = size
    if not (-width <= column < width and -height <= row < height):
        raise ValueError(f"depth(): the centre ({column}, {row}) of bbox {bbox!r} is outside the "
                         f"{width}x{height} image")
    return column % width, row % height


class PaperToolSession:
    """The tool handler of one program in the paper dialect."""

    names = list(PAPER_API)

    def __init__(self, backend: ToolBackend, context: ToolContext, image_path: str, texts: PaperTexts,
                 label_filter: str = "fixed") -> None:
        if label_filter not in LABEL_FILTERS:
            raise ValueError(f"label_filter must be one of {', '.join(LABEL_FILTERS)}, got {label_filter!r}")
        self.backend = backend
        self.context = context
        self.image_path = image_path
        self.texts = texts  # the original's VQA instructions, read when a program first asks
        self.label_filter = label_filter

    def call(self, name: str, args: list, kwargs: dict) -> Any:
        values = bind_arguments(_SIGNATURES, name, args, kwargs)
        if values.pop("img_pth") != self.image_path:
            raise ValueError(f"{name}(): the first argument must be img_pth ({self.image_path!r})")
        return getattr(self, f"_{name}")(**values)

    def _gd_detect(self, prompt: Any) -> list[dict[str, Any]]:
        if not isinstance(prompt, str):
            raise ValueError(f"gd_detect(): prompt must be a string such as \"chair, table\", got {prompt!r}")
        caption, parts = detector_caption(prompt)
        raw = self.backend.detect_caption(self.context, caption, PAPER_BOX_THRESHOLD, PAPER_TEXT_THRESHOLD)
        return shape_detections(raw, parts, self.context.image_size, self.label_filter)

    def _vqa(self, box: Any, prompt: Any, fmt: Any, pad: Any) -> str:
        region = vqa_region(box, fmt, pad, self.context.image_size)
        prompts = self.texts.vqa_prompts()
        instruction = prompts.whole_image if region is None else prompts.crop
        text = f"{instruction}; {prompt}"
        return finish_vqa_reply(self.backend.ask_region(self.context, region, text, str(prompt)))

    def _depth(self, bbox: Any) -> float:
        column, row = depth_pixel(bbox, self.context.image_size)
        return float(self.backend.depth(self.context, [column, row]))


_IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def paper_image_name(data: bytes) -> str:
    """The file name ``img_pth`` holds: ``image`` and the suffix of the image's own format."""
    from io import BytesIO

    from PIL import Image

    try:
        with Image.open(BytesIO(data)) as image:
            suffix = _IMAGE_SUFFIXES.get(image.format or "", ".img")
    except Exception:
        suffix = ".img"
    return f"image{suffix}"


def paper_program_inputs(backend: ToolBackend, context: ToolContext, texts: PaperTexts,
                         label_filter: str = "fixed") -> tuple[PaperToolSession, dict[str, bytes]]:
    """What a program in the paper dialect runs with: its tool handler, and its image as
    the file ``img_pth`` names (for ``Sandbox.run(..., dialect="paper", files=...)``)."""
    if context.image is None:
        raise ValueError("the paper dialect needs the sample's image")
    data = context.image.read_bytes()
    name = paper_image_name(data)
    return PaperToolSession(backend, context, name, texts, label_filter), {name: data}
