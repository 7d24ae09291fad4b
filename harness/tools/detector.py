"""GroundingDINO through transformers, with the PIL image processor (no torchvision).

A box is returned for a phrase only when its text-matched tokens belong to that
phrase: with ``label_match="exact"`` the tokens above the text threshold must be
exactly the phrase's tokens (the filter the paper's evaluation intended; its
code returned every box whenever any label matched), with ``"span"`` any part of
one phrase counts. Boxes are in pixels of the original image. ``query_scores``
gives every query's box and per-phrase score before any threshold (the COCO
evaluation ranks them); ``detect_batch`` thresholds the same scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from harness.cache import cache_key, default_cache_dir
from harness.tools.checkpoints import LazyModel

log = logging.getLogger(__name__)


DEFAULT_CHECKPOINT = "IDEA-Research/grounding-dino-tiny"


def caption_for(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The caption GroundingDINO expects ("red cube. blue sphere.") and each phrase's character span."""
    caption, spans = "", []
    for phrase in phrases:
        text = " ".join(phrase.lower().split())
        spans.append((len(caption), len(caption) + len(text)))
        caption += text + ". "
    return caption.strip(), spans


def pixel_boxes(centre_boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised (cx, cy, w, h) boxes -> (x1, y1, x2, y2) in pixels of an image of ``size``
    (width, height), clipped to it."""
    width, height = size
    cx, cy, w, h = (centre_boxes[:, i] for i in range(4))
    return np.stack([np.clip((cx - w / 2) * width, 0, width), np.clip((cy - h / 2) * height, 0, height),
                     np.clip((cx + w / 2) * width, 0, width), np.clip((cy + h / 2) * height, 0, height)], axis=1)


def phrase_scores(probs: np.ndarray, tokens: list[set[int]], reduce: str = "max") -> np.ndarray:
    """(queries, phrases): each query's score for each phrase from the probabilities of the phrase's
    tokens, their maximum (what ``gd_detect`` reports) or their mean (GroundingDINO's own COCO
    evaluation); 0 for a phrase without tokens (cut off by the text length)."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    scores = np.zeros((probs.shape[0], len(tokens)), dtype=np.float32)
    for phrase, positions in enumerate(tokens):
        if positions:
            selected = probs[:, sorted(positions)]
            scores[:, phrase] = selected.max(axis=1) if reduce == "max" else selected.mean(axis=1)
    return scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = list(np.argsort(-scores))
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    while order:
        best = order.pop(0)
        keep.append(int(best))
        survivors = []
        for other in order:
            w = max(0.0, min(boxes[best, 2], boxes[other, 2]) - max(boxes[best, 0], boxes[other, 0]))
            h = max(0.0, min(boxes[best, 3], boxes[other, 3]) - max(boxes[best, 1], boxes[other, 1]))
            union = area[best] + area[other] - w * h
            if union <= 0 or w * h / union <= iou:
                survivors.append(other)
        order = survivors
    return keep


def transformers_checkpoint(checkpoint: str, revision: str | None, original_config: str) -> str:
    """A folder ``from_pretrained`` can read. A checkpoint in the original format
    (a ``.pth`` file, or a hub repository holding only one, like the paper's
    ``glab-caltech/VALOR-GroundingDINO``) is converted once into the cache, with
    ``original_config`` giving the architecture and the processor files."""
    path = Path(checkpoint).expanduser()
    if path.is_dir() or (not path.exists() and "/" not in checkpoint.strip("/")):
        return checkpoint
    if not path.exists():  # a hub repository
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(checkpoint, revision=revision,
                                        allow_patterns=["*.json", "*.txt", "*.safetensors", "*.pth", "*.model"]))
        if (folder / "config.json").is_file():
            return str(folder)
        originals = sorted(folder.glob("*.pth"))
        if len(originals) != 1:
            raise ValueError(f"detector checkpoint {checkpoint}: no transformers config and "
                             f"{len(originals)} original-format .pth files; convert one with `harness convert-detector`")
        path = originals[0]
    stat = path.stat()
    key = cache_key("converted-detector", str(path.resolve()), stat.st_size, stat.st_mtime_ns, original_config)
    out = default_cache_dir() / "detectors" / key[:24]
    if not (out / "config.json").is_file():
        from harness.tools.convert import convert_detector

        log.info("converting the original-format detector %s into %s", path, out)
        convert_detector(path, out, original_config, overwrite=True)
    return str(out)


def load_grounding_dino(checkpoint: str, revision: str | None = None, original_config: str = DEFAULT_CHECKPOINT,
                        dtype: str = "float32") -> tuple[Any, Any]:
    """(model, processor) of a checkpoint: a transformers folder or hub id, or an original-format
    one (converted once). The processor pairs the tokenizer with the PIL image processor, so no
    torchvision is needed; training and inference both load through here."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoProcessor

    folder = transformers_checkpoint(checkpoint, revision, original_config)
    revision = revision if folder == checkpoint else None
    image_processor = AutoImageProcessor.from_pretrained(folder, revision=revision, backend="pil")
    tokenizer = AutoTokenizer.from_pretrained(folder, revision=revision)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = GroundingDinoForObjectDetection.from_pretrained(folder, revision=revision, dtype=getattr(torch, dtype))
    return model, processor


@dataclass(frozen=True)
class DetectorSettings:
    checkpoint: str = DEFAULT_CHECKPOINT  # a transformers folder or hub id, or an original-format checkpoint
    revision: str | None = None
    original_config: str = DEFAULT_CHECKPOINT  # architecture of an original-format checkpoint
    box_threshold: float = 0.35  # the paper's evaluation
    text_threshold: float = 0.25
    label_match: str = "exact"  # exact | span
    nms_iou: float | None = None  # per-label non-maximum suppression when set
    device: str = "auto"
    dtype: str = "float32"


class GroundingDinoDetector(LazyModel):
    """Loads the model once, on first use; ``detect_batch`` runs one forward pass."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(DetectorSettings(**settings))
        if self.settings.label_match not in ("exact", "span"):
            raise ValueError(f"label_match must be 'exact' or 'span', got {self.settings.label_match!r}")
        self._processor = None

    @classmethod
    def from_loaded(cls, model: Any, processor: Any, **settings: Any) -> "GroundingDinoDetector":
        """A detector over a model already in memory (e.g. one being trained), on its device."""
        detector = cls(**settings)
        detector._model, detector._processor = model, processor
        detector._device = str(next(model.parameters()).device)
        return detector

    @property
    def tokenizer(self) -> Any:
        self._load()
        return self._processor.tokenizer

    @property
    def max_text_len(self) -> int:
        """Caption tokens the model reads, special tokens included."""
        self._load()
        return int(self._model.config.max_text_len)

    def _build(self) -> Any:
        s = self.settings
        model, self._processor = load_grounding_dino(s.checkpoint, s.revision, s.original_config, s.dtype)
        return model.to(self._device).eval()

    def _phrase_tokens(self, caption: str, spans: list[tuple[int, int]]) -> list[set[int]]:
        """Token positions of each phrase in the tokenised caption."""
        encoded = self._processor.tokenizer(caption, return_offsets_mapping=True)
        positions: list[set[int]] = [set() for _ in spans]
        for index, (start, end) in enumerate(encoded["offset_mapping"]):
            if end <= start:
                continue  # special tokens
            for phrase, (lo, hi) in enumerate(spans):
                if start >= lo and end <= hi:
                    positions[phrase].add(index)
        return positions

    def forward(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass: token probabilities (batch, queries, text tokens) and normalised
        (cx, cy, w, h) boxes (batch, queries, 4)."""
        self._load()
        import torch

        inputs = self._processor(images=list(images), text=list(captions), return_tensors="pt", padding=True)
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.inference_mode():
            outputs = self._model(**inputs)
        return torch.sigmoid(outputs.logits.float()).cpu().numpy(), outputs.pred_boxes.float().cpu().numpy()

    def query_scores(self, requests: Sequence[tuple[Image.Image, list[str]]],
                     reduce: str = "max") -> list[tuple[np.ndarray, np.ndarray]]:
        """For each (image, phrases): every query's box in pixels (queries, 4) and its score for
        each phrase (queries, phrases), unthresholded, in one forward pass."""
        captions = [caption_for(phrases) for _, phrases in requests]
        probabilities, centre_boxes = self.forward([image for image, _ in requests], [c for c, _ in captions])
        return [(pixel_boxes(centre_boxes[index], image.size),
                 phrase_scores(probabilities[index], self._phrase_tokens(caption, spans), reduce))
                for index, ((image, _), (caption, spans)) in enumerate(zip(requests, captions))]

    def detect_batch(self, requests: Sequence[tuple[Image.Image, list[str]]]) -> list[list[dict[str, Any]]]:
        """Detections for each (image, phrases), in one forward pass."""
        captions = [caption_for(phrases) for _, phrases in requests]
        probabilities, centre_boxes = self.forward([image for image, _ in requests], [c for c, _ in captions])
        results = []
        for index, ((image, phrases), (caption, spans)) in enumerate(zip(requests, captions)):
            tokens = self._phrase_tokens(caption, spans)
            results.append(self._decode(probabilities[index], centre_boxes[index], image.size, phrases, tokens))
        return results

    def _decode(self, probs: np.ndarray, centre_boxes: np.ndarray, size: tuple[int, int], phrases: list[str],
                tokens: list[set[int]]) -> list[dict[str, Any]]:
        """The thresholded detections: a query counts when its best token passes the box threshold,
        for the one phrase its tokens above the text threshold match."""
        s = self.settings
        boxes = pixel_boxes(centre_boxes, size)
        scores = phrase_scores(probs, tokens, "max")
        found: dict[int, list[tuple[list[float], float]]] = {}
        words = set().union(*tokens)  # separators and special tokens never name a phrase
        for query, token_probs in enumerate(probs):
            if token_probs.max() <= s.box_threshold:
                continue
            above = set(np.nonzero(token_probs > s.text_threshold)[0].tolist()) & words
            for phrase, phrase_tokens in enumerate(tokens):
                if not phrase_tokens or not above:
                    continue
                if (above == phrase_tokens) if s.label_match == "exact" else above <= phrase_tokens:
                    found.setdefault(phrase, []).append(([float(v) for v in boxes[query]], float(scores[query, phrase])))
                    break
        detections = []
        for phrase, candidates in found.items():
            boxes_found = np.array([b for b, _ in candidates])
            scores_found = np.array([sc for _, sc in candidates])
            keep = nms(boxes_found, scores_found, s.nms_iou) if s.nms_iou is not None else range(len(candidates))
            detections += [{"box": [round(v, 2) for v in candidates[i][0]], "label": phrases[phrase],
                            "score": round(candidates[i][1], 4)} for i in keep]
        detections.sort(key=lambda d: -d["score"])
        return detections
