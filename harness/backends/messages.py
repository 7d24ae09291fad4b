"""Chat messages, the same for every backend, and how their images are encoded.

Messages are plain dicts::

    {"role": "system" | "user" | "assistant",
     "content": "text" | [{"type": "text", "text": ...}, {"type": "image", "image": <PIL.Image>}, ...]}

:func:`parse_messages` checks them once and gives each backend the same
:class:`Turn` objects to translate into its own request format.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Mapping

from PIL import Image

Message = dict[str, Any]

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    """One checked message: its role and its parts (text or images), in order."""

    role: str
    parts: tuple[str | Image.Image, ...]
    plain: bool  # content was a single string


def parse_messages(messages: list[Message]) -> list[Turn]:
    """Check messages against the format above (ValueError naming the culprit)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {index}: role must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            turns.append(Turn(role, (content,), plain=True))
            continue
        if not isinstance(content, (list, tuple)) or not content:
            raise ValueError(f"message {index}: content must be a string or a non-empty list of parts")
        parts: list[str | Image.Image] = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "image" and isinstance(part.get("image"), Image.Image):
                parts.append(part["image"])
            else:
                raise ValueError(f"message {index}, part {number}: expected {{'type': 'text', 'text': str}} or "
                                 f"{{'type': 'image', 'image': PIL.Image}}, got {part!r:.200}")
        turns.append(Turn(role, tuple(parts), plain=False))
    return turns


def rgb_image(image: Image.Image) -> Image.Image:
    # Vision encoders expect three channels; palette, grey and alpha images are
    # converted here so every backend sees the same pixels.
    return image if image.mode == "RGB" else image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """The image as RGB PNG bytes (lossless, so a remote model sees our exact pixels)."""
    buffer = io.BytesIO()
    rgb_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_data_uri(image: Image.Image) -> str:
    """The image as a PNG data URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
