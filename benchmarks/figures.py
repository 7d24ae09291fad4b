"""One measured figure of a benchmark: its median over repeated runs, its range, its unit and target.

Every script in ``benchmarks/`` reports what it measures as :class:`Figure` objects
(``measure(quick)`` returns them), so ``benchmarks/run_all.py`` can run them all,
print one table and write one JSON file from which ``docs/performance.md`` is made.
"""

from __future__ import annotations

import json
import operator
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tabulate import tabulate

_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Figure:
    benchmark: str  # the script that measured it, e.g. "executor_throughput"
    name: str  # what it is, e.g. "trivial programs per second (warm sandbox)"
    unit: str  # "programs/s", "ms", "MB", "x"
    runs: list[float]  # every measurement; the figure is their median
    target: str | None = None  # ">= 400", "<= 0.05"; None: reported, no target
    note: str = ""  # how it was measured, in a few words
    extra: dict = field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        return min(self.runs)

    @property
    def high(self) -> float:
        return max(self.runs)

    @property
    def passed(self) -> bool | None:
        """The median against the target (None without one)."""
        if not self.target:
            return None
        sign, _, number = self.target.partition(" ")
        return _COMPARE[sign](self.value, float(number))

    def to_dict(self) -> dict:
        return {**asdict(self), "value": self.value, "low": self.low, "high": self.high, "passed": self.passed}


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def table(figures: Sequence[Figure]) -> str:
    """The figures as a Markdown table: median, range of the runs, target and PASS/MISS."""
    rows = []
    for figure in figures:
        verdict = {True: "PASS", False: "MISS", None: "-"}[figure.passed]
        spread = f"{_number(figure.low)} - {_number(figure.high)}" if len(figure.runs) > 1 else "-"
        rows.append([figure.benchmark, figure.name, f"{_number(figure.value)} {figure.unit}", spread,
                     len(figure.runs), figure.target or "-", verdict])
    return tabulate(rows, headers=["benchmark", "figure", "median", "range", "runs", "target", ""],
                    tablefmt="github", disable_numparse=True)


def write_json(figures: Iterable[Figure], path: Path, machine: dict) -> None:
    path.write_text(json.dumps({"machine": machine, "figures": [f.to_dict() for f in figures]}, indent=2) + "\n",
                    encoding="utf-8")
