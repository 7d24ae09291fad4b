"""The pipelined program system against its bound: samples per second when writing programs overlaps
running them.

A scripted program writer stands for the language model: a batch of
``--batch`` samples takes ``--llm-ms`` plus ``--llm-sample-ms`` per sample (one
vLLM call). Scripted tools stand for the detector and depth models on one GPU:
a batch takes ``--detector-ms`` (``--depth-ms``) plus ``--item-ms`` per request,
one batch at a time on the device, with the tool server's batching rule. Each
program calls ``gd_detect`` once and ``depth`` twice, in the real sandbox.

Measured, each the median of ``--repeats`` runs over ``--samples`` samples:

- writing alone: the writer's samples per second (its batches back to back);
- running alone: the program system with a writer that takes no time (programs,
  sandbox and tools);
- the bound: the slower of the two stages;
- pipelined: ``ProgramSystem.predict`` as it runs (writing overlaps running);
- stage by stage: each batch written, then run, then the next (the system before).

Target: bound / pipelined <= 1.2. The bound is the steady state's: a run also fills the
pipeline (nothing runs before the first batch is written) and drains it (the last batch
runs after the writer is done), which a short run feels; hence a few hundred samples.

    python benchmarks/program_pipeline.py [--samples 384] [--batch 32] [--llm-ms 400] [--llm-sample-ms 10]
        [--detector-ms 40] [--depth-ms 60] [--item-ms 2] [--concurrency 16] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Sequence

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, table  # noqa: E402

from harness.systems.program import Program, ProgramSystem  # noqa: E402
from harness.tools import ToolContext  # noqa: E402
from harness.tools.batching import MicroBatcher, Occupancy  # noqa: E402
from harness.tools.dummy import DummyBackend  # noqa: E402
from harness.types import BytesImage, Prediction, Sample  # noqa: E402

NAME = "program_pipeline"
FULL = 384  # samples per run: enough that filling and draining the pipeline weigh little
PROGRAM = ("objects = gd_detect(image, 'cube, ball')\n"
           "near = depth(image, [4, 4, 30, 30])\n"
           "far = depth(image, [50, 40])\n"
           "final_answer = len(objects) + near + far")


@dataclass
class Latencies:
    """Seconds: the writer per batch and per sample; each model per batch, and per request in it."""

    llm: float = 0.4
    llm_sample: float = 0.01
    detector: float = 0.04
    depth: float = 0.06
    item: float = 0.002

    def writing(self, samples: int) -> float:
        return self.llm + self.llm_sample * samples


class ScriptedTools(DummyBackend):
    """The dummy tools' answers, each model behind a batcher that takes a GPU's time per batch."""

    def __init__(self, latencies: Latencies, max_batch: int = 8, max_wait_ms: float = 10.0) -> None:
        super().__init__()
        self.occupancy = Occupancy()
        self._detect = MicroBatcher(self._model(latencies.detector, latencies.item), max_batch, max_wait_ms / 1000,
                                    "scripted-detector", self.occupancy, "gpu")
        self._depth = MicroBatcher(self._model(latencies.depth, latencies.item), max_batch, max_wait_ms / 1000,
                                   "scripted-depth", self.occupancy, "gpu")

    @staticmethod
    def _model(fixed: float, per_item: float):
        def run(items: Sequence[Any]) -> list[Any]:
            time.sleep(fixed + per_item * len(items))
            return [compute() for compute in items]
        return run

    def in_flight(self) -> ContextManager[None]:
        return self.occupancy.program()

    def gd_detect(self, context: ToolContext, phrases: list[str]) -> list[dict[str, Any]]:
        return self._detect.submit(lambda: super(ScriptedTools, self).gd_detect(context, phrases))

    def depth(self, context: ToolContext, box_or_point: list[float]) -> float:
        return self._depth.submit(lambda: super(ScriptedTools, self).depth(context, box_or_point))

    def close(self) -> None:
        self._detect.close()
        self._depth.close()


class ScriptedWriter(ProgramSystem):
    """Writes the same program for every sample, taking a language model's time per batch."""

    kind = "scripted_writer"

    def __init__(self, latencies: Latencies, batch: int, concurrency: int, writing: bool = True) -> None:
        super().__init__("scripted-writer", {"tools": "dummy", "concurrency": concurrency,
                                             "generation_batch": batch}, seed=0)
        self.latencies, self.writing = latencies, writing
        self._backend = ScriptedTools(latencies)

    def write_programs(self, samples: list[Sample]) -> list[Program | Prediction]:
        if self.writing:
            time.sleep(self.latencies.writing(len(samples)))
        return [Program(PROGRAM) for _ in samples]


def make_samples(n: int) -> list[Sample]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 40, 200)).save(buffer, "PNG")
    image = BytesImage(buffer.getvalue())
    return [Sample(f"s{i}", "bench", "How far?", 0, "number", image=image) for i in range(n)]


def _rate(system: ScriptedWriter, samples: list[Sample], stage_by_stage: bool = False) -> float:
    start = time.perf_counter()
    if stage_by_stage:  # one predict per batch: it writes the batch, runs it, and only then returns
        predictions = [p for i in range(0, len(samples), system.generation_batch)
                       for p in system.predict(samples[i:i + system.generation_batch])]
    else:
        predictions = list(system.predict(samples))
    seconds = time.perf_counter() - start
    bad = [p for p in predictions if p.status != "ok"]
    assert len(predictions) == len(samples) and not bad, bad[:1]
    return len(samples) / seconds


def measure(quick: bool = False, samples: int | None = None, batch: int = 32, concurrency: int = 16,
            latencies: Latencies | None = None, repeats: int = 3) -> list[Figure]:
    logging.disable(logging.WARNING)
    latencies = latencies or Latencies()
    samples = samples or (FULL // 2 if quick else FULL)
    items = make_samples(samples)
    writing, running, pipelined, staged = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        writer = ScriptedWriter(latencies, batch, concurrency)
        for i in range(0, samples, batch):
            writer.write_programs(items[i:i + batch])
        writing.append(samples / (time.perf_counter() - start))
        quiet = ScriptedWriter(latencies, batch, concurrency, writing=False)
        try:
            _rate(quiet, items[:2 * concurrency])  # start the sandbox and its spare processes
            running.append(_rate(quiet, items))
        finally:
            quiet.close()
        try:
            _rate(writer, items[:batch])
            pipelined.append(_rate(writer, items))
            if not quick:
                staged.append(_rate(writer, items, stage_by_stage=True))
        finally:
            writer.close()
    bounds = [min(w, r) for w, r in zip(writing, running)]
    note = (f"{samples} samples, batches of {batch}, {concurrency} programs in flight; writer "
            f"{latencies.llm * 1000:g} ms + {latencies.llm_sample * 1000:g} ms/sample per batch; detector "
            f"{latencies.detector * 1000:g} ms, depth {latencies.depth * 1000:g} ms + {latencies.item * 1000:g} ms/request "
            f"per batch, one GPU")
    figures = [
        Figure(NAME, "writing alone", "samples/s", writing, note=note),
        Figure(NAME, "running alone (programs, sandbox, tools)", "samples/s", running, note=note),
        Figure(NAME, "pipeline bound (slower stage)", "samples/s", bounds, note=note),
        Figure(NAME, "pipelined (predict)", "samples/s", pipelined, note=note),
        # The target is the steady state's, at the full size: a shorter run feels the fill and drain more.
        Figure(NAME, "bound / pipelined", "x", [b / p for b, p in zip(bounds, pipelined)],
               "<= 1.2" if samples >= FULL else None, "each run's own ratio"),
    ]
    if staged:
        figures += [Figure(NAME, "stage by stage (before)", "samples/s", staged, note=note),
                    Figure(NAME, "pipelined / stage by stage", "x", [p / s for p, s in zip(pipelined, staged)],
                           note=note)]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=None, help="samples per run (default 384; 192 with --quick)")
    parser.add_argument("--batch", type=int, default=32, help="samples whose programs are written together")
    parser.add_argument("--concurrency", type=int, default=16, help="programs in flight")
    parser.add_argument("--llm-ms", type=float, default=400, help="the writer's time per batch")
    parser.add_argument("--llm-sample-ms", type=float, default=10, help="the writer's time per sample of a batch")
    parser.add_argument("--detector-ms", type=float, default=40, help="the detector's time per batch")
    parser.add_argument("--depth-ms", type=float, default=60, help="the depth model's time per batch")
    parser.add_argument("--item-ms", type=float, default=2, help="each model's time per request of a batch")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="fewer samples (no target), no stage-by-stage run")
    args = parser.parse_args()
    latencies = Latencies(args.llm_ms / 1000, args.llm_sample_ms / 1000, args.detector_ms / 1000,
                          args.depth_ms / 1000, args.item_ms / 1000)
    figures = measure(args.quick, args.samples, args.batch, args.concurrency, latencies, args.repeats)
    print(f"Pipelined program system ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}), "
          f"medians of {args.repeats} runs\n")
    print(table(figures))


if __name__ == "__main__":
    main()
