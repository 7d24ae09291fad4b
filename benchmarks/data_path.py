"""The data path of a large run, through the command line a user types.

Builds a CountBenchQA-shaped task (parquet with an image column) of N rows and a predictions file
for it, then times ``python -m harness`` in fresh processes, each one's peak memory read from the
kernel (``wait4``):

- ``run`` at 10% of N and at N: the marginal cost of a sample, and the peak memory each sample adds;
- ``run --resume`` of the finished N-sample run, ``show`` of one sample (the last), ``score``
  at both sizes (time and peak memory), ``check`` of two N-sample runs, ``report`` of one;
- ``python -m harness --help``.

Targets (N = 100,000): <= 0.05 ms a sample marginal, <= 0.1 KB of peak memory a sample from
10,000 to 100,000, resume < 1 s, show < 0.3 s, check <= 150 MB, report <= 200 MB, score's peak
memory flat (<= 0.1 KB a sample) and --help < 0.15 s. ``--quick`` uses N = 20,000 (the figures
are then not the targets' and are reported without them).

    python benchmarks/data_path.py [--quick] [--samples N] [--repeats R]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting import TASK, write_counting_task  # noqa: E402
from figures import Figure, table  # noqa: E402

NAME = "data_path"
FULL = 100_000
QUICK = 20_000


def build(root: Path, n: int) -> tuple[Path, Path]:
    """The task's dataset (one small PNG on every row) and YAML under ``root``; (include folder, data folder)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, "PNG")
    return write_counting_task(root, n, [buffer.getvalue()])


def write_predictions(path: Path, n: int, seed: int) -> Path:
    """Answers for the first ``n`` samples in the forms models write them, some wrong."""
    answers = ["{}", "There are {} birds.", "{} birds", "maybe {}"]
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "prediction": answers[i % 4].format(i % 9 + ((i + seed) % 7 == 0))})
                    + "\n")
    return path


class Harness:
    """``python -m harness`` in a fresh process: wall seconds and peak memory (MB) of each call."""

    def __init__(self, root: Path) -> None:
        self.env = {**os.environ, "HF_DATASETS_CACHE": str(root / "hf-cache"), "HF_HUB_OFFLINE": "1",
                    "HARNESS_CACHE_DIR": str(root / "harness-cache"), "TQDM_DISABLE": "1"}

    def __call__(self, *args: str | Path, ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode not in ok:
            raise RuntimeError(f"python -m harness {' '.join(map(str, args))} exited {proc.returncode}:\n{stderr[-2000:]}")
        return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def measure(quick: bool = False, samples: int | None = None, repeats: int = 3) -> list[Figure]:
    n = samples or (QUICK if quick else FULL)
    small = n // 10
    targeted = n == FULL  # the targets are stated at 100,000 samples
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Built in a process of its own: a child's peak memory counts the parent's at the fork (Linux
        # keeps the high-water mark across exec), so this process stays small.
        subprocess.run([sys.executable, __file__, "--build", str(root), str(n)], check=True, capture_output=True)
        include, data = root / "include", root / "data"
        harness = Harness(root)
        task_args = ["--system", "predictions", "--tasks", TASK, "--data-dir", data, "--include-path", include]
        warm = write_predictions(root / "warm.jsonl", 10, 0)  # the dataset's one-time Arrow conversion
        harness("run", *task_args, "--predictions", warm, "--limit", 10, "--output-path", root / "warm")
        files = {size: write_predictions(root / f"predictions-{size}.jsonl", size, size) for size in (small, n)}

        def run(size: int, out: Path) -> tuple[float, float]:
            return harness("run", *task_args, "--predictions", files[size], "--limit", size, "--output-path", out)

        big_runs: list[Path] = []
        marginal, growth = [], []
        resume, show, score_ms, score_growth, check, report = [], [], [], [], [], []
        for r in range(repeats):
            t_small, m_small = run(small, root / f"small-{r}")
            big = root / f"big-{r}"
            t_big, m_big = run(n, big)
            big_runs.append(big)
            marginal.append(1000 * (t_big - t_small) / (n - small))
            growth.append(1024 * (m_big - m_small) / (n - small))
            resume.append(harness("run", *task_args, "--predictions", files[n], "--limit", n, "--resume",
                                  "--output-path", big)[0])
            show.append(harness("show", big, str(n - 1))[0])
            s_small, sm_small = harness("score", root / f"small-{r}")
            s_big, sm_big = harness("score", big)
            score_ms.append(1000 * (s_big - s_small) / (n - small))
            score_growth.append(1024 * (sm_big - sm_small) / (n - small))
            report.append(harness("report", big, "--data-dir", data, "--out", root / f"report-{r}.html")[1])
        for r in range(repeats):
            # Two different runs of the same task (the predictions of each repeat differ): exit 1 is a verdict.
            check.append(harness("check", "--baseline", big_runs[r], "--candidate", big_runs[(r + 1) % repeats],
                                 ok=(0, 1))[1])
        helps = [harness("--help")[0] for _ in range(max(repeats, 5))]

    def target(text: str) -> str | None:
        return text if targeted else None

    at = f"{n:,} samples"
    return [
        Figure(NAME, f"run: marginal time a sample ({small:,} -> {n:,})", "ms", marginal, target("<= 0.05"),
               note="python -m harness run --system predictions, fresh processes, difference of wall times"),
        Figure(NAME, f"run: peak memory a sample adds ({small:,} -> {n:,})", "KB", growth, target("<= 0.1"),
               note="difference of the two runs' peak RSS over the difference of their samples"),
        Figure(NAME, f"run --resume of a finished run ({at})", "s", resume, target("< 1"),
               note="wall time of the command, interpreter start included"),
        Figure(NAME, f"show of one sample ({at})", "s", show, target("< 0.3"),
               note="the run's last sample, wall time of the command"),
        Figure(NAME, f"score: marginal time a sample ({small:,} -> {n:,})", "ms", score_ms,
               note="python -m harness score (exact-match judge)"),
        Figure(NAME, f"score: peak memory a sample adds ({small:,} -> {n:,})", "KB", score_growth, target("<= 0.1"),
               note="flat: records stream through"),
        Figure(NAME, f"check of two runs: peak memory ({at} each)", "MB", check, target("<= 150"),
               note="python -m harness check --baseline RUN --candidate RUN"),
        Figure(NAME, f"report: peak memory ({at})", "MB", report, target("<= 200"),
               note="python -m harness report RUN (default --max-samples)"),
        Figure(NAME, "python -m harness --help", "s", helps, "< 0.15", note="wall time, interpreter start included"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} samples instead of {FULL:,} (no targets)")
    parser.add_argument("--samples", type=int, metavar="N", help="samples of the large run (default: as --quick says)")
    parser.add_argument("--repeats", type=int, default=3, metavar="R", help="runs of each figure (default: 3)")
    parser.add_argument("--build", nargs=2, metavar=("ROOT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(Path(args.build[0]), int(args.build[1]))
        return
    print(table(measure(args.quick, args.samples, args.repeats)))


if __name__ == "__main__":
    main()
