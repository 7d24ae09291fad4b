"""COCO-style box mAP of a GroundingDINO checkpoint on a COCO-format set (the paper's check
that tuning on pseudo-labels does not hurt general detection: COCO val2017, 48.4 -> 48.7
for GroundingDINO-T).

As GroundingDINO's own COCO evaluation: the category names are the caption (split into
several captions, one forward pass each, when they exceed the model's text length);
every query gets a score per category, the mean probability of the category's tokens;
the ``top_k`` best (query, category) pairs of an image are its detections, in original
pixels, scored by pycocotools' ``COCOeval``. The detector is loaded, and its tokens
mapped to phrases, by the ``gd_detect`` tool's own code (:mod:`harness.tools.detector`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

# pycocotools' summary, in the order of COCOeval.stats.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
REPORTED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
DEFAULT_TOP_K = 300  # detections kept per image, as GroundingDINO's evaluation

# (images, category names) -> per image: boxes (n, 4) xyxy in pixels, scores (n,), category indices (n,)
Predictor = Callable[[Sequence[Image.Image], Sequence[str]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


class CocoEvalError(ValueError):
    """An annotation file or image folder that cannot be evaluated; names the file and entry."""


@dataclass
class CocoSet:
    path: Path
    images_dir: Path
    data: dict[str, Any]  # the instances file, annotations completed (area, iscrowd)
    images: list[dict[str, Any]]  # the images evaluated (after --limit), by id
    category_ids: list[int]
    category_names: list[str]


def read_coco(instances: str | Path, images_dir: str | Path, limit: int | None = None) -> CocoSet:
    """An instances file; ``limit``: only its first N images by id."""
    path, images_dir = Path(instances), Path(images_dir)
    if not path.is_file():
        raise CocoEvalError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CocoEvalError(f"{path}: not JSON ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoEvalError(f"{path}: field {key!r} (a list) is missing")
    for index, image in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if k not in image]
        if missing:
            raise CocoEvalError(f"{path}: images[{index}] lacks {', '.join(missing)}")
    for index, category in enumerate(data["categories"]):
        if "id" not in category or not str(category.get("name", "")).strip():
            raise CocoEvalError(f"{path}: categories[{index}] needs an id and a name")
    for index, annotation in enumerate(data["annotations"]):
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4) or "image_id" not in annotation \
                or "category_id" not in annotation:
            raise CocoEvalError(f"{path}: annotations[{index}] needs image_id, category_id and bbox [x, y, w, h]")
        annotation.setdefault("area", float(bbox[2]) * float(bbox[3]))  # files without masks: the box's area
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("id", index + 1)
    images = sorted(data["images"], key=lambda image: image["id"])
    if limit is not None:
        images = images[:limit]
    if not images:
        raise CocoEvalError(f"{path}: no images to evaluate")
    absent = [image["file_name"] for image in images if not (images_dir / image["file_name"]).is_file()]
    if absent:
        raise CocoEvalError(f"{len(absent)} images of {path} are not in {images_dir}, e.g. {absent[0]}")
    categories = sorted(data["categories"], key=lambda category: category["id"])
    return CocoSet(path, images_dir, data, images, [c["id"] for c in categories],
                   [str(c["name"]) for c in categories])


def caption_passes(names: Sequence[str], tokens: Callable[[str], int], max_text_len: int) -> list[list[int]]:
    """Category indices per caption, in order, each caption within ``max_text_len`` tokens
    (``tokens(name)``: the tokens "name." takes; [CLS] and [SEP] take two more)."""
    passes: list[list[int]] = [[]]
    used = 2
    for index, name in enumerate(names):
        need = tokens(name)
        if need + 2 > max_text_len:
            raise CocoEvalError(f"category {name!r} alone takes {need} tokens, over the model's {max_text_len - 2}")
        if used + need > max_text_len:
            passes.append([])
            used = 2
        passes[-1].append(index)
        used += need
    return passes


class GroundingDinoPredictor:
    """Every category in each image, with the ``gd_detect`` tool's detector: one forward pass
    per caption of categories, then the ``top_k`` best (query, category) pairs."""

    def __init__(self, detector: Any, top_k: int = DEFAULT_TOP_K) -> None:
        from harness.grounding.finetune_data import PhraseBudget

        self.detector = detector
        self.top_k = top_k
        self._budget = PhraseBudget(detector.tokenizer, detector.max_text_len)
        self._passes: dict[tuple[str, ...], list[list[int]]] = {}

    def passes(self, names: Sequence[str]) -> list[list[int]]:
        key = tuple(names)
        if key not in self._passes:
            self._passes[key] = caption_passes(names, self._budget.tokens, self._budget.max_text_len)
            log.info("%d categories in %d caption(s) of at most %d tokens", len(names), len(self._passes[key]),
                     self._budget.max_text_len)
        return self._passes[key]

    def __call__(self, images: Sequence[Image.Image], names: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        candidates: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in images]
        for chunk in self.passes(names):
            phrases = [names[i] for i in chunk]
            scored = self.detector.query_scores([(image, phrases) for image in images], reduce="mean")
            for per_image, (boxes, scores) in zip(candidates, scored):
                queries = len(scores)  # every (query, category) pair, query-major like scores.ravel()
                per_image.append((np.repeat(boxes, len(chunk), axis=0), scores.ravel(), np.tile(chunk, queries)))
        out = []
        for per_image in candidates:
            boxes, scores, labels = (np.concatenate(parts) for parts in zip(*per_image))
            best = np.argsort(-scores, kind="stable")[:self.top_k]
            out.append((boxes[best], scores[best], labels[best]))
        return out


def detect(coco: CocoSet, predictor: Predictor, batch_size: int = 8, progress: bool = True) -> list[dict[str, Any]]:
    """Detections in COCO's results format (``bbox`` as [x, y, w, h] in original pixels)."""
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(coco.images), desc="detecting", unit="image", disable=not progress)
    for start in range(0, len(coco.images), batch_size):
        batch = coco.images[start:start + batch_size]
        pictures = []
        for entry in batch:
            with Image.open(coco.images_dir / entry["file_name"]) as raw:
                pictures.append(raw.convert("RGB"))
        for entry, (boxes, scores, labels) in zip(batch, predictor(pictures, coco.category_names)):
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                results.append({"image_id": entry["id"], "category_id": coco.category_ids[label],
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(float(score), 5)})
        bar.update(len(batch))
    bar.close()
    return results


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError('COCO mAP needs pycocotools: pip install -e ".[grounding]"') from None
    return COCO, COCOeval


def coco_metrics(coco: CocoSet, results: list[dict[str, Any]]) -> dict[str, float | None]:
    """pycocotools' box metrics over the evaluated images (fractions; None where the set has no
    object of that size). No detection at all scores 0."""
    COCO, COCOeval = _pycocotools()
    if not results:
        log.warning("no detections: every metric is 0")
        return {name: 0.0 for name in METRICS}
    chatter = io.StringIO()  # pycocotools prints its progress and summary; they go to the debug log
    with contextlib.redirect_stdout(chatter):
        truth = COCO()
        truth.dataset = coco.data
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.imgIds = [image["id"] for image in coco.images]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    log.debug("%s", chatter.getvalue())
    return {name: (None if value < 0 else float(value)) for name, value in zip(METRICS, evaluation.stats)}


@dataclass
class MapReport:
    checkpoint: str
    annotations: str
    images: int
    categories: int
    caption_passes: int | None
    detections: int
    metrics: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        cells = ["-" if self.metrics.get(k) is None else f"{100 * self.metrics[k]:.1f}" for k in REPORTED]
        return "\n".join([f"{self.checkpoint} on {self.annotations} ({self.images} images, {self.categories} "
                          f"categories)", "", "| " + " | ".join(REPORTED) + " |", "|" + "---:|" * len(REPORTED),
                          "| " + " | ".join(cells) + " |"])


def evaluate_detector(checkpoint: str, instances: str | Path, images_dir: str | Path, limit: int | None = None,
                      device: str = "auto", batch_size: int = 8, top_k: int = DEFAULT_TOP_K,
                      revision: str | None = None, progress: bool = True) -> MapReport:
    """COCO mAP of a checkpoint (a transformers folder or hub id, or an original-format one)."""
    from harness.tools.detector import GroundingDinoDetector

    _pycocotools()  # fail before the model loads
    coco = read_coco(instances, images_dir, limit)
    detector = GroundingDinoDetector(checkpoint=checkpoint, revision=revision, device=device)
    predictor = GroundingDinoPredictor(detector, top_k)
    results = detect(coco, predictor, batch_size, progress)
    return MapReport(checkpoint, str(coco.path), len(coco.images), len(coco.category_names),
                     len(predictor.passes(coco.category_names)), len(results), coco_metrics(coco, results))
