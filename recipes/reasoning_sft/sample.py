"""Sample programs from the base model, score them with the verifier reward, keep the good ones.

    python recipes/reasoning_sft/sample.py --config recipes/reasoning_sft/sample.yaml [--set key=value ...]

Resumable: run the same command again after a crash. See README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.training.recipe_config import recipe_arguments
from harness.training.sft_sampling import SFT_FILE, load_sampling_recipe, sample_sft_data


def main(argv: Sequence[str] | None = None) -> int:
    config, overrides = recipe_arguments(__doc__, "sampling", "samples_per_query=4", argv)

    recipe = load_sampling_recipe(config, overrides)
    summary = sample_sft_data(recipe)
    print(f"{summary.sampled} replies scored for {summary.queries} queries (mean reward {summary.mean_reward:.3f}); "
          f"{summary.kept} kept with reward >= {recipe.min_reward} ({summary.duplicates} duplicates dropped); "
          f"{summary.failed} model calls failed, {summary.verifier_failures} verifier judgements failed")
    print(f"SFT data: {Path(recipe.output_dir) / SFT_FILE}")
    return 0 if summary.kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
