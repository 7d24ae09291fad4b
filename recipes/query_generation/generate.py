"""Generate spatial-reasoning queries for a folder of unlabeled images (see README.md).

    python recipes/query_generation/generate.py IMAGES_DIR --out queries.jsonl [any generate-queries flag]

A thin wrapper: ``python -m harness generate-queries`` with this folder's
config.yaml unless another ``--config`` is given. The work is done by
``harness.training.querygen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.cli import main

CONFIG = Path(__file__).with_name("config.yaml")

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args += ["--config", str(CONFIG)]
    sys.exit(main(["generate-queries", *args]))
