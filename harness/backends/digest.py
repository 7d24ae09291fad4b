"""Content digests of chat requests, and the per-request seeds derived from them.

A digest names a request by what a model would see: the roles, the texts and
the images' pixels. It keys the response cache and the scripted backend's
recordings; the seed derived from it gives each request of a batch its own
random stream without tying the reply to the request's position in the batch.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from PIL import Image

from harness.backends.messages import Message, parse_messages


def _rgb_bytes(image: Image.Image) -> tuple[int, int, bytes]:
    # The pixels every backend is sent (after the same RGB conversion), so two
    # files that decode to the same picture share a digest.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb.width, rgb.height, rgb.tobytes()


def request_digest(messages: list[Message]) -> str:
    """SHA-256 (hex) of a request's roles, texts and image pixels, in order.

    A message given as a plain string and one given as a single text part hash
    alike: every backend here reads them as the same prompt. Each field is
    length-prefixed, so no two different requests can serialise to the same bytes.
    """
    digest = hashlib.sha256(b"chat-request-v1")
    for turn in parse_messages(messages):
        role = turn.role.encode("utf-8")
        digest.update(b"R" + struct.pack(">Q", len(role)) + role + struct.pack(">Q", len(turn.parts)))
        for part in turn.parts:
            if isinstance(part, str):
                text = part.encode("utf-8")
                digest.update(b"T" + struct.pack(">Q", len(text)) + text)
            else:
                width, height, pixels = _rgb_bytes(part)
                digest.update(b"I" + struct.pack(">IIQ", width, height, len(pixels)) + pixels)
    return digest.hexdigest()


def request_seed(seed: Any, digest: str) -> int:
    """The seed one request of a seeded batch samples with: a function of the
    batch's seed and the request's content only.

    Not ``seed + index``: a reply must not depend on where its request stands in
    a batch, or a resumed run (which sends only the unfinished requests) and the
    response cache (which sends only the misses) would sample differently from
    an uninterrupted run. Identical requests get identical seeds, as they would
    from a server given the same ``seed``. 31 bits, which every engine accepts.
    """
    blob = f"{int(seed)}:{digest}".encode("ascii")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def last_user_text(messages: list[Message]) -> str:
    """The text of the last user message (its text parts joined by newlines)."""
    for turn in reversed(parse_messages(messages)):
        if turn.role == "user":
            return "\n".join(part for part in turn.parts if isinstance(part, str))
    return ""
