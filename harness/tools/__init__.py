"""Vision tools behind one interface: a backend answers checked calls for one image.

The sandbox hands each program's tool calls to a :class:`ToolSession`, which
checks them against the API (:mod:`harness.tools.api`) and dispatches them to
the backend with the program's context (its image, and its sample).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, ContextManager

from harness.registry import Registry
from harness.requirements import Requirement
from harness.sandbox.runtime import ToolError, encode_argument
from harness.tools.api import API, check_call
from harness.types import ImageRef, Sample

__all__ = ["TOOL_BACKENDS", "ToolBackend", "ToolContext", "ToolSession", "in_process_caller", "make_backend"]


@dataclass
class ToolContext:
    """What a program's tools may look at. The decoded image and its hash are
    computed once per program, however many tool calls it makes."""

    image: ImageRef | None
    image_size: tuple[int, int]
    sample: Sample | None = None
    key: str = ""  # a stable name for the program's sample, used to seed noise
    _pil: Any = field(default=None, repr=False)
    _hash: str | None = field(default=None, repr=False)

    def pil(self) -> Any:
        if self._pil is None:
            if self.image is None:
                raise ValueError("this program has no image")
            self._pil = self.image.load()
        return self._pil

    def image_hash(self) -> str:
        if self._hash is None:
            if self.image is None:
                raise ValueError("this program has no image")
            self._hash = self.image.content_hash()
        return self._hash


class ToolBackend:
    """Implements the tools for a context; arguments arrive checked and normalised."""

    names: tuple[str, ...] = tuple(API)

    @classmethod
    def requirements(cls, options: dict[str, Any], purpose: str) -> list[Requirement]:
        """What a backend of this kind built with ``options`` needs (packages, models, a GPU, the
        endpoints of model-backed tools), checked before a run starts."""
        return []

    def gd_detect(self, context: ToolContext, phrases: list[str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def depth(self, context: ToolContext, box_or_point: list[float]) -> float:
        raise NotImplementedError

    def vqa(self, context: ToolContext, box: list[float] | None, question: str) -> str:
        raise NotImplementedError

    def detect_caption(self, context: ToolContext, caption: str, box_threshold: float,
                       text_threshold: float) -> list[tuple[list[float], str]]:
        """Detections for a GroundingDINO caption ("red-mug . chair"), as the original
        GroundingDINO ``predict`` gave them: (normalised cx, cy, w, h, decoded phrase).

        This default serves backends that are not a caption-reading detector (the
        oracle, the dummy): each caption part is asked as a phrase, and the phrase
        reported is the part as a BERT tokenizer decodes it ("red - mug").
        """
        parts = {}
        for part in caption.lower().split("."):
            if part.strip():
                parts.setdefault(" ".join(part.replace("-", " ").split()), part.strip())
        width, height = context.image_size
        found = []
        for detection in self.gd_detect(context, list(parts)):
            part = parts.get(detection["label"])
            if part is None:
                continue
            x1, y1, x2, y2 = detection["box"]
            found.append(([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height],
                          decoded_phrase(part)))
        return found

    def ask_region(self, context: ToolContext, region: tuple[int, int, int, int] | None, text: str,
                   question: str) -> str:
        """The reply to ``text`` (an instruction and the question) about exactly ``region``
        of the image (left, top, right, bottom; None: the whole image), unnormalised.
        Backends that answer from the question alone (the oracle) read ``question``."""
        return self.vqa(context, list(region) if region is not None else None, question)

    def session(self, context: ToolContext) -> "ToolSession":
        return ToolSession(self, context)

    @classmethod
    def programs_to_keep_busy(cls, options: dict[str, Any]) -> int | None:
        """How many programs should run at once to keep this backend's models busy (None: no
        preference; the program system's own default applies)."""
        return None

    def in_flight(self) -> ContextManager[None]:
        """Entered by the thread that runs a program, for the program's lifetime: a backend that
        batches requests dispatches as soon as every program in flight waits on a tool."""
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {"backend": type(self).__name__}

    def close(self) -> None:
        """Release models and caches."""


class ToolSession:
    """The tool handler of one program: checks each call, then asks the backend."""

    def __init__(self, backend: ToolBackend, context: ToolContext) -> None:
        self.backend = backend
        self.context = context
        self.names = list(backend.names)

    def call(self, name: str, args: list, kwargs: dict) -> Any:
        checked = check_call(name, args, kwargs)
        return getattr(self.backend, checked.tool)(self.context, **checked.arguments)


_PUNCTUATION = re.compile(r"([^\w\s])")


def decoded_phrase(text: str) -> str:
    """A phrase as a BERT tokenizer splits and decodes it: punctuation stands apart ("red - mug")."""
    return " ".join(_PUNCTUATION.sub(r" \1 ", text.lower()).split())


def in_process_caller(handler: Any):
    """A program namespace's ``call`` that reaches a tool handler directly, as the
    sandbox does over its channel: same argument encoding, failures as ToolError.
    Only for trusted programs (ours), e.g. while generating a benchmark."""

    def call(name: str, args: tuple, kwargs: dict) -> Any:
        try:
            return handler.call(name, encode_argument(list(args)), encode_argument(dict(kwargs)))
        except (TypeError, ValueError) as exc:
            raise ToolError(f"{name}: {exc}") from None

    return call


# The synthetic benchmark registers its oracle tools here itself (harness.synthetic):
# this layer cannot import the one above it.
TOOL_BACKENDS: Registry[type[ToolBackend]] = Registry("tool backend")
TOOL_BACKENDS.register("real", "harness.tools.models:ModelBackend")
TOOL_BACKENDS.register("dummy", "harness.tools.dummy:DummyBackend")


def make_backend(name: str, **options: Any) -> ToolBackend:
    return TOOL_BACKENDS.get(name)(**options)
