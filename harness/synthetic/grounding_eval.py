"""Measuring the perception tools against exact ground truth (the synthetic benchmark).

For each scene: the detector is asked for every object's name ("red cube") and
every shape present ("cube"); its boxes are matched one-to-one to the true
visible boxes of that phrase at IoU >= 0.5 (best scores first), giving
recall and precision. The depth tool is read at every object's box and compared
with the true depth at the same pixel: absolute relative error, and the share
within 25% (delta < 1.25).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from harness.synthetic.oracle import box_iou
from harness.synthetic.oracle_backend import depth_file_for, load_scene
from harness.tools import ToolBackend, ToolContext
from harness.tools.api import probe_pixel
from harness.types import Sample

log = logging.getLogger(__name__)
IOU_MATCH = 0.5


@dataclass
class GroundingReport:
    scenes: int = 0
    true_boxes: int = 0
    predicted_boxes: int = 0
    matched: int = 0
    depth_errors: list[float] = field(default_factory=list)
    depth_missing: int = 0  # tool said inf where the truth is finite

    @property
    def recall(self) -> float | None:
        return self.matched / self.true_boxes if self.true_boxes else None

    @property
    def precision(self) -> float | None:
        return self.matched / self.predicted_boxes if self.predicted_boxes else None

    def to_dict(self) -> dict[str, Any]:
        errors = np.array(self.depth_errors)
        return {
            "scenes": self.scenes, "true_boxes": self.true_boxes, "predicted_boxes": self.predicted_boxes,
            "matched": self.matched, "box_recall@0.5": self.recall, "box_precision@0.5": self.precision,
            "depth_points": len(self.depth_errors) + self.depth_missing, "depth_missing": self.depth_missing,
            "depth_abs_rel": float(errors.mean()) if errors.size else None,
            "depth_median_rel": float(np.median(errors)) if errors.size else None,
            "depth_delta_1.25": float((errors < 0.25).mean()) if errors.size else None,
        }


def match_boxes(predicted: list[dict], truth: list[list[float]]) -> int:
    """Greedy one-to-one matching at IoU >= 0.5, highest scores first."""
    unmatched = list(range(len(truth)))
    matched = 0
    for detection in sorted(predicted, key=lambda d: -d.get("score", 0.0)):
        best, best_iou = None, IOU_MATCH
        for index in unmatched:
            iou = box_iou(detection["box"], truth[index])
            if iou >= best_iou:
                best, best_iou = index, iou
        if best is not None:
            unmatched.remove(best)
            matched += 1
    return matched


def evaluate_scene(backend: ToolBackend, sample: Sample, report: GroundingReport) -> None:
    scene_path = sample.meta["scene"]
    scene, true_depth = load_scene(scene_path, sample.meta.get("depth") or depth_file_for(scene_path))
    context = ToolContext(sample.image, sample.image.size(), sample, key=f"grounding/{sample.cluster}")
    objects = [o for o in scene.objects if o.visible_box is not None]
    phrases = sorted({o.name for o in objects} | {o.shape for o in objects})
    for phrase in phrases:
        truth = [list(o.visible_box) for o in objects if phrase in (o.name, o.shape)]
        predicted = backend.gd_detect(context, [phrase])
        report.true_boxes += len(truth)
        report.predicted_boxes += len(predicted)
        report.matched += match_boxes(predicted, truth)
    height, width = true_depth.shape
    for obj in objects:
        box = [float(v) for v in obj.visible_box]
        col, row = probe_pixel(box, width, height)
        truth = float(true_depth[row, col])
        if not np.isfinite(truth):
            continue
        value = backend.depth(context, box)
        if np.isfinite(value):
            report.depth_errors.append(abs(value - truth) / truth)
        else:
            report.depth_missing += 1
    report.scenes += 1


def grounding_eval(backend: ToolBackend, samples: Iterable[Sample], limit: int | None = None) -> GroundingReport:
    """Evaluate on each distinct scene of the samples (a sample's cluster is its scene)."""
    report = GroundingReport()
    seen: set[str] = set()
    for sample in tqdm(samples, desc="grounding-eval", unit="sample", disable=None):
        if not sample.meta.get("scene") or sample.cluster in seen:
            continue
        if limit is not None and len(seen) >= limit:
            break
        seen.add(sample.cluster)
        evaluate_scene(backend, sample, report)
    if not seen:
        raise ValueError("no sample carries a scene's ground truth; grounding-eval needs the synthetic benchmark")
    return report


def format_report(name: str, report: GroundingReport) -> str:
    r = report.to_dict()

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    rows = [("scenes", r["scenes"]), ("box recall @ IoU 0.5 (%)", pct(r["box_recall@0.5"])),
            ("box precision @ IoU 0.5 (%)", pct(r["box_precision@0.5"])),
            ("true / predicted / matched boxes", f"{r['true_boxes']} / {r['predicted_boxes']} / {r['matched']}"),
            ("depth abs. rel. error (%)", pct(r["depth_abs_rel"])), ("depth median rel. error (%)", pct(r["depth_median_rel"])),
            ("depth within 25% (%)", pct(r["depth_delta_1.25"])), ("depth reads with no value", r["depth_missing"])]
    lines = [f"| grounding ({name}) | |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def report_json(report: GroundingReport, tools: dict[str, Any]) -> str:
    return json.dumps({"tools": tools, **report.to_dict()}, indent=2, default=str)
