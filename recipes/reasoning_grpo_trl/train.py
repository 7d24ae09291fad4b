"""GRPO for the program writer with TRL (VALOR-RL on one machine). See README.md.

    accelerate launch --config_file recipes/reasoning_grpo_trl/accelerate_fsdp.yaml \
        recipes/reasoning_grpo_trl/train.py --config recipes/reasoning_grpo_trl/config.yaml [--set key=value ...]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from harness.training.recipe_config import recipe_arguments
from harness.training.trl_recipes import load_grpo_recipe, run_grpo


def main(argv: Sequence[str] | None = None) -> int:
    config, overrides = recipe_arguments(__doc__, "recipe", "grpo.learning_rate=2e-6", argv)

    recipe = load_grpo_recipe(config, overrides)
    outcome = run_grpo(recipe)
    steps = [entry for entry in outcome["log_history"] if "reward" in entry]
    if steps:
        last = steps[-1]
        parts = {k.split("/")[1]: round(v, 3) for k, v in last.items() if k.startswith("rewards/") and k.endswith("/mean")}
        print(f"step {last.get('step')}: reward {last['reward']:.3f}, parts {parts}")
    print(f"model saved in {recipe.output_dir}; reward counters: {json.dumps(outcome['reward_stats'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
