"""The training-data-size ablation (Table 5): data, training and evaluation per size, then the table.

    python recipes/ablation_data_size/run.py --config recipes/ablation_data_size/config.yaml [--trainer trl|verl]
        [--sizes 40,160] [--dry-run] [--table-only] [--set key=value ...]

Steps that finished (their command exited with success: <work_dir>/done/) are skipped, so the
same command resumes a killed ablation. The table (<work_dir>/table5.md) is written from the
evaluations' results.json files.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

from harness.training.ablation import ablation_parser, describe, load_plan, plan_steps, run_steps, write_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = ablation_parser(__doc__)
    parser.add_argument("--trainer", choices=["trl", "verl"], help="override the config's trainer")
    parser.add_argument("--sizes", help="comma-separated sizes (default: the config's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = list(args.set)
    if args.trainer:
        overrides.append(f"trainer={args.trainer}")
    if args.sizes:
        overrides.append(f"sizes=[{args.sizes}]")
    plan = load_plan(args.config, overrides)
    if not args.table_only:
        if args.dry_run:
            print(f"# per size: {json.dumps(describe(plan))}")
        commands = run_steps(plan_steps(plan), plan.markers, dry_run=args.dry_run)
        if args.dry_run:
            print("\n".join(commands))
    if args.dry_run:
        print(f"# then: the table from {plan.work_dir}/eval/n*/results.json into {plan.work_dir}/table5.md")
        return 0
    print(write_table(plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
