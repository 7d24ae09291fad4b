"""The leaderboard's plots (PNG, matplotlib's Agg canvas: no display needed).

- accuracy vs training-set size: Table 5, ours beside the paper's;
- accuracy vs detector training data (the paper's Figure 7): runs labelled
  ``valor-gd-<N>`` (N pseudo-labelled images) or ``valor-gd-<P>pct`` (a P% share of
  them), as recipes/grounding_sft/ablation.py labels them (``valor-gd-0``: the base detector);
- per-benchmark bars, ours vs the paper's, for the main systems;
- the reward's parts over GRPO steps, from a training log.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.leaderboard.rewardlog import TOTAL, RewardCurve
from harness.leaderboard.runs import RunIndex
from harness.leaderboard.tables import percent
from harness.paper import PaperTables

log = logging.getLogger(__name__)

DETECTOR_LABEL = re.compile(r"valor-gd-(?P<amount>\d+(?:\.\d+)?)(?P<pct>pct)?")
MAIN_SYSTEMS = ("llm-tools-qwen3-8b", "valor-rl", "valor")  # Table 1's base model and ours
SIZE_TABLE, MAIN_TABLE = "5", "1"


@dataclass(frozen=True)
class Point:
    x: float
    y: float  # percent
    low: float | None = None
    high: float | None = None


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _errors(points: Sequence[Point]) -> list[list[float]] | None:
    if not any(p.low is not None for p in points):
        return None
    return [[p.y - p.low if p.low is not None else 0.0 for p in points],
            [p.high - p.y if p.high is not None else 0.0 for p in points]]


def _our_point(index: RunIndex, key: str, task: str, x: float, scoring: str) -> Point | None:
    choice = index.choose(key, task)
    if choice is None or choice.score.value(scoring) is None:
        return None
    low, high = choice.score.ci(scoring) or (None, None)
    return Point(x, percent(choice.score.value(scoring)), percent(low), percent(high))


def plot_training_size(paper: PaperTables, index: RunIndex, path: Path, scoring: str = "strict") -> Path | None:
    """Table 5 as a curve: the paper's and ours (with 95% intervals); None when no size was run."""
    numbers = paper.table(SIZE_TABLE)
    ours = [p for n in numbers if (p := _our_point(index, n.system, n.benchmark, float(n.group), scoring))]
    if not ours:
        return None
    figure = Figure(figsize=(5, 3.5))
    ax = figure.add_subplot()
    ax.plot([float(n.group) for n in numbers], [n.value for n in numbers], "o--", color="gray", label="paper")
    ax.errorbar([p.x for p in ours], [p.y for p in ours], yerr=_errors(ours), fmt="o-", capsize=3, label="ours")
    benchmark = paper.benchmark_name(numbers[0].benchmark)
    ax.set(xlabel="training queries (0: the base model)", ylabel=f"{benchmark} accuracy (%)",
           title="Training-set size (Table 5)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def plot_detector_data(index: RunIndex, path: Path, scoring: str = "strict") -> Path | None:
    """Accuracy per task against the detector's training data (runs labelled valor-gd-<N> or
    valor-gd-<P>pct). One axis holds one kind: with both, the shares are left out, and said so."""
    matches = {key: m for key in index.keys() if (m := DETECTOR_LABEL.fullmatch(key))}
    counts = {key for key, m in matches.items() if not m["pct"] and float(m["amount"]) > 0}
    shares = {key for key, m in matches.items() if m["pct"]}
    if counts and shares:
        log.warning("detector plot: runs labelled by image count and by share; leaving out %s",
                    ", ".join(sorted(shares)))
    use_shares = bool(shares) and not counts
    amounts = {key: float(m["amount"]) for key, m in matches.items() if bool(m["pct"]) == use_shares
               or float(m["amount"]) == 0}
    if not amounts:
        return None
    figure = Figure(figsize=(5.5, 3.5))
    ax = figure.add_subplot()
    tasks = sorted({task for key in amounts for task in index.tasks(key)})
    for task in tasks:
        points = sorted((p for key, amount in amounts.items() if (p := _our_point(index, key, task, amount, scoring))),
                        key=lambda p: p.x)
        ax.errorbar([p.x for p in points], [p.y for p in points], yerr=_errors(points), fmt="o-", capsize=3,
                    label=task)
    xlabel = "share of the pseudo-labelled images (%)" if use_shares else "detector training images (pseudo-labelled)"
    ax.set(xlabel=xlabel, ylabel="accuracy (%)",
           title="Detector training data (Figure 7)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(figure, path)


def plot_benchmarks(paper: PaperTables, index: RunIndex, path: Path, scoring: str = "strict",
                    systems: Sequence[str] = MAIN_SYSTEMS) -> Path | None:
    """Bars per benchmark, ours beside the paper's (Table 1), one panel per main system that has runs."""
    benchmarks = paper.benchmarks(MAIN_TABLE)
    shown = [s for s in systems if any(index.choose(s, b) for b in benchmarks)]
    if not shown:
        return None
    figure = Figure(figsize=(9, 2.8 * len(shown)))
    width = 0.4
    for i, system in enumerate(shown, 1):
        ax = figure.add_subplot(len(shown), 1, i)
        xs = range(len(benchmarks))
        ax.bar([x - width / 2 for x in xs], [paper.value(MAIN_TABLE, system, b) or 0.0 for b in benchmarks], width,
               color="lightgray", label="paper")
        ours = [(x, p) for x, b in zip(xs, benchmarks) if (p := _our_point(index, system, b, x, scoring))]
        ax.bar([x + width / 2 for x, _ in ours], [p.y for _, p in ours], width,
               yerr=_errors([p for _, p in ours]), capsize=3, label="ours")
        ax.set_xticks(list(xs), [paper.benchmark_name(b) for b in benchmarks], fontsize="small")
        ax.set(ylabel="accuracy (%)", title=system, ylim=(0, 100))
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return _save(figure, path)


def plot_rewards(curve: RewardCurve, path: Path, title: str | None = None) -> Path:
    """The total reward and each part's mean over the steps."""
    figure = Figure(figsize=(7, 4))
    ax = figure.add_subplot()
    for name, values in curve.series.items():
        style = {"color": "black", "linewidth": 2.0} if name == TOTAL else {"linewidth": 1.2}
        ax.plot(curve.steps, values, label=name, marker="." if len(curve.steps) < 50 else None, **style)
    top = max((v for values in curve.series.values() for v in values if not math.isnan(v)), default=1.0)
    ax.set(xlabel="step", ylabel="mean over the step's rollouts", ylim=(0, max(1.05, top * 1.05)),
           title=title or f"Reward parts: {curve.source.parent.name}/{curve.source.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(figure, path)
