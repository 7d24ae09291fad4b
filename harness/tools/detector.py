"""GroundingDINO through transformers, with the PIL image processor (no torchvision).

A box is returned for a phrase only when its text-matched tokens belong to that
phrase: with ``label_match="exact"`` the tokens above the text threshold must be
exactly the phrase's tokens (the filter the paper's evaluation intended; its
code returned every box whenever any label matched), with ``"span"`` any part of
one phrase counts. Boxes are in pixels of the original image. ``query_scores``
gives every query's box and per-phrase score before any threshold (the COCO
evaluation ranks them); ``detect_batch`` thresholds the same scores;
``original_predictions`` gives every box the original ``predict`` kept, with the
phrase it decoded (the paper protocol's ``gd_detect``).

Three rules make a detection a function of its own request only:

- **Batching without padding.** GroundingDINO's Swin backbone reads the zero
  padding of a smaller image in a padded batch, and padded caption tokens shift
  the text features: padded, the same image gave other top queries (probability
  differences up to 0.9). So a forward pass only ever holds requests whose
  resized images have the same shape and whose captions have the same number of
  tokens; those give the results of each request alone, within float noise
  (``benchmarks/detector_batching.py`` measures it).
- **Long phrase lists are split.** A caption longer than the model's
  ``max_text_len`` tokens is cut into several captions (whole phrases each), one
  forward pass each, and their detections merged.
- **Errors stay with their request.** With ``errors="return"`` a request that
  cannot be answered (a single phrase longer than the text length) gets its
  exception in place of its result, and a failed forward pass is retried one
  request at a time, so no other caller in the batch sees it.

The module is past 450 lines on purpose: the three views of a result (thresholded
detections, unthresholded query scores, the original predict) share one batching
rule and one caption splitting, which must not drift apart.
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
                        dtype: str = "float32", config_overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(model, processor) of a checkpoint: a transformers folder or hub id, or an original-format
    one (converted once). The processor pairs the tokenizer with the PIL image processor, so no
    torchvision is needed; training and inference both load through here. ``config_overrides``
    change the model's config before it is built (dotted keys reach the backbone's config, e.g.
    ``backbone_config.drop_path_rate``): regularisation is read when the layers are made."""
    import torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoTokenizer, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor)

    folder = transformers_checkpoint(checkpoint, revision, original_config)
    revision = revision if folder == checkpoint else None
    image_processor = AutoImageProcessor.from_pretrained(folder, revision=revision, backend="pil")
    tokenizer = AutoTokenizer.from_pretrained(folder, revision=revision)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = AutoConfig.from_pretrained(folder, revision=revision)
    for key, value in (config_overrides or {}).items():
        *parents, leaf = key.split(".")
        target = config
        for part in parents:
            target = getattr(target, part)
        if not hasattr(target, leaf):
            raise ValueError(f"the detector's config has no setting {key!r}")
        setattr(target, leaf, value)
    model = GroundingDinoForObjectDetection.from_pretrained(folder, revision=revision, config=config,
                                                            dtype=getattr(torch, dtype))
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


class DetectorInputError(ValueError):
    """A request the detector cannot answer as asked (e.g. a phrase longer than the text it reads)."""


@dataclass(frozen=True)
class _Pass:
    """One caption of one request: which request, which of its phrases, the caption and their spans."""

    request: int
    phrases: list[int]
    caption: str
    spans: list[tuple[int, int]]


class GroundingDinoDetector(LazyModel):
    """Loads the model once, on first use; ``detect_batch`` answers many requests in as few
    forward passes as give each request's own result."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(DetectorSettings(**settings))
        if self.settings.label_match not in ("exact", "span"):
            raise ValueError(f"label_match must be 'exact' or 'span', got {self.settings.label_match!r}")
        self._processor = None
        self._phrase_lengths: dict[str, int] = {}

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

    # ------------------------------------------------------------------ captions

    def phrase_length(self, phrase: str) -> int:
        """Tokens ``phrase.`` adds to a caption (BERT splits at spaces and punctuation, so a
        caption's tokens are its phrases' tokens one after another, plus [CLS] and [SEP])."""
        if phrase not in self._phrase_lengths:
            text = caption_for([phrase])[0]
            self._phrase_lengths[phrase] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._phrase_lengths[phrase]

    def phrase_chunks(self, phrases: Sequence[str]) -> list[list[int]]:
        """The phrases' indices split into captions that fit the model's text length, in order."""
        room = self.max_text_len - 2  # [CLS] and [SEP]
        chunks: list[list[int]] = []
        used = 0
        for index, phrase in enumerate(phrases):
            need = self.phrase_length(phrase)
            if need > room:
                raise DetectorInputError(f"the phrase {phrase[:80]!r} takes {need} text tokens; the detector reads "
                                         f"at most {room} per caption")
            if not chunks or used + need > room:
                chunks.append([])
                used = 0
            chunks[-1].append(index)
            used += need
        return chunks

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

    def _passes(self, requests: Sequence[tuple[Image.Image, list[str]]],
                failures: dict[int, BaseException]) -> list[_Pass]:
        passes = []
        for request, (_, phrases) in enumerate(requests):
            try:
                chunks = self.phrase_chunks(phrases)
            except DetectorInputError as exc:
                failures[request] = exc
                continue
            for chunk in chunks:
                caption, spans = caption_for([phrases[i] for i in chunk])
                passes.append(_Pass(request, chunk, caption, spans))
        return passes

    # ------------------------------------------------------------------ forward passes

    def _encode(self, image: Image.Image, caption: str, truncate: bool = False) -> dict[str, Any]:
        self._load()
        options = {"truncation": True, "max_length": self.max_text_len} if truncate else {}
        inputs = dict(self._processor(images=[image], text=[caption], return_tensors="pt", **options))
        if inputs["input_ids"].shape[1] > self.max_text_len:
            raise DetectorInputError(f"a caption of {inputs['input_ids'].shape[1]} tokens is longer than the "
                                     f"detector's {self.max_text_len}")
        return inputs

    def _forward(self, encoded: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass over inputs of identical shapes: token probabilities (batch, queries,
        text length) and normalised (cx, cy, w, h) boxes (batch, queries, 4)."""
        import torch

        inputs = {name: torch.cat([e[name] for e in encoded]).to(self._device) for name in encoded[0]}
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.inference_mode():
            outputs = self._model(**inputs)
        return torch.sigmoid(outputs.logits.float()).cpu().numpy(), outputs.pred_boxes.float().cpu().numpy()

    def run(self, pairs: Sequence[tuple[Image.Image, str]], truncate: bool = False,
            isolate: bool = False) -> list[tuple[np.ndarray, np.ndarray] | BaseException]:
        """For each (image, caption): token probabilities (queries, text length) and boxes (queries, 4).

        Requests share a forward pass only when their resized images and tokenised captions
        have the same shapes (no padding), so each result is the request's own. With
        ``isolate`` a failure is returned in place of the results it concerns (a failed
        shared pass is retried one request at a time); otherwise it is raised."""
        results: list[Any] = [None] * len(pairs)
        groups: dict[tuple, list[int]] = {}
        encoded: dict[int, dict[str, Any]] = {}
        for index, (image, caption) in enumerate(pairs):
            try:
                encoded[index] = self._encode(image, caption, truncate)
            except Exception as exc:
                if not isolate:
                    raise
                results[index] = exc
                continue
            key = tuple((name, tuple(value.shape)) for name, value in sorted(encoded[index].items()))
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            try:
                probabilities, boxes = self._forward([encoded[i] for i in members])
            except Exception as exc:
                if not isolate:
                    raise
                if len(members) == 1:
                    results[members[0]] = exc
                    continue
                log.warning("a detector pass of %d requests failed (%s: %s); running them one by one",
                            len(members), type(exc).__name__, exc)
                for index in members:
                    results[index] = self.run([pairs[index]], truncate, isolate=True)[0]
                continue
            for row, index in enumerate(members):
                results[index] = (probabilities[row], boxes[row])
        return results

    # ------------------------------------------------------------------ results

    def query_scores(self, requests: Sequence[tuple[Image.Image, list[str]]],
                     reduce: str = "max") -> list[tuple[np.ndarray, np.ndarray]]:
        """For each (image, phrases): every query's box in pixels (queries, 4) and its score for
        each phrase (queries, phrases), unthresholded. A phrase list longer than one caption
        takes several passes, whose queries are stacked (a phrase scores 0 on the other passes)."""
        failures: dict[int, BaseException] = {}
        passes = self._passes(requests, failures)
        if failures:
            raise next(iter(failures.values()))
        outputs = self.run([(requests[p.request][0], p.caption) for p in passes])
        boxes: list[list[np.ndarray]] = [[] for _ in requests]
        scores: list[list[np.ndarray]] = [[] for _ in requests]
        for p, (probabilities, centre_boxes) in zip(passes, outputs):
            image, phrases = requests[p.request]
            part = np.zeros((probabilities.shape[0], len(phrases)), dtype=np.float32)
            part[:, p.phrases] = phrase_scores(probabilities, self._phrase_tokens(p.caption, p.spans), reduce)
            boxes[p.request].append(pixel_boxes(centre_boxes, image.size))
            scores[p.request].append(part)
        return [(np.concatenate(b) if b else np.zeros((0, 4)),
                 np.concatenate(s) if s else np.zeros((0, len(phrases)), dtype=np.float32))
                for b, s, (_, phrases) in zip(boxes, scores, requests)]

    def detect_batch(self, requests: Sequence[tuple[Image.Image, list[str]]],
                     errors: str = "raise") -> list[list[dict[str, Any]] | BaseException]:
        """Detections for each (image, phrases). ``errors="return"`` puts a request's exception
        in its place instead of raising it (what the tool server's batcher needs, so one
        program's bad call never fails another's)."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        isolate = errors == "return"
        failures: dict[int, BaseException] = {}
        passes = self._passes(requests, failures)
        if failures and not isolate:
            raise next(iter(failures.values()))
        outputs = self.run([(requests[p.request][0], p.caption) for p in passes], isolate=isolate)
        found: list[list[dict[str, Any]]] = [[] for _ in requests]
        for p, output in zip(passes, outputs):
            if isinstance(output, BaseException):
                failures.setdefault(p.request, output)
                continue
            image, phrases = requests[p.request]
            found[p.request] += self._decode(output[0], output[1], image.size, [phrases[i] for i in p.phrases],
                                             self._phrase_tokens(p.caption, p.spans))
        return [failures[i] if i in failures else sorted(detections, key=lambda d: -d["score"])
                for i, detections in enumerate(found)]

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

    # ------------------------------------------------------------------ the original predict

    def original_predictions(self, requests: Sequence[tuple[Image.Image, str]], errors: str = "raise",
                             box_threshold: float | None = None,
                             text_threshold: float | None = None) -> list[list[dict[str, Any]] | BaseException]:
        """What the original GroundingDINO ``predict`` returns for each (image, caption): every
        query whose best token probability passes the box threshold, with that probability
        (``score``), its box (``cxcywh`` normalised as the model gives it, ``box`` in pixels of
        the image, clipped to it) and ``phrase``: the caption tokens above the text threshold
        (the thresholds are the detector's settings unless given),
        decoded by the tokenizer with the periods removed (e.g. "red - mug" for the caption
        "red-mug ."). The caption is prepared as the original does (lower-cased, stripped,
        " ." appended unless it ends with a period) and cut at the model's text length, as the
        original cuts it; a caption is never split here. Queries come in the model's order."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        captions = [original_caption(caption) for _, caption in requests]
        outputs = self.run([(image, caption) for (image, _), caption in zip(requests, captions)], truncate=True,
                           isolate=errors == "return")
        results: list[Any] = []
        for (image, _), caption, output in zip(requests, captions, outputs):
            if isinstance(output, BaseException):
                results.append(output)
                continue
            results.append(self._original_boxes(output[0], output[1], image.size, caption,
                                                box_threshold, text_threshold))
        return results

    def _original_boxes(self, probs: np.ndarray, centre_boxes: np.ndarray, size: tuple[int, int], caption: str,
                        box_threshold: float | None = None, text_threshold: float | None = None) -> list[dict[str, Any]]:
        box_threshold = self.settings.box_threshold if box_threshold is None else box_threshold
        text_threshold = self.settings.text_threshold if text_threshold is None else text_threshold
        input_ids = self.tokenizer(caption, truncation=True, max_length=self.max_text_len)["input_ids"]
        last = min(len(input_ids), self.max_text_len - 1)  # the original reads positions 1 .. max_text_len - 2
        pixels = pixel_boxes(centre_boxes, size)
        found = []
        for query in np.nonzero(probs.max(axis=1) > box_threshold)[0].tolist():
            positions = [i for i in np.nonzero(probs[query] > text_threshold)[0].tolist() if 1 <= i < last]
            phrase = self.tokenizer.decode([input_ids[i] for i in positions]).replace(".", "")
            found.append({"box": [float(v) for v in pixels[query]],
                          "cxcywh": [float(v) for v in centre_boxes[query]],
                          "score": float(probs[query].max()), "phrase": phrase})
        return found


def original_caption(caption: str) -> str:
    """The original ``predict``'s caption preparation: lower-cased, stripped, ending in " ."."""
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + " ."
