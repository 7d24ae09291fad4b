"""The leaderboard's tables as data: rows of cells, rendered later as Markdown, LaTeX or CSV."""

from __future__ import annotations

from dataclasses import dataclass, field


class LeaderboardError(ValueError):
    """Input the leaderboard cannot use; the message names the file."""


BEST, SECOND = 1, 2


@dataclass
class Cell:
    """One cell: our number (percent) with its interval, the paper's number, or plain text."""

    ours: float | None = None
    ci: tuple[float, float] | None = None
    paper: float | None = None
    limited: bool = False  # ours comes from part of the benchmark (--limit or an unfinished run)
    mark: int = 0  # BEST or SECOND, on the ranked number (ours where present, else the paper's)
    text: str | None = None  # a plain cell (a count, a difference): no number, no mark
    n: int | None = None
    run: str | None = None  # the run directory ours comes from
    protocol: str | None = None  # the protocol of that run (paper or harness)

    @property
    def ranked(self) -> float | None:
        return self.ours if self.ours is not None else self.paper


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # the task (benchmark) or measure the column holds


@dataclass
class Row:
    key: str  # the paper row's system name or slug; for our own tables, the run's label or system
    labels: list[str]  # the row label, then one entry per label column
    cells: list[Cell]
    group: str = ""


@dataclass
class Table:
    name: str  # file stem: table1, synthetic, scoring
    title: str
    caption: str  # what a cell shows, how it is ranked
    label_headers: list[str]  # the row label's header, then the label columns'
    columns: list[Column]
    rows: list[Row]
    with_paper: bool = True  # cells show "ours / paper"
    sections: bool = False  # groups printed as section rows
    notes: list[str] = field(default_factory=list)  # shown under the table
    runs: list[str] = field(default_factory=list)  # the run directories used, one line per row

    def cells_run(self) -> int:
        return sum(1 for row in self.rows for cell in row.cells if cell.ours is not None)

    def cells_expected(self) -> int:
        return sum(1 for row in self.rows for cell in row.cells if cell.text is None)
