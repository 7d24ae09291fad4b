"""The grounding-data ablation (the paper's Figure 7): detectors tuned on growing amounts of
pseudo-labels, each judged by the same programs.

For each amount (a share of the pseudo-labelled images, or a count) the plan
trains GroundingDINO on a seeded subset (``train-detector --set subset=A``; one
seed, so every smaller subset lies inside the larger ones), then replays the
programs of one earlier run (VALOR-RL with the base detector) with the tuned
detector on RoboSpatial, VSR and CountBenchQA (``run --system replay``), so the
accuracies differ by grounding alone. The base detector's row replays the same
programs unchanged. The table (Markdown and CSV) is written from the
evaluations' ``results.json``.

Every step is a command: ``--dry-run`` prints them, and a step that finished
(its command exited with success: a marker in ``<work_dir>/done``, see
:func:`harness.training.ablation.run_steps`) is skipped, so a killed ablation resumes.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.training.ablation import Step, read_result
from harness.training.recipe_config import RecipeConfigError, load_recipe

SCORINGS = ("compat", "strict")


def amount_label(amount: int | float) -> str:
    """``0.25`` -> ``25%``, ``500`` -> ``500 images``, 0 -> ``base detector``."""
    if amount == 0:
        return "base detector"
    return f"{amount * 100:g}%" if isinstance(amount, float) else f"{amount} images"


def leaderboard_label(amount: int | float) -> str:
    """The evaluation run's ``--label``, which the leaderboard plots (Figure 7):
    ``valor-gd-0`` (base detector), ``valor-gd-500`` (500 images), ``valor-gd-25pct`` (a 25% share)."""
    if amount == 0:
        return "valor-gd-0"
    return f"valor-gd-{amount * 100:g}pct" if isinstance(amount, float) else f"valor-gd-{amount}"


def amount_slug(amount: int | float) -> str:
    if amount == 0:
        return "base"
    return f"share-{amount:g}" if isinstance(amount, float) else f"images-{amount}"


@dataclass
class GroundingAblationPlan:
    """``recipes/grounding_sft/ablation.yaml``."""

    data: list[str]  # pseudo-label folders or ODVG files, as the trainer's `data`
    base_run: str  # a run directory (valor-rl, base detector) whose programs every variant replays
    work_dir: str = "runs/ablation_grounding"
    amounts: list[int | float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    seed: int = 0  # the subsets' seed: each smaller subset lies inside the larger ones
    tasks: list[str] = field(default_factory=lambda: ["robospatial", "vsr", "countbenchqa"])
    include_base: bool = True  # the programs replayed with the base run's own detector
    train_config: str = "recipes/grounding_sft/config.yaml"
    train_args: list[str] = field(default_factory=list)  # extra key=value settings of every training
    eval_args: list[str] = field(default_factory=list)  # extra `harness run` arguments (--data-dir, --device)
    scoring: str = "compat"  # the table's accuracy: paper-compatible (as the paper) or strict
    python: str = sys.executable

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise RecipeConfigError("data: name the pseudo-label folders (or ODVG files) to train on")
        if not self.base_run:
            raise RecipeConfigError("base_run: name the run whose programs are replayed (valor-rl, base detector)")
        for amount in self.amounts:
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0 \
                    or (isinstance(amount, float) and amount > 1):
                raise RecipeConfigError(f"amounts: {amount!r} is neither a share in (0, 1] nor a count of images")
        if self.scoring not in SCORINGS:
            raise RecipeConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")

    def detector_dir(self, amount: int | float) -> Path:
        return Path(self.work_dir) / "detectors" / amount_slug(amount)

    def eval_dir(self, amount: int | float) -> Path:
        return Path(self.work_dir) / "eval" / amount_slug(amount)

    def rows(self) -> list[int | float]:
        return ([0] if self.include_base else []) + list(self.amounts)


def load_plan(path: str | Path, overrides: Sequence[str] = ()) -> GroundingAblationPlan:
    return load_recipe(GroundingAblationPlan, path, overrides)


def train_step(plan: GroundingAblationPlan, amount: int | float) -> Step:
    out = plan.detector_dir(amount)
    sets = [f"data={json.dumps(plan.data)}", f"subset={amount!r}", f"seed={plan.seed}", f"output_dir={out}",
            *plan.train_args]
    argv = [plan.python, "-m", "harness", "train-detector", "--config", plan.train_config, "--resume"]
    for setting in sets:
        argv += ["--set", setting]
    return Step(f"train {amount_label(amount)}", argv, out / "final" / "config.json")


def eval_step(plan: GroundingAblationPlan, amount: int | float) -> Step:
    out = plan.eval_dir(amount)
    system_args = f"run={Path(plan.base_run).resolve()}"
    if amount:
        system_args += f",tool_options.real.detector.checkpoint={(plan.detector_dir(amount) / 'final').resolve()}"
    argv = [plan.python, "-m", "harness", "run", "--system", "replay", "--tools", "real", "--tasks",
            ",".join(plan.tasks), "--system-args", system_args, "--label", leaderboard_label(amount),
            "--output-path", str(out), "--resume",
            *plan.eval_args]
    return Step(f"eval {amount_label(amount)}", argv, out / "results.json")


def plan_steps(plan: GroundingAblationPlan) -> list[Step]:
    """The base detector's replay, then training and replay per amount, smallest first."""
    steps = [eval_step(plan, 0)] if plan.include_base else []
    for amount in plan.amounts:
        steps += [train_step(plan, amount), eval_step(plan, amount)]
    return steps


# ----------------------------------------------------------------------------- the table


@dataclass
class Cell:
    accuracy: float  # percent
    ci95: tuple[float, float] | None
    n: int | None


@dataclass
class AblationRow:
    amount: int | float
    images: int | None  # training images (0 for the base detector; None before training)
    cells: dict[str, Cell | None]


def _images_trained(plan: GroundingAblationPlan, amount: int | float) -> int | None:
    if amount == 0:
        return 0
    info = plan.detector_dir(amount) / "run_info.json"
    return json.loads(info.read_text(encoding="utf-8"))["images"] if info.is_file() else None


def table_rows(plan: GroundingAblationPlan) -> list[AblationRow]:
    rows = []
    for amount in plan.rows():
        cells: dict[str, Cell | None] = {}
        for task in plan.tasks:
            entry = read_result(plan.eval_dir(amount), task)
            accuracy = None if entry is None else entry.get(f"accuracy,{plan.scoring}")
            if accuracy is None:
                cells[task] = None
                continue
            interval = entry.get(f"accuracy_ci95,{plan.scoring}")
            cells[task] = Cell(100 * accuracy, (100 * interval[0], 100 * interval[1]) if interval else None,
                               entry.get("n"))
        rows.append(AblationRow(amount, _images_trained(plan, amount), cells))
    return rows


def render_markdown(plan: GroundingAblationPlan, rows: Sequence[AblationRow]) -> str:
    lines = [f"Grounding-data ablation (Figure 7): accuracy in % ({plan.scoring} scoring) with 95% intervals, "
             f"the programs of `{plan.base_run}` replayed with each detector.", "",
             "| pseudo-labels | training images | " + " | ".join(plan.tasks) + " |",
             "|---|---:|" + "---|" * len(plan.tasks)]
    for row in rows:
        cells = []
        for task in plan.tasks:
            cell = row.cells[task]
            if cell is None:
                cells.append("-")
            else:
                interval = f" [{cell.ci95[0]:.1f}, {cell.ci95[1]:.1f}]" if cell.ci95 else ""
                cells.append(f"{cell.accuracy:.1f}{interval}")
        images = "-" if row.images is None else f"{row.images:,}"
        lines.append(f"| {amount_label(row.amount)} | {images} | " + " | ".join(cells) + " |")
    missing = [amount_label(row.amount) for row in rows if any(c is None for c in row.cells.values())]
    if missing:
        lines += ["", f"Not evaluated yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def render_csv(plan: GroundingAblationPlan, rows: Sequence[AblationRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["amount", "images"] + [f"{task}{suffix}" for task in plan.tasks
                                            for suffix in ("", "_ci_low", "_ci_high", "_n")])
    for row in rows:
        values: list[Any] = [row.amount, "" if row.images is None else row.images]
        for task in plan.tasks:
            cell = row.cells[task]
            if cell is None:
                values += ["", "", "", ""]
            else:
                low, high = cell.ci95 if cell.ci95 else ("", "")
                values += [round(cell.accuracy, 2), low if low == "" else round(low, 2),
                           high if high == "" else round(high, 2), "" if cell.n is None else cell.n]
        writer.writerow(values)
    return buffer.getvalue()


def write_table(plan: GroundingAblationPlan) -> str:
    """``<work_dir>/figure7.md`` and ``figure7.csv`` from the evaluations so far; returns the Markdown."""
    rows = table_rows(plan)
    work = Path(plan.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(plan, rows)
    (work / "figure7.md").write_text(markdown, encoding="utf-8")
    (work / "figure7.csv").write_text(render_csv(plan, rows), encoding="utf-8")
    return markdown
