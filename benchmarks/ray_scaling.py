"""Distributed runs on Ray: samples per second with 1 and 2 replicas, and the cost per sample
of the Ray path over the local one.

Runs ``harness.runner.evaluate`` on one local Ray cluster (started once, outside the
timings) with three systems:

- ``echo`` answers at once: what is left is the harness's own cost per sample, shipping
  the sample's image (a CountBench-shaped dataset: JPEG bytes in a parquet file, read
  through the lazy Arrow reference) to a replica and the prediction back. Target: the Ray
  path costs under 5 ms per sample more than the local one.
- ``model`` takes ``--model-ms`` per sample, one at a time, like a model replica that
  serves one request at a time (a GPU): what replicas add.
- ``reference`` runs the synthetic benchmark's reference programs in the sandbox with its
  oracle tools (``concurrency`` programs at once): CPU-bound work.

Each setting times ``System.predict`` over N samples (read from the task as the runner
reads them), after a warm-up pass; the runner's own work (scoring, records) is the same
for both paths and is left out, and so is start-up (replicas building their systems,
sandboxes starting), reported on its own.

    python benchmarks/ray_scaling.py [--samples 200] [--model-ms 20] [--image 640x480] [--cpus N]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting import write_counting_task  # noqa: E402

from harness.systems.base import System
from harness.types import Prediction, Sample

SYNTHETIC_YAML = """\
task: bench_synthetic
dataset:
  path: synthetic/bench
  kind: synthetic
  parts:
    - split: test
  options:
    seed: 11
    scenes: {scenes}
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


class Echo(System):
    """Answers the gold at once, after reading the image's size (so the image is really read)."""

    kind = "echo"

    def predict_one(self, sample: Sample) -> Prediction:
        sample.image.size()
        return Prediction(sample.id, answer=sample.answer, raw=str(sample.answer))


class Model(Echo):
    """Echo after ``ms`` of waiting: a model that serves one request at a time."""

    kind = "model"

    def predict_one(self, sample: Sample) -> Prediction:
        time.sleep(float(self.params["ms"]) / 1000)
        return super().predict_one(sample)


def build_dataset(root: Path, n: int, size: tuple[int, int]) -> tuple[Path, Path, int]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(16):  # a few distinct photos-like images (smooth gradient and noise), reused
        y, x = np.mgrid[0:size[1], 0:size[0]]
        base = np.stack([(x * 255 // size[0] + 40 * i) % 256, (y * 255 // size[1]) % 256,
                         np.full_like(x, 17 * i % 256)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    include, data = write_counting_task(root, n, images)
    return include, data, sum(map(len, images)) // len(images)


def measure(system_name: str, task_name: str, n: int, replicas: int | None, include: Path, data: Path) -> dict:
    """Start-up (describe and prepare) and the steady rate of ``predict`` over ``n`` samples,
    after a warm-up pass, for the local system or its Ray replicas."""
    from harness.distributed.settings import RaySettings
    from harness.distributed.system import RaySystem
    from harness.systems import SystemRegistry
    from harness.tasks import TaskRegistry

    task = TaskRegistry([include]).task(task_name, data)
    system = SystemRegistry([include]).build(system_name, {}, 1234, None)
    system.data_dir = data
    if replicas:
        system = RaySystem(system, RaySettings(replicas=replicas), {}, None, [str(include)])
    try:
        start = time.perf_counter()
        system.describe()
        system.prepare([task])
        startup = time.perf_counter() - start
        warm = list(system.predict(task.samples(limit=min(n, 8 * (replicas or 1)))))
        start = time.perf_counter()
        predictions = list(system.predict(task.samples(limit=n)))
        seconds = time.perf_counter() - start
    finally:
        system.close()
    assert warm and len(predictions) == n and all(p.status == "ok" for p in predictions), \
        {p.status for p in predictions}
    return {"system": system_name, "path": f"ray x{replicas}" if replicas else "local", "n": n,
            "samples_per_s": n / seconds, "ms_per_sample": 1000 * seconds / n, "startup_s": startup}


def shipping_cost(include: Path, data: Path, n: int) -> float:
    """Milliseconds per sample to make a sample travel: read its image's bytes, pickle it."""
    import pickle

    from harness.distributed.shipping import ship_sample
    from harness.tasks import TaskRegistry

    samples = list(TaskRegistry([include]).task("bench_counting", data).samples(limit=n))
    start = time.perf_counter()
    for sample in samples:
        pickle.dumps(ship_sample(sample), protocol=5)
    return 1000 * (time.perf_counter() - start) / len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="N: samples per setting")
    parser.add_argument("--model-ms", type=float, default=20.0, help="the model system's time per sample")
    parser.add_argument("--image", default="640x480", help="the echo and model systems' image size (JPEG)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the sandboxed reference system")
    args = parser.parse_args()
    width, height = map(int, args.image.split("x"))

    import ray

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.update(HF_DATASETS_CACHE=str(root / "hf-cache"), HARNESS_CACHE_DIR=str(root / "harness-cache"),
                          HF_HUB_OFFLINE="1")
        n = args.samples
        include, data, image_bytes = build_dataset(root, n, (width, height))
        (include / "echo.yaml").write_text("system: echo\nkind: ray_scaling:Echo\nparams: {}\n")
        (include / "model.yaml").write_text(
            f"system: model\nkind: ray_scaling:Model\nparams: {{ms: {args.model_ms}}}\n")
        (include / "bench_synthetic.yaml").write_text(SYNTHETIC_YAML.format(scenes=max(n // 3, 8)))
        from harness.tasks import TaskRegistry

        registry = TaskRegistry([include])
        len(registry.task("bench_counting", data))  # one-time Arrow conversion, outside the timings
        synthetic_size = len(registry.task("bench_synthetic", data))  # renders the scenes once
        shipping_ms = shipping_cost(include, data, n)
        start = time.perf_counter()
        # Workers get this driver's sys.path, so they import this file's systems (``ray_scaling:...``).
        ray.init(num_cpus=args.cpus, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - start
        rows = []
        for replicas in (None, 1):
            rows.append(measure("echo", "bench_counting", n, replicas, include, data))
        for replicas in (None, 1, 2):
            rows.append(measure("model", "bench_counting", n, replicas, include, data))
        if not args.skip_reference:
            for replicas in (None, 1, 2):
                rows.append(measure("reference", "bench_synthetic", min(n, synthetic_size), replicas, include, data))
        ray.shutdown()

    print(f"Distributed runs on Ray: one local cluster of {args.cpus} CPUs (started in {ray_start:.1f} s, once), "
          f"{os.cpu_count()} cores here")
    print(f"echo/model: {width}x{height} JPEG images of {image_bytes / 1024:.0f} KiB from parquet; "
          f"model: {args.model_ms:g} ms per sample, one at a time; reference: sandboxed programs, oracle tools\n")
    print(f"| {'system':<9} | {'path':<8} | {'N':>5} | {'samples/s':>9} | {'ms/sample':>9} | {'start-up s':>10} |")
    print(f"|{'-' * 11}|{'-' * 10}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
    for r in rows:
        print(f"| {r['system']:<9} | {r['path']:<8} | {r['n']:>5} | {r['samples_per_s']:>9.1f} | "
              f"{r['ms_per_sample']:>9.2f} | {r['startup_s']:>10.1f} |")
    echo = {r["path"]: r["ms_per_sample"] for r in rows if r["system"] == "echo"}
    overhead = echo["ray x1"] - echo["local"]
    verdict = "meets" if overhead < 5.0 else "MISSES"
    print(f"\noverhead of the Ray path per sample (echo, ray x1 - local): {overhead:.2f} ms; "
          f"target < 5 ms: {verdict}")
    print(f"of which shipping a sample (reading its image's bytes, pickling it): {shipping_ms:.2f} ms")
    for system in ("model", "reference"):
        speed = {r["path"]: r["samples_per_s"] for r in rows if r["system"] == system}
        if "ray x2" in speed:
            print(f"{system}: 2 replicas / 1 replica = {speed['ray x2'] / speed['ray x1']:.2f}x, "
                  f"2 replicas / local = {speed['ray x2'] / speed['local']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
