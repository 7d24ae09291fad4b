"""Fine-tune GroundingDINO on pseudo-labels (see README.md); the same as `python -m harness train-detector`.

    python recipes/grounding_sft/train.py --config recipes/grounding_sft/config.yaml [--set key=value ...] [--resume]
"""

from __future__ import annotations

import sys
from typing import Sequence

from harness.cli import main as harness_main


def main(argv: Sequence[str] | None = None) -> int:
    return harness_main(["train-detector", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
