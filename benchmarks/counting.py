"""A CountBench-shaped task for benchmarks: its YAML and a parquet test split of N rows, laid out
as the real dataset is (``<data>/bench/counting/data/test-00000-of-00001.parquet``), with the
given encoded images repeated over the rows."""

from __future__ import annotations

from pathlib import Path

TASK = "bench_counting"
TASK_YAML = f"""\
task: {TASK}
dataset:
  path: bench/counting
  parts:
    - split: test
fields:
  question: question
  answer: number
  image: image
answer_type: integer
compat: countbench
"""


def write_counting_task(root: Path, n: int, images: list[bytes]) -> tuple[Path, Path]:
    """The task's dataset and YAML under ``root``; returns (include folder, data folder)."""
    import datasets

    data = root / "data" / "bench" / "counting" / "data"
    data.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "number": datasets.Value("int64")})
    datasets.Dataset.from_dict({
        "image": [{"bytes": images[i % len(images)], "path": None} for i in range(n)],
        "question": [f"How many birds are in photo {i}?" for i in range(n)],
        "number": [i % 9 for i in range(n)],
    }, features=features).to_parquet(str(data / "test-00000-of-00001.parquet"))
    include = root / "include"
    include.mkdir()
    (include / f"{TASK}.yaml").write_text(TASK_YAML)
    return include, root / "data"
