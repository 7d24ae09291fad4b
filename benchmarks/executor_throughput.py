"""Programs per second and machine CPU per program: in-process exec vs fresh interpreters vs our warm sandbox.

(a) in-process ``exec`` (unsafe, for reference only: what the original evaluation did);
(b) four fresh isolated interpreters in parallel (a new sandbox, with the same isolation, per program,
    without the warm-up that pays off only over many programs);
(c) ours: one warm zygote with locked-down processes forked ahead, four programs in flight;
(d) a whole run of the reference system on the synthetic benchmark (456 programs with oracle tools).

Workloads for (a)-(c): a trivial program, and one making 10 tool calls answered in the parent
through the checked tool API. CPU per program counts the harness process and every process of the
sandbox (zygote, launcher, programs). Each figure is the median of ``--repeats`` runs, with its range.
Targets on a 2-core machine: (c) trivial >= 400 programs/s at <= 4 ms of CPU each, (c)/(b) >= 5,
(d) >= 300 programs/s.

    python benchmarks/executor_throughput.py [--programs 600] [--fresh 24] [--repeats 3] [--no-run] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, table  # noqa: E402

from harness.sandbox.executor import Sandbox  # noqa: E402
from harness.sandbox.runtime import ImageHandle, execute, program_namespace  # noqa: E402
from harness.tools import in_process_caller  # noqa: E402
from harness.tools.api import check_call  # noqa: E402

NAME = "executor_throughput"
WORKLOADS = {
    "trivial": "final_answer = 6 * 7",
    "10 tool calls": ("total = 0.0\n"
                      "for i in range(10):\n"
                      "    total += depth(image, [i, i, i + 4, i + 4])\n"
                      "final_answer = total"),
}
IN_FLIGHT = 4
_TICK = os.sysconf("SC_CLK_TCK")


class ConstantDepth:
    """A tool handler as cheap as possible, so the executor's own cost is measured."""

    names = ["gd_detect", "depth", "vqa"]

    def call(self, name, args, kwargs):
        check_call(name, args, kwargs)
        return 2.5


def _tree_cpu(root: int) -> float:
    """CPU seconds of a process tree's live processes and of every child they have reaped."""
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / _TICK
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass  # it ended meanwhile
    return total


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_process(code: str, n: int) -> float:
    tools = ConstantDepth()
    call = in_process_caller(tools)
    start = time.perf_counter()
    for _ in range(n):
        outcome = execute(code, program_namespace(tools.names, call, ImageHandle(320, 240)))
        assert outcome["status"] == "ok", outcome
    return n / (time.perf_counter() - start)


def fresh_interpreters(code: str, n: int) -> float:
    def one(_):
        with Sandbox(spares=1, warm_up=False) as sandbox:
            result = sandbox.run(code, ConstantDepth(), (320, 240))
            assert result.status == "ok", result

    start = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


def warm_sandbox(sandbox: Sandbox, code: str, n: int) -> tuple[float, float]:
    """Programs per second, and milliseconds of machine CPU per program."""
    def one(_):
        result = sandbox.run(code, ConstantDepth(), (320, 240))
        assert result.status == "ok", result

    with ThreadPoolExecutor(IN_FLIGHT) as pool:  # start the zygote and its spares outside the timing
        list(pool.map(one, range(2 * IN_FLIGHT)))
    root = sandbox._zygote._process.pid
    cpu = _self_cpu() + _tree_cpu(root)
    start = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    return n / elapsed, 1000 * (_self_cpu() + _tree_cpu(root) - cpu) / n


def synthetic_reference_run() -> float:
    """Programs per second of `run --system reference --tasks synthetic` (the dataset built beforehand)."""
    from harness.runner import RunOptions, evaluate
    from harness.tasks import TaskRegistry

    registry = TaskRegistry()
    n = len(list(registry.task("synthetic").samples()))  # builds (or reads) the cached dataset
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        evaluate(RunOptions(system="reference", tasks=["synthetic"], output_path=Path(out) / "run"), registry)
        return n / (time.perf_counter() - start)


def measure(quick: bool = False, programs: int | None = None, fresh: int | None = None, repeats: int = 3,
            with_run: bool = True) -> list[Figure]:
    logging.disable(logging.WARNING)
    programs = programs or (200 if quick else 600)
    fresh = fresh or (12 if quick else 24)
    figures: list[Figure] = []
    with Sandbox(spares=IN_FLIGHT) as sandbox:
        layers = ", ".join(sandbox.isolation)
        for workload, code in WORKLOADS.items():
            a, b, c, cpu = [], [], [], []
            for _ in range(repeats):
                a.append(in_process(code, programs))
                b.append(fresh_interpreters(code, fresh))
                rate, ms = warm_sandbox(sandbox, code, programs)
                c.append(rate)
                cpu.append(ms)
            trivial = workload == "trivial"
            figures += [
                Figure(NAME, f"{workload}: (a) in-process exec (unsafe)", "programs/s", a),
                Figure(NAME, f"{workload}: (b) 4 fresh interpreters", "programs/s", b, note=layers),
                Figure(NAME, f"{workload}: (c) warm sandbox", "programs/s", c, ">= 400" if trivial else None,
                       f"{IN_FLIGHT} in flight; {layers}"),
                Figure(NAME, f"{workload}: (c) machine CPU per program", "ms", cpu, "<= 4" if trivial else None,
                       "the harness process and every sandbox process"),
                Figure(NAME, f"{workload}: (c) / (b)", "x", [x / y for x, y in zip(c, b)], ">= 5", "each run's own ratio"),
            ]
    if with_run:
        figures.append(Figure(NAME, "(d) synthetic reference run", "programs/s",
                              [synthetic_reference_run() for _ in range(repeats)], ">= 300",
                              "python -m harness run --system reference --tasks synthetic"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=None, help="programs per measurement for (a) and (c) "
                                                                     "(default 600; 200 with --quick)")
    parser.add_argument("--fresh", type=int, default=None, help="programs for (b), which is slow (default 24)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--no-run", action="store_true", help="skip (d), the whole synthetic reference run")
    parser.add_argument("--quick", action="store_true", help="fewer programs per measurement")
    args = parser.parse_args()
    figures = measure(args.quick, args.programs, args.fresh, args.repeats, not args.no_run)
    print(f"Executor throughput ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {IN_FLIGHT} programs in "
          f"flight for (b) and (c); medians of {args.repeats} runs)\n")
    print(table(figures))


if __name__ == "__main__":
    main()
