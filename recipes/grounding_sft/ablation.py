"""Figure 7: detectors tuned on growing amounts of pseudo-labels, the same programs replayed with each.

    python recipes/grounding_sft/ablation.py --config recipes/grounding_sft/ablation.yaml [--amounts 0.25,1.0]
        [--dry-run] [--table-only] [--set key=value ...]

Steps that finished (their command exited with success: <work_dir>/done/) are skipped, so the
same command resumes a killed ablation. The
table (<work_dir>/figure7.md and figure7.csv) is written from the evaluations' results.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from harness.grounding.ablation import load_plan, plan_steps, write_table
from harness.training.ablation import ablation_parser, run_steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = ablation_parser(__doc__)
    parser.add_argument("--amounts", help="comma-separated shares (0.25) or image counts (500); default: the config's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = list(args.set) + ([f"amounts=[{args.amounts}]"] if args.amounts else [])
    plan = load_plan(args.config, overrides)
    if args.dry_run:
        print("\n".join(run_steps(plan_steps(plan), Path(plan.work_dir) / "done", dry_run=True)))
        print(f"# then: the table from {plan.work_dir}/eval/*/results.json into {plan.work_dir}/figure7.md and .csv")
        return 0
    if not args.table_only:
        run_steps(plan_steps(plan), Path(plan.work_dir) / "done")
    print(write_table(plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
