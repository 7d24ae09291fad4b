"""Tool-server throughput and batch sizes with tiny random models on CPU: unbatched vs batched vs cached.

Programs call the tools at once; the tool server gathers each model's requests into
batches, dispatched when full, when every program in flight waits on a tool, or
after ``max_wait_ms``, and caches every answer on disk. The workload: ``--programs``
programs in flight (threads running one image's program after another, as the
program system's workers do), each doing one ``gd_detect`` and two ``depth`` reads
per image. Modes:

(a) no batching, no cache (``max_batch=1``);
(b) batched, no cache (the defaults: on the CPU a depth batch runs one image per
    forward pass, as a MoGe pass over several images is slower per image here);
(b') as (b) with the whole depth batch in one forward pass (what a GPU does);
(c) with the cache, run twice (the second run is served from it).

Targets: mean detector batch >= 6 and depth batch >= 4 in (b); (b) >= 3x (a) in
requests per second; the repeated run served entirely from the cache. Also shown: the
most batching could give with these models here, from their own times (a depth pass
that costs as much per image in a batch as alone bounds the speed-up). Each figure
is the median of ``--repeats`` runs.

    python benchmarks/tool_server.py [--images 32] [--programs 8] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import Figure, table  # noqa: E402
from tiny_models import save_grounding_dino, save_moge  # noqa: E402

from harness.tools import ToolContext, make_backend  # noqa: E402
from harness.tools.api import IMAGE_MARKER  # noqa: E402
from harness.types import BytesImage  # noqa: E402

NAME = "tool_server"
MODES = {
    "a": ("(a) unbatched, no cache", {"cache": False, "max_batch": 1}),
    "b": ("(b) batched, no cache", {"cache": False}),
    "b'": ("(b') batched, depth batch in one pass", {"cache": False, "depth_pass_images": 8}),
}


def images(n: int) -> list[BytesImage]:
    refs = []
    for i in range(n):
        image = Image.new("RGB", (64, 48), (i * 7 % 256, 90, 200 - i % 150))
        image.paste((250, 20, 20), (8 + i % 20, 10, 30 + i % 20, 30))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        refs.append(BytesImage(buffer.getvalue()))
    return refs


def workload(backend, refs: list[BytesImage], programs: int) -> tuple[float, int, float]:
    """Requests per second of ``programs`` workers running one image's program after another, the
    requests, and this process's CPU milliseconds per request."""
    todo = iter(refs)
    lock = threading.Lock()
    done = []
    started = threading.Barrier(programs)

    def worker() -> None:
        with backend.in_flight():  # one program in flight while this worker has programs to run
            started.wait()  # the workers are there before the programs, as in the program system
            while True:
                with lock:
                    ref = next(todo, None)
                if ref is None:
                    return
                session = backend.session(ToolContext(ref, (64, 48)))
                session.call("gd_detect", [IMAGE_MARKER, "cube, ball"], {})
                session.call("depth", [IMAGE_MARKER, [8, 10, 30, 30]], {})
                session.call("depth", [IMAGE_MARKER, [50, 40]], {})
                done.append(3)

    start, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=worker) for _ in range(programs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests = sum(done)
    return requests / (time.perf_counter() - start), requests, 1000 * (time.process_time() - cpu) / requests


def _ceiling(backend, refs: list[BytesImage], programs: int) -> float:
    """The most batching can speed the workload up with these models on this machine: an image's
    model time unbatched (a detection alone, one depth pass for its two reads) over its share of
    batched model time (1/programs of a detector batch, and its own depth pass on the CPU)."""
    pictures = [ref.load().convert("RGB") for ref in refs[:programs]]

    def seconds(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    alone = seconds(lambda: backend.detector.detect_batch([(pictures[0], ["cube", "ball"])]))
    batch = seconds(lambda: backend.detector.detect_batch([(p, ["cube", "ball"]) for p in pictures]))
    depth = seconds(lambda: backend.depth_model.depth_maps(pictures[:1]))
    return (alone + depth) / (batch / len(pictures) + depth)


def _one_run(settings: dict, refs: list[BytesImage], programs: int, modes: list[str]) -> dict[str, dict]:
    out = {}
    for key in modes:
        backend = make_backend("real", **settings, **MODES[key][1])
        rate, _, cpu = workload(backend, refs, programs)
        out[key] = {"rate": rate, "cpu": cpu, "detector": backend._detect.mean_batch, "depth": backend._depth.mean_batch,
                    "pass": backend.stats["depth_maps"] / max(backend.stats["depth_passes"], 1)}
        backend.close()
    for attempt in ("c1", "c2"):
        backend = make_backend("real", **settings)
        rate, requests, _ = workload(backend, refs, programs)
        hits = sum(v for k, v in backend.stats.items() if k.endswith("cache_hits"))
        out[attempt] = {"rate": rate, "hits": 100 * hits / requests}
        backend.close()
    return out


def measure(quick: bool = False, images_n: int | None = None, programs: int = 8,
            repeats: int | None = None) -> list[Figure]:
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")
    images_n = images_n or (16 if quick else 32)
    repeats = repeats or 3
    modes = ["a", "b"] if quick else ["a", "b", "b'"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = dict(detector={"checkpoint": str(save_grounding_dino(root / "gdino")), "box_threshold": 0.3},
                        depth={"checkpoint": str(save_moge(root / "moge.pt")), "num_tokens": 256},
                        device="cpu")
        refs = images(images_n)
        warm = make_backend("real", **settings, cache=False)
        workload(warm, refs[:2], 1)  # load the models outside the timings
        ceilings = [_ceiling(warm, refs, programs) for _ in range(repeats)]
        warm.close()
        for run in range(repeats):
            # Each run its own cache file: the first cached run is cold, the second warm.
            runs.append(_one_run({**settings, "cache_dir": str(root / f"cache-{run}")}, refs, programs, modes))
    note = f"{images_n} images x 3 calls, {programs} programs in flight, tiny GroundingDINO + MoGe-2 on CPU"
    figures = [Figure(NAME, f"{MODES[key][0]}: requests/s", "req/s", [r[key]["rate"] for r in runs], note=note)
               for key in modes]
    figures += [Figure(NAME, f"{MODES[key][0]}: CPU per request", "ms", [r[key]["cpu"] for r in runs],
                       note="this process, all threads: the work, whatever else the machine runs") for key in modes]
    figures += [
        Figure(NAME, "(c) cached, first run: requests/s", "req/s", [r["c1"]["rate"] for r in runs], note=note),
        Figure(NAME, "(c) cached, repeated run: requests/s", "req/s", [r["c2"]["rate"] for r in runs], note=note),
        Figure(NAME, "(c) repeated run served from the cache", "%", [r["c2"]["hits"] for r in runs], ">= 100"),
        Figure(NAME, "(b) mean detector batch", "requests", [r["b"]["detector"] for r in runs], ">= 6", note),
        Figure(NAME, "(b) mean depth batch", "images", [r["b"]["depth"] for r in runs], ">= 4", note),
        Figure(NAME, "(b) images per depth forward pass", "images", [r["b"]["pass"] for r in runs], note=note),
        Figure(NAME, "(b) / (a) requests per second", "x", [r["b"]["rate"] / r["a"]["rate"] for r in runs], ">= 3",
               "batched over unbatched, each run's own ratio"),
        Figure(NAME, "(b) / (a) at most, from the models' own times", "x", ceilings,
               note=f"per image: a detection alone + a depth pass, over 1/{programs} of a detector batch of "
                    f"{programs} + a depth pass (one image per pass on the CPU)"),
    ]
    if "b'" in modes:
        figures.append(Figure(NAME, "(b') / (a) requests per second", "x",
                              [r["b'"]["rate"] / r["a"]["rate"] for r in runs], note="depth batch in one CPU pass"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="images per run (default 32; 16 with --quick)")
    parser.add_argument("--programs", type=int, default=8, help="programs in flight")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="fewer images, no (b')")
    args = parser.parse_args()
    figures = measure(args.quick, args.images, args.programs, args.repeats)
    print(f"Tool server, tiny random GroundingDINO + MoGe-2 on CPU ({os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}), medians of {args.repeats} runs\n")
    print(table(figures))


if __name__ == "__main__":
    main()
