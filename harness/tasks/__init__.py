"""The task registry: every ``tasks/*.yaml`` file, plus any folder passed with --include-path."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from harness.protocol import HARNESS
from harness.registry import UnknownNameError, read_yaml_files, unknown_name_message
from harness.scoring.compat import COMPAT_RULES
from harness.tasks.config import TaskConfig, TaskConfigError, parse_task_config
from harness.tasks.formats import FORMATTERS
from harness.tasks.sources import SOURCES, data_dir_from_env
from harness.tasks.task import Task

__all__ = ["PAPER_TAG", "TASKS_DIR", "Task", "TaskConfig", "TaskConfigError", "TaskRegistry"]

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
PAPER_TAG = "paper"  # `--tasks all` selects the paper's eight benchmarks


class TaskRegistry:
    def __init__(self, include_paths: Iterable[str | Path] = ()) -> None:
        self._configs: dict[str, TaskConfig] = {}
        for path, data in read_yaml_files((TASKS_DIR, *map(Path, include_paths)), "task", TaskConfigError):
            self._add(parse_task_config(data, source_file=str(path)))

    def _add(self, config: TaskConfig) -> None:
        where = config.source_file
        if config.task in self._configs:
            raise TaskConfigError(f"{where}: task {config.task!r} is already defined in "
                                  f"{self._configs[config.task].source_file}")
        for key, name, registry in (("formatter", config.formatter, FORMATTERS),
                                    ("compat", config.compat, COMPAT_RULES),
                                    ("dataset.kind", config.dataset.kind, SOURCES)):
            if name is not None and name not in registry:
                raise TaskConfigError(f"{where}: key {key!r}: {unknown_name_message(registry.kind, name, registry.names())}")
        self._configs[config.task] = config

    def names(self) -> list[str]:
        return sorted(self._configs)

    def config(self, name: str) -> TaskConfig:
        if name not in self._configs:
            raise UnknownNameError(unknown_name_message("task", name, self._configs))
        return self._configs[name]

    def expand(self, spec: str) -> list[str]:
        """``a,b`` -> [a, b]; ``all`` -> the paper's benchmarks; a tag -> its tasks."""
        names: list[str] = []
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            if item == "all":
                item = PAPER_TAG
            tagged = [n for n, c in sorted(self._configs.items()) if item in c.tags]
            if item in self._configs:
                selected = [item]
            elif tagged:
                selected = tagged
            else:
                raise UnknownNameError(unknown_name_message("task", item, self._configs))
            names += [n for n in selected if n not in names]
        if not names:
            raise ValueError("no tasks selected")
        return names

    def task(self, name: str, data_dir: str | Path | None = None, protocol: str = HARNESS) -> Task:
        return Task(self.config(name), data_dir_from_env(data_dir), protocol)
