"""Reading the JSON value out of a model's free-form reply."""

from __future__ import annotations

import json
import re
from typing import Any


class ReplyError(ValueError):
    """A model reply that does not hold what was asked for."""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(reply: str) -> Any:
    """The JSON value in a reply: the whole text, a fenced block, or the first
    object or list in it. ReplyError when there is none."""
    text = reply.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text[match.start():])[0]
        except json.JSONDecodeError:
            continue
    raise ReplyError(f"no JSON in the reply: {reply[:200]!r}")
