"""Rendering a leaderboard table as Markdown, LaTeX (booktabs) or CSV (one line per cell)."""

from __future__ import annotations

import csv
import io
import re
from typing import Callable

from harness.leaderboard.model import BEST, SECOND, Cell, Table

DAGGER = "†"
NOT_RUN = "not run"
NO_PAPER = "-"

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", DAGGER: r"\dag{}"}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIALS))


def latex_escape(text: str) -> str:
    escaped = _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIALS[m.group()], text)
    return escaped.replace("--", "-{}-").replace("--", "-{}-")  # "--limit" stays two hyphens, not a dash


def _cell_text(cell: Cell, with_paper: bool, emphasis: Callable[[str, int], str], dagger: str,
               interval: Callable[[str], str], escape: Callable[[str], str]) -> str:
    """``ours† [lo, hi] / paper``, the ranked number emphasised by its mark."""
    if cell.text is not None:
        return escape(cell.text)
    if cell.ours is None:
        ours = NOT_RUN
    else:
        ours = emphasis(f"{cell.ours:.1f}", cell.mark) + (dagger if cell.limited else "")
        if cell.protocol:
            ours += escape(f" ({cell.protocol[0]})")
        if cell.ci is not None:
            ours += " " + interval(f"[{cell.ci[0]:.1f}, {cell.ci[1]:.1f}]")
    if not with_paper:
        return ours
    paper = NO_PAPER if cell.paper is None else f"{cell.paper:.1f}"
    if cell.ours is None and cell.paper is not None:
        paper = emphasis(paper, cell.mark)
    return f"{ours} / {paper}"


def _legend(table: Table, best: str, second: str) -> str:
    return f" {best}: best; {second}: second best." if any(c.mark for r in table.rows for c in r.cells) else ""


def _md_emphasis(text: str, mark: int) -> str:
    return f"**{text}**" if mark == BEST else f"*{text}*" if mark == SECOND else text


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def to_markdown(table: Table) -> str:
    headers = [*table.label_headers, *(c.header for c in table.columns)]
    lines = [f"## {table.title}", "", table.caption + _legend(table, "bold", "italics"), "",
             "| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "---|" * len(table.label_headers) + "---:|" * len(table.columns)]
    group = None
    for row in table.rows:
        if table.sections and row.group != group:
            group = row.group
            lines.append(f"| *{_md_escape(group)}* |" + " |" * (len(headers) - 1))
        cells = [_cell_text(c, table.with_paper, _md_emphasis, DAGGER, lambda s: s, _md_escape) for c in row.cells]
        lines.append("| " + " | ".join([*(_md_escape(label) for label in row.labels), *cells]) + " |")
    if not table.rows:
        lines.append("| *no runs yet* |" + " |" * (len(headers) - 1))
    if table.notes:
        lines += ["", *(f"- {note}" for note in table.notes)]
    if table.runs:
        lines += ["", "Runs used:", "", *(f"- {line}" for line in table.runs)]
    return "\n".join(lines) + "\n"


def _tex_emphasis(text: str, mark: int) -> str:
    return rf"\textbf{{{text}}}" if mark == BEST else rf"\underline{{{text}}}" if mark == SECOND else text


def to_latex(table: Table) -> str:
    width = len(table.label_headers) + len(table.columns)
    spec = "l" * len(table.label_headers) + "r" * len(table.columns)
    caption = f"{table.title}. {table.caption}{_legend(table, 'bold', 'underlined')}"
    lines = [
        f"% {table.title}. Written by `python -m harness leaderboard`; needs \\usepackage{{booktabs}}.",
        r"\begin{table}[t]", r"\centering", r"\small",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:leaderboard-{table.name}}}",
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
        " & ".join(latex_escape(h) for h in [*table.label_headers, *(c.header for c in table.columns)]) + r" \\",
        r"\midrule",
    ]
    group = None
    for i, row in enumerate(table.rows):
        if table.sections and row.group != group:
            group = row.group
            if i:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(group)}}}}} \\")
        cells = [_cell_text(c, table.with_paper, _tex_emphasis, r"\textsuperscript{\dag}",
                            lambda s: rf"{{\scriptsize {s}}}", latex_escape) for c in row.cells]
        lines.append(" & ".join([*(latex_escape(label) for label in row.labels), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += [r"\par\smallskip\footnotesize", *(latex_escape(note) + r"\par" for note in table.notes)]
    lines.append(r"\end{table}")
    lines += [f"% runs used: {line}" for line in table.runs]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def to_csv(table: Table) -> str:
    """One line per cell, ours and the paper's as numbers (percent), for other tools."""
    label_fields = ["row"] + [re.sub(r"\W+", "_", h.strip().lower()) for h in table.label_headers[1:]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["table", "group", "key", *label_fields, "column", "ours", "ci_low", "ci_high", "n", "partial",
                     "paper", "mark", "text", "run", "protocol"])
    marks = {BEST: "best", SECOND: "second"}
    for row in table.rows:
        for column, cell in zip(table.columns, row.cells):
            low, high = cell.ci if cell.ci else (None, None)
            writer.writerow([table.name, row.group, row.key, *row.labels, column.key, _number(cell.ours),
                             _number(low), _number(high), "" if cell.n is None else cell.n,
                             str(cell.limited).lower() if cell.ours is not None else "", _number(cell.paper),
                             marks.get(cell.mark, ""), cell.text or "", cell.run or "", cell.protocol or ""])
    return out.getvalue()


RENDERERS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
