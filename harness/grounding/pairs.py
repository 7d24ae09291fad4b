"""The (image, query) pairs the pseudo-labelling pipeline reads, one per image.

Sources are the same as for reasoning training (:mod:`harness.training.data`):
tasks of the registry (their questions and images only, never their answers)
and JSONL files of generated queries (``{"image", "query", "source"}``, image
paths relative to the file; ``source`` defaults to ``generated``). Each source keeps one question per image (the first
in its seeded order); then the same balanced, seeded selection as the training
data takes ``size`` images with an equal share per source.

Images can be excluded by file name before anything is selected: the paper
discarded TallyQA and VSR images that are also in COCO val2017, so that scoring
the trained detector on COCO val2017 stays fair. The exclusion file is a COCO
annotation file (its images' ``file_name``) or a text file of names, one a
line. COCO names are compared by image id, so ``COCO_val2014_000000000139.jpg``
and ``000000000139.jpg`` are the same picture.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.tasks import TaskRegistry
from harness.training.data import (
    DataOptions,
    QueryRow,
    TrainingDataError,
    is_file_source,
    read_query_file,
    read_task_source,
    select_rows,
)
from harness.training.querygen import SOURCE_NAME as GENERATED_SOURCE
from harness.types import FileImage, ImageRef

log = logging.getLogger(__name__)

# The only sample metadata a program writer may read (the reference system's program).
PROGRAM_META = ("reference_program",)
_COCO_NAME = re.compile(r"(?:^|_)(\d{12})\.[A-Za-z]+$")


@dataclass
class ImagePair:
    """One image and the query whose program decides what to look for in it."""

    id: str  # unique in a run: ``task/sample id`` or ``file.jsonl:line``
    source: str  # the dataset name written with the labels
    query: str
    image: ImageRef
    file_name: str | None  # the image's own file name, where its source gives one
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairCounts:
    """What became of one source's rows."""

    read: int = 0
    unreadable: int = 0  # task rows that could not be read (logged)
    no_image: int = 0
    excluded: int = 0  # by --exclude-images
    unchecked: int = 0  # rows without a file name, which an exclusion list cannot match
    images: int = 0  # distinct images left
    selected: int = 0


def exclusion_key(name: str) -> str:
    """How file names are compared: the base name, lower-cased; COCO names by their image id."""
    base = Path(name.strip()).name.lower()
    match = _COCO_NAME.search(base)
    return f"coco:{int(match.group(1))}" if match else base


def read_exclusions(path: str | Path) -> set[str]:
    """The names an exclusion file lists: a COCO JSON file's ``images[].file_name``, or
    a text file with one name a line (blank lines and ``#`` comments are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exclusion file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}: not JSON ({exc})") from None
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise TrainingDataError(f"{path}: a COCO file needs an 'images' list")
        names = []
        for number, image in enumerate(images):
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                raise TrainingDataError(f"{path}: images[{number}] has no string 'file_name'")
            names.append(image["file_name"])
    else:
        names = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    keys = {exclusion_key(name) for name in names}
    if not keys:
        raise TrainingDataError(f"{path}: no file names to exclude")
    return keys


def _row_image(row: QueryRow) -> tuple[ImageRef | None, str | None]:
    if row.sample is not None:
        image = row.sample.image
        return image, image.file_name() if image is not None else None
    if row.image is None:
        return None, None
    return FileImage(row.image), Path(row.image).name


def _image_key(row: QueryRow) -> str:
    """What identifies a row's image, for keeping one question per image."""
    if row.sample is not None and row.sample.cluster is not None:
        return f"{row.origin}\0cluster\0{row.sample.cluster}"
    image, name = _row_image(row)
    if image is not None and name and not isinstance(image, FileImage):
        return f"{row.origin}\0name\0{name}"
    return f"{row.origin}\0image\0{image.describe() if image is not None else row.id}"


def read_pairs(sources: Sequence[str], registry: TaskRegistry, *, size: int | None = None, seed: int = 0,
               balanced: bool = True, data_dir: str | None = None, allow_eval_tasks: bool = False,
               read_limit: int | None = None, exclude: set[str] | None = None,
               ) -> tuple[list[ImagePair], dict[str, PairCounts]]:
    """The selected pairs, in a seeded order mixing the sources, and the counts per source."""
    if not sources:
        raise TrainingDataError("no sources given")
    if len(set(sources)) != len(sources):
        raise TrainingDataError(f"a source is named twice: {', '.join(sources)}")
    pools: dict[str, list[QueryRow]] = {}
    counts: dict[str, PairCounts] = {}
    for spec in sources:
        if is_file_source(spec):
            rows, skipped = read_query_file(spec, default_source=GENERATED_SOURCE), 0
            rows = rows[:read_limit] if read_limit is not None else rows
        else:
            rows, skipped = read_task_source(spec, registry, data_dir, allow_eval_tasks, read_limit)
        count = PairCounts(read=len(rows), unreadable=skipped)
        kept = []
        for row in rows:
            image, name = _row_image(row)
            if image is None:
                count.no_image += 1
                continue
            if exclude:
                if name is None:
                    count.unchecked += 1
                elif exclusion_key(name) in exclude:
                    count.excluded += 1
                    continue
            kept.append(row)
        if count.unchecked:
            log.warning("pseudo-labels: %s: %d images have no file name, so the exclusion list cannot apply "
                        "to them", spec, count.unchecked)
        if not kept:
            raise TrainingDataError(f"source {spec!r} holds no usable images ({count.read} rows read, "
                                    f"{count.no_image} without an image, {count.excluded} excluded)")
        origin = kept[0].origin
        pools[origin] = kept
        counts[origin] = count
    selected, unique = select_rows(pools, DataOptions(size=size, balanced=balanced, seed=seed), key=_image_key)
    for origin, n in unique.items():
        counts[origin].images = n
    pairs, seen = [], set()
    for row in selected:
        if row.id in seen:  # e.g. two query files of the same name in different folders
            raise TrainingDataError(f"two selected rows have the id {row.id!r}; give the sources distinct names")
        seen.add(row.id)
        counts[row.origin].selected += 1
        image, name = _row_image(row)
        meta = {k: row.sample.meta[k] for k in PROGRAM_META if row.sample is not None and k in row.sample.meta}
        pairs.append(ImagePair(row.id, row.source, row.question, image, name, meta))  # type: ignore[arg-type]
    return pairs, counts
