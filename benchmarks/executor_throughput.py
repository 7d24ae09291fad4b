"""Programs per second: in-process exec vs a fresh isolated interpreter per program vs our warm sandbox.

(a) in-process ``exec`` (unsafe, for reference only: what the original evaluation did);
(b) one fresh isolated interpreter per program (the same isolation, started and stopped for each);
(c) ours: one warm zygote forking a locked-down child per program, several programs at once.

Two workloads: a trivial program, and a program making 10 tool calls answered in the
parent through the checked tool API. Targets on a 2-core machine: (c) at least 200
programs/s and at least 5x (b).

    python benchmarks/executor_throughput.py [--programs 400] [--fresh 20] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor

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


class ConstantDepth:
    """A tool handler as cheap as possible, so the executor's own cost is measured."""

    names = ["gd_detect", "depth", "vqa"]

    def call(self, name, args, kwargs):
        check_call(name, args, kwargs)
        return 2.5


def in_process(code: str, n: int) -> float:
    tools = ConstantDepth()
    call = in_process_caller(tools)
    start = time.perf_counter()
    for _ in range(n):
        outcome = execute(code, program_namespace(tools.names, call, ImageHandle(320, 240)))
        assert outcome["status"] == "ok", outcome
    return n / (time.perf_counter() - start)


def fresh_interpreter(code: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with Sandbox() as sandbox:
            result = sandbox.run(code, ConstantDepth(), (320, 240))
            assert result.status == "ok", result
    return n / (time.perf_counter() - start)


def warm_sandbox(sandbox: Sandbox, code: str, n: int, concurrency: int) -> float:
    def one(_):
        result = sandbox.run(code, ConstantDepth(), (320, 240))
        assert result.status == "ok", result

    sandbox.run(code, ConstantDepth(), (320, 240))  # start the zygote outside the timing
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=400, help="programs per measurement for (a) and (c)")
    parser.add_argument("--fresh", type=int, default=20, help="programs for (b), which is slow")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    logging.disable(logging.INFO)

    with Sandbox() as sandbox:
        layers = ", ".join(sandbox.isolation)
        rows = []
        for workload, code in WORKLOADS.items():
            a = in_process(code, args.programs)
            b = fresh_interpreter(code, args.fresh)
            c = warm_sandbox(sandbox, code, args.programs, args.concurrency)
            rows.append((workload, a, b, c))

    print(f"Executor throughput (isolation: {layers}; {args.concurrency} programs in flight for (c))\n")
    print(f"| {'workload':<14} | {'(a) in-process':>14} | {'(b) fresh interpreter':>21} | {'(c) warm sandbox':>16} "
          f"| {'(c)/(b)':>7} |")
    print(f"|{'-' * 16}|{'-' * 16}|{'-' * 23}|{'-' * 18}|{'-' * 9}|")
    for workload, a, b, c in rows:
        print(f"| {workload:<14} | {a:>12.0f}/s | {b:>19.1f}/s | {c:>14.0f}/s | {c / b:>6.0f}x |")
    worst = min(c for *_, c in rows)
    ratio = min(c / b for _, _, b, c in rows)
    verdict = "meets" if worst >= 200 and ratio >= 5 else "MISSES"
    print(f"\ntarget (c) >= 200 programs/s and >= 5x (b): {verdict} (slowest {worst:.0f}/s, smallest ratio {ratio:.0f}x)")


if __name__ == "__main__":
    main()
