"""A task: a configured benchmark that yields samples lazily, one at a time."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.protocol import HARNESS, PAPER, check_protocol
from harness.tasks.config import TaskConfig
from harness.tasks.formats import FORMATTERS, RowFormatError
from harness.tasks.paper_formats import PAPER_FORMATTERS
from harness.tasks.sources import SOURCES, RawRow, Source
from harness.types import Sample

log = logging.getLogger(__name__)


def resolve_limit(limit: float | None, size: int) -> int:
    """``--limit``: a count, or a fraction of the task (rounded up) when below 1."""
    if limit is None:
        return size
    if limit < 0:
        raise ValueError(f"--limit must not be negative, got {limit}")
    if limit < 1:
        return math.ceil(size * limit)
    return min(int(limit), size)


class Task:
    """A benchmark under one protocol: ``paper`` asks each question and maps each gold
    answer as the original evaluation did (:mod:`harness.tasks.paper_formats`, chosen
    by the task's ``compat`` rule), ``harness`` with the task's own ``formatter``."""

    def __init__(self, config: TaskConfig, data_dir: Path | None = None, protocol: str = HARNESS) -> None:
        self.config = config
        self.data_dir = data_dir
        self.protocol = check_protocol(protocol)
        self._source: Source | None = None

    @property
    def formatter(self):
        if self.protocol == PAPER and self.config.answers and self.config.compat in PAPER_FORMATTERS:
            return PAPER_FORMATTERS.get(self.config.compat)
        return FORMATTERS.get(self.config.formatter)

    @property
    def name(self) -> str:
        return self.config.task

    @property
    def source(self) -> Source:
        if self._source is None:
            source_cls = SOURCES.get(self.config.dataset.kind)
            self._source = source_cls(self.name, self.config.dataset, self.config.fields, self.data_dir)
            expected = self.config.size
            if expected is not None and len(self) != expected:
                log.warning("task %s: expected %d samples but the dataset gives %d; the dataset may have "
                            "changed (the results record its revision)", self.name, expected, len(self))
        return self._source

    def fingerprint(self) -> str:
        """The configuration's hash, and the protocol when it changes the questions."""
        fingerprint = self.config.fingerprint()
        return f"{fingerprint}-{self.protocol}" if self.protocol != HARNESS else fingerprint

    @property
    def revision(self) -> str:
        return self.source.revision

    def _bounds(self) -> tuple[int, int]:
        total = len(self.source)
        if self.config.rows is None:
            return 0, total
        start, stop = self.config.rows
        if start >= total:
            raise ValueError(f"task {self.name}: rows {list(self.config.rows)} start past the end of the "
                             f"dataset ({total} rows)")
        return start, min(stop, total)

    def __len__(self) -> int:
        start, stop = self._bounds()
        return stop - start

    def samples(self, limit: float | None = None) -> Iterator[Sample]:
        """Samples in dataset order; a row that cannot be read becomes a sample with ``error`` set,
        and so does a row whose id an earlier row has (renamed ``ID#rowN``: ids are unique)."""
        start, stop = self._range(limit)
        formatter = self.formatter
        multi_part = len(self.config.dataset.parts) > 1
        renamed = self._renamed(start, stop)
        for raw in self.source.rows(start, stop):
            sample = self._to_sample(raw, formatter, multi_part)
            if raw.index in renamed:
                sample.error = f"sample {sample.id}: duplicate id in task {self.name}"
                sample.id = renamed[raw.index]
            yield sample

    def ids(self, limit: float | None = None) -> list[str]:
        return list(self.iter_ids(limit))

    def iter_ids(self, limit: float | None = None) -> Iterator[str]:
        """The ids :meth:`samples` gives, read without formatting a sample."""
        start, stop = self._range(limit)
        renamed = self._renamed(start, stop)
        for index, sample_id in self._base_ids(start, stop):
            yield renamed.get(index, sample_id)

    def _range(self, limit: float | None) -> tuple[int, int]:
        start, stop = self._bounds()
        return start, start + resolve_limit(limit, stop - start)

    def _base_ids(self, start: int, stop: int) -> Iterator[tuple[int, str]]:
        """(row index, id before duplicates are renamed) of each row."""
        field = self.config.fields.id
        multi_part = len(self.config.dataset.parts) > 1
        for key in self.source.keys(field, start, stop):
            if field and key.value is not None:
                yield key.index, str(key.value)
            else:
                yield key.index, f"{key.part.label}/{key.part_index}" if multi_part and not field \
                    else str(key.part_index)

    def _renamed(self, start: int, stop: int) -> dict[int, str]:
        """The new id of each row whose id an earlier row has. Found in a first pass over the ids
        alone that keeps 8 bytes a row (their hashes), so that no set of every id is held while
        the samples are read; only when two hashes agree are the ids compared."""
        labels = [part.label for part in self.config.dataset.parts]
        if not self.config.fields.id and len(set(labels)) == len(labels):
            return {}  # ids are rows' positions within their parts: unique
        hashes = np.fromiter((hash(sample_id) for _, sample_id in self._base_ids(start, stop)), dtype=np.int64)
        if len(np.unique(hashes)) == len(hashes):
            return {}
        seen: set[str] = set()
        renamed = {}
        for index, sample_id in self._base_ids(start, stop):
            if sample_id in seen:
                sample_id = renamed[index] = f"{sample_id}#row{index}"
            seen.add(sample_id)
        return renamed

    def _sample_id(self, raw: RawRow, multi_part: bool) -> str:
        field = self.config.fields.id
        base = str(raw.data[field]) if field and raw.data.get(field) is not None else str(raw.part_index)
        return f"{raw.part.label}/{base}" if multi_part and not field else base

    def _to_sample(self, raw: RawRow, formatter, multi_part: bool) -> Sample:
        sample_id = self._sample_id(raw, multi_part)
        cluster_field = self.config.fields.cluster
        cluster = str(raw.data[cluster_field]) if cluster_field and raw.data.get(cluster_field) is not None else None
        try:
            formatted = formatter(raw.data, self.config)
        except RowFormatError as exc:
            question = raw.data.get(self.config.fields.question)
            return Sample(id=sample_id, task=self.name, question="" if question is None else str(question),
                          answer=None, answer_type=self.config.answer_type, image=raw.image, cluster=cluster,
                          subset=raw.part.label, error=f"sample {sample_id}: {exc}")
        return Sample(
            id=sample_id, task=self.name, question=formatted.question, answer=formatted.answer,
            answer_type=formatted.answer_type, image=raw.image, choices=formatted.choices, cluster=cluster,
            subset=formatted.subset or raw.part.label, compat_gold=formatted.compat_gold,
            meta={**formatted.meta, "compat": formatted.compat_meta},
        )
