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

    python benchmarks/executor_throughput.py [--programs 600] [--fresh 24] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.sandbox.executor import Sandbox
from harness.sandbox.runtime import ImageHandle, execute, program_namespace
from harness.tools import in_process_caller
from harness.tools.api import check_call

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


def _median(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=600, help="programs per measurement for (a) and (c)")
    parser.add_argument("--fresh", type=int, default=24, help="programs for (b), which is slow")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--no-run", action="store_true", help="skip (d), the whole synthetic reference run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    figures: dict[str, dict] = {}
    with Sandbox(spares=IN_FLIGHT) as sandbox:
        layers = ", ".join(sandbox.isolation)
        for workload, code in WORKLOADS.items():
            a, b, c, cpu = [], [], [], []
            for _ in range(args.repeats):
                a.append(in_process(code, args.programs))
                b.append(fresh_interpreters(code, args.fresh))
                rate, ms = warm_sandbox(sandbox, code, args.programs)
                c.append(rate)
                cpu.append(ms)
            figures[workload] = {"a": _median(a), "b": _median(b), "c": _median(c), "cpu_ms": _median(cpu),
                                 "ratio": _median([x / y for x, y in zip(c, b)])}
    run = _median([synthetic_reference_run() for _ in range(args.repeats)]) if not args.no_run else None

    print(f"Executor throughput (isolation: {layers}; {IN_FLIGHT} programs in flight for (b) and (c); "
          f"medians of {args.repeats} runs, range in brackets)\n")
    print("| workload | (a) in-process | (b) 4 fresh interpreters | (c) warm sandbox | (c) CPU per program | (c)/(b) |")
    print("|---|---:|---:|---:|---:|---:|")
    for workload, f in figures.items():
        a, b, c, cpu, ratio = f["a"], f["b"], f["c"], f["cpu_ms"], f["ratio"]
        print(f"| {workload} | {a[0]:.0f}/s | {b[0]:.1f}/s [{b[1]:.1f}-{b[2]:.1f}] | {c[0]:.0f}/s [{c[1]:.0f}-{c[2]:.0f}] "
              f"| {cpu[0]:.2f} ms [{cpu[1]:.2f}-{cpu[2]:.2f}] | {ratio[0]:.0f}x |")
    if run:
        print(f"\n(d) synthetic reference run: {run[0]:.0f} programs/s [{run[1]:.0f}-{run[2]:.0f}]")
    trivial = figures["trivial"]
    checks = [("(c) trivial programs/s", trivial["c"][0], ">=", 400, "programs/s"),
              ("(c) CPU per trivial program", trivial["cpu_ms"][0], "<=", 4.0, "ms"),
              ("(c)/(b), smallest", min(f["ratio"][0] for f in figures.values()), ">=", 5, "x")]
    if run:
        checks.append(("(d) synthetic reference run", run[0], ">=", 300, "programs/s"))
    print()
    results = []
    for name, value, op, target, unit in checks:
        ok = value >= target if op == ">=" else value <= target
        print(f"target {name} {op} {target} {unit}: {'PASS' if ok else 'MISS'} ({value:.2f})")
        results.append({"figure": name, "value": value, "unit": unit, "target": f"{op} {target}",
                        "status": "PASS" if ok else "MISS"})
    if args.json:
        args.json.write_text(json.dumps({"isolation": layers, "repeats": args.repeats, "figures": figures,
                                         "synthetic_run": run, "targets": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
