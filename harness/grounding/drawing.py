"""Pictures for the VLM verifier and the review pages: numbered boxes, padded crops, thumbnails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

# High-contrast colours, far apart in hue, so that neighbouring boxes are told apart.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (255, 225, 25),
    (128, 0, 0), (0, 0, 128), (128, 128, 0), (255, 255, 255),
]
KEPT_COLOUR = (40, 200, 60)
REMOVED_COLOUR = (230, 30, 30)


@dataclass(frozen=True)
class Mark:
    """One box to draw, with the tag written above it."""

    box: Sequence[float]  # x1, y1, x2, y2 in pixels
    tag: str
    colour: tuple[int, int, int]


def palette_colour(number: int) -> tuple[int, int, int]:
    return PALETTE[number % len(PALETTE)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_marks(image: Image.Image, marks: Sequence[Mark]) -> Image.Image:
    """A copy of ``image`` with each box outlined and its tag on a filled label,
    sized to the image so that numbers stay readable on large and small pictures."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    side = max(canvas.size)
    width = max(2, round(side / 300))
    font = ImageFont.load_default(size=max(12, round(side / 40)))
    for mark in marks:
        x1, y1, x2, y2 = (float(v) for v in mark.box)
        draw.rectangle([x1, y1, x2, y2], outline=mark.colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), mark.tag, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(2, width)
        # Above the box when there is room, else just inside its top edge.
        label_top = y1 - text_h - 2 * pad if y1 - text_h - 2 * pad >= 0 else y1
        label_left = min(max(0.0, x1), max(0.0, canvas.width - text_w - 2 * pad))
        draw.rectangle([label_left, label_top, label_left + text_w + 2 * pad, label_top + text_h + 2 * pad],
                       fill=mark.colour)
        draw.text((label_left + pad - left, label_top + pad - top), mark.tag, fill=_text_colour(mark.colour), font=font)
    return canvas


def numbered(image: Image.Image, boxes: Sequence[tuple[Sequence[float], str]]) -> Image.Image:
    """The image with boxes numbered 1, 2, ... in distinct colours, each tagged "number label"."""
    return draw_marks(image, [Mark(box, f"{number} {label}", palette_colour(number - 1))
                              for number, (box, label) in enumerate(boxes, start=1)])


def padded_crop(image: Image.Image, box: Sequence[float], padding: float = 0.1, long_side: int = 640) -> Image.Image:
    """The box widened by ``padding`` of its size on every side (within the image),
    resized with bicubic interpolation so that its longer side is ``long_side``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    pad_x, pad_y = (x2 - x1) * padding, (y2 - y1) * padding
    left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    right = min(image.width, max(left + 1, int(round(x2 + pad_x))))
    bottom = min(image.height, max(top + 1, int(round(y2 + pad_y))))
    crop = image.crop((left, top, right, bottom))
    scale = long_side / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    return crop.resize(size, Image.Resampling.BICUBIC)
