"""The tool API that programs see, and the checking of every call against it.

These signatures and docstrings are the single source of truth: prompts show
them to the program-writing model and every backend receives arguments that
were bound and checked here, so a wrong call fails with the same message
whichever backend serves it.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Sequence

IMAGE_MARKER = {"__image__": True}


def gd_detect(image, phrases):
    """Detect objects described by noun phrases.

    Args:
        image: the image (pass ``image``).
        phrases: comma-separated noun phrases, e.g. "red mug, chair". Appearance words
            (colour, material) may be part of a phrase; spatial words may not.
    Returns:
        A list of detections, one dict per object found:
        {"box": [x1, y1, x2, y2], "label": phrase, "score": float}, with pixel
        coordinates (x to the right, y down, origin at the top-left corner).
        Only phrases that were asked for appear as labels. The list is empty when
        nothing is found.
    """


def depth(image, box_or_point):
    """Metric depth, in metres, of what is seen at a box's centre or at a point.

    Args:
        image: the image (pass ``image``).
        box_or_point: a box [x1, y1, x2, y2] (its centre pixel is used) or a point [x, y].
    Returns:
        The distance from the camera along its viewing axis, a float in metres;
        float("inf") where nothing is seen (sky).
    """


def vqa(image, box=None, question=None):
    """Ask a short question about the object in a box, or about the whole image.

    Args:
        image: the image (pass ``image``).
        box: [x1, y1, x2, y2] of the object to ask about; None for the whole image.
            The crop is padded by a quarter of the box size on each side.
        question: the question, e.g. "What color is this object?".
    Returns:
        A short lowercase answer (a word or a phrase).
    """


API: dict[str, Callable] = {"gd_detect": gd_detect, "depth": depth, "vqa": vqa}
# Built once: every tool call of every program is bound to one of these.
SIGNATURES: dict[str, inspect.Signature] = {name: inspect.signature(function) for name, function in API.items()}


def describe_api(names: tuple[str, ...] = tuple(API)) -> str:
    """The API as Python stubs with their docstrings, for prompts."""
    blocks = []
    for name in names:
        doc = textwrap.indent(inspect.getdoc(API[name]), "    ")
        blocks.append(f'def {name}{inspect.signature(API[name])}:\n    """\n{doc}\n    """')
    return "\n\n".join(blocks)


@dataclass(frozen=True)
class ToolCall:
    """A checked call: its tool name and normalised arguments."""

    tool: str
    arguments: dict[str, Any]


def _number_list(value: Any, name: str, lengths: tuple[int, ...]) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        shapes = " or ".join(f"a list of {n} numbers" for n in lengths)
        raise ValueError(f"{name} must be {shapes}, got {value!r}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}")
        numbers.append(float(item))
    return numbers


def box_value(value: Any, name: str = "box") -> list[float]:
    box = _number_list(value, name, (4,))
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{name} must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {value!r}")
    return box


def probe_pixel(box_or_point: Sequence[float], width: int, height: int) -> tuple[int, int]:
    """(column, row) the depth tool reads: a box's centre pixel or the point, clamped into the image."""
    if len(box_or_point) == 4:
        x, y = (box_or_point[0] + box_or_point[2]) / 2, (box_or_point[1] + box_or_point[3]) / 2
    else:
        x, y = box_or_point
    return min(max(int(x), 0), width - 1), min(max(int(y), 0), height - 1)


def split_phrases(phrases: str) -> list[str]:
    """"red mug, chair" -> ["red mug", "chair"]; the detector's " . " separator is accepted too."""
    parts = [p.strip().strip(".").strip() for p in phrases.replace(" . ", ",").split(",")]
    return [p for p in parts if p]


def bind_arguments(signatures: dict[str, inspect.Signature], name: str, args: list, kwargs: dict) -> dict[str, Any]:
    """A program's call bound to one of ``signatures``, defaults filled in (ValueError naming the tool if wrong)."""
    if name not in signatures:
        raise ValueError(f"unknown tool {name!r}")
    try:
        bound = signatures[name].bind(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{name}(): {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def check_call(name: str, args: list, kwargs: dict) -> ToolCall:
    """Bind a program's call to the API and normalise its arguments (ValueError if wrong)."""
    values = bind_arguments(SIGNATURES, name, args, kwargs)
    if values.pop("image") != IMAGE_MARKER:
        raise ValueError(f"{name}(): the first argument must be the image (pass `image`)")
    if name == "gd_detect":
        if not isinstance(values["phrases"], str) or not split_phrases(values["phrases"]):
            raise ValueError(f"gd_detect(): phrases must be a non-empty string such as \"red cube, chair\", "
                             f"got {values['phrases']!r}")
        values["phrases"] = split_phrases(values["phrases"])
    elif name == "depth":
        values["box_or_point"] = _number_list(values["box_or_point"], "depth(): box_or_point", (2, 4))
        if len(values["box_or_point"]) == 4:
            box_value(values["box_or_point"], "depth(): box_or_point")
    elif name == "vqa":
        if values["box"] is not None:
            values["box"] = box_value(values["box"], "vqa(): box")
        if not isinstance(values["question"], str) or not values["question"].strip():
            raise ValueError("vqa(): question must be a non-empty string")
    return ToolCall(name, values)
