"""Builders for tiny copies of every dataset repository the task YAMLs read.

Each ``build_*`` function writes, under ``data_dir/<hub id>/``, the repository
as the hub holds it: the same file names and folders, the README's YAML header
(``dataset_info`` features and ``configs:`` in the real order, with the real
``data_files`` patterns), the same column names, order and Arrow types, and the
files that no task reads (other configs, archives, ``.gitattributes``), so that
a loader that reads more than its own part's files fails here as it would on
the hub. Rows are few, with 16x12 images of one colour that identifies the row.
Each builder returns a :class:`Written` with the rows and the samples the
harness should make of them.

:func:`copy_repository` applies a task's allow-patterns the way
``huggingface_hub.snapshot_download`` does, for partial copies and a fake hub.

Where a repository's layout could not be checked from public sources, the
builder's docstring says which part is inferred. These are helpers for tests,
not tests.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import datasets
import yaml
from PIL import Image

IMAGE_SIZE = (16, 12)  # width, height

OMNI3D = "dmarsili/Omni3D-Bench"
ROBOSPATIAL = "chanhee-luke/RoboSpatial-Home"
BLINK = "BLINK-Benchmark/BLINK"
VSR_ZEROSHOT = "cambridgeltl/vsr_zeroshot"
VSR_RANDOM = "cambridgeltl/vsr_random"
REALWORLDQA = "xai-org/RealworldQA"
REALWORLDQA_MIRROR = "nirajandhakal/realworldqa"
GRIT = "yfan1997/GRIT_data"
COUNTBENCH = "vikhyatk/CountBenchQA"
GQA = "lmms-lab/GQA"
TALLYQA = "snowclipsed/TallyQA"

GITATTRIBUTES = "*.parquet filter=lfs diff=lfs merge=lfs -text\n*.zip filter=lfs diff=lfs merge=lfs -text\n"


# --------------------------------------------------------------------------- images

def colour(n: int) -> tuple[int, int, int]:
    """A colour unique to ``n`` for n < 256 (the red channel is n itself)."""
    return (n % 256, (40 + 3 * n) % 256, (250 - 5 * n) % 256)


def image_bytes(rgb: tuple[int, int, int], fmt: str = "PNG", mode: str = "RGB") -> bytes:
    image = Image.new("RGB", IMAGE_SIZE, rgb)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def arrow_image(rgb: tuple[int, int, int], fmt: str = "PNG", mode: str = "RGB",
                path: str | None = None) -> dict[str, Any]:
    """The value an ``Image`` feature stores: encoded bytes plus an optional file name."""
    return {"bytes": image_bytes(rgb, fmt, mode), "path": path}


# --------------------------------------------------------------------------- result type

@dataclass
class Expected:
    """What the harness should make of one row."""

    id: str
    question: str
    answer: Any
    answer_type: str
    colour: tuple[int, int, int] | None  # None: the row has no readable image
    choices: list[str] | None = None
    cluster: str | None = None
    subset: str | None = None
    compat_gold: Any = None


@dataclass
class Written:
    root: Path  # DATA_DIR/<hub id>
    files: list[str]  # paths written, relative to root
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # split or config -> rows (no image bytes)
    expected: dict[str, list[Expected]] = field(default_factory=dict)  # split or config -> samples


# --------------------------------------------------------------------------- writers

def write_parquet(root: Path, relative: str, columns: dict[str, list], features: datasets.Features) -> str:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(target))
    return relative


def write_shards(root: Path, pattern: str, columns: dict[str, list], features: datasets.Features,
                 shards: int = 1, first: int = 0) -> list[str]:
    """Rows split over ``shards`` files named like ``push_to_hub`` does (``pattern`` holds
    ``{index}`` and ``{count}``, five digits each); ``first=1`` numbers them from 1."""
    count = len(next(iter(columns.values())))
    bounds = [count * i // shards for i in range(shards + 1)]
    return [write_parquet(root, pattern.format(index=f"{first + i:05d}", count=f"{shards:05d}"),
                          {k: v[bounds[i]:bounds[i + 1]] for k, v in columns.items()}, features)
            for i in range(shards)]


def write_jsonl(root: Path, relative: str, rows: Iterable[dict]) -> str:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return relative


def write_image_file(root: Path, relative: str, rgb: tuple[int, int, int], fmt: str = "JPEG") -> str:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(image_bytes(rgb, fmt))
    return relative


def write_text(root: Path, relative: str, text: str) -> str:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return relative


def features_yaml(features: datasets.Features, legacy_lists: bool = False) -> list[dict]:
    """The ``features:`` list a README carries; ``legacy_lists`` writes ``sequence:`` as older
    ``push_to_hub`` versions did (BLINK's card)."""
    listed = features._to_yaml_list()
    if legacy_lists:
        for entry in listed:
            if "list" in entry and isinstance(entry["list"], str):
                entry["sequence"] = entry.pop("list")
    return listed


def card(header: dict[str, Any], title: str) -> str:
    """A README: the YAML header, then a title line."""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n# " + title + "\n"


def data_files(config: str, splits: Iterable[str], folder: str | None = None) -> dict[str, Any]:
    folder = folder or config
    return {"config_name": config, "data_files": [{"split": s, "path": f"{folder}/{s}-*"} for s in splits]}


def _strip_images(columns: dict[str, list], image_columns: Iterable[str]) -> list[dict[str, Any]]:
    names = [c for c in columns if c not in set(image_columns)]
    count = len(next(iter(columns.values())))
    return [{name: columns[name][i] for name in names} for i in range(count)]


def _start(data_dir: Path, path: str) -> Written:
    root = Path(data_dir) / path
    return Written(root, [write_text(root, ".gitattributes", GITATTRIBUTES)])


# --------------------------------------------------------------------------- partial copies

def repository_files(root: Path) -> list[str]:
    """Every file of a copy, relative to it (a hub repository listing)."""
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def copy_repository(source: Path, target: Path, allow_patterns: list[str] | None) -> list[str]:
    """Copy the files ``snapshot_download(allow_patterns=...)`` would fetch; returns them."""
    from huggingface_hub.utils import filter_repo_objects

    chosen = list(filter_repo_objects(repository_files(source), allow_patterns=allow_patterns))
    for relative in chosen:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)
    target.mkdir(parents=True, exist_ok=True)
    return chosen


# --------------------------------------------------------------------------- Omni3D-Bench

# (question, answer_type column, answer, gold, harness answer type); {n} varies per row
_OMNI3D_KINDS = [
    ("How many chairs are in the image?", "int", "{count}", "count", "integer"),
    ("What is the height of the table in meters?", "float", "{metres}", "metres", "float"),
    ("Is the lamp taller than the chair?", "str", "yes", "yes", "yesno"),
    ("Is the sofa closer to the camera than the door?", "str", "No", "no", "yesno"),
    ("Which is taller, the fridge or the cabinet?", "str", "fridge", "fridge", "word"),
    ("Are the two mugs the same height, or is one of them taller?", "str", "same", "same", "word"),
    ("If the camera faces north, which direction (N, S, E or W) is the car facing?", "str", "W", "W", "word"),
]

OMNI3D_FEATURES = datasets.Features({
    "image": datasets.Image(),
    "image_index": datasets.Value("int64"),
    "q_index": datasets.Value("int64"),
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "answer_type": datasets.Value("string"),
})


def omni3d_image_index(row: int) -> int:
    """Five questions on every two images (2.5 per image, as in the real split)."""
    return row * 2 // 5


def build_omni3d(data_dir: Path, n_rows: int = 110) -> Written:
    """``data/train-00000-of-00001.parquet`` (rows 0-99 are the paper's test rows), the
    ``omni3d-bench.zip`` archive of images and annotations beside it, and a README.

    Checked: the file list (README.md, data/, omni3d-bench.zip), split ``train``,
    the column names. Inferred: the README's ``configs:`` entry and the integer
    width of ``image_index``/``q_index``.
    """
    written = _start(data_dir, OMNI3D)
    root = written.root
    columns: dict[str, list] = {name: [] for name in OMNI3D_FEATURES}
    expected = []
    for row in range(n_rows):
        question, raw_type, answer, gold, answer_type = _OMNI3D_KINDS[row % len(_OMNI3D_KINDS)]
        count, metres = row % 9 + 1, f"{row % 5 + 0.25:.2f}"
        answer = answer.format(count=count, metres=metres)
        gold_value = {"count": count, "metres": float(metres)}.get(gold, gold)
        image_index = omni3d_image_index(row)
        columns["image"].append(arrow_image(colour(image_index)))
        columns["image_index"].append(image_index)
        columns["q_index"].append(row)
        columns["question"].append(question)
        columns["answer"].append(answer)
        columns["answer_type"].append(raw_type)
        expected.append(Expected(
            id=str(row), question=question, answer=gold_value, answer_type=answer_type,
            colour=colour(image_index), cluster=str(image_index), subset="train", compat_gold=answer,
        ))
    written.files += write_shards(root, "data/train-{index}-of-{count}.parquet", columns, OMNI3D_FEATURES)
    archive = root / "omni3d-bench.zip"
    with zipfile.ZipFile(archive, "w") as handle:  # images and JSON annotations, read by no task
        handle.writestr("omni3d-bench/annotations.json", json.dumps({"questions": []}))
    written.files.append(archive.name)
    written.files.append(write_text(root, "README.md", card({
        "license": "cc-by-nc-4.0", "task_categories": ["visual-question-answering"],
        "dataset_info": {"features": features_yaml(OMNI3D_FEATURES),
                         "splits": [{"name": "train", "num_bytes": 1024, "num_examples": n_rows}]},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }, "Omni3D-Bench")))
    written.rows["train"] = _strip_images(columns, ["image"])
    written.expected["train"] = expected
    return written


# --------------------------------------------------------------------------- RoboSpatial-Home

ROBOSPATIAL_FEATURES = datasets.Features({
    "img": datasets.Image(),
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "category": datasets.Value("string"),
    "depth": datasets.Image(),
    "mask": datasets.Image(),
})

_ROBOSPATIAL_ROWS = {
    "context": [
        ("In the image, there is a sofa. Pinpoint several points within the vacant space to the left of the sofa.",
         "[(0.12, 0.43), (0.15, 0.47), (0.18, 0.52)]", None),
        ("In the image, there is a table. Pinpoint several points within the vacant space in front of the table.",
         "[(0.61, 0.8), (0.66, 0.82)]", None),
    ],
    "compatibility": [
        ("Can the mug fit on the shelf to the left of the plant?", "Yes", "yes"),
        ("Can the laundry basket fit under the desk?", "No", "no"),
        ("Is there room for the chair in front of the bookcase?", "Yes", "yes"),
    ],
    "configuration": [
        ("Is the lamp to the right of the bed?", "No", "no"),
        ("Is the cup in front of the laptop?", "Yes", "yes"),
        ("Is the pillow behind the blanket?", "No", "no"),
    ],
}


def build_robospatial(data_dir: Path) -> Written:
    """One config with three splits, ``data/<split>-00000-of-00001.parquet`` each; images in
    ``img``, plus ``depth`` and ``mask`` images.

    Checked: the split names and sizes (105/123/122), the file pattern
    ``data/<split>-*.parquet`` (lmms-eval reads it), the column names.
    Inferred: the column order and the order of the splits in the README.
    """
    written = _start(data_dir, ROBOSPATIAL)
    root = written.root
    n = 80  # colours distinct from the other fixtures'
    for split, rows in _ROBOSPATIAL_ROWS.items():
        columns: dict[str, list] = {name: [] for name in ROBOSPATIAL_FEATURES}
        expected = []
        for index, (question, answer, gold) in enumerate(rows):
            columns["img"].append(arrow_image(colour(n)))
            columns["question"].append(question)
            columns["answer"].append(answer)
            columns["category"].append(split)
            columns["depth"].append(arrow_image((n, n, n), mode="I;16"))
            columns["mask"].append(arrow_image((255, 255, 255) if index % 2 else (0, 0, 0), mode="L"))
            expected.append(Expected(id=f"{split}/{index}", question=question, answer=gold, answer_type="yesno",
                                     colour=colour(n), subset=split, compat_gold=gold))
            n += 1
        written.files += write_shards(root, f"data/{split}-{{index}}-of-{{count}}.parquet", columns,
                                      ROBOSPATIAL_FEATURES)
        written.rows[split] = _strip_images(columns, ["img", "depth", "mask"])
        written.expected[split] = expected
    written.files.append(write_text(root, "README.md", card({
        "license": "apache-2.0",
        "dataset_info": {"features": features_yaml(ROBOSPATIAL_FEATURES),
                         "splits": [{"name": s, "num_bytes": 1024, "num_examples": len(r)}
                                    for s, r in _ROBOSPATIAL_ROWS.items()]},
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*"} for s in _ROBOSPATIAL_ROWS]}],
    }, "RoboSpatial-Home")))
    return written


# --------------------------------------------------------------------------- BLINK

BLINK_FEATURES = datasets.Features({
    "idx": datasets.Value("string"),
    "question": datasets.Value("string"),
    "sub_task": datasets.Value("string"),
    "image_1": datasets.Image(),
    "image_2": datasets.Image(),
    "image_3": datasets.Image(),
    "image_4": datasets.Image(),
    "choices": datasets.List(datasets.Value("string")),
    "answer": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "explanation": datasets.Value("string"),
})

# The fourteen configs, in the order the README declares them (Art_Style first).
BLINK_ALL_CONFIGS = ("Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
                     "Multi-view_Reasoning", "Object_Localization", "Relative_Depth", "Relative_Reflectance",
                     "Semantic_Correspondence", "Spatial_Relation", "Visual_Correspondence", "Visual_Similarity")
BLINK_CONFIGS = ("Counting", "Spatial_Relation")  # the ones the tasks read

# config -> (question, choices, answer, expected question as asked, expected gold)
_BLINK_ROWS = {
    "Counting": [
        ("How many blue floats are there?", ["2", "3", "4", "5"], "(B)",
         "How many blue floats are there? Options: {2,3,4,5}.", "3"),
        ("How many cars are parked on the street?", ["0", "1", "2", "3"], "(D)",
         "How many cars are parked on the street? Options: {0,1,2,3}.", "3"),
        ("How many birds are in the image?", ["4", "2", "1", "3"], "(A)",
         "How many birds are in the image? Options: {4,2,1,3}.", "4"),
    ],
    "Spatial_Relation": [
        ("Is the car beneath the cat?", ["yes", "no"], "(A)", "Is the car beneath the cat? Options: {yes,no}.", "yes"),
        ("Is the person on the left of the umbrella?", ["yes", "no"], "(B)",
         "Is the person on the left of the umbrella? Options: {yes,no}.", "no"),
        ("Is the bowl touching the spoon?", ["yes", "no"], "(B)",
         "Is the bowl touching the spoon? Options: {yes,no}.", "no"),
    ],
}
_BLINK_OTHER = ("Which image is the odd one out?", ["the first image", "the second image"], "(A)", None, None)


def _blink_prompt(question: str, choices: list[str]) -> str:
    letters = "ABCD"
    lines = [f"({letters[i]}) {c}" for i, c in enumerate(choices)]
    return question + "\nSelect from the following choices.\n" + "\n".join(lines)


def build_blink(data_dir: Path) -> Written:
    """One folder per config (all fourteen) with ``val`` and ``test`` parquet files, and a README
    declaring them in its order, ``Art_Style`` first, with ``choices`` as ``sequence: string``.

    The test split keeps its answers hidden (empty), as in the real release.
    Checked: the file names, the config order, the columns and their order.
    """
    written = _start(data_dir, BLINK)
    root = written.root
    n = 50  # colours distinct from the other fixtures'
    infos, configs = [], []
    for config in BLINK_ALL_CONFIGS:
        rows = _BLINK_ROWS.get(config, [_BLINK_OTHER])
        for split in ("val", "test"):
            columns: dict[str, list] = {name: [] for name in BLINK_FEATURES}
            expected = []
            for number, (question, choices, answer, asked, gold) in enumerate(rows, start=1):
                idx = f"{split}_{config}_{number}"
                two_images = config not in _BLINK_ROWS
                columns["idx"].append(idx)
                columns["question"].append(question)
                columns["sub_task"].append(config)
                columns["image_1"].append(arrow_image(colour(n), fmt="JPEG"))
                columns["image_2"].append(arrow_image(colour(n + 1), fmt="JPEG") if two_images else None)
                columns["image_3"].append(None)
                columns["image_4"].append(None)
                columns["choices"].append(list(choices))
                columns["answer"].append(answer if split == "val" else "")
                columns["prompt"].append(_blink_prompt(question, choices))
                columns["explanation"].append("")
                if split == "val" and gold is not None:
                    expected.append(Expected(id=idx, question=asked, answer=gold, answer_type="multiple_choice",
                                             colour=colour(n), choices=list(choices), subset=config,
                                             compat_gold=gold))
                n += 1 if config in _BLINK_ROWS else 0
            written.files += write_shards(root, f"{config}/{split}-{{index}}-of-{{count}}.parquet", columns,
                                          BLINK_FEATURES)
            if split == "val":
                written.rows[config] = _strip_images(columns, ["image_1", "image_2", "image_3", "image_4"])
                written.expected[config] = expected
        infos.append({"config_name": config, "features": features_yaml(BLINK_FEATURES, legacy_lists=True),
                      "splits": [{"name": "val", "num_bytes": 1024, "num_examples": len(rows)},
                                 {"name": "test", "num_bytes": 1024, "num_examples": len(rows)}]})
        configs.append(data_files(config, ("val", "test")))
    written.files.append(write_text(root, "README.md", card(
        {"license": "apache-2.0", "dataset_info": infos, "configs": configs},
        "BLINK: Multimodal Large Language Models Can See but Not Perceive")))
    return written


# --------------------------------------------------------------------------- VSR

# (COCO image id, caption, label, relation)
_VSR_ROWS = {
    VSR_ZEROSHOT: {
        "train": [(391895, "The dog is next to the bicycle.", 1, "next to")],
        "dev": [
            (85637, "The cat is on the bed.", 1, "on"),
            (85637, "The cat is under the bed.", 0, "under"),
            (173371, "The umbrella is above the bench.", 1, "above"),
            (459153, "The truck is left of the motorcycle.", 0, "left of"),
        ],
        "test": [(522418, "The pizza is at the edge of the dining table.", 1, "at the edge of")],
    },
    VSR_RANDOM: {
        "train": [(184613, "The teddy bear is in the suitcase.", 1, "in")],
        "dev": [(318219, "The keyboard is in front of the laptop.", 0, "in front of")],
        "test": [
            (397133, "The person is touching the horse.", 1, "touching"),
            (37777, "The oven is beneath the sink.", 0, "beneath"),
            (252219, "The bus is far away from the car.", 1, "far away"),
        ],
    },
}

VSR_SPLIT = {VSR_ZEROSHOT: "dev", VSR_RANDOM: "test"}


def vsr_file_name(coco_id: int) -> str:
    return f"{coco_id:012d}.jpg"


def vsr_link(coco_id: int) -> str:
    return f"http://images.cocodataset.org/train2017/{vsr_file_name(coco_id)}"


def build_vsr(data_dir: Path, path: str = VSR_ZEROSHOT, with_images: bool = True) -> Written:
    """``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` beside a README without ``configs:``;
    the COCO images (not in the repository) copied into ``images/``.

    Checked: the file list and the row format of VSR's own release (image,
    image_link, caption, label, relation, annotator_id and the two validator id
    lists, which may be empty).
    """
    written = _start(data_dir, path)
    root = written.root
    for split, rows in _VSR_ROWS[path].items():
        lines, expected = [], []
        for index, (coco_id, caption, label, relation) in enumerate(rows):
            name = vsr_file_name(coco_id)
            lines.append({"image": name, "image_link": vsr_link(coco_id), "caption": caption, "label": label,
                          "relation": relation, "annotator_id": 3 + index,
                          "vote_true_validator_id": [2, 6] if label else [],
                          "vote_false_validator_id": [] if label else [1, 4]})
            rgb = colour(coco_id % 251)
            if with_images and not (root / "images" / name).exists():
                written.files.append(write_image_file(root, f"images/{name}", rgb))
            expected.append(Expected(id=str(index), question=f"Is {caption}?", answer="yes" if label else "no",
                                     answer_type="yesno", colour=rgb, cluster=name, subset=split,
                                     compat_gold=label))
        written.files.append(write_jsonl(root, f"{split}.jsonl", lines))
        written.rows[split] = lines
        written.expected[split] = expected
    written.files.append(write_text(root, "README.md", card({
        "license": "cc-by-4.0", "task_categories": ["text-classification", "question-answering"],
        "language": ["en"], "tags": ["multimodal", "vision-and-language"],
    }, "VSR: Visual Spatial Reasoning")))
    return written


# --------------------------------------------------------------------------- RealWorldQA

_RWQA_LETTER = "Please answer directly with only the letter of the correct option and nothing else."
_RWQA_SHORT = "Please answer directly with a single word or number."

# (question as stored, answer, expected question as asked, gold, answer type, choices)
_RWQA_ROWS = [
    ("Which object is closer?\nA. The car\nB. The tree\nC. The sign\n" + _RWQA_LETTER, "B",
     "Which object is closer? Options: {The car,The tree,The sign}.", "The tree", "multiple_choice",
     ["The car", "The tree", "The sign"]),
    ("In which direction is the front wheel of the car on the right side facing?\n\nA. Left\nB. Straight\nC. Right"
     "\n\n" + _RWQA_LETTER, "C",
     "In which direction is the front wheel of the car on the right side facing? Options: {Left,Straight,Right}.",
     "Right", "multiple_choice", ["Left", "Straight", "Right"]),
    ("How many lanes are there?\n" + _RWQA_SHORT, "3",
     "How many lanes are there?\n" + _RWQA_SHORT, "3", "word", None),
    ("Is it safe to change lanes to the left now?\nA. Yes\nB. No\n" + _RWQA_LETTER, "A",
     "Is it safe to change lanes to the left now? Options: {Yes,No}.", "Yes", "multiple_choice", ["Yes", "No"]),
    ("What color is the traffic light?\n" + _RWQA_SHORT, "Green",
     "What color is the traffic light?\n" + _RWQA_SHORT, "Green", "word", None),
]

REALWORLDQA_FEATURES = datasets.Features({
    "image": datasets.Image(),
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
})
# The mirror's README lists the same columns in another order.
REALWORLDQA_MIRROR_FEATURES = datasets.Features({
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "image": datasets.Image(),
})


def build_realworldqa(data_dir: Path, path: str = REALWORLDQA, split: str = "test") -> Written:
    """The official release: ``data/test-00000-of-00002.parquet`` and ``-00001-of-00002``, a README
    declaring split ``test`` (``split="test_0412"`` writes the earlier revision, whose card and
    files named the split ``test_0412``). ``path=REALWORLDQA_MIRROR`` writes the mirror the paper
    read: shards numbered from 1 (``test-00001-of-00002``, ``test-00002-of-00002``), columns
    question, answer, image, and an ``images/`` folder and ``annotations.json`` beside ``data/``.

    Checked: file names, split names, column order of both cards. Inferred:
    the mirror's image file names and annotation format.
    """
    written = _start(data_dir, path)
    root = written.root
    mirror = path == REALWORLDQA_MIRROR
    features = REALWORLDQA_MIRROR_FEATURES if mirror else REALWORLDQA_FEATURES
    columns: dict[str, list] = {name: [] for name in features}
    expected, annotations = [], []
    for index, (question, answer, asked, gold, answer_type, choices) in enumerate(_RWQA_ROWS):
        rgb = colour(100 + index)
        columns["image"].append(arrow_image(rgb, path=f"{index}.png"))
        columns["question"].append(question)
        columns["answer"].append(answer)
        annotations.append({"image": f"images/{index}.png", "question": question, "answer": answer})
        expected.append(Expected(id=str(index), question=asked, answer=gold, answer_type=answer_type, colour=rgb,
                                 choices=choices, subset=split, compat_gold=gold))
    written.files += write_shards(root, f"data/{split}-{{index}}-of-{{count}}.parquet", columns, features, shards=2,
                                  first=1 if mirror else 0)
    if mirror:
        for index in range(len(_RWQA_ROWS)):
            written.files.append(write_image_file(root, f"images/{index}.png", colour(100 + index), fmt="PNG"))
        written.files.append(write_text(root, "annotations.json", json.dumps(annotations)))
    written.files.append(write_text(root, "README.md", card({
        "license": "cc-by-nd-4.0",
        "dataset_info": {"features": features_yaml(features),
                         "splits": [{"name": split, "num_bytes": 1024, "num_examples": len(_RWQA_ROWS)}]},
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"}]}],
    }, "RealWorldQA")))
    written.rows[split] = _strip_images(columns, ["image"])
    written.expected[split] = expected
    return written


# --------------------------------------------------------------------------- GRIT (GQA and TallyQA)

# (image field, question, answer, gold)
_GQA_ROWS = [
    ("images/2354786.jpg", "Is the sky dark?", "yes", "yes"),
    ("images/2354786.jpg", "What is the man to the left of the bus wearing?", "jacket", "jacket"),
    ("images/2375429.jpg", "Which side of the photo is the lamp on?", "left", "left"),
]
_TALLYQA_ROWS = [
    ("VG_100K_2/2410281.jpg", "How many zebras are there?", 3, 3),
    ("VG_100K/2331065.jpg", "How many people are wearing hats?", 0, 0),
    ("VG_100K/2331065.jpg", "How many umbrellas are there?", 2, 2),
]
GRIT_IMAGE_FOLDER = {"gqa": "gqa", "tallyqa": "tallyqa"}  # where GRIT's layout puts each set's images


def build_grit(data_dir: Path, with_images: bool = True) -> Written:
    """The annotation files at the repository root (``gqa_val.jsonl``, ``tallyqa_val.jsonl`` and
    others no task reads) and a README; with ``with_images``, the Visual Genome images placed as
    GRIT's layout expects (``gqa/images/<id>.jpg``, ``tallyqa/VG_100K{,_2}/<id>.jpg``): they are
    not in the repository.

    Checked: file names; GQA's ``image`` field is ``images/<id>.jpg``, relative
    to the ``gqa`` image folder (GRIT's loaders and its evaluation scripts join
    ``GRIT_data/gqa`` with it); the fields question, answer, image, width,
    height, bboxs, dataset, split. Inferred: whether every TallyQA ``image``
    carries its ``VG_100K``/``VG_100K_2`` folder, and the README (no configs).
    """
    written = _start(data_dir, GRIT)
    root = written.root
    for name, rows, answer_type, base in (("gqa", _GQA_ROWS, "open", 150), ("tallyqa", _TALLYQA_ROWS, "integer", 170)):
        lines, expected = [], []
        for index, (image, question, answer, gold) in enumerate(rows):
            rgb = colour(base + sorted({r[0] for r in rows}).index(image))
            lines.append({"question": question, "answer": answer, "image": image, "width": 500, "height": 375,
                          "bboxs": [[12, 40, 118, 201], [230, 60, 310, 190]][: 1 + index % 2],
                          "dataset": name, "split": "val"})
            target = f"{GRIT_IMAGE_FOLDER[name]}/{image}"
            if with_images and not (root / target).exists():
                written.files.append(write_image_file(root, target, rgb))
            expected.append(Expected(id=str(index), question=question, answer=gold, answer_type=answer_type,
                                     colour=rgb, cluster=image, subset=name, compat_gold=answer))
        written.files.append(write_jsonl(root, f"{name}_val.jsonl", lines))
        written.rows[name] = lines
        written.expected[name] = expected
    written.files.append(write_jsonl(root, "vsr_val.jsonl", [
        {"question": "Is the cat on the bed?", "answer": "yes", "image": "000000085637.jpg", "width": 640,
         "height": 480, "bboxs": [], "dataset": "vsr", "split": "val"}]))
    written.files.append(write_jsonl(root, "tallyqa_train_10.jsonl", [
        {"question": "How many dogs are there?", "answer": 1, "image": "VG_100K/1.jpg", "width": 500,
         "height": 375, "bboxs": [[1, 2, 3, 4]], "dataset": "tallyqa", "split": "train"}]))
    written.files.append(write_text(root, "README.md", "# GRIT data\n\nAnnotations; download the images "
                                                       "separately.\n"))
    return written


# --------------------------------------------------------------------------- CountBenchQA

COUNTBENCH_FEATURES = datasets.Features({
    "image": datasets.Image(),
    "text": datasets.Value("string"),
    "question": datasets.Value("string"),
    "number": datasets.Value("int32"),
})

# (caption, question, number, image mode)
_COUNTBENCH_ROWS = [
    ("Three dogs sitting on a couch in the living room", "How many dogs are in the image?", 3, "RGB"),
    ("A vintage photo of two sailors on a pier", "How many sailors are in the image?", 2, "L"),
    ("Seven colorful balloons against a blue sky", "How many balloons are in the image?", 7, "RGB"),
]


def build_countbench(data_dir: Path) -> Written:
    """``data/test-00000-of-00001.parquet`` and the card declaring ``number`` as int32; one image is
    grayscale, as some web images are. Checked: the whole card."""
    written = _start(data_dir, COUNTBENCH)
    root = written.root
    columns: dict[str, list] = {name: [] for name in COUNTBENCH_FEATURES}
    expected = []
    for index, (text, question, number, mode) in enumerate(_COUNTBENCH_ROWS):
        rgb = colour(200 + index) if mode == "RGB" else (90, 90, 90)
        columns["image"].append(arrow_image(rgb, fmt="JPEG", mode=mode))
        columns["text"].append(text)
        columns["question"].append(question)
        columns["number"].append(number)
        expected.append(Expected(id=str(index), question=question, answer=number, answer_type="integer",
                                 colour=rgb, subset="test", compat_gold=number))
    written.files += write_shards(root, "data/test-{index}-of-{count}.parquet", columns, COUNTBENCH_FEATURES)
    written.files.append(write_text(root, "README.md", card({
        "dataset_info": {"features": features_yaml(COUNTBENCH_FEATURES),
                         "splits": [{"name": "test", "num_bytes": 1024, "num_examples": len(_COUNTBENCH_ROWS)}]},
        "configs": [{"config_name": "default", "data_files": [{"split": "test", "path": "data/test-*"}]}],
    }, "CountBenchQA")))
    written.rows["test"] = _strip_images(columns, ["image"])
    written.expected["test"] = expected
    return written


# --------------------------------------------------------------------------- lmms-lab/GQA (training)

GQA_IMAGES_FEATURES = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
_ID_VALUE = datasets.List({"objectId": datasets.Value("string"), "value": datasets.Value("string")})
GQA_INSTRUCTIONS_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "imageId": datasets.Value("string"),
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "fullAnswer": datasets.Value("string"),
    "isBalanced": datasets.Value("bool"),
    "groups": {"global": datasets.Value("string"), "local": datasets.Value("string")},
    "entailed": datasets.Value("string"),
    "equivalent": datasets.Value("string"),
    "types": {"structural": datasets.Value("string"), "semantic": datasets.Value("string"),
              "detailed": datasets.Value("string")},
    "annotations": {"question": _ID_VALUE, "answer": _ID_VALUE, "fullAnswer": _ID_VALUE},
    "semantic": datasets.List({"operation": datasets.Value("string"), "argument": datasets.Value("string"),
                               "dependencies": datasets.List(datasets.Value("int32"))}),
    "semanticStr": datasets.Value("string"),
})
# The test-time configs carry no answers.
GQA_QUESTIONS_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "imageId": datasets.Value("string"),
    "question": datasets.Value("string"),
    "isBalanced": datasets.Value("bool"),
})
GQA_SENTINEL = "SENTINEL-ANSWER"  # every answer holds it; nothing the harness writes may

# (config, split, kind); the README declares configs in this (alphabetical) order, challenge_all_images first
GQA_CONFIGS = (
    ("challenge_all_images", "challenge", "images"),
    ("challenge_all_instructions", "challenge", "questions"),
    ("testdev_balanced_images", "testdev", "images"),
    ("testdev_balanced_instructions", "testdev", "instructions"),
    ("train_balanced_images", "train", "images"),
    ("train_balanced_instructions", "train", "instructions"),
)
# question id -> image id; "999" names no image of the table
GQA_TRAIN_QUESTIONS = {"q1": "2370", "q2": "2370", "q3": "61", "q4": "999"}
GQA_TRAIN_IMAGES = ("61", "2370", "5")


def gqa_image_colour(image_id: str) -> tuple[int, int, int]:
    return colour(int(image_id) % 250)


def _gqa_instruction(qid: str, image_id: str, question: str) -> dict[str, Any]:
    return {"id": qid, "imageId": image_id, "question": question, "answer": GQA_SENTINEL,
            "fullAnswer": f"{GQA_SENTINEL} in full.", "isBalanced": True,
            "groups": {"global": "", "local": "10c-cup_location"}, "entailed": "['q9']", "equivalent": f"['{qid}']",
            "types": {"structural": "query", "semantic": "rel", "detailed": "relS"},
            "annotations": {"question": [{"objectId": "3", "value": "cup"}], "answer": [],
                            "fullAnswer": [{"objectId": "3", "value": "cup"}]},
            "semantic": [{"operation": "select", "argument": "cup (3)", "dependencies": []},
                         {"operation": "relate", "argument": "table,on,s (4)", "dependencies": [0]}],
            "semanticStr": "select: cup (3)->relate: table,on,s (4) [0]"}


def build_gqa_train(data_dir: Path) -> Written:
    """One folder per config, ``<config>/<split>-0000N-of-0000M.parquet``, and a README declaring
    them alphabetically (the real card declares about twenty; ``challenge_all_images`` is the first
    of both). ``train_balanced_images`` has two shards.

    Checked: folder and file names, config order, the images configs' columns
    (id, image) and the questions-only columns. Inferred: the nested types of
    ``annotations`` and ``semantic`` in the instructions configs.
    """
    written = _start(data_dir, GQA)
    root = written.root
    infos, configs = [], []
    for config, split, kind in GQA_CONFIGS:
        if kind == "images":
            ids = GQA_TRAIN_IMAGES if config.startswith("train") else ("7", "8")
            features = GQA_IMAGES_FEATURES
            columns = {"id": list(ids), "image": [arrow_image(gqa_image_colour(i), fmt="JPEG") for i in ids]}
        elif kind == "instructions":
            questions = GQA_TRAIN_QUESTIONS if config.startswith("train") else {"t1": "7"}
            features = GQA_INSTRUCTIONS_FEATURES
            rows = [_gqa_instruction(q, i, f"What is on the table in picture {i} ({q})?") for q, i in questions.items()]
            columns = {name: [r[name] for r in rows] for name in features}
        else:
            features = GQA_QUESTIONS_FEATURES
            columns = {"id": ["c1"], "imageId": ["7"], "question": ["Is it sunny?"], "isBalanced": [False]}
        shards = 2 if config == "train_balanced_images" else 1
        written.files += write_shards(root, f"{config}/{split}-{{index}}-of-{{count}}.parquet", columns, features,
                                      shards=shards)
        written.rows[config] = _strip_images(columns, ["image"])
        infos.append({"config_name": config, "features": features_yaml(features),
                      "splits": [{"name": split, "num_bytes": 1024, "num_examples": len(columns["id"])}]})
        configs.append(data_files(config, (split,)))
    written.files.append(write_text(root, "README.md", card({"license": "mit", "dataset_info": infos,
                                                              "configs": configs}, "GQA")))
    return written


# --------------------------------------------------------------------------- TallyQA (training)

def build_tallyqa_train(data_dir: Path, base64_images: bool = True) -> Written:
    """``data/train-00000-of-00001.parquet`` with index, image, question, answer.

    Not checked (no public card was found): everything but the ``image``,
    ``question`` and ``index`` columns, which the original pipeline read. It
    handled ``image`` both as an image feature and as base64 text;
    ``base64_images`` picks which this copy holds.
    """
    written = _start(data_dir, TALLYQA)
    root = written.root
    image_feature = datasets.Value("string") if base64_images else datasets.Image()
    features = datasets.Features({"index": datasets.Value("int64"), "image": image_feature,
                                  "question": datasets.Value("string"), "answer": datasets.Value("int64")})
    rows = [(11, "How many zebras are there?", 3), (12, "How many people are wearing hats?", 0)]
    columns: dict[str, list] = {"index": [], "image": [], "question": [], "answer": []}
    for index, question, answer in rows:
        encoded = image_bytes(colour(index), "JPEG")
        columns["index"].append(index)
        columns["image"].append(base64.b64encode(encoded).decode() if base64_images
                                else {"bytes": encoded, "path": None})
        columns["question"].append(question)
        columns["answer"].append(answer)
    written.files += write_shards(root, "data/train-{index}-of-{count}.parquet", columns, features)
    written.files.append(write_text(root, "README.md", card({
        "dataset_info": {"features": features_yaml(features),
                         "splits": [{"name": "train", "num_bytes": 1024, "num_examples": 2}]},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }, "TallyQA")))
    written.rows["train"] = _strip_images(columns, ["image"])
    written.expected["train"] = [Expected(id=str(row), question=q, answer=None, answer_type="none", colour=colour(i),
                                          subset="train") for row, (i, q, _) in enumerate(rows)]
    return written


# --------------------------------------------------------------------------- everything

BUILDERS = {
    OMNI3D: build_omni3d,
    ROBOSPATIAL: build_robospatial,
    BLINK: build_blink,
    VSR_ZEROSHOT: lambda d: build_vsr(d, VSR_ZEROSHOT),
    VSR_RANDOM: lambda d: build_vsr(d, VSR_RANDOM),
    REALWORLDQA: lambda d: build_realworldqa(d, REALWORLDQA),
    REALWORLDQA_MIRROR: lambda d: build_realworldqa(d, REALWORLDQA_MIRROR),
    GRIT: build_grit,
    COUNTBENCH: build_countbench,
    GQA: build_gqa_train,
    TALLYQA: build_tallyqa_train,
}


def build_all(data_dir: Path) -> dict[str, Written]:
    """Every dataset, keyed by hub id."""
    return {path: build(Path(data_dir)) for path, build in BUILDERS.items()}


def expected_samples(written: dict[str, Written], task: str) -> list[Expected]:
    """The samples each evaluation task should yield from :func:`build_all`'s data, in order."""
    def part(path: str, key: str) -> list[Expected]:
        return written[path].expected[key]

    table = {
        "omni3d_bench": lambda: part(OMNI3D, "train")[0:100],
        "omni3d_bench_full": lambda: part(OMNI3D, "train"),
        "omni3d_bench_train": lambda: part(OMNI3D, "train")[100:501],
        "robospatial": lambda: part(ROBOSPATIAL, "compatibility") + part(ROBOSPATIAL, "configuration"),
        "blink": lambda: part(BLINK, "Counting") + part(BLINK, "Spatial_Relation"),
        "blink_counting": lambda: part(BLINK, "Counting"),
        "blink_spatial_relation": lambda: part(BLINK, "Spatial_Relation"),
        "vsr": lambda: part(VSR_ZEROSHOT, "dev"),
        "vsr_random": lambda: part(VSR_RANDOM, "test"),
        "realworldqa": lambda: part(REALWORLDQA, "test"),
        "realworldqa_valor": lambda: part(REALWORLDQA_MIRROR, "test"),
        "gqa": lambda: part(GRIT, "gqa"),
        "tallyqa": lambda: part(GRIT, "tallyqa"),
        "countbenchqa": lambda: part(COUNTBENCH, "test"),
    }
    return table[task]()
