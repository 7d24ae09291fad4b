"""Vision tools behind one interface: a backend answers checked calls for one image.

The sandbox hands each program's tool calls to a :class:`ToolSession`, which
checks them against the API (:mod:`harness.tools.api`) and dispatches them to
the backend with the program's context (its image, and its sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.registry import Registry
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

    def gd_detect(self, context: ToolContext, phrases: list[str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def depth(self, context: ToolContext, box_or_point: list[float]) -> float:
        raise NotImplementedError

    def vqa(self, context: ToolContext, box: list[float] | None, question: str) -> str:
        raise NotImplementedError

    def session(self, context: ToolContext) -> "ToolSession":
        return ToolSession(self, context)

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
