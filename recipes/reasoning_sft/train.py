"""Supervised fine-tuning on the verifier-filtered programs (the SFT baseline of Tables 6 and 9).

    accelerate launch --config_file recipes/reasoning_grpo_trl/accelerate_fsdp.yaml \
        recipes/reasoning_sft/train.py --config recipes/reasoning_sft/train.yaml [--set key=value ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.training.recipe_config import recipe_arguments
from harness.training.trl_recipes import load_sft_recipe, run_sft


def main(argv: Sequence[str] | None = None) -> int:
    config, overrides = recipe_arguments(__doc__, "SFT", "sft.learning_rate=5e-6", argv)

    recipe = load_sft_recipe(config, overrides)
    outcome = run_sft(recipe)
    losses = [entry["loss"] for entry in outcome["log_history"] if "loss" in entry]
    if losses:
        print(f"{len(losses)} logged steps; loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"model saved in {recipe.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
