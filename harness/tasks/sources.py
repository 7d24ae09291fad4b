"""Where a task's rows come from: the Hugging Face hub or a local copy of the same files.

Both paths end in a local folder holding the dataset repository's files (a hub
snapshot fetched with the task's allow-patterns, or ``DATA_DIR/<hub id>`` on an
offline machine, whole or partial). Each part is read on its own from the files
its README config names (:mod:`harness.tasks.layout`), so files the copy lacks
only matter to the parts that need them. Rows are read in batches without their
images; an image is read from the memory-mapped Arrow table (or its file) only
when a system asks. The commit a copy holds is the task's recorded revision.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from harness.registry import Registry
from harness.tasks.config import DatasetPart, DatasetSpec, FieldMap
from harness.tasks.layout import README, LayoutError, PartFiles, local_revision, part_files
from harness.types import FileImage, ImageRef, LazyImage, UrlImage

log = logging.getLogger(__name__)


class DatasetUnavailableError(RuntimeError):
    """A dataset that is neither in the data directory nor reachable on the hub."""


@dataclass
class RawRow:
    index: int  # position in the task's concatenated parts
    part: DatasetPart
    part_index: int  # row number within its part
    data: dict[str, Any]  # every column except the image columns
    image: ImageRef | None


@dataclass
class RowKey:
    index: int  # as RawRow's
    part: DatasetPart
    part_index: int
    value: Any  # the value of the id field; None without one


class Source:
    """A task's rows, in a fixed order."""

    revision: str = "unknown"

    def __len__(self) -> int:
        raise NotImplementedError

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[RawRow]:
        raise NotImplementedError

    def keys(self, field: str | None, start: int = 0, stop: int | None = None) -> Iterator[RowKey]:
        """What a sample id is made of, for each row: read without the rest of the row where the
        source can (a task checks its ids for duplicates before its samples are read)."""
        for raw in self.rows(start, stop):
            yield RowKey(raw.index, raw.part, raw.part_index, raw.data.get(field) if field else None)


SOURCES: Registry[type[Source]] = Registry("dataset source kind")


def data_dir_from_env(data_dir: str | Path | None) -> Path | None:
    value = data_dir or os.environ.get("HARNESS_DATA_DIR")
    return Path(value).expanduser() if value else None


def image_cache_dir() -> Path:
    from harness.cache import default_cache_dir

    return default_cache_dir() / "images"


def allow_patterns(spec: DatasetSpec) -> list[str] | None:
    """The task's allow-patterns plus the README, which says which files make each config."""
    if not spec.hub_files:
        return None
    return list(dict.fromkeys([*spec.hub_files, README]))


def resolve_dataset_dir(task: str, spec: DatasetSpec, data_dir: Path | None) -> tuple[Path, str | None]:
    """The local folder with the dataset's files, and the commit it holds (None: a local copy that does not
    say; see :func:`harness.tasks.layout.local_revision`)."""
    if data_dir is not None:
        local = data_dir / spec.path
        if local.is_dir():
            return local, None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=spec.path, repo_type="dataset", revision=spec.revision,
                                   allow_patterns=allow_patterns(spec))
    except Exception as exc:
        where = f"{data_dir / spec.path} does not exist and " if data_dir else "no --data-dir / HARNESS_DATA_DIR is set and "
        raise DatasetUnavailableError(
            f"task {task!r}: dataset {spec.path!r} is not available: {where}the hub download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). On an offline machine, copy the "
            f"dataset repository's files to DATA_DIR/{spec.path} and pass --data-dir DATA_DIR."
        ) from exc
    return Path(folder), Path(folder).name  # snapshot folders are named by commit hash


@dataclass
class OfflineCopy:
    """One dataset repository to copy under the data directory, for the tasks that read it."""

    path: str
    revision: str | None
    allow_patterns: list[str] | None  # None: every file
    tasks: list[str]


def offline_copies(specs: dict[str, DatasetSpec]) -> list[OfflineCopy]:
    """The repositories that tasks (name -> dataset spec of kind ``hub``) read, each once: the union
    of their allow-patterns (any task that reads the whole repository makes the copy whole)."""
    copies: dict[str, OfflineCopy] = {}
    for task, spec in specs.items():
        patterns = allow_patterns(spec)
        copy = copies.get(spec.path)
        if copy is None:
            copies[spec.path] = OfflineCopy(spec.path, spec.revision, patterns, [task])
            continue
        if copy.revision != spec.revision:
            raise DatasetUnavailableError(f"tasks {copy.tasks[0]!r} and {task!r} pin different revisions of "
                                          f"{spec.path} ({copy.revision} and {spec.revision}); one folder under "
                                          f"the data directory holds one revision")
        copy.tasks.append(task)
        if copy.allow_patterns is not None:
            copy.allow_patterns = (None if patterns is None
                                   else list(dict.fromkeys([*copy.allow_patterns, *patterns])))
    return list(copies.values())


def download_copy(copy: OfflineCopy, data_dir: Path) -> Path:
    """Fetch one repository into ``DATA_DIR/<hub id>``; ``huggingface_hub`` records each file's commit
    beside it, which :func:`harness.tasks.layout.local_revision` reads back."""
    target = data_dir / copy.path
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=copy.path, repo_type="dataset", revision=copy.revision,
                                   allow_patterns=copy.allow_patterns, local_dir=str(target))
    except Exception as exc:
        raise DatasetUnavailableError(
            f"dataset {copy.path!r} (tasks {', '.join(copy.tasks)}): the hub download into {target} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return Path(folder)


def load_part(task: str, spec: DatasetSpec, root: Path, split: str, config: str | None, data_files: str | None,
              label: str) -> tuple[Any, PartFiles]:
    """One config/split read on its own, whatever else the copy holds or lacks."""
    import datasets

    try:
        found = part_files(root, split, config, data_files)
    except LayoutError as exc:
        raise DatasetUnavailableError(f"task {task!r}: cannot read {label} of {spec.path}: {exc}") from None
    # The Arrow cache is keyed by these files' names, sizes and times, so a copy changed in place or
    # another copy of the same files is never read from a stale cache.
    cache_dir = str(Path(datasets.config.HF_DATASETS_CACHE) / "by-content" / _files_fingerprint(found.files))
    try:
        table = datasets.load_dataset(found.module, data_files={split: list(found.files)}, split=split,
                                      features=found.features, cache_dir=cache_dir, **found.builder_kwargs)
    except Exception as exc:
        raise DatasetUnavailableError(
            f"task {task!r}: cannot read {label} ({found.where}, {len(found.files)} {found.module} file(s) under "
            f"{root}) of {spec.path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return table, found


def _files_fingerprint(files: tuple[str, ...]) -> str:
    """A hash of the path, size and mtime of each file."""
    digest = hashlib.sha256()
    for file in files:
        stat = os.stat(file)
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _arrow_image_bytes(table: Any, row: int, column: str, root: Path) -> bytes:
    value = table[row][column]
    if value is None:
        raise ValueError(f"column {column!r} is empty")
    if value.get("bytes"):
        return value["bytes"]
    if value.get("path"):
        path = Path(value["path"])
        return (path if path.is_absolute() else root / path).read_bytes()
    raise ValueError(f"column {column!r} holds neither bytes nor a path")


def _stored_names(table: Any, column: str, start: int = 0, stop: int | None = None) -> list[str | None]:
    """The file names an Arrow image column stored beside the bytes (rows start to stop),
    read from the ``path`` field alone, without touching the image bytes."""
    import pyarrow.compute as pc

    paths = pc.struct_field(table.data.column(column), "path")
    stop = len(paths) if stop is None else stop
    return paths.slice(start, stop - start).to_pylist()


class JoinedImages:
    """The images of a dataset's image table (:class:`~harness.tasks.config.ImageTable`), found by key.

    The table is memory-mapped by ``datasets``; only its key column is read into
    an index (key -> row, made on first use), and an image's bytes only when
    the image is asked for.
    """

    def __init__(self, task: str, spec: DatasetSpec, root: Path) -> None:
        import datasets

        self.spec = spec
        self.table_spec = table_spec = spec.image_table
        self.root = root
        self.where = f"{spec.path} image table (config={table_spec.config}, split={table_spec.split})"
        table, self.part = load_part(task, spec, root, table_spec.split, table_spec.config, table_spec.data_files,
                                     "the image table")
        for column in (table_spec.key, table_spec.image):
            if column not in table.column_names:
                raise DatasetUnavailableError(f"task {task!r}: the {self.where} has no column {column!r}; "
                                              f"its columns: {', '.join(table.column_names)}")
        if not isinstance(table.features[table_spec.image], datasets.Image):
            raise DatasetUnavailableError(f"task {task!r}: column {table_spec.image!r} of the {self.where} "
                                          f"is not an image column")
        self._table = table
        self._images = table.select_columns([table_spec.image]).cast_column(
            table_spec.image, datasets.Image(decode=False))
        self._index: dict[str, int] | None = None
        self._names: list[str | None] = []

    def _lookup(self) -> dict[str, int]:
        if self._index is None:
            keys = self._table.data.column(self.table_spec.key).to_pylist()
            index: dict[str, int] = {}
            for row, key in enumerate(keys):
                index.setdefault(str(key), row)  # a repeated key: the first row holds its image
            self._names = _stored_names(self._table, self.table_spec.image)
            self._index = index
        return self._index

    def ref(self, key: Any) -> ImageRef | None:
        """The image whose key is ``key``; reading one that the table lacks fails naming the key."""
        if key is None:
            return None
        origin = f"{self.where} {self.table_spec.key}={key}"
        row = self._lookup().get(str(key))
        if row is None:
            return LazyImage(partial(_missing_image, origin), origin)
        return LazyImage(partial(_arrow_image_bytes, self._images, row, self.table_spec.image, self.root), origin,
                         name=self._names[row])


def _base64_image(text: str) -> bytes:
    """A column that holds each image as base64 text (TSV-style exports)."""
    import base64
    import binascii

    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the image column does not hold base64 text ({exc})") from None


def _missing_image(origin: str) -> bytes:
    raise ValueError(f"no image with {origin}")


SOURCES.register("synthetic", "harness.synthetic.source:SyntheticSource")


@SOURCES.register("hub")
class HubSource(Source):
    def __init__(self, task: str, spec: DatasetSpec, fields: FieldMap, data_dir: Path | None) -> None:
        self.spec = spec
        self.fields = fields
        self.root, hub_revision = resolve_dataset_dir(task, spec, data_dir)
        self._parts: list[tuple[DatasetPart, Any]] = []
        files: list[str] = []
        for part in spec.parts:
            table, found = load_part(task, spec, self.root, part.split, part.config, part.data_files,
                                     f"part {part.label!r}")
            self._parts.append((part, table))
            files += found.files
        self._length = sum(len(t) for _, t in self._parts)
        self._joined = JoinedImages(task, spec, self.root) if spec.image_table is not None else None
        if self._joined is not None:
            files += self._joined.part.files
        self.revision = hub_revision or self._local_revision(task, files)

    def _local_revision(self, task: str, files: list[str]) -> str:
        found = local_revision(self.root, files)
        if found is not None and self.spec.revision is not None and found != self.spec.revision:
            log.warning("task %s: %s holds revision %s, not the pinned %s; the results record %s", task, self.root,
                        found, self.spec.revision, found)
        return found or "local"

    def __len__(self) -> int:
        return self._length

    def _image_column(self, table: Any) -> tuple[str | None, bool]:
        """The image column and whether it is an Arrow image feature (else a file name)."""
        import datasets

        column = self.fields.image
        if column is None or column not in table.column_names:
            return None, False
        return column, isinstance(table.features[column], datasets.Image)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[RawRow]:
        import datasets

        stop = self._length if stop is None else min(stop, self._length)
        offset = 0
        for part, table in self._parts:
            lo, hi = max(start - offset, 0), min(stop - offset, len(table))
            if lo < hi:
                image_column, is_arrow_image = self._image_column(table)
                # Every image feature stays out of the text columns, not only the task's image:
                # iterating would otherwise decode e.g. RoboSpatial's depth and mask for every row.
                text_columns = [c for c in table.column_names if not isinstance(table.features[c], datasets.Image)]
                images, names = None, None
                if is_arrow_image:
                    images = table.select_columns([image_column]).cast_column(
                        image_column, datasets.Image(decode=False))
                    names = _stored_names(table, image_column, lo, hi)
                text = table.select_columns(text_columns).select(range(lo, hi))
                position = lo
                for batch in text.iter(batch_size=1024):
                    for values in zip(*batch.values()):
                        data = dict(zip(batch.keys(), values))
                        name = names[position - lo] if names is not None else None
                        yield RawRow(offset + position, part, position, data,
                                     self._image_ref(part, position, data, image_column, images, name))
                        position += 1
            offset += len(table)
            if offset >= stop:
                return

    def keys(self, field: str | None, start: int = 0, stop: int | None = None) -> Iterator[RowKey]:
        stop = self._length if stop is None else min(stop, self._length)
        offset = 0
        for part, table in self._parts:
            lo, hi = max(start - offset, 0), min(stop - offset, len(table))
            if lo < hi:
                if field and field in table.column_names:  # the id column alone
                    batches = table.select_columns([field]).select(range(lo, hi)).iter(batch_size=4096)
                    values = (value for batch in batches for value in batch[field])
                else:
                    values = (None for _ in range(lo, hi))
                for position, value in enumerate(values, start=lo):
                    yield RowKey(offset + position, part, position, value)
            offset += len(table)
            if offset >= stop:
                return

    def _image_ref(self, part: DatasetPart, position: int, data: dict, column: str | None,
                   images: Any, stored_name: str | None = None) -> ImageRef | None:
        origin = f"{self.spec.path}[{part.label}] row {position}"
        if self._joined is not None:
            return self._joined.ref(data.get(self.fields.image) if self.fields.image else None)
        if images is not None:
            return LazyImage(partial(_arrow_image_bytes, images, position, column, self.root), origin,
                             name=stored_name)
        name = data.get(column) if column else None
        if name and self.spec.options.get("image_encoding") == "base64":
            return LazyImage(partial(_base64_image, name), origin)
        local = str(self.root / (self.spec.image_root or "") / name) if name else None
        url = data.get(self.fields.image_url) if self.fields.image_url else None
        if url:
            return UrlImage(url=url, cache_dir=str(image_cache_dir()), local_path=local)
        return FileImage(local) if local else None
