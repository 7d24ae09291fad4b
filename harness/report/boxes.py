"""Detected boxes from a record's tool calls, and their place on a thumbnail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.tools.api import box_value

DETECT_TOOL = "gd_detect"


@dataclass(frozen=True)
class Detection:
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original image
    score: float | None


def detections(tool_calls: list[Any]) -> tuple[list[Detection], list[str]]:
    """Every distinct box the detector returned, in call order, and what could not be read.

    A call recorded as a dict ``{"tool", "args", "kwargs", "result" | "error"}``
    (see the sandbox's executor); failed calls have no boxes. The same box
    returned by two calls is drawn once.
    """
    found: dict[tuple[str, tuple[float, ...]], Detection] = {}
    problems = []
    for number, call in enumerate(tool_calls, start=1):
        if not isinstance(call, dict):
            problems.append(f"tool call {number} is not an object: {call!r}"[:300])
            continue
        if call.get("tool") != DETECT_TOOL or "result" not in call:
            continue
        result = call["result"]
        if not isinstance(result, list):
            problems.append(f"tool call {number} ({DETECT_TOOL}): result must be a list, got {result!r}"[:300])
            continue
        for index, item in enumerate(result):
            where = f"tool call {number} ({DETECT_TOOL}), detection {index}"
            if not isinstance(item, dict):
                problems.append(f"{where} is not an object: {item!r}"[:300])
                continue
            try:
                box = tuple(box_value(item.get("box"), "box"))
            except ValueError as exc:
                problems.append(f"{where}: {exc}"[:300])
                continue
            score = item.get("score")
            score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
            label = str(item.get("label", ""))
            found.setdefault((label, box), Detection(label, box, score))
    return list(found.values()), problems


def scale_box(box: tuple[float, float, float, float], original: tuple[int, int],
              thumbnail: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """``(x, y, width, height)`` of a box on the thumbnail, clipped to it; None when it lies outside."""
    if box[2] < 0 or box[3] < 0 or box[0] > original[0] or box[1] > original[1]:
        return None
    sx, sy = thumbnail[0] / original[0], thumbnail[1] / original[1]
    x1, x2 = (min(max(v * sx, 0.0), thumbnail[0]) for v in (box[0], box[2]))
    y1, y2 = (min(max(v * sy, 0.0), thumbnail[1]) for v in (box[1], box[3]))
    return x1, y1, x2 - x1, y2 - y1
