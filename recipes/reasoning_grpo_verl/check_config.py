"""Refuse a verl launch whose reward is not ours (run by train.sh before training).

    python recipes/reasoning_grpo_verl/check_config.py [--compose auto|always|never] -- OVERRIDE ...
    python recipes/reasoning_grpo_verl/check_config.py --final-config outputs/<date>/<time>/.hydra/config.yaml

Checks that reward.custom_reward_function points at harness/training/verl_reward.py's
compute_score (loaded as verl loads it) with a reward YAML that loads, that the reward
manager calls it per sample (naive or rate_limited), and that no legacy key verl 0.9
silently ignores (top-level custom_reward_function.*, reward_model.*, data.system_prompt)
is set. Exit status 0: OK; 1: refused (the reasons are printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from harness.training.verl_checks import check_file, check_overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compose", choices=["auto", "always", "never"], default="auto",
                        help="compose the overrides with verl's defaults (auto: when verl and Hydra are installed)")
    parser.add_argument("--final-config", type=Path, metavar="FILE",
                        help="check a final configuration (YAML or JSON) instead of overrides")
    parser.add_argument("overrides", nargs="*", help="the Hydra overrides passed to verl.trainer.main_ppo")
    args = parser.parse_args(argv)
    if args.final_config and args.overrides:
        parser.error("give either --final-config or overrides, not both")
    report = check_file(args.final_config) if args.final_config else check_overrides(args.overrides, args.compose)
    print(report.render(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
