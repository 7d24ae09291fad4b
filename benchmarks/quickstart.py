"""The front page's two offline costs: building the synthetic benchmark, and the README's first command.

Each run uses an empty cache folder (``HARNESS_CACHE_DIR``) and a fresh process, as a new user
would: the build is timed from the first use of the synthetic task, the default command from
``python -m harness run --system reference --tasks synthetic`` to its exit, build included.

    python benchmarks/quickstart.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, table  # noqa: E402

BUILD = "from harness.tasks import TaskRegistry; len(TaskRegistry().task('synthetic'))"
DEFAULT_COMMAND = ["-m", "harness", "run", "--system", "reference", "--tasks", "synthetic"]


def _timed(args: list[str], cwd: Path, cache: Path) -> float:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(quick: bool = False) -> list[Figure]:
    repeats = 3
    build, default = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            build.append(_timed(["-c", BUILD], Path(tmp), Path(tmp) / "cache"))
        with tempfile.TemporaryDirectory() as tmp:
            default.append(_timed(DEFAULT_COMMAND + ["--output-path", str(Path(tmp) / "run")], Path(tmp),
                                  Path(tmp) / "cache"))
    return [
        Figure("quickstart", "synthetic benchmark build, empty cache", "s", build,
               note="first use of the synthetic task in a fresh process, interpreter start included"),
        Figure("quickstart", "README's first command (reference system, synthetic), empty cache", "s", default,
               note="python -m harness run --system reference --tasks synthetic, build included"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; the runs are already short")
    args = parser.parse_args()
    print(table(measure(args.quick)))


if __name__ == "__main__":
    main()
