"""Dummy tools: fixed, plausible answers that need no image and no model.

Used to check that a program runs (the training reward's syntax part), and by
``harness exec --tools dummy`` to try a program quickly.
"""

from __future__ import annotations

from typing import Any

from harness.tools import ToolBackend, ToolContext


class DummyBackend(ToolBackend):
    """Plausible, fixed tool answers: ``found=True`` gives one box per phrase, side by
    side; ``found=False`` detects nothing. Depth grows to the right, so comparisons
    between objects are not all ties; ``vqa`` answers a number to counting
    questions, "yes" to yes/no questions and a colour otherwise."""

    def __init__(self, found: bool = True) -> None:
        self.found = found

    def gd_detect(self, context: ToolContext, phrases: list[str]) -> list[dict[str, Any]]:
        if not self.found:
            return []
        width, height = context.image_size
        step = width / (len(phrases) + 1)
        return [{"box": [round(step * (i + 0.6), 1), round(height * 0.3, 1), round(step * (i + 1.4), 1),
                         round(height * 0.8, 1)], "label": phrase, "score": 0.9} for i, phrase in enumerate(phrases)]

    def depth(self, context: ToolContext, box_or_point: list[float]) -> float:
        x = (box_or_point[0] + box_or_point[2]) / 2 if len(box_or_point) == 4 else box_or_point[0]
        return round(2.0 + 3.0 * x / context.image_size[0], 3)

    def vqa(self, context: ToolContext, box: list[float] | None, question: str) -> str:
        words = question.lower().split()
        if "many" in words or "number" in words:
            return "2"
        if words and words[0] in ("is", "are", "does", "do", "can", "was", "were", "has", "have"):
            return "yes"
        return "red"
