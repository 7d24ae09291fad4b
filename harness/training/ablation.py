"""The training-data-size ablation (the paper's Table 5): plan, run, and table.

For each size N (40, 160, 400, 800 in the paper) the plan builds a training
set of N queries (half Omni3D-Bench training questions, half generated) with
``python -m harness training-data``, trains Qwen3-8B on it with GRPO (TRL on
one machine or verl on a cluster), evaluates the trained model on
``omni3d_bench`` with ``python -m harness run``, and finally writes the table
from the runs' ``results.json`` files beside the paper's numbers. The base
model (N = 0) is evaluated once.

Every step is a command (an argument list), so ``--dry-run`` prints exactly
what would run. A step counts as done only when its command exited with
success: :func:`run_steps` then writes a marker (``<work_dir>/done/<step>.json``,
holding the command). An output file proves nothing (verl rewrites its
checkpoint marker at every save, a killed evaluation leaves a partial run), so
a killed ablation started again reruns the interrupted step, which itself
continues where it stopped (trainers resume from their checkpoints, evaluations
run with ``--resume``), and then goes on: it finishes the same table as an
uninterrupted run. A marker whose command differs from the plan's (another
size, epoch count, seed) does not count. Small sizes get smaller batches: a step takes
``min(64, N)`` prompts (the paper does not say how it trained on 40 queries
with a batch of 64; with verl's ``drop_last`` a 64-prompt batch would make no
step at all).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.paper import load_table
from harness.training.recipe_config import RecipeConfigError, load_recipe

log = logging.getLogger(__name__)

TRAINERS = ("trl", "verl")


def paper_table5() -> dict[int, float]:
    """The paper's Table 5 (``results/paper/table5.csv``): Omni3D-Bench accuracy by
    training-set size, 0 being the base Qwen3-8B."""
    return {int(number.group): number.value for number in load_table(5)}


@dataclass
class AblationPlan:
    """``recipes/ablation_data_size/config.yaml``."""

    sources: list[str]  # --sources of training-data: e.g. [omni3d_bench_train, data/generated/queries.jsonl]
    work_dir: str = "runs/ablation_data_size"
    sizes: list[int] = field(default_factory=lambda: [40, 160, 400, 800])
    trainer: str = "trl"
    protocol: str = "paper"  # the reward's rules, the prompts and thinking (harness.training.protocol)
    seed: int = 0  # the data selection's seed: a smaller set is a subset of a larger one
    prompts_per_step: int = 64  # the paper's batch; smaller sets use min(this, N)
    group_size: int = 5
    epochs: int = 4
    task: str = "omni3d_bench"
    base_system: str = "llm-tools-qwen3-8b"  # N = 0
    trained_system: str = "valor-rl"  # evaluated with llm.model=<trained model>
    include_base: bool = True
    reward_config: str = "recipes/reward_configs/gemini.yaml"
    trl_config: str = "recipes/reasoning_grpo_trl/config.yaml"
    trl_launcher: list[str] = field(default_factory=lambda: [
        "accelerate", "launch", "--config_file", "recipes/reasoning_grpo_trl/accelerate_fsdp.yaml"])
    verl_script: str = "recipes/reasoning_grpo_verl/train.sh"
    verl_merge_script: str = "recipes/reasoning_grpo_verl/merge.sh"
    data_args: list[str] = field(default_factory=list)  # extra training-data arguments (e.g. --data-dir)
    eval_args: list[str] = field(default_factory=list)  # extra `harness run` arguments (e.g. --data-dir, --judge)
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.protocol not in ("paper", "harness"):
            raise RecipeConfigError(f"protocol must be paper or harness, got {self.protocol!r}")
        if self.trainer not in TRAINERS:
            raise RecipeConfigError(f"trainer must be one of {', '.join(TRAINERS)}, got {self.trainer!r}")
        if not self.sources:
            raise RecipeConfigError("sources: name the Omni3D-Bench training task and the generated queries")
        if any(n < 1 for n in self.sizes):
            raise RecipeConfigError(f"sizes must be positive, got {self.sizes}")

    # -- where things go
    def data_dir(self, size: int) -> Path:
        return Path(self.work_dir) / "data" / f"n{size}"

    def checkpoint_dir(self, size: int) -> Path:
        return Path(self.work_dir) / "checkpoints" / f"n{size}"

    def model_dir(self, size: int) -> Path:
        """The trained model in Hugging Face format (TRL saves it; verl's is merged here)."""
        if self.trainer == "trl":
            return self.checkpoint_dir(size)
        return Path(self.work_dir) / "models" / f"n{size}"

    def eval_dir(self, size: int) -> Path:
        return Path(self.work_dir) / "eval" / f"n{size}"

    def label(self, size: int) -> str:
        """The run's leaderboard label: Table 5's row for this size (valor-rl-n40, ...)."""
        return f"{self.trained_system}-n{size}"

    def batch(self, size: int) -> int:
        return min(self.prompts_per_step, size)

    @property
    def markers(self) -> Path:
        """Where the markers of finished steps go."""
        return Path(self.work_dir) / "done"


def load_plan(path: str | Path, overrides: Sequence[str] = ()) -> AblationPlan:
    return load_recipe(AblationPlan, path, overrides)


@dataclass
class Step:
    """One command of the ablation; ``done`` names its main output (a finished step must have it;
    its existence alone never makes the step finished: see :func:`run_steps`)."""

    name: str
    argv: list[str]
    done: Path
    env: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


def data_step(plan: AblationPlan, size: int) -> Step:
    out = plan.data_dir(size)
    argv = [plan.python, "-m", "harness", "training-data", "--sources", ",".join(plan.sources),
            "--size", str(size), "--seed", str(plan.seed), "--protocol", plan.protocol, "--out", str(out),
            *plan.data_args]
    return Step(f"data n={size}", argv, out / "manifest.json")


def train_steps(plan: AblationPlan, size: int) -> list[Step]:
    batch = plan.batch(size)
    if plan.trainer == "trl":
        argv = [*plan.trl_launcher, "recipes/reasoning_grpo_trl/train.py", "--config", plan.trl_config,
                "--set", f"train_data={plan.data_dir(size) / 'train.jsonl'}",
                "--set", f"output_dir={plan.checkpoint_dir(size)}",
                "--set", f"protocol={plan.protocol}",
                "--set", f"reward_config={plan.reward_config}",
                "--set", f"grpo.generation_batch_size={batch * plan.group_size}",
                "--set", f"grpo.num_generations={plan.group_size}",
                "--set", f"grpo.num_train_epochs={plan.epochs}"]
        return [Step(f"train n={size} (trl)", argv, plan.model_dir(size) / "config.json")]
    # Batch, group and epochs by train.sh's variables: its reward log counts rollouts by them.
    env = {"TRAIN_FILES": str(plan.data_dir(size) / "train.parquet"), "REWARD_CONFIG": plan.reward_config,
           "CHECKPOINT_DIR": str(plan.checkpoint_dir(size)), "EXPERIMENT": f"ablation-n{size}",
           "PROTOCOL": plan.protocol, "TRAIN_BATCH_SIZE": str(batch), "ROLLOUT_N": str(plan.group_size),
           "TOTAL_EPOCHS": str(plan.epochs)}
    train = Step(f"train n={size} (verl)", ["bash", plan.verl_script],
                 plan.checkpoint_dir(size) / "latest_checkpointed_iteration.txt", env)
    merge = Step(f"merge n={size} (verl)", ["bash", plan.verl_merge_script, str(plan.checkpoint_dir(size)),
                                            str(plan.model_dir(size))], plan.model_dir(size) / "config.json")
    return [train, merge]


def eval_step(plan: AblationPlan, size: int) -> Step:
    out = plan.eval_dir(size)
    if size == 0:
        system_args: list[str] = []
        system = plan.base_system
    else:
        system = plan.trained_system
        system_args = ["--system-args", f"llm.model={plan.model_dir(size).resolve()}",
                       "--label", plan.label(size)]  # the base model's run is a plain run of its system
    # --resume: an evaluation killed half way continues, and one that failed can be run again.
    argv = [plan.python, "-m", "harness", "run", "--system", system, *system_args, "--tasks", plan.task,
            "--output-path", str(out), "--resume", *plan.eval_args]
    return Step(f"eval n={size}", argv, out / "results.json")


def plan_steps(plan: AblationPlan) -> list[Step]:
    """Every command, in order: the base model's evaluation, then data, training and
    evaluation per size (the table is written afterwards, from the results)."""
    steps = [eval_step(plan, 0)] if plan.include_base else []
    for size in plan.sizes:
        steps += [data_step(plan, size), *train_steps(plan, size), eval_step(plan, size)]
    return steps


def ablation_parser(description: str) -> argparse.ArgumentParser:
    """The command line of an ablation's entry point: ``--config``, ``--dry-run``, ``--table-only``,
    ``--set``; the entry point adds its own options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="the ablation YAML")
    parser.add_argument("--dry-run", action="store_true", help="print every command and run nothing")
    parser.add_argument("--table-only", action="store_true", help="only write the table from existing results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    return parser


def _marker(step: Step, markers: Path) -> Path:
    return markers / (re.sub(r"[^A-Za-z0-9._-]+", "_", step.name).strip("_") + ".json")


def step_finished(step: Step, markers: Path) -> bool:
    """The step's command exited with success before (its marker holds this very command) and
    its output is there."""
    marker = _marker(step, markers)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded.get("command") == step.render() and step.done.exists()


def run_steps(steps: Sequence[Step], markers: str | Path, dry_run: bool = False) -> list[str]:
    """Run each step not yet finished, in order, stopping at the first failure (a
    ``CalledProcessError``); a step that exits with success gets its marker in ``markers``.
    With ``dry_run`` nothing runs. Returns every step's command line, for the caller to show."""
    markers = Path(markers)
    for step in steps:
        if dry_run:
            continue
        if step_finished(step, markers):
            log.info("%s: done already (%s)", step.name, _marker(step, markers))
            continue
        marker = _marker(step, markers)
        marker.unlink(missing_ok=True)  # a changed command: it runs again, and counts only when it ends well
        log.info("%s: %s", step.name, step.render())
        subprocess.run(step.argv, check=True, env={**os.environ, **step.env})
        if not step.done.exists():
            raise RuntimeError(f"{step.name}: the command ended without writing {step.done}")
        markers.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(marker.name + ".part")
        partial.write_text(json.dumps({"step": step.name, "command": step.render(),
                                       "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n",
                           encoding="utf-8")
        partial.replace(marker)
    return [step.render() for step in steps]


# ----------------------------------------------------------------------------- the table


@dataclass
class TableRow:
    size: int
    system: str
    paper: float | None  # percent
    compat: float | None = None  # ours, paper-compatible scoring, percent
    strict: float | None = None
    ci95: tuple[float, float] | None = None  # of compat, percent
    n: int | None = None
    source: str | None = None  # the results.json read


def read_result(path: str | Path, task: str) -> dict[str, Any] | None:
    """The task's entry of a run's ``results.json`` (None when the run has not finished)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    entry = (results.get("results") or {}).get(task)
    if entry is None:
        raise ValueError(f"{path}: no results for task {task!r} (it has {sorted(results.get('results') or {})})")
    return entry


def _percent(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else 100.0 * float(value)


def table_rows(plan: AblationPlan, metric: str = "accuracy") -> list[TableRow]:
    sizes = ([0] if plan.include_base else []) + list(plan.sizes)
    paper = paper_table5()
    rows = []
    for size in sizes:
        system = plan.base_system if size == 0 else f"{plan.trained_system} (n={size})"
        row = TableRow(size, system, paper.get(size))
        results_file = plan.eval_dir(size) / "results.json"
        entry = read_result(results_file, plan.task)
        if entry is not None:
            interval = entry.get(f"{metric}_ci95,compat")
            row.compat = _percent(entry.get(f"{metric},compat"))
            row.strict = _percent(entry.get(f"{metric},strict"))
            row.ci95 = (100.0 * interval[0], 100.0 * interval[1]) if interval else None
            row.n = entry.get("n")
            row.source = str(results_file)
        rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(rows: Sequence[TableRow], task: str = "omni3d_bench") -> str:
    """Markdown: the paper's number beside ours (paper-compatible and strict scoring)."""
    lines = [f"Training-set size ablation (Table 5), `{task}` accuracy in %.", "",
             "| training samples | model | paper | ours (paper-compatible) | 95% CI | ours (strict) | n |",
             "|---:|---|---:|---:|---|---:|---:|"]
    for row in rows:
        interval = f"[{row.ci95[0]:.1f}, {row.ci95[1]:.1f}]" if row.ci95 else "-"
        lines.append(f"| {row.size} | {row.system} | {_fmt(row.paper)} | {_fmt(row.compat)} | {interval} | "
                     f"{_fmt(row.strict)} | {row.n if row.n is not None else '-'} |")
    missing = [row.size for row in rows if row.compat is None]
    if missing:
        lines += ["", f"Not run yet: n = {', '.join(map(str, missing))}."]
    return "\n".join(lines) + "\n"


def write_table(plan: AblationPlan, path: str | Path | None = None) -> str:
    """The table from the runs' results files, written to ``path`` (default
    ``<work_dir>/table5.md``) and returned."""
    text = render_table(table_rows(plan), plan.task)
    target = Path(path) if path else Path(plan.work_dir) / "table5.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return text


def describe(plan: AblationPlan) -> Mapping[str, Any]:
    """What the plan trains per size: prompts per step and steps per epoch."""
    return {size: {"prompts_per_step": plan.batch(size), "rollouts_per_step": plan.batch(size) * plan.group_size,
                   "steps": plan.epochs * (size // plan.batch(size))} for size in plan.sizes}
