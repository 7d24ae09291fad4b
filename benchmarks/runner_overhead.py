"""Runner + scoring overhead per sample, and peak memory, with the predictions system.

Builds a CountBenchQA-shaped dataset (parquet with an image column) of N rows
and a predictions file, then times ``harness.runner.evaluate`` on it in a fresh
process per N (the dataset's one-time Arrow conversion is done before timing).
Target: under 2 ms per sample at N = 10,000, and peak memory flat in N.

    python benchmarks/runner_overhead.py [--sizes 1000,5000,10000,20000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK_YAML = """\
task: bench_counting
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


def build(root: Path, n: int) -> tuple[Path, Path, Path]:
    import datasets
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, "PNG")
    png = buffer.getvalue()
    data = root / "data" / "bench" / "counting" / "data"
    data.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "question": datasets.Value("string"), "number": datasets.Value("int64")})
    table = datasets.Dataset.from_dict({
        "image": [{"bytes": png, "path": None}] * n,
        "text": [f"a photo of {i % 9} birds" for i in range(n)],
        "question": [f"How many birds are in photo {i}?" for i in range(n)],
        "number": [i % 9 for i in range(n)],
    }, features=features)
    table.to_parquet(str(data / "test-00000-of-00001.parquet"))
    include = root / "include"
    include.mkdir()
    (include / "bench_counting.yaml").write_text(TASK_YAML)
    predictions = root / "predictions.jsonl"
    answers = ["{}", "There are {} birds.", "{} birds", "maybe {}"]
    with predictions.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "prediction": answers[i % 4].format(i % 9 + (i % 7 == 0))}) + "\n")
    return include, root / "data", predictions


def worker(n: int) -> dict:
    import logging

    logging.disable(logging.INFO)
    os.environ["TQDM_DISABLE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf-cache")
        os.environ["HARNESS_CACHE_DIR"] = str(root / "harness-cache")
        os.environ["HF_HUB_OFFLINE"] = "1"
        include, data, predictions = build(root, n)
        from harness.runner import RunOptions, evaluate
        from harness.tasks import TaskRegistry

        registry = TaskRegistry([include])
        len(registry.task("bench_counting", data))  # one-time Arrow conversion, outside the timing
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        options = RunOptions(system="predictions", tasks=["bench_counting"], output_path=root / "run",
                             system_args={"path": str(predictions)}, data_dir=str(data), include_paths=[str(include)])
        start = time.perf_counter()
        results = evaluate(options, registry)
        seconds = time.perf_counter() - start
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = results["results"]["bench_counting"]
    assert summary["n"] == n, summary
    return {"n": n, "seconds": seconds, "ms_per_sample": 1000 * seconds / n,
            "peak_rss_mb": rss_after / 1024, "rss_growth_mb": (rss_after - rss_before) / 1024,
            "accuracy": summary["accuracy,strict"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,10000,20000")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    rows = []
    for n in map(int, args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--worker", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("Runner + scoring overhead, predictions system (one fresh process per size)\n")
    print(f"| {'samples':>8} | {'wall s':>7} | {'ms/sample':>9} | {'peak RSS MB':>11} | {'RSS growth during run MB':>24} |")
    print(f"|{'-' * 10}|{'-' * 9}|{'-' * 11}|{'-' * 13}|{'-' * 26}|")
    for r in rows:
        print(f"| {r['n']:>8} | {r['seconds']:>7.2f} | {r['ms_per_sample']:>9.3f} | {r['peak_rss_mb']:>11.1f} | "
              f"{r['rss_growth_mb']:>24.1f} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        marginal = 1000 * (b["seconds"] - a["seconds"]) / (b["n"] - a["n"])
        print(f"\nmarginal cost per sample between {a['n']} and {b['n']}: {marginal:.3f} ms")
    at_10k = [r for r in rows if r["n"] == 10000]
    if at_10k:
        verdict = "meets" if at_10k[0]["ms_per_sample"] < 2.0 else "MISSES"
        print(f"target < 2 ms/sample at 10,000 samples: {verdict} ({at_10k[0]['ms_per_sample']:.3f} ms)")


if __name__ == "__main__":
    main()
