"""The synthetic benchmark as a task's dataset source (``dataset.kind: synthetic``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from harness.synthetic import VERSION
from harness.synthetic.dataset import QUESTIONS, ensure_benchmark, normalize_options
from harness.tasks.config import DatasetSpec, FieldMap
from harness.tasks.sources import RawRow, Source
from harness.types import FileImage

PATH_COLUMNS = ("image", "scene_json", "depth")  # relative in questions.jsonl, absolute in the rows


class SyntheticSource(Source):
    """Rows are the benchmark's questions, generated on first use and cached.

    ``dataset.options`` holds the generator options (seed, scenes,
    questions_per_scene). A pre-built copy at ``DATA_DIR/<dataset.path>`` (a
    folder with questions.jsonl) is read instead when present.
    """

    def __init__(self, task: str, spec: DatasetSpec, fields: FieldMap, data_dir: Path | None) -> None:
        try:
            options = normalize_options(spec.options)
        except ValueError as exc:
            raise ValueError(f"task {task!r}: dataset.options: {exc}") from None
        local = data_dir / spec.path if data_dir is not None else None
        if local is not None and (local / QUESTIONS).is_file():
            self.root, self.revision = local, "local"
        else:
            self.root = ensure_benchmark(options)
            self.revision = (f"synthetic-v{VERSION} seed={options['seed']} scenes={options['scenes']} "
                             f"questions_per_scene={options['questions_per_scene']}")
        self.part = spec.parts[0]
        with open(self.root / QUESTIONS, encoding="utf-8") as lines:
            self._rows = [json.loads(line) for line in lines if line.strip()]

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[RawRow]:
        stop = len(self._rows) if stop is None else min(stop, len(self._rows))
        for index in range(max(start, 0), stop):
            data = dict(self._rows[index])
            for column in PATH_COLUMNS:
                if data.get(column):
                    data[column] = str(self.root / data[column])
            yield RawRow(index, self.part, index, data, FileImage(data["image"]))
