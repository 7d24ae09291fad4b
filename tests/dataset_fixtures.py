"""Builders for tiny offline copies of every benchmark the task YAMLs read.

Each ``build_*`` function writes, under ``data_dir/<hub id>/``, the files the
Hugging Face dataset repository holds (same file names, columns, feature types
and split/config layout), with a handful of rows and 16x12 images of a single
colour. The colour identifies the row, so a test can check that a sample got
its own image. Each builder returns a :class:`Written` describing the rows and
the samples the harness should make of them.

These are helpers for tests, not tests.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import datasets
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


def write_parquet(root: Path, relative: str, columns: dict[str, list], features: datasets.Features) -> str:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(target))
    return relative


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


def _strip_images(columns: dict[str, list], image_columns: Iterable[str]) -> list[dict[str, Any]]:
    names = [c for c in columns if c not in set(image_columns)]
    count = len(next(iter(columns.values())))
    return [{name: columns[name][i] for name in names} for i in range(count)]


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
    """``data/train-00000-of-00001.parquet``; rows 0-99 are the paper's test rows."""
    root = Path(data_dir) / OMNI3D
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
    files = [write_parquet(root, "data/train-00000-of-00001.parquet", columns, OMNI3D_FEATURES)]
    return Written(root, files, {"train": _strip_images(columns, ["image"])}, {"train": expected})


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
    "context": [
        ("In the image, there is a sofa. Pinpoint several points within the vacant space to the left of the sofa.",
         "[(0.12, 0.43), (0.15, 0.47), (0.18, 0.52)]", None),
        ("In the image, there is a table. Pinpoint several points within the vacant space in front of the table.",
         "[(0.61, 0.8), (0.66, 0.82)]", None),
    ],
}


def build_robospatial(data_dir: Path) -> Written:
    """Three splits, one parquet file each; images in ``img``, plus ``depth`` and ``mask`` images."""
    root = Path(data_dir) / ROBOSPATIAL
    written = Written(root, [])
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
        written.files.append(write_parquet(root, f"data/{split}-00000-of-00001.parquet", columns,
                                            ROBOSPATIAL_FEATURES))
        written.rows[split] = _strip_images(columns, ["img", "depth", "mask"])
        written.expected[split] = expected
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
    "Art_Style": [  # not read by any task
        ("Which image shares the style of the reference image?", ["the first image", "the second image"], "(A)",
         None, None),
        ("Which image shares the style of the reference image?", ["the first image", "the second image"], "(B)",
         None, None),
    ],
}

BLINK_CONFIGS = ("Counting", "Spatial_Relation")


def _blink_prompt(question: str, choices: list[str]) -> str:
    letters = "ABCD"
    lines = [f"({letters[i]}) {c}" for i, c in enumerate(choices)]
    return question + "\nSelect from the following choices.\n" + "\n".join(lines)


def _blink_readme(configs: Iterable[str], splits: Iterable[str]) -> str:
    splits = list(splits)
    lines = ["---", "license: apache-2.0", "dataset_info:"]
    for config in configs:
        lines += [f"- config_name: {config}", "  features:",
                  "  - name: idx", "    dtype: string",
                  "  - name: question", "    dtype: string",
                  "  - name: sub_task", "    dtype: string"]
        for i in range(1, 5):
            lines += [f"  - name: image_{i}", "    dtype: image"]
        lines += ["  - name: choices", "    list: string",
                  "  - name: answer", "    dtype: string",
                  "  - name: prompt", "    dtype: string",
                  "  - name: explanation", "    dtype: string"]
    lines.append("configs:")
    for config in configs:
        lines += [f"- config_name: {config}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    lines += ["---", "", "# BLINK: Multimodal Large Language Models Can See but Not Perceive", ""]
    return "\n".join(lines)


def build_blink(data_dir: Path) -> Written:
    """One folder per config with val and test parquet files, and a README declaring the configs.

    The test split keeps its answers hidden (empty), as in the real release.
    """
    root = Path(data_dir) / BLINK
    written = Written(root, [])
    n = 50  # colours distinct from the other fixtures'
    for config, rows in _BLINK_ROWS.items():
        for split in ("val", "test"):
            columns: dict[str, list] = {name: [] for name in BLINK_FEATURES}
            expected = []
            for number, (question, choices, answer, asked, gold) in enumerate(rows, start=1):
                idx = f"{split}_{config}_{number}"
                two_images = config == "Art_Style"
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
                n += 1
            written.files.append(write_parquet(root, f"{config}/{split}-00000-of-00001.parquet", columns,
                                                BLINK_FEATURES))
            if split == "val":
                written.rows[config] = _strip_images(columns, ["image_1", "image_2", "image_3", "image_4"])
                written.expected[config] = expected
    (root / "README.md").write_text(_blink_readme(_BLINK_ROWS, ("val", "test")), encoding="utf-8")
    written.files.append("README.md")
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
    """``train/dev/test.jsonl``; COCO images (not in the repository) copied into ``images/``."""
    root = Path(data_dir) / path
    written = Written(root, [])
    for split, rows in _VSR_ROWS[path].items():
        lines, expected = [], []
        for index, (coco_id, caption, label, relation) in enumerate(rows):
            name = vsr_file_name(coco_id)
            lines.append({"image": name, "image_link": vsr_link(coco_id), "caption": caption,
                          "label": label, "relation": relation})
            rgb = colour(coco_id % 251)
            if with_images and not (root / "images" / name).exists():
                written.files.append(write_image_file(root, f"images/{name}", rgb))
            expected.append(Expected(id=str(index), question=f"Is {caption}?", answer="yes" if label else "no",
                                     answer_type="yesno", colour=rgb, cluster=name, subset=split,
                                     compat_gold=label))
        written.files.append(write_jsonl(root, f"{split}.jsonl", lines))
        written.rows[split] = lines
        written.expected[split] = expected
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


def build_realworldqa(data_dir: Path, path: str = REALWORLDQA) -> Written:
    """``data/test-00000-of-00001.parquet`` with image, question, answer (the mirror has the same files)."""
    root = Path(data_dir) / path
    columns: dict[str, list] = {name: [] for name in REALWORLDQA_FEATURES}
    expected = []
    for index, (question, answer, asked, gold, answer_type, choices) in enumerate(_RWQA_ROWS):
        rgb = colour(100 + index)
        columns["image"].append(arrow_image(rgb, path=f"{index}.png"))
        columns["question"].append(question)
        columns["answer"].append(answer)
        expected.append(Expected(id=str(index), question=asked, answer=gold, answer_type=answer_type, colour=rgb,
                                 choices=choices, subset="test", compat_gold=gold))
    files = [write_parquet(root, "data/test-00000-of-00001.parquet", columns, REALWORLDQA_FEATURES)]
    return Written(root, files, {"test": _strip_images(columns, ["image"])}, {"test": expected})


# --------------------------------------------------------------------------- GRIT (GQA and TallyQA)

# (image, question, answer, gold)
_GQA_ROWS = [
    ("2354786.jpg", "Is the sky dark?", "yes", "yes"),
    ("2354786.jpg", "What is the man to the left of the bus wearing?", "jacket", "jacket"),
    ("2375429.jpg", "Which side of the photo is the lamp on?", "left", "left"),
]
_TALLYQA_ROWS = [
    ("VG_100K_2/2410281.jpg", "How many zebras are there?", 3, 3),
    ("VG_100K/2331065.jpg", "How many people are wearing hats?", 0, 0),
    ("VG_100K/2331065.jpg", "How many umbrellas are there?", 2, 2),
]


def build_grit(data_dir: Path, with_images: bool = True) -> Written:
    """``gqa_val.jsonl`` and ``tallyqa_val.jsonl``; Visual Genome images under ``gqa/`` and ``tallyqa/``."""
    root = Path(data_dir) / GRIT
    written = Written(root, [])
    for name, rows, folder, answer_type, base in (("gqa", _GQA_ROWS, "gqa", "open", 150),
                                                  ("tallyqa", _TALLYQA_ROWS, "tallyqa", "integer", 170)):
        lines, expected = [], []
        for index, (image, question, answer, gold) in enumerate(rows):
            rgb = colour(base + sorted({r[0] for r in rows}).index(image))
            lines.append({"question": question, "answer": answer, "image": image, "width": 500, "height": 375,
                          "bboxs": [[12, 40, 118, 201], [230, 60, 310, 190]][: 1 + index % 2],
                          "dataset": name, "split": "val"})
            if with_images and not (root / folder / image).exists():
                written.files.append(write_image_file(root, f"{folder}/{image}", rgb))
            expected.append(Expected(id=str(index), question=question, answer=gold, answer_type=answer_type,
                                     colour=rgb, cluster=image, subset=name, compat_gold=answer))
        written.files.append(write_jsonl(root, f"{name}_val.jsonl", lines))
        written.rows[name] = lines
        written.expected[name] = expected
    return written


# --------------------------------------------------------------------------- CountBenchQA

COUNTBENCH_FEATURES = datasets.Features({
    "image": datasets.Image(),
    "text": datasets.Value("string"),
    "question": datasets.Value("string"),
    "number": datasets.Value("int64"),
})

# (caption, question, number, image mode)
_COUNTBENCH_ROWS = [
    ("Three dogs sitting on a couch in the living room", "How many dogs are in the image?", 3, "RGB"),
    ("A vintage photo of two sailors on a pier", "How many sailors are in the image?", 2, "L"),
    ("Seven colorful balloons against a blue sky", "How many balloons are in the image?", 7, "RGB"),
]


def build_countbench(data_dir: Path) -> Written:
    """``data/test-00000-of-00001.parquet``; one image is grayscale, as some web images are."""
    root = Path(data_dir) / COUNTBENCH
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
    files = [write_parquet(root, "data/test-00000-of-00001.parquet", columns, COUNTBENCH_FEATURES)]
    return Written(root, files, {"test": _strip_images(columns, ["image"])}, {"test": expected})


# --------------------------------------------------------------------------- everything

def build_all(data_dir: Path) -> dict[str, Written]:
    """Every dataset, keyed by hub id."""
    data_dir = Path(data_dir)
    return {
        OMNI3D: build_omni3d(data_dir),
        ROBOSPATIAL: build_robospatial(data_dir),
        BLINK: build_blink(data_dir),
        VSR_ZEROSHOT: build_vsr(data_dir, VSR_ZEROSHOT),
        VSR_RANDOM: build_vsr(data_dir, VSR_RANDOM),
        REALWORLDQA: build_realworldqa(data_dir, REALWORLDQA),
        REALWORLDQA_MIRROR: build_realworldqa(data_dir, REALWORLDQA_MIRROR),
        GRIT: build_grit(data_dir),
        COUNTBENCH: build_countbench(data_dir),
    }


def expected_samples(written: dict[str, Written], task: str) -> list[Expected]:
    """The samples each task should yield from :func:`build_all`'s data, in order."""
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
