"""One dataclass that interprets every task YAML in ``tasks/``."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from harness.types import AnswerType


class TaskConfigError(ValueError):
    """A malformed task file; the message names the file and the key."""


@dataclass(frozen=True)
class DatasetPart:
    """One config/split (or one file) of a dataset; parts are read in order."""

    split: str
    config: str | None = None
    data_files: str | None = None  # a file inside the dataset repository, for json/jsonl data
    name: str | None = None  # subset label in results; defaults to the config, else the split

    @property
    def label(self) -> str:
        return self.name or self.config or self.split


@dataclass(frozen=True)
class ImageTable:
    """Images kept in another config (or file) of the same dataset, joined to the rows by a key.

    The rows' image field (``fields.image``) then holds a key, and the table row
    whose ``key`` column has that value holds the picture in its ``image``
    column (lmms-lab/GQA: a question's ``imageId`` is the ``id`` of a row of the
    ``train_balanced_images`` config). Only the key column is read up front, into
    an index from key to row; each image is read when a system asks for it.
    """

    split: str
    config: str | None = None
    data_files: str | None = None
    key: str = "id"
    image: str = "image"


@dataclass(frozen=True)
class DatasetSpec:
    path: str  # hub id; also the folder under --data-dir that holds the same files
    kind: str = "hub"
    revision: str | None = None  # None: resolved at load time and recorded in the results
    parts: tuple[DatasetPart, ...] = (DatasetPart(split="test"),)
    hub_files: tuple[str, ...] | None = None  # allow-patterns, so only the needed files are fetched
    image_root: str | None = None  # folder (inside the dataset folder) of image files named by the image field
    options: dict[str, Any] = field(default_factory=dict)  # source-specific settings
    image_table: ImageTable | None = None  # images in another config, joined by key (hub sources)


@dataclass(frozen=True)
class FieldMap:
    """Which dataset column plays which role."""

    question: str = "question"
    answer: str | None = "answer"
    image: str | None = "image"
    image_url: str | None = None  # download fallback when the image file is not local
    id: str | None = None  # None: the row number
    cluster: str | None = None  # questions with the same value share an image
    answer_type: str | None = None  # per-row answer type column
    choices: str | None = None


@dataclass(frozen=True)
class TaskConfig:
    task: str
    dataset: DatasetSpec
    version: int = 1
    description: str = ""
    tags: tuple[str, ...] = ()
    fields: FieldMap = FieldMap()
    rows: tuple[int, int] | None = None  # [start, stop) over the concatenated parts
    formatter: str = "default"
    question_template: str = "{question}"
    answer_type: str = AnswerType.WORD
    answers: bool = True  # False: training questions, answers withheld
    compat: str | None = None  # paper-compatible scoring rule
    metric: str = "accuracy"
    size: int | None = None  # expected number of samples, checked at load time
    notes: str = ""
    source_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that defines the samples and their scoring."""
        data = self.to_dict()
        for key in ("description", "notes", "source_file", "tags"):
            data.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_keys(where: str, data: dict, cls: type) -> None:
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source_file"]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TaskConfigError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(known)}")


def _expect(where: str, key: str, value: Any, types: type | tuple[type, ...]) -> Any:
    wants_bool = bool in (types if isinstance(types, tuple) else (types,))
    if not isinstance(value, types) or (isinstance(value, bool) and not wants_bool):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise TaskConfigError(f"{where}: key {key!r} must be {names}, got {type(value).__name__} {value!r}")
    return value


def _parse_part(where: str, data: Any) -> DatasetPart:
    _expect(where, "dataset.parts[]", data, dict)
    _check_keys(f"{where} dataset.parts", data, DatasetPart)
    if "split" not in data:
        raise TaskConfigError(f"{where}: every entry of dataset.parts needs a 'split'")
    return DatasetPart(**{k: str(v) if v is not None else None for k, v in data.items()})


def parse_task_config(data: Any, source_file: str = "<dict>") -> TaskConfig:
    where = source_file
    _expect(where, "<top level>", data, dict)
    _check_keys(where, data, TaskConfig)
    for required in ("task", "dataset"):
        if required not in data:
            raise TaskConfigError(f"{where}: missing required key {required!r}")
    _expect(where, "task", data["task"], str)

    ds = dict(_expect(where, "dataset", data["dataset"], dict))
    _check_keys(f"{where} dataset", ds, DatasetSpec)
    if "path" not in ds:
        raise TaskConfigError(f"{where}: missing required key 'dataset.path'")
    parts = ds.pop("parts", None)
    if parts is not None:
        ds["parts"] = tuple(_parse_part(where, p) for p in _expect(where, "dataset.parts", parts, list))
    if ds.get("hub_files") is not None:
        ds["hub_files"] = tuple(_expect(where, "dataset.hub_files", ds["hub_files"], list))
    if ds.get("options") is not None:
        _expect(where, "dataset.options", ds["options"], dict)
    if ds.get("image_table") is not None:
        table = _expect(where, "dataset.image_table", ds["image_table"], dict)
        _check_keys(f"{where} dataset.image_table", table, ImageTable)
        if "split" not in table:
            raise TaskConfigError(f"{where}: dataset.image_table needs a 'split'")
        ds["image_table"] = ImageTable(**{k: str(v) if v is not None else None for k, v in table.items()})
    dataset = DatasetSpec(**ds)

    kwargs = {k: v for k, v in data.items() if k not in ("dataset",)}
    if "fields" in kwargs:
        fields_data = _expect(where, "fields", kwargs["fields"], dict)
        _check_keys(f"{where} fields", fields_data, FieldMap)
        kwargs["fields"] = FieldMap(**fields_data)
    if "rows" in kwargs and kwargs["rows"] is not None:
        rows = _expect(where, "rows", kwargs["rows"], list)
        if len(rows) != 2 or not all(type(r) is int for r in rows) or rows[0] >= rows[1]:
            raise TaskConfigError(f"{where}: key 'rows' must be [start, stop] with start < stop, got {rows!r}")
        kwargs["rows"] = (rows[0], rows[1])
    if "tags" in kwargs:
        kwargs["tags"] = tuple(_expect(where, "tags", kwargs["tags"], list))
    answer_type = kwargs.get("answer_type", AnswerType.WORD)
    if answer_type not in AnswerType.ALL:
        raise TaskConfigError(f"{where}: key 'answer_type' must be one of {', '.join(AnswerType.ALL)}, got {answer_type!r}")
    for key, types in (("version", (int, str)), ("answers", bool), ("size", int), ("question_template", str),
                       ("formatter", str), ("compat", str), ("metric", str)):
        if kwargs.get(key) is not None:
            _expect(where, key, kwargs[key], types)
    return TaskConfig(dataset=dataset, source_file=source_file, **kwargs)
