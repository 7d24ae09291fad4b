"""Building the leaderboard's tables from the paper's numbers and the runs.

Every cell pairs our number (with its 95% interval) with the paper's. Best and
second best are marked per column, per group where the paper ranks per group;
the ranked number is ours where the cell was run and the paper's otherwise, and
numbers are compared as printed (one decimal), so equal printed numbers tie:
every tied best is marked best and the next lower number second.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from harness.leaderboard.model import BEST, SECOND, Cell, Column, Row, Table
from harness.leaderboard.runs import Choice, RunIndex
from harness.paper import PaperTables
from harness.protocol import PAPER

SCORING_NAMES = {"strict": "strict scoring", "compat": "paper-compatible scoring"}


def percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if interval is None else (100.0 * interval[0], 100.0 * interval[1])


def our_cell(choice: Choice | None, scoring: str, paper: float | None = None) -> Cell:
    if choice is None:
        return Cell(paper=paper)
    score = choice.score
    return Cell(ours=percent(score.value(scoring)), ci=_interval(score.ci(scoring)), paper=paper,
                limited=choice.flagged, n=score.n, run=str(choice.run.directory), protocol=choice.run.protocol)


def mark_ranks(rows: Iterable[Row], by_group: bool) -> None:
    """Mark best and second best in every column (per group when ``by_group``); ties share a mark."""
    rows = list(rows)
    scopes: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        scopes[row.group if by_group else ""].append(row)
    for scope in scopes.values():
        for column in range(len(scope[0].cells)):
            ranked = [row.cells[column] for row in scope
                      if row.cells[column].text is None and row.cells[column].ranked is not None]
            if len(ranked) < 2:  # a lone number is neither best nor second of anything
                continue
            printed = {id(c): float(f"{c.ranked:.1f}") for c in ranked}
            order = sorted(set(printed.values()), reverse=True)
            for cell in ranked:
                place = order.index(printed[id(cell)])
                cell.mark = BEST if place == 0 else SECOND if place == 1 else 0


def _limited_notes(table_rows: Iterable[tuple[str, str, Choice]]) -> list[str]:
    """A note per flagged cell (part of a benchmark, or an incomplete run), and per cell that
    several runs competed for, naming the one used and the others."""
    table_rows = list(table_rows)
    notes = [f"† {row} on {task}: {choice.describe_flag()}, {choice.run.directory}"
             for row, task, choice in table_rows if choice.flagged]
    notes += [f"{row} on {task}: {len(choice.others) + 1} runs matched; used {choice.run.directory}; not used: "
              + ", ".join(str(other.directory) for other in choice.others)
              for row, task, choice in table_rows if choice.others]
    return notes


def _runs_used(used: dict[str, dict[str, list[str]]]) -> list[str]:
    """One line per row: the run directories used and the tasks each filled."""
    return [f"{row}: " + "; ".join(f"{directory} ({', '.join(tasks)})" for directory, tasks in runs.items())
            for row, runs in used.items()]


PROTOCOL_NOTE = "(p): a run of the paper protocol, (h): of the harness protocol."


def _caption(scoring: str, ranking: str) -> str:
    return (f"Each cell: ours ({SCORING_NAMES[scoring]}, %) [95% CI] / the paper's (%); 'not run' where no run "
            f"matched; a run of the paper protocol is used where one exists. {PROTOCOL_NOTE} Best and second "
            f"best are marked {ranking}, on ours where run, else on the paper's number. "
            f"† ours comes from part of the benchmark or from an incomplete run.")


def _paper_notes(paper: PaperTables, table: str, rows: list[str]) -> list[str]:
    """The paper CSV's notes, a note shared by a whole column said once for the column."""
    by_text: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for number in paper.table(table):
        if number.notes:
            by_text[number.notes].append((number.row, number.benchmark))
    notes = []
    for text, cells in by_text.items():
        columns = {b for _, b in cells}
        if len(cells) == len(rows) and len(columns) == 1:
            where = paper.benchmark_name(next(iter(columns)))
        else:
            where = "; ".join(f"{row}, {paper.benchmark_name(b)}" for row, b in cells)
        notes.append(f"Paper, {where}: {text}")
    return notes


def paper_table(paper: PaperTables, table: str, index: RunIndex, scoring: str = "strict") -> Table:
    """One of the paper's tables with our runs beside its numbers."""
    layout = paper.layouts[table]
    numbers = paper.table(table)
    benchmarks = paper.benchmarks(table)
    systems = paper.systems(table)
    first = {s: next(n for n in numbers if n.system == s) for s in systems}
    values = {(n.system, n.benchmark): n.value for n in numbers}
    rows, used, chosen = [], defaultdict(lambda: defaultdict(list)), []
    for system in systems:
        number = first[system]
        cells = []
        for benchmark in benchmarks:
            choice = index.choose(system, benchmark, PAPER)
            cells.append(our_cell(choice, scoring, values.get((system, benchmark))))
            if choice is not None:
                used[system][str(choice.run.directory)].append(benchmark)
                chosen.append((system, benchmark, choice))
        labels = [number.row] + [getattr(number, column) for column in layout.columns]
        rows.append(Row(system, labels, cells, number.group))
    by_group = layout.rank == "group"
    mark_ranks(rows, by_group)
    groups = ", ".join(dict.fromkeys(row.group for row in rows))
    ranking = f"per group ({groups})" if by_group else "over all rows"
    return Table(f"table{table}", f"Table {table}: {layout.title}", _caption(scoring, ranking),
                 ["Method", *layout.columns.values()],
                 [Column(paper.benchmark_name(b), b) for b in benchmarks], rows,
                 with_paper=True, sections=layout.sections,
                 notes=_paper_notes(paper, table, systems) + _limited_notes(chosen), runs=_runs_used(used))


def synthetic_table(index: RunIndex, scoring: str = "strict") -> Table:
    """Every system (or label) run on a synthetic task: overall accuracy and per question family."""
    entries = []
    for key in index.keys():
        for task in index.tasks(key):
            choice = index.choose(key, task)
            if choice is not None and choice.score.synthetic:
                entries.append((key, task, choice))
    families = sorted({f for _, _, c in entries for f in c.score.subsets})
    rows, used = [], defaultdict(lambda: defaultdict(list))
    for key, task, choice in entries:
        subsets = choice.score.subsets
        cells = [our_cell(choice, scoring), Cell(text=str(choice.score.n))]
        # Families are plain text cells: only the overall accuracy is ranked.
        cells += [Cell(text=_plain(percent((subsets.get(family) or {}).get(f"accuracy,{scoring}"))))
                  for family in families]
        rows.append(Row(key, [key], cells, task))
        used[key][str(choice.run.directory)].append(task)
    tasks = sorted({task for _, task, _ in entries})
    mark_ranks(rows, by_group=True)
    caption = (f"Every system (or label) run on the synthetic benchmark ({', '.join(tasks) or 'none yet'}): "
               f"accuracy ({SCORING_NAMES[scoring]}, %) [95% CI], samples, and accuracy per question family. Best "
               f"and second best accuracy are marked per task. † a run on part of the benchmark, or an incomplete run. {PROTOCOL_NOTE} "
               f"Runs of one system with different settings (e.g. tool noise) share a row unless given a --label.")
    return Table("synthetic", "The synthetic benchmark", caption, ["System"],
                 [Column("Accuracy", "accuracy"), Column("n", "n")] + [Column(f, f) for f in families], rows,
                 with_paper=False, sections=len(tasks) > 1, notes=_limited_notes(entries), runs=_runs_used(used))


def _plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def scoring_table(index: RunIndex) -> Table:
    """Strict and paper-compatible scores side by side, for every row key and task that has a run."""
    rows, chosen, used = [], [], defaultdict(lambda: defaultdict(list))
    for key in index.keys():
        for task in index.tasks(key):
            choice = index.choose(key, task)
            if choice is None:
                continue
            strict, compat = our_cell(choice, "strict"), our_cell(choice, "compat")
            delta = (f"{compat.ours - strict.ours:+.1f}" if strict.ours is not None and compat.ours is not None
                     else "-")
            rows.append(Row(key, [key, task, str(choice.score.n)], [strict, compat, Cell(text=delta)]))
            chosen.append((key, task, choice))
            used[key][str(choice.run.directory)].append(task)
    caption = ("Strict and paper-compatible scoring of the same predictions (%, [95% CI]); difference = "
               f"paper-compatible minus strict, in points. † a run on part of the benchmark, or an incomplete run. {PROTOCOL_NOTE}")
    return Table("scoring", "Strict vs paper-compatible scoring", caption, ["System", "Task", "n"],
                 [Column("Strict", "strict"), Column("Paper-compatible", "compat"), Column("Difference", "delta")],
                 rows, with_paper=False, notes=_limited_notes(chosen), runs=_runs_used(used))
