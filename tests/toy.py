"""A toy counting task and toy systems for runner tests (importable by subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from harness.systems.base import System
from harness.systems.llm_program import LLMProgramSystem
from harness.systems.params import typed
from harness.systems.program import ReferenceSystem
from harness.types import Prediction, Sample

TOY_TASK = """\
task: toy_counting
version: 1
description: Toy counting questions for tests.
dataset:
  path: toy/counting
  parts:
    - split: test
      data_files: test.jsonl
  image_root: images
fields:
  question: question
  answer: answer
  image: image
  cluster: image
answer_type: integer
compat: tallyqa
size: {size}
"""


def write_toy_task(root: Path, n: int = 30, broken_rows: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """Write the task YAML (in root/include) and its data (in root/data); return both folders."""
    include, data = root / "include", root / "data" / "toy" / "counting"
    include.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    (include / "toy_counting.yaml").write_text(TOY_TASK.format(size=n))
    with (data / "test.jsonl").open("w") as f:
        for i in range(n):
            row = {"question": f"How many cubes are in picture {i // 3}?", "answer": i % 5, "image": f"{i // 3}.png"}
            if i in broken_rows:
                row["answer"] = None
            f.write(json.dumps(row) + "\n")
    return include, root / "data"


def write_system(include: Path, name: str, kind: str, **params) -> None:
    lines = [f"system: {name}", f"kind: {kind}", "params:"] + [f"  {k}: {json.dumps(v)}" for k, v in params.items()]
    if not params:
        lines[-1] = "params: {}"
    (include / f"{name}.yaml").write_text("\n".join(lines) + "\n")


class SlowOracle(System):
    """Answers the gold for even ids and gold + 1 for odd ones, after a delay."""

    kind = "slow_oracle"
    reads_images = False  # it answers from the gold, so the toy task's images need not exist

    def predict_one(self, sample: Sample) -> Prediction:
        time.sleep(float(self.params.get("delay", 0.0)))
        if str(sample.id) in str(self.params.get("fail_on", "")).split(","):
            raise RuntimeError(f"deliberate failure on {sample.id}")
        answer = sample.answer if int(sample.id) % 2 == 0 else sample.answer + 1
        return Prediction(sample.id, answer=answer, raw=str(answer))


class PidReporter(SlowOracle):
    """Writes its process id to a file first, so a test can kill it."""

    def prepare(self, tasks) -> None:
        Path(self.params["pid_file"]).write_text(str(os.getpid()))


# A 12-scene synthetic benchmark, quick to generate, for end-to-end runs.
SMALL_SYNTHETIC_TASK = """\
task: synthetic_small
dataset:
  path: synthetic/small
  kind: synthetic
  parts:
    - split: test
  options:
    seed: 5
    scenes: 12
fields:
  id: id
  question: question
  answer: answer
  image: image
  answer_type: answer_type
  choices: choices
  cluster: scene
formatter: per_row
"""


def synthetic_task(name: str, path: str) -> str:
    """:data:`SMALL_SYNTHETIC_TASK` under another name and dataset path (a pre-built copy at
    DATA_DIR/``path`` is read instead of generating one)."""
    return SMALL_SYNTHETIC_TASK.replace("synthetic_small", name, 1).replace("synthetic/small", path, 1)


class DiesOnce:
    """Kills its own process (SIGKILL, as the OOM killer would) on sample ``die_on`` the first
    time any replica reaches it (``marker`` records that it happened); answers as its base
    class otherwise. With ``always: true`` it dies on that sample every time."""

    params: dict
    parameters = {"die_on": typed(str), "marker": typed(str), "always": typed(bool)}

    def run_program(self, sample: Sample, program):
        if sample.id == self.params["die_on"]:
            marker = Path(self.params["marker"])
            if self.params.get("always") or not marker.exists():
                with marker.open("a") as f:
                    f.write(f"{os.getpid()}\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return super().run_program(sample, program)


class DyingReference(DiesOnce, ReferenceSystem):
    kind = "dying_reference"


class DyingWriter(DiesOnce, LLMProgramSystem):
    kind = "dying_writer"
