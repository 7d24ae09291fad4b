"""What the detector trainer feeds the model: which images an epoch draws, each image's
caption (its phrases plus sampled negatives) and its targets.

- **Sampling.** Sources (the ODVG lines' ``source``) are far from equal in size, so
  each draw first picks a source uniformly, then the next image of that source
  (each source's images in a shuffled order, reshuffled when used up). An epoch is
  as many draws as there are images. Everything is seeded by (seed, epoch), so a
  resumed run draws what the interrupted one would have.
- **Captions.** An image's phrases, plus negatives sampled from every phrase of the
  label maps up to ``max_phrases`` in all (Open-GroundingDino's negative class
  sampling), cut to what fits in the model's ``max_text_len`` tokens (negatives go
  first), then shuffled. The caption is written by the detector tool's own
  ``caption_for``, so training and inference see the same text.
- **Targets.** ``class_labels`` is each box's phrase index in its own caption;
  boxes are normalised (cx, cy, w, h) of the image, as the model predicts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from harness.grounding.odvg import OdvgDataset, OdvgImage
from harness.tools.detector import caption_for


class BalancedSampler:
    """Image indices for an epoch: each source drawn with equal probability (``balanced``), or
    a plain seeded permutation of all images."""

    def __init__(self, sources: dict[str, list[int]], seed: int, balanced: bool = True) -> None:
        if not sources or not all(sources.values()):
            raise ValueError("the sampler needs at least one source with images")
        self.sources = {name: list(indices) for name, indices in sorted(sources.items())}
        self.seed = seed
        self.balanced = balanced
        self.size = sum(len(indices) for indices in self.sources.values())

    def epoch(self, epoch: int, draws: int | None = None) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        draws = self.size if draws is None else draws
        if not self.balanced:  # every image once per pass, in a new order each pass
            everything = [i for indices in self.sources.values() for i in indices]
            order: list[int] = []
            while len(order) < draws:
                order += [everything[i] for i in rng.permutation(self.size)]
            return order[:draws]
        names = list(self.sources)
        queues: dict[str, list[int]] = {name: [] for name in names}
        out = []
        for pick in rng.integers(len(names), size=draws):
            name = names[pick]
            if not queues[name]:
                queues[name] = [self.sources[name][i] for i in rng.permutation(len(self.sources[name]))]
            out.append(queues[name].pop())
        return out


class PhraseBudget:
    """Fits phrases into the model's text length: ``[CLS] a . b . [SEP]``."""

    def __init__(self, tokenizer: Any, max_text_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self._lengths: dict[str, int] = {}

    def tokens(self, phrase: str) -> int:
        """Tokens of ``phrase.`` in a caption (BERT splits at spaces and punctuation, so a
        caption's tokens are its phrases' tokens one after another)."""
        if phrase not in self._lengths:
            self._lengths[phrase] = len(self.tokenizer(caption_for([phrase])[0], add_special_tokens=False)["input_ids"])
        return self._lengths[phrase]

    def fit(self, phrases: Sequence[str]) -> list[str]:
        """The longest prefix of ``phrases`` that fits."""
        used, kept = 2, []  # [CLS] and [SEP]
        for phrase in phrases:
            used += self.tokens(phrase)
            if used > self.max_text_len:
                break
            kept.append(phrase)
        return kept


def caption_phrases(positives: Sequence[str], pool: Sequence[str], max_phrases: int, budget: PhraseBudget,
                    rng: np.random.Generator) -> list[str]:
    """The phrases of one image's caption, in caption order: its own phrases and sampled
    negatives (at most ``max_phrases`` in all), negatives dropped first when too long."""
    own = set(positives)
    candidates = [phrase for phrase in pool if phrase not in own]
    wanted = min(max(0, max_phrases - len(positives)), len(candidates))
    negatives = [candidates[i] for i in rng.choice(len(candidates), size=wanted, replace=False)] if wanted else []
    kept = budget.fit([*positives, *negatives])
    return [kept[i] for i in rng.permutation(len(kept))]


def normalised_boxes(image: OdvgImage, keep: Sequence[int]) -> torch.Tensor:
    """(cx, cy, w, h) of the chosen boxes, as fractions of the image."""
    boxes = np.array([image.boxes[i].bbox for i in keep], dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    centre = np.stack([(x1 + x2) / 2 / image.width, (y1 + y2) / 2 / image.height,
                       (x2 - x1) / image.width, (y2 - y1) / image.height], axis=1)
    return torch.from_numpy(np.clip(centre, 0.0, 1.0))


@dataclass
class Example:
    image: Image.Image
    caption: str
    phrases: list[str]
    target: dict[str, torch.Tensor]  # class_labels, boxes
    dropped_boxes: int  # boxes whose phrase did not fit in the caption


def build_example(image: OdvgImage, pool: Sequence[str], max_phrases: int, budget: PhraseBudget,
                  rng: np.random.Generator) -> Example:
    phrases = caption_phrases(image.categories, pool, max_phrases, budget, rng)
    if not phrases:
        raise ValueError(f"{image.origin}: not one phrase of the image fits in {budget.max_text_len} text tokens")
    index = {phrase: i for i, phrase in enumerate(phrases)}
    keep = [i for i, box in enumerate(image.boxes) if box.category in index]
    target = {"class_labels": torch.tensor([index[image.boxes[i].category] for i in keep], dtype=torch.long),
              "boxes": normalised_boxes(image, keep)}
    with Image.open(image.path) as raw:
        pixels = raw.convert("RGB")
    return Example(pixels, caption_for(phrases)[0], phrases, target, len(image.boxes) - len(keep))


class EpochDataset(torch.utils.data.Dataset):
    """An epoch's draws as a dataset; draw ``position`` has its own seeded generator, so
    captions do not depend on how many loader workers there are."""

    def __init__(self, data: OdvgDataset, draws: list[int], budget: PhraseBudget, max_phrases: int, seed: int,
                 epoch: int) -> None:
        self.data, self.draws, self.budget = data, draws, budget
        self.max_phrases, self.seed, self.epoch = max_phrases, seed, epoch

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, position: int) -> Example:
        rng = np.random.default_rng([self.seed, self.epoch, position, 1])
        return build_example(self.data.images[self.draws[position]], self.data.phrases, self.max_phrases,
                             self.budget, rng)


class Collator:
    """Examples -> the model's inputs (images resized and padded, captions tokenised and padded)
    and their targets."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        inputs = self.processor(images=[e.image for e in examples], text=[e.caption for e in examples],
                                return_tensors="pt", padding=True)
        return {"inputs": dict(inputs), "labels": [e.target for e in examples],
                "dropped_boxes": sum(e.dropped_boxes for e in examples)}
