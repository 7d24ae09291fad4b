"""``python -m harness leaderboard``: every table in every format, the plots, and an index."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from harness.leaderboard.model import Table
from harness.leaderboard.plots import plot_benchmarks, plot_detector_data, plot_rewards, plot_training_size
from harness.leaderboard.render import RENDERERS
from harness.leaderboard.rewardlog import read_reward_log
from harness.leaderboard.runs import Run, RunIndex, find_results
from harness.leaderboard.tables import paper_table, scoring_table, synthetic_table
from harness.paper import PAPER_DIR, load_paper

log = logging.getLogger(__name__)

INDEX_FILE = "README.md"
PLOTS_DIR = "plots"
TRAINING_LOG_NAME = "training_log.json"  # what the TRL recipes write; found under the results folders


@dataclass
class Written:
    out: Path
    runs: int
    tables: list[Table] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)  # incomplete runs left out

    def summary(self) -> str:
        lines = [f"{self.runs} runs read; written to {self.out}:"]
        lines += [f"  {t.name}: {t.cells_run()} of {t.cells_expected()} cells run" for t in self.tables]
        lines += [f"  {p.relative_to(self.out)}" for p in self.plots]
        lines += _skipped_lines(self.skipped)
        return "\n".join(lines)


def _skipped_lines(skipped: Sequence[Run]) -> list[str]:
    if not skipped:
        return []
    lines = [f"{len(skipped)} incomplete runs not used (--include-incomplete uses them, flagged):"]
    return lines + [f"  {run.directory}: {'; '.join(run.incomplete) or 'incomplete'}" for run in skipped]


def plot_reward_log(log_path: Path, out: Path) -> Path:
    """``python -m harness plot-rewards LOG --out FILE.png``."""
    return plot_rewards(read_reward_log(log_path), out)


def _plot_name(log_path: Path) -> str:
    """rewards-<folder>-<file>.png: a recipe's output folder names the run."""
    return f"rewards-{log_path.parent.name or 'log'}-{log_path.stem}.png".replace(" ", "_")


def _index(written: Written, roots: Sequence[Path], scoring: str) -> str:
    lines = ["# Leaderboard", "",
             f"Written by `python -m harness leaderboard` from {written.runs} runs under "
             f"{', '.join(f'`{r}`' for r in roots)}, our numbers with {scoring} scoring, beside the paper's "
             "numbers (`results/paper/`). Do not edit: run the command again.", "",
             "| table | cells run | Markdown | LaTeX | CSV |", "|---|---:|---|---|---|"]
    for table in written.tables:
        files = " | ".join(f"[{table.name}.{ext}]({table.name}.{ext})" for ext in RENDERERS)
        lines.append(f"| {table.title} | {table.cells_run()} / {table.cells_expected()} | {files} |")
    if written.skipped:
        lines += ["", *(f"- {line.strip()}" for line in _skipped_lines(written.skipped))]
    if written.plots:
        lines += ["", "Plots:", ""]
        lines += [f"- [{p.name}]({p.relative_to(written.out).as_posix()})" for p in written.plots]
    return "\n".join(lines) + "\n"


def write_leaderboard(results: Sequence[Path], out: Path, scoring: str = "strict",
                      training_logs: Sequence[Path] = (), paper_dir: Path = PAPER_DIR,
                      include_incomplete: bool = False) -> Written:
    """Read every run under ``results``, write each table as Markdown, LaTeX and CSV into
    ``out``, the plots whose data exists into ``out/plots``, and the index ``out/README.md``.
    Incomplete runs are left out (and listed) unless ``include_incomplete``."""
    paper = load_paper(paper_dir)
    index = RunIndex.from_folders(results, include_incomplete)
    tables = [paper_table(paper, t, index, scoring) for t in paper.tables()]
    tables += [synthetic_table(index, scoring), scoring_table(index)]
    out.mkdir(parents=True, exist_ok=True)
    written = Written(out, len(index.runs) + len(index.skipped), skipped=index.skipped)
    for table in tqdm(tables, desc="tables", unit="table", disable=None):
        for ext, render in RENDERERS.items():
            (out / f"{table.name}.{ext}").write_text(render(table), encoding="utf-8")
        written.tables.append(table)
    plots = out / PLOTS_DIR
    made = [plot_training_size(paper, index, plots / "training_size.png", scoring),
            plot_detector_data(index, plots / "detector_data.png", scoring),
            plot_benchmarks(paper, index, plots / "benchmarks.png", scoring)]
    logs = list(dict.fromkeys([*training_logs, *find_results(results, TRAINING_LOG_NAME)]))
    names: dict[str, int] = {}
    for path in logs:
        name = _plot_name(path)
        names[name] = names.get(name, 0) + 1  # two logs in like-named folders must not overwrite each other
        made.append(plot_reward_log(path, plots / (name if names[name] == 1 else f"{name[:-4]}-{names[name]}.png")))
    written.plots = [p for p in made if p is not None]
    (out / INDEX_FILE).write_text(_index(written, results, scoring), encoding="utf-8")
    log.info("leaderboard written to %s", out)
    return written
