"""Where a task's rows come from: the Hugging Face hub or a local copy of the same files.

Both paths end in a local folder holding the dataset repository's files (a
hub snapshot, or ``DATA_DIR/<hub id>`` on an offline machine), read with
``datasets``. Rows are read in batches without their images; an image is read
from the memory-mapped Arrow table (or its file) only when a system asks.
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


class Source:
    """A task's rows, in a fixed order."""

    revision: str = "unknown"

    def __len__(self) -> int:
        raise NotImplementedError

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[RawRow]:
        raise NotImplementedError


SOURCES: Registry[type[Source]] = Registry("dataset source kind")


def data_dir_from_env(data_dir: str | Path | None) -> Path | None:
    value = data_dir or os.environ.get("HARNESS_DATA_DIR")
    return Path(value).expanduser() if value else None


def image_cache_dir() -> Path:
    from harness.cache import default_cache_dir

    return default_cache_dir() / "images"


def resolve_dataset_dir(task: str, spec: DatasetSpec, data_dir: Path | None) -> tuple[Path, str]:
    """The local folder with the dataset's files, and the revision it holds."""
    if data_dir is not None:
        local = data_dir / spec.path
        if local.is_dir():
            return local, "local"
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id=spec.path, repo_type="dataset", revision=spec.revision,
            allow_patterns=list(spec.hub_files) if spec.hub_files else None,
        )
    except Exception as exc:
        where = f"{data_dir / spec.path} does not exist and " if data_dir else "no --data-dir / HARNESS_DATA_DIR is set and "
        raise DatasetUnavailableError(
            f"task {task!r}: dataset {spec.path!r} is not available: {where}the hub download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). On an offline machine, copy the "
            f"dataset repository's files to DATA_DIR/{spec.path} and pass --data-dir DATA_DIR."
        ) from exc
    return Path(folder), Path(folder).name  # snapshot folders are named by commit hash


_DATA_SUFFIXES = {".parquet", ".arrow", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".md", ".zip", ".gz", ".tar"}


def _files_fingerprint(root: Path) -> str:
    """A hash of the path, size and mtime of each data file under ``root`` (image files are skipped)."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix.lower() in _DATA_SUFFIXES:
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
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

    def __init__(self, task: str, spec: DatasetSpec, root: Path, cache_dir: str) -> None:
        import datasets

        self.spec = spec
        self.table_spec = table_spec = spec.image_table
        self.root = root
        data_files = {table_spec.split: table_spec.data_files} if table_spec.data_files else None
        self.where = f"{spec.path} image table (config={table_spec.config}, split={table_spec.split})"
        try:
            table = datasets.load_dataset(str(root), name=table_spec.config, data_files=data_files,
                                          split=table_spec.split, cache_dir=cache_dir)
        except Exception as exc:
            raise DatasetUnavailableError(f"task {task!r}: cannot read the {self.where} from {root}: {exc}") from exc
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


def _missing_image(origin: str) -> bytes:
    raise ValueError(f"no image with {origin}")


SOURCES.register("synthetic", "harness.synthetic.source:SyntheticSource")


@SOURCES.register("hub")
class HubSource(Source):
    def __init__(self, task: str, spec: DatasetSpec, fields: FieldMap, data_dir: Path | None) -> None:
        import datasets

        self.spec = spec
        self.fields = fields
        self.root, self.revision = resolve_dataset_dir(task, spec, data_dir)
        self._parts: list[tuple[DatasetPart, Any]] = []
        # datasets keys its cache of a folder whose README declares configs (BLINK) by the README
        # alone, so another copy or revision of the files would be read from the stale cache.
        cache_dir = str(Path(datasets.config.HF_DATASETS_CACHE) / "by-content" / _files_fingerprint(self.root))
        for part in spec.parts:
            data_files = {part.split: part.data_files} if part.data_files else None
            try:
                table = datasets.load_dataset(str(self.root), name=part.config, data_files=data_files,
                                              split=part.split, cache_dir=cache_dir)
            except Exception as exc:
                raise DatasetUnavailableError(
                    f"task {task!r}: cannot read part {part.label!r} (config={part.config}, split={part.split}, "
                    f"data_files={part.data_files}) of {spec.path} from {self.root}: {exc}"
                ) from exc
            self._parts.append((part, table))
        self._length = sum(len(t) for _, t in self._parts)
        self._joined = JoinedImages(task, spec, self.root, cache_dir) if spec.image_table is not None else None

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

    def _image_ref(self, part: DatasetPart, position: int, data: dict, column: str | None,
                   images: Any, stored_name: str | None = None) -> ImageRef | None:
        origin = f"{self.spec.path}[{part.label}] row {position}"
        if self._joined is not None:
            return self._joined.ref(data.get(self.fields.image) if self.fields.image else None)
        if images is not None:
            return LazyImage(partial(_arrow_image_bytes, images, position, column, self.root), origin,
                             name=stored_name)
        name = data.get(column) if column else None
        local = str(self.root / (self.spec.image_root or "") / name) if name else None
        url = data.get(self.fields.image_url) if self.fields.image_url else None
        if url:
            return UrlImage(url=url, cache_dir=str(image_cache_dir()), local_path=local)
        return FileImage(local) if local else None
