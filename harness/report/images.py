"""Sample images for a report: read through the task the run used, by sample id, as JPEG thumbnails.

Records do not store images, so each task is rebuilt from the configuration
recorded in run.json and its samples are walked (rows are read without their
images) until every wanted id is found; only those images are read.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image
from tqdm import tqdm

from harness.tasks.config import parse_task_config
from harness.tasks.task import Task

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 384  # pixels of the longer side
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Thumbnail:
    jpeg_base64: str
    size: tuple[int, int]  # width, height of the thumbnail
    original_size: tuple[int, int]  # width, height of the image the tools saw

    @property
    def data_uri(self) -> str:
        return "data:image/jpeg;base64," + self.jpeg_base64


@dataclass
class TaskImages:
    thumbnails: dict[str, Thumbnail] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # sample id -> why its image is not shown
    unavailable: str | None = None  # why the task's images could not be read at all


def make_thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE, quality: int = JPEG_QUALITY) -> Thumbnail:
    """A JPEG thumbnail (longer side at most ``side``) for pages that must stay self-contained."""
    small = image.convert("RGB")  # a copy, so the caller's image keeps its size
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return Thumbnail(base64.b64encode(buffer.getvalue()).decode("ascii"), small.size, image.size)


def task_from_config(name: str, config: dict[str, Any], data_dir: Path | None) -> Task:
    """The task exactly as the run configured it (run.json keeps each task's configuration)."""
    data = {k: v for k, v in config.items() if k != "source_file"}
    return Task(parse_task_config(data, source_file=config.get("source_file") or f"run.json (task {name})"), data_dir)


def load_task_images(name: str, config: dict[str, Any], ids: Iterable[str], data_dir: Path | None,
                     limit: float | None = None) -> TaskImages:
    wanted = set(ids)
    images = TaskImages()
    if not wanted:
        return images
    progress = tqdm(total=len(wanted), desc=f"{name} images", unit="image", disable=None)
    try:
        for sample in task_from_config(name, config, data_dir).samples(limit):
            if sample.id not in wanted:
                continue
            wanted.discard(sample.id)
            progress.update()
            if sample.image is None:
                images.errors[sample.id] = "the sample has no image"
            else:
                try:
                    images.thumbnails[sample.id] = make_thumbnail(sample.image.load())
                except Exception as exc:  # one unreadable image must not stop the page
                    images.errors[sample.id] = str(exc)
            if not wanted:
                break
    except Exception as exc:  # the dataset is missing or unreadable: the page goes on without its images
        images.unavailable = str(exc) or type(exc).__name__
        log.warning("images of task %s are not shown: %s", name, images.unavailable)
        wanted.clear()
    finally:
        progress.close()
    for sample_id in wanted:
        images.errors[sample_id] = "no sample with this id in the dataset now (did the dataset change since the run?)"
    return images
