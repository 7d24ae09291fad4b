"""From the pipeline's records to the files the detector trains on, statistics and review pages.

``export(OUT)`` reads ``OUT/records.jsonl`` (the last line of each image wins:
a retried image appends a new one) and writes:

- ``labels.odvg.jsonl``: one line per image with at least one kept box, ODVG
  detection style (``filename`` relative to OUT, ``height``, ``width``,
  ``source``, ``detection.instances`` with ``bbox`` in absolute pixels xyxy,
  ``label`` and ``category``);
- ``label_map.json``: ``{"0": phrase, ...}``, ids dense from 0, phrases sorted;
- ``coco.json``: the same boxes in COCO format (``bbox`` as x, y, w, h;
  ``category_id`` = label + 1), to score the labels with COCO tools;
- ``stats.json``: per stage the boxes in, kept and removed; per source the
  images and boxes; failures per stage; unresolved phrase expressions;
- ``pages/``: one self-contained HTML page per image with candidates and an
  index (:mod:`harness.grounding.pages`).

Every file is written to a temporary name and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from harness.grounding.odvg import LABEL_MAP_FILE, ODVG_FILE
from harness.grounding.pipeline import FAILED, RECORDS_FILE
from harness.grounding.verifier import STAGES
from harness.jsonl import json_objects

log = logging.getLogger(__name__)

COCO_FILE, STATS_FILE = "coco.json", "stats.json"
DETECTOR_STAGE = "detector"
PRECISION_STAGES = (DETECTOR_STAGE, *STAGES)  # the boxes alive after each step


class RecordsError(ValueError):
    """A records file that cannot be read; the message names the file and the line."""


def records_path(path: str | Path) -> Path:
    """A pseudo-label folder stands for its ``records.jsonl``."""
    path = Path(path)
    return path / RECORDS_FILE if path.is_dir() else path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The latest record of every image, in the order images first appeared."""
    path = records_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records file {path} does not exist")
    latest: dict[str, dict[str, Any]] = {}
    for number, record in json_objects(path, RecordsError, torn_tail_ok=True):
        if not isinstance(record.get("id"), str) or not isinstance(record.get("status"), str):
            raise RecordsError(f"{path}:{number}: a record needs a string 'id' and 'status'")
        latest[record["id"]] = record
    return list(latest.values())


def survivors(record: dict[str, Any]) -> dict[str, list[int]]:
    """The candidate indices alive after each step (detector, coarse, crop, dedup) of a
    finished record; an empty dict for records that did not get through verification."""
    if record.get("status") != "ok":
        return {}
    alive = {DETECTOR_STAGE: [c["index"] for c in record.get("candidates", [])]}
    for stage in STAGES:
        alive[stage] = list(record["stages"][stage]["kept"])
    return alive


def labelled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok" and r.get("kept")]


def label_map(records: list[dict[str, Any]]) -> dict[str, int]:
    """Phrase -> label id, dense from 0 in sorted phrase order."""
    phrases = {r["candidates"][i]["label"] for r in labelled(records) for i in r["kept"]}
    return {phrase: number for number, phrase in enumerate(sorted(phrases))}


def odvg_lines(records: list[dict[str, Any]], labels: dict[str, int]) -> list[dict[str, Any]]:
    lines = []
    for record in labelled(records):
        instances = []
        for index in record["kept"]:
            candidate = record["candidates"][index]
            instances.append({"bbox": [float(v) for v in candidate["box"]], "label": labels[candidate["label"]],
                              "category": candidate["label"]})
        lines.append({"filename": record["image"], "height": record["height"], "width": record["width"],
                      "source": record["source"], "detection": {"instances": instances}})
    return lines


def coco_dataset(records: list[dict[str, Any]], labels: dict[str, int]) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, line in enumerate(odvg_lines(records, labels), start=1):
        images.append({"id": image_id, "file_name": line["filename"], "width": line["width"],
                       "height": line["height"]})
        for instance in line["detection"]["instances"]:
            x1, y1, x2, y2 = instance["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": instance["label"] + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": label + 1, "name": phrase} for phrase, label in sorted(labels.items(), key=lambda i: i[1])]
    return {"images": images, "annotations": annotations, "categories": categories}


def compute_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    status = Counter(r["status"] for r in records)
    failed = Counter(r.get("stage", "?") for r in records if r["status"] == FAILED)
    stages: dict[str, dict[str, int]] = {
        DETECTOR_STAGE: {"images": 0, "phrases": 0, "boxes": 0, "dropped_over_max": 0},
        **{stage: {"images": 0, "boxes_in": 0, "kept": 0, "removed": 0, "failed": failed.get(stage, 0)}
           for stage in STAGES}}
    sources: dict[str, dict[str, int]] = {}
    unresolved: Counter[str] = Counter()
    images_with_unresolved = 0
    for record in records:
        per_source = sources.setdefault(record["source"], {"images": 0, "labelled_images": 0, "boxes": 0})
        per_source["images"] += 1
        if record.get("unresolved"):
            images_with_unresolved += 1
            unresolved.update(u["expression"] for u in record["unresolved"])
        if "candidates" in record and record["candidates"]:
            stages[DETECTOR_STAGE]["images"] += 1
            stages[DETECTOR_STAGE]["phrases"] += len(record.get("phrases", []))
            stages[DETECTOR_STAGE]["boxes"] += len(record["candidates"])
            stages[DETECTOR_STAGE]["dropped_over_max"] += record.get("candidates_dropped", 0)
        for stage, outcome in (record.get("stages") or {}).items():
            kept, removed = len(outcome["kept"]), len(outcome["removed"])
            if kept + removed:
                stages[stage]["images"] += 1
            stages[stage]["boxes_in"] += kept + removed
            stages[stage]["kept"] += kept
            stages[stage]["removed"] += removed
        if record["status"] == "ok" and record.get("kept"):
            per_source["labelled_images"] += 1
            per_source["boxes"] += len(record["kept"])
    labels = label_map(records)
    return {
        "images": len(records),
        "status": dict(sorted(status.items())),
        "failed_by_stage": dict(sorted(failed.items())),
        "stages": stages,
        "sources": dict(sorted(sources.items())),
        "unresolved": {"images": images_with_unresolved, "expressions": sum(unresolved.values()),
                       "most_common": [{"expression": e, "count": n} for e, n in unresolved.most_common(20)]},
        "labels": {"images": len(labelled(records)), "boxes": sum(len(r["kept"]) for r in labelled(records)),
                   "categories": len(labels)},
    }


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def export(out: str | Path, pages: bool = True) -> dict[str, Any]:
    """Write the labels, ``stats.json`` and (unless ``pages`` is False) the review pages; return the stats."""
    from harness.grounding.pages import write_pages

    out = Path(out)
    records = read_records(out)
    labels = label_map(records)
    _write(out / LABEL_MAP_FILE, json.dumps({str(i): p for p, i in labels.items()}, indent=2, ensure_ascii=False)
           + "\n")
    _write(out / ODVG_FILE, "".join(json.dumps(line, ensure_ascii=False) + "\n"
                                    for line in odvg_lines(records, labels)))
    _write(out / COCO_FILE, json.dumps(coco_dataset(records, labels), ensure_ascii=False) + "\n")
    stats = compute_stats(records)
    _write(out / STATS_FILE, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    if pages:
        write_pages(out, records)
    log.info("pseudo-labels: %d images, %d labelled with %d boxes in %s", stats["images"],
             stats["labels"]["images"], stats["labels"]["boxes"], out)
    return stats


def stage_table(stats: dict[str, Any]) -> list[list[Any]]:
    """Rows for a printed summary: stage, images, boxes in, kept, removed, failed."""
    detector = stats["stages"][DETECTOR_STAGE]
    rows = [[DETECTOR_STAGE, detector["images"], "-", detector["boxes"], "-", stats["failed_by_stage"].get(
        DETECTOR_STAGE, 0)]]
    for stage in STAGES:
        s = stats["stages"][stage]
        rows.append([stage, s["images"], s["boxes_in"], s["kept"], s["removed"], s["failed"]])
    return rows
