"""A pseudo-label folder in the exact layout the labelling pipeline exports, built from
synthetic scenes with their true boxes (nothing is labelled by a model)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from harness.synthetic.render import render
from harness.synthetic.layout import generate_scene


def scene_labels(seed: int, index: int) -> tuple[Image.Image, list[tuple[list[float], str]]]:
    """A rendered scene and its visible objects' (xyxy box, "colour shape") pairs."""
    scene = generate_scene(seed, index)
    rendering = render(scene)
    boxes = [([float(v) for v in obj.visible_box], obj.name) for obj in scene.objects if obj.visible_box]
    return Image.fromarray(rendering.rgb), boxes


def write_pseudo_labels(out: Path, sources: dict[str, int], seed: int = 3) -> Path:
    """``sources``: images per source name. Writes images/<source>/, labels.odvg.jsonl,
    label_map.json and coco.json; returns ``out``."""
    scenes = []
    index = 0
    for source, count in sources.items():
        for _ in range(count):
            image, boxes = scene_labels(seed, index)
            name = f"images/{source}/{index:06d}.png"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            image.save(out / name)
            scenes.append((name, source, image.size, boxes))
            index += 1
    phrases = sorted({phrase for *_, boxes in scenes for _, phrase in boxes})
    label = {phrase: i for i, phrase in enumerate(phrases)}
    (out / "label_map.json").write_text(json.dumps({str(i): p for i, p in enumerate(phrases)}))
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": p} for i, p in enumerate(phrases)]}
    with (out / "labels.odvg.jsonl").open("w") as f:
        for image_id, (name, source, (width, height), boxes) in enumerate(scenes, start=1):
            instances = [{"bbox": box, "label": label[phrase], "category": phrase} for box, phrase in boxes]
            f.write(json.dumps({"filename": name, "height": height, "width": width, "source": source,
                                "detection": {"instances": instances}}) + "\n")
            coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
            for (x1, y1, x2, y2), phrase in boxes:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                            "category_id": label[phrase] + 1, "iscrowd": 0})
    (out / "coco.json").write_text(json.dumps(coco))
    return out
