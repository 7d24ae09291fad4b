"""Tool-server throughput with tiny random models on CPU: unbatched vs batched vs cached.

Many programs call the tools at once; the tool server gathers concurrent
detector and depth requests into batches and caches every answer on disk.
This sends the same workload (one gd_detect and two depth calls per image,
from several threads) to: (a) a server without batching or cache, (b) with
batching, (c) with the cache, run twice; and reports requests per second and
the cache hit rate of the repeated run.
Targets: the repeated run is served entirely from cache; batching is never
slower than unbatched.

    python benchmarks/tool_server.py [--images 32] [--threads 8]
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import save_grounding_dino, save_moge  # noqa: E402

from harness.tools import ToolContext, make_backend  # noqa: E402
from harness.tools.api import IMAGE_MARKER  # noqa: E402
from harness.types import BytesImage  # noqa: E402


def images(n: int) -> list[BytesImage]:
    refs = []
    for i in range(n):
        image = Image.new("RGB", (64, 48), (i * 7 % 256, 90, 200 - i % 150))
        image.paste((250, 20, 20), (8 + i % 20, 10, 30 + i % 20, 30))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        refs.append(BytesImage(buffer.getvalue()))
    return refs


def workload(backend, refs: list[BytesImage], threads: int) -> tuple[float, int]:
    def one(ref: BytesImage) -> int:
        session = backend.session(ToolContext(ref, (64, 48)))
        session.call("gd_detect", [IMAGE_MARKER, "cube, ball"], {})
        session.call("depth", [IMAGE_MARKER, [8, 10, 30, 30]], {})
        session.call("depth", [IMAGE_MARKER, [50, 40]], {})
        return 3

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        requests = sum(pool.map(one, refs))
    return requests / (time.perf_counter() - start), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = dict(detector={"checkpoint": str(save_grounding_dino(root / "gdino")), "box_threshold": 0.3},
                        depth={"checkpoint": str(save_moge(root / "moge.pt")), "num_tokens": 256},
                        cache_dir=str(root / "cache"))
        refs = images(args.images)
        warm = make_backend("real", **settings, cache=False)
        workload(warm, refs[:2], 1)  # load the models outside the timings
        warm.close()

        rows = []
        for name, options in (("(a) unbatched, no cache", {"cache": False, "max_batch": 1}),
                              ("(b) batched, no cache", {"cache": False, "max_batch": 8, "max_wait_ms": 20})):
            backend = make_backend("real", **settings, **options)
            rate, requests = workload(backend, refs, args.threads)
            rows.append((name, rate, requests, "-", backend._detect.items / max(backend._detect.batches, 1)))
            backend.close()
        for attempt in ("(c) cached, first run", "(c) cached, repeated run"):
            backend = make_backend("real", **settings, max_batch=8, max_wait_ms=20)
            rate, requests = workload(backend, refs, args.threads)
            hits = sum(v for k, v in backend.stats.items() if k.endswith("cache_hits"))
            rows.append((attempt, rate, requests, f"{100 * hits / requests:.0f}%",
                         backend._detect.items / max(backend._detect.batches, 1)))
            backend.close()

    print(f"Tool server, tiny random GroundingDINO + MoGe-2 on CPU, {args.images} images x 3 calls, "
          f"{args.threads} threads\n")
    print(f"| {'mode':<26} | {'requests/s':>10} | {'requests':>8} | {'cache hits':>10} | {'detector batch size':>19} |")
    print(f"|{'-' * 28}|{'-' * 12}|{'-' * 10}|{'-' * 12}|{'-' * 21}|")
    for name, rate, requests, hits, batch in rows:
        print(f"| {name:<26} | {rate:>10.1f} | {requests:>8} | {hits:>10} | {batch:>19.1f} |")
    unbatched, batched, repeated = rows[0][1], rows[1][1], rows[3]
    print(f"\nbatching never slower than unbatched: {'yes' if batched >= unbatched else 'NO'} "
          f"({batched / unbatched:.2f}x); repeated run entirely from cache: {'yes' if repeated[3] == '100%' else 'NO'}")


if __name__ == "__main__":
    main()
