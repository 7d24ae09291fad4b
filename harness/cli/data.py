"""Data commands: download-data (offline copies of the tasks' datasets)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.tasks import TaskRegistry


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("download-data", help="copy the hub datasets of tasks into a data directory, for "
                                             "machines without internet")
    p.add_argument("--tasks", default="all", help="comma list of task names or tags (default: all)")
    p.add_argument("--data-dir", required=True, help="folder that --data-dir / HARNESS_DATA_DIR will name")
    p.add_argument("--include-path", action="append", default=[], help="extra folder of task YAMLs")
    p.add_argument("--check", action="store_true", help="after the download, load each task from the copy")


def cmd_download_data(args: argparse.Namespace) -> int:
    from harness.tasks.sources import download_copy, offline_copies

    registry = TaskRegistry(args.include_path)
    names = registry.expand(args.tasks)
    specs = {n: registry.config(n).dataset for n in names if registry.config(n).dataset.kind == "hub"}
    data_dir = Path(args.data_dir).expanduser()
    for copy in offline_copies(specs):
        pinned = copy.revision or "the main branch (unpinned)"
        what = "every file" if copy.allow_patterns is None else ", ".join(copy.allow_patterns)
        print(f"{copy.path} @ {pinned}: {what} -> {data_dir / copy.path}", flush=True)
        download_copy(copy, data_dir)
    for name, spec in specs.items():
        config = registry.config(name)
        if spec.image_root and not config.fields.image_url:  # image files the repository does not hold
            print(f"note: task {name} reads its images from {data_dir / spec.path / spec.image_root}, which the "
                  f"download does not fill: see the notes of {config.source_file}")
    if args.check:
        for name in specs:
            task = registry.task(name, data_dir)
            print(f"{name}: {len(task)} samples, revision {task.revision}")
    return 0


COMMANDS = {"download-data": cmd_download_data}
