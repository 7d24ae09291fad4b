"""Is a detection independent of the other requests of its batch? Alone vs in a batch.

GroundingDINO's Swin backbone reads the zero padding of a smaller image in a
padded batch, and padded caption tokens shift the text features, so a padded
batch changes each image's detections. The detector therefore batches only
requests whose resized images and tokenised captions have the same shapes.
This measures, over every query's token probabilities and normalised boxes,
the largest difference between each request answered alone and the same
request answered:

(a) in one call with requests of other image sizes and caption lengths (what the
    tool server sends: grouped by shape, no padding);
(b) in one forward pass with requests of the same shapes (batch ``--batch``);
(c) in one naively padded forward pass (what the detector no longer does).

Target: (a) and (b) 0 or float noise (below 1e-5); (c) is shown for scale.
The default model is a tiny random GroundingDINO; ``--checkpoint`` takes a real one.

    python benchmarks/detector_batching.py [--checkpoint DIR] [--batch 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import save_grounding_dino  # noqa: E402

from harness.tools.detector import GroundingDinoDetector, caption_for  # noqa: E402

SIZES = [(160, 120), (100, 200), (300, 90), (160, 120), (90, 90), (160, 120), (200, 150), (120, 160)]
PHRASES = [["red cube", "blue ball"], ["cat"], ["green cone", "a dog", "the chair"], ["red cube", "blue ball"],
           ["mug"], ["the chair", "red car"], ["yellow mug", "purple box"], ["a cat", "the table"]]


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def difference(a: list, b: list) -> tuple[float, float]:
    """Largest |difference| of the token probabilities and of the boxes over paired results."""
    probs = max(float(np.abs(x[0][:, :y[0].shape[1]] - y[0][:, :x[0].shape[1]]).max()) for x, y in zip(a, b))
    boxes = max(float(np.abs(x[1] - y[1]).max()) for x, y in zip(a, b))
    return probs, boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a GroundingDINO checkpoint (default: a tiny random one)")
    parser.add_argument("--batch", type=int, default=8, help="requests of the same shapes in one pass")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(save_grounding_dino(Path(tmp) / "gdino"))
        detector = GroundingDinoDetector(checkpoint=checkpoint, device=args.device)
        pairs = [(noise(size, seed), caption_for(phrases)[0])
                 for seed, (size, phrases) in enumerate(zip(SIZES, PHRASES))]
        alone = [detector.run([pair])[0] for pair in pairs]
        mixed = detector.run(pairs)
        same = [(noise(SIZES[0], 100 + i), caption_for(PHRASES[0])[0]) for i in range(args.batch)]
        same_alone = [detector.run([pair])[0] for pair in same]
        same_batch = detector.run(same)
        padded = detector._processor(images=[p[0] for p in pairs], text=[p[1] for p in pairs], return_tensors="pt",
                                     padding=True)
        padded = {k: v.to(detector._device) for k, v in padded.items()}
        with torch.inference_mode():
            out = detector._model(**padded)
        naive = [(p, b) for p, b in zip(torch.sigmoid(out.logits.float()).cpu().numpy(),
                                        out.pred_boxes.float().cpu().numpy())]
    rows = [("(a) mixed shapes, one call (grouped, no padding)", len(pairs), *difference(alone, mixed)),
            (f"(b) same shapes, one forward pass of {args.batch}", args.batch, *difference(same_alone, same_batch)),
            ("(c) mixed shapes, one padded pass (not used)", len(pairs), *difference(alone, naive))]
    print(f"detector: {'tiny random GroundingDINO' if not args.checkpoint else args.checkpoint} on {args.device}")
    print("| batch | requests | max |prob difference| | max |box difference| |")
    print("|---|---:|---:|---:|")
    for name, n, probs, boxes in rows:
        print(f"| {name} | {n} | {probs:.2e} | {boxes:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
