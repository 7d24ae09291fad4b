"""Detector training is seeded: two runs of one config give the same loss curve, to the bit.

A tiny random GroundingDINO overfits a few synthetic pseudo-labelled images
(``harness train-detector``'s trainer, the CPU test recipe with a larger
learning rate so the loss moves), with Open-GroundingDino's regularisation on
(stochastic depth 0.2 in the backbone, 0.1 in the fusion layers: the random
masks a seed must fix). Runs A and B share the seed, run C takes another.

Targets: A and B equal at every step; C differs (the seed matters); the loss falls.

    python benchmarks/detector_seeded_training.py [--epochs 6] [--images 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from pseudo_labels import write_pseudo_labels  # noqa: E402
from tiny_models import save_grounding_dino  # noqa: E402

from harness.grounding.finetune import DetectorTrainer, load_config  # noqa: E402

RECIPE = REPO / "recipes" / "grounding_sft" / "config_cpu_tiny.yaml"


def losses(root: Path, labels: Path, checkpoint: Path, name: str, seed: int, epochs: int) -> list[float]:
    out = root / name
    DetectorTrainer(load_config(RECIPE, [f"data=[{labels}]", f"output_dir={out}", f"checkpoint={checkpoint}",
                                         f"epochs={epochs}", f"seed={seed}", "learning_rate=1.0e-3",
                                         "lr_step_epochs=100"])).train()
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = write_pseudo_labels(root / "labels", {"vsr_train": args.images - args.images // 2,
                                                       "generated": args.images // 2})
        checkpoint = save_grounding_dino(root / "gdino")
        a, b = losses(root, labels, checkpoint, "a", 0, args.epochs), losses(root, labels, checkpoint, "b", 0, args.epochs)
        c = losses(root, labels, checkpoint, "c", 1, args.epochs)
    print(f"tiny random GroundingDINO, {args.images} images, batch 2 (micro-batch 1 x 2), lr 1e-3, "
          f"drop-path 0.2 / fusion 0.1, {args.epochs} epochs")
    print("| step | loss, seed 0 (A) | loss, seed 0 (B) | A == B | loss, seed 1 (C) |")
    print("|---:|---:|---:|:---:|---:|")
    for step, (x, y, z) in enumerate(zip(a, b, c), 1):
        print(f"| {step} | {x:.6f} | {y:.6f} | {'yes' if x == y else 'NO'} | {z:.6f} |")
    print(f"\nA == B at every step: {a == b}; C differs: {a != c}; loss fell from {a[0]:.4f} to {a[-1]:.4f}")
    return 0 if a == b else 1


if __name__ == "__main__":
    raise SystemExit(main())
