"""Samples and tasks in a form that travels to another process or node.

A sample's image is usually a reference into the driver's world: a file path, or a
closure over a memory-mapped Arrow table (:class:`~harness.types.LazyImage`), which does
not pickle. A shipped sample carries the image's bytes instead, with the same description
and file name, so a replica reads exactly what a local run would; an image the driver
cannot read travels as the same error, raised where a local run would raise it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

from harness.tasks.task import resolve_limit
from harness.types import ImageError, ImageRef, Sample


@dataclass(frozen=True)
class ShippedImage(ImageRef):
    """An image's bytes, read by the driver, under the name and description of its source."""

    data: bytes
    origin: str
    name: str | None = None

    def read_bytes(self) -> bytes:
        return self.data

    def describe(self) -> str:
        return self.origin

    def file_name(self) -> str | None:
        return self.name


@dataclass(frozen=True)
class UnreadableImage(ImageRef):
    """An image the driver could not read: reading it raises the driver's error again."""

    message: str
    origin: str
    name: str | None = None

    def read_bytes(self) -> bytes:
        raise ImageError(self.message)

    def describe(self) -> str:
        return self.origin

    def file_name(self) -> str | None:
        return self.name


def ship_image(image: ImageRef) -> ImageRef:
    if isinstance(image, (ShippedImage, UnreadableImage)):
        return image
    try:
        return ShippedImage(image.read_bytes(), image.describe(), image.file_name())
    except ImageError as exc:
        return UnreadableImage(str(exc), image.describe(), image.file_name())


def ship_sample(sample: Sample) -> Sample:
    """A copy of ``sample`` whose image travels with it (the sample itself is not changed)."""
    if sample.image is None:
        return sample
    return dataclasses.replace(sample, image=ship_image(sample.image))


@dataclass(frozen=True)
class TaskView:
    """What a system's ``prepare`` reads of a task (its name, configuration and sample ids),
    without the dataset behind it."""

    name: str
    config: Any
    sample_ids: tuple[str, ...]

    @classmethod
    def of(cls, task: Any) -> "TaskView":
        return cls(task.name, task.config, tuple(task.ids()))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def ids(self, limit: float | None = None) -> list[str]:
        return list(self.sample_ids[:resolve_limit(limit, len(self.sample_ids))])

    def iter_ids(self, limit: float | None = None) -> Iterator[str]:
        return iter(self.ids(limit))
