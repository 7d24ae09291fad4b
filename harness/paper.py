"""The paper's reported numbers, read from ``results/paper/`` and checked.

Each of the paper's Tables 1-9 is one CSV file (``table1.csv`` ... ``table9.csv``)
in long format, one line per printed number; ``other.csv`` holds numbers from
the text (detector mAP, pseudo-label precision). Columns:

    table, system, row, base_model, benchmark, [metric,] value, group, notes

``system`` is our system's name (``baselines/*.yaml``) where one exists and a
stable slug otherwise (``vadar``, ``valor-rl-n40``); the leaderboard matches
runs to rows by it. ``value`` is the number as printed, in percent. ``group``
is the table's section (proprietary / open-source), the detector (base GD /
tuned GD) or the training-set size (Table 5). ``tables.yaml`` says how each
table is laid out and ranked.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
import yaml

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
LAYOUT_FILE = "tables.yaml"
COLUMNS = ("table", "system", "row", "base_model", "benchmark", "value", "group", "notes")
OPTIONAL_COLUMNS = {"metric": "accuracy"}
RANK_SCOPES = ("group", "table")
LABEL_FIELDS = ("base_model", "group")
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TABLE_FILE = re.compile(r"table(\w+)\.csv")


class PaperDataError(ValueError):
    """A malformed paper-numbers file; the message names the file and line."""


@dataclass(frozen=True)
class PaperNumber:
    """One number the paper prints."""

    table: str
    system: str
    row: str  # the row label as printed
    base_model: str
    benchmark: str
    value: float  # percent
    printed: str  # the value's text as printed
    group: str = ""
    notes: str = ""
    metric: str = "accuracy"
    source: str = ""  # file:line


@dataclass(frozen=True)
class TableLayout:
    """How one table is shown (``tables.yaml``)."""

    table: str
    title: str
    rank: str = "table"  # best and second best per "group" or over the whole "table"
    sections: bool = False  # groups printed as section rows
    columns: dict[str, str] = field(default_factory=dict)  # CSV field -> header of a label column


@dataclass
class PaperTables:
    numbers: list[PaperNumber]
    layouts: dict[str, TableLayout]
    benchmark_names: dict[str, str]  # task name -> column header

    def table(self, table: str) -> list[PaperNumber]:
        return [n for n in self.numbers if n.table == table]

    def tables(self) -> list[str]:
        """The tables that have a layout, in the paper's order."""
        return sorted(self.layouts, key=_table_order)

    def systems(self, table: str) -> list[str]:
        """A table's rows (system names), in the printed order."""
        return list(dict.fromkeys(n.system for n in self.table(table)))

    def benchmarks(self, table: str) -> list[str]:
        return list(dict.fromkeys(n.benchmark for n in self.table(table)))

    def value(self, table: str, system: str, benchmark: str) -> float | None:
        for n in self.numbers:
            if (n.table, n.system, n.benchmark) == (table, system, benchmark):
                return n.value
        return None

    def benchmark_name(self, benchmark: str) -> str:
        return self.benchmark_names.get(benchmark, benchmark)


def _table_order(table: str) -> tuple[int, str]:
    return (int(table), "") if table.isdigit() else (1 << 30, table)


def _table_of(path: Path) -> str:
    if path.name == "other.csv":
        return "other"
    match = _TABLE_FILE.fullmatch(path.name)
    if not match:
        raise PaperDataError(f"{path}: paper-number files are named tableN.csv or other.csv")
    return match.group(1)


def read_numbers(path: str | Path) -> list[PaperNumber]:
    """One file's numbers, checked: known columns, the file's table, slugs, values in [0, 100], no duplicates."""
    path = Path(path)
    table = _table_of(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        unknown = [c for c in header if c not in COLUMNS and c not in OPTIONAL_COLUMNS]
        if missing or unknown:
            raise PaperDataError(f"{path}:1: missing columns {missing}, unknown columns {unknown}; "
                                 f"expected {', '.join(COLUMNS)} (and optionally {', '.join(OPTIONAL_COLUMNS)})")
        numbers: list[PaperNumber] = []
        seen: dict[tuple[str, str, str], int] = {}
        for row in reader:
            line = reader.line_num
            where = f"{path}:{line}"
            if None in row or any(v is None for v in row.values()):
                raise PaperDataError(f"{where}: expected {len(header)} fields")
            cells = {k: v.strip() for k, v in row.items()}
            if cells["table"] != table:
                raise PaperDataError(f"{where}: table {cells['table']!r} in the file of table {table!r}")
            for name in ("system", "benchmark"):
                if not _SLUG.fullmatch(cells[name]):
                    raise PaperDataError(f"{where}: {name} {cells[name]!r} is not a lowercase name")
            if not cells["row"]:
                raise PaperDataError(f"{where}: empty row label")
            try:
                value = float(cells["value"])
            except ValueError:
                raise PaperDataError(f"{where}: value {cells['value']!r} is not a number") from None
            if not (math.isfinite(value) and 0.0 <= value <= 100.0):
                raise PaperDataError(f"{where}: value {value} is outside [0, 100] (values are percent)")
            metric = cells.get("metric") or OPTIONAL_COLUMNS["metric"]
            key = (cells["system"], cells["benchmark"], metric)
            if key in seen:
                raise PaperDataError(f"{where}: {cells['system']} on {cells['benchmark']} ({metric}) "
                                     f"is already on line {seen[key]}")
            seen[key] = line
            numbers.append(PaperNumber(table, cells["system"], cells["row"], cells["base_model"],
                                       cells["benchmark"], value, cells["value"], cells["group"], cells["notes"],
                                       metric, where))
    if not numbers:
        raise PaperDataError(f"{path}: no numbers")
    return numbers


def read_layouts(path: str | Path) -> tuple[dict[str, TableLayout], dict[str, str]]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PaperDataError(f"{path}: not valid YAML: {exc}") from None
    benchmarks = {str(k): str(v) for k, v in (data.get("benchmarks") or {}).items()}
    layouts = {}
    for table, spec in (data.get("tables") or {}).items():
        table = str(table)
        spec = dict(spec or {})
        unknown = set(spec) - {"title", "rank", "sections", "columns"}
        if unknown:
            raise PaperDataError(f"{path}: table {table}: unknown keys {sorted(unknown)}")
        layout = TableLayout(table, str(spec.get("title") or f"Table {table}"), str(spec.get("rank", "table")),
                             bool(spec.get("sections", False)),
                             {str(k): str(v) for k, v in (spec.get("columns") or {}).items()})
        if layout.rank not in RANK_SCOPES:
            raise PaperDataError(f"{path}: table {table}: rank must be one of {RANK_SCOPES}, got {layout.rank!r}")
        bad = [c for c in layout.columns if c not in LABEL_FIELDS]
        if bad:
            raise PaperDataError(f"{path}: table {table}: columns may show {LABEL_FIELDS}, not {bad}")
        layouts[table] = layout
    return layouts, benchmarks


def load_paper(directory: str | Path = PAPER_DIR) -> PaperTables:
    """Every paper-number file of ``directory`` and its layouts, checked against each other."""
    directory = Path(directory)
    files = sorted(directory.glob("table*.csv")) + sorted(directory.glob("other.csv"))
    if not files:
        raise PaperDataError(f"{directory}: no paper-number files (tableN.csv)")
    numbers = [n for path in files for n in read_numbers(path)]
    layouts, benchmarks = read_layouts(directory / LAYOUT_FILE)
    tables = {n.table for n in numbers} - {"other"}
    if tables != set(layouts):
        raise PaperDataError(f"{directory / LAYOUT_FILE}: tables without a layout: {sorted(tables - set(layouts))}; "
                             f"layouts without numbers: {sorted(set(layouts) - tables)}")
    for n in numbers:
        if n.table != "other" and n.benchmark not in benchmarks:
            raise PaperDataError(f"{n.source}: benchmark {n.benchmark!r} has no header in {LAYOUT_FILE}")
    return PaperTables(numbers, layouts, benchmarks)


def load_table(table: str | int, directory: str | Path = PAPER_DIR) -> list[PaperNumber]:
    """One table's numbers, in the printed order."""
    name = "other.csv" if str(table) == "other" else f"table{table}.csv"
    return read_numbers(Path(directory) / name)
