"""The paper's numbers as data (results/paper/): every table's shape as printed, names, values, loader errors."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from harness.paper import PAPER_DIR, PaperDataError, load_paper, load_table, read_numbers
from harness.systems import SystemRegistry
from harness.tasks import TaskRegistry
from harness.training.ablation import paper_table5

EIGHT = ["omni3d_bench", "robospatial", "blink", "vsr", "realworldqa", "gqa", "tallyqa", "countbenchqa"]
THREE = ["omni3d_bench", "robospatial", "countbenchqa"]

# Rows (system names in the printed order, with the printed labels) and benchmark columns, read off the paper.
SHAPES = {
    "1": ([("llm-tools-gpt-4o", "GPT-4o"), ("llm-tools-o4-mini", "o4-mini"),
           ("llm-tools-gemini-2.0-flash", "Gemini-2.0-Flash"), ("llm-tools-gemini-2.5-flash", "Gemini-2.5-Flash"),
           ("llm-tools-claude-3.5-haiku", "Claude-3.5-Haiku"), ("llm-tools-llama-3.2-11b", "Llama-3.2-11B"),
           ("llm-tools-gemma-3-12b", "Gemma-3-12B"), ("llm-tools-qwen3-8b", "Qwen3-8B"),
           ("valor-rl", "VALOR-RL (ours)"), ("valor", "VALOR (ours)")], EIGHT),
    "2": ([("grit", "GRIT"), ("vigorl", "ViGoRL"), ("valor-rl", "VALOR-RL"), ("valor", "VALOR")], EIGHT),
    "3": ([("visprog-gpt-4o", "VisProg"), ("vipergpt-gpt-3.5", "ViperGPT"), ("vadar", "VADAR"),
           ("valor-rl", "VALOR-RL"), ("valor", "VALOR")], ["omni3d_bench", "gqa"]),
    "4": ([("direct-gpt-4o", "GPT-4o"), ("direct-gemini-2.0-flash", "Gemini-2.0-Flash"),
           ("direct-claude-3.5-haiku", "Claude-3.5-Haiku"), ("direct-llama-3.2-11b-vision", "Llama3.2-11B"),
           ("direct-qwen2.5-vl-7b", "Qwen2.5-VL-7B"), ("valor-rl", "VALOR-RL"), ("valor", "VALOR")], THREE),
    "5": ([("llm-tools-qwen3-8b", "Qwen3-8B"), ("valor-rl-n40", "VALOR-RL"), ("valor-rl-n160", "VALOR-RL"),
           ("valor-rl-n400", "VALOR-RL"), ("valor-rl-n800", "VALOR-RL")], ["omni3d_bench"]),
    "6": ([("valor-sft", "SFT"), ("valor", "VALOR")], THREE),
    "7": ([("direct-gpt-5-mini", "GPT-5-mini"), ("direct-gpt-5-mini-grounded", "GPT-5-mini (grounded)"),
           ("valor", "VALOR")], EIGHT),
    "8": ([("llm-tools-gemma-3-12b", "Gemma-3-12B (base GD)"),
           ("llm-tools-gemma-3-12b-tuned-gd", "Gemma-3-12B (tuned GD)"),
           ("llm-tools-qwen3-8b", "Qwen3-8B (base GD)"), ("llm-tools-qwen3-8b-tuned-gd", "Qwen3-8B (tuned GD)"),
           ("valor-rl", "VALOR-RL (base GD)"), ("valor", "VALOR (tuned GD)")], EIGHT),
    "9": ([("valor-sft", "SFT"), ("valor", "VALOR")], EIGHT),
}
GROUPS = {
    "1": ["Proprietary Models"] * 5 + ["Open-Source Models"] * 5,
    "2": ["RL-Tuned VLMs"] * 2 + ["Ours"] * 2,
    "4": ["Proprietary Models"] * 3 + ["Open-Source Models"] * 4,
    "5": ["0", "40", "160", "400", "800"],
    "8": ["base GD", "tuned GD"] * 3,
}
# Rows that are not a system of baselines/: the paper's other methods and our training variants.
SLUGS = {"vadar", "valor-rl-n40", "valor-rl-n160", "valor-rl-n400", "valor-rl-n800", "valor-sft"}

# Typed from the paper's tables independently of the CSV files.
SPOT_VALUES = [
    ("1", "llm-tools-gpt-4o", "omni3d_bench", 38.0), ("1", "llm-tools-o4-mini", "realworldqa", 65.9),
    ("1", "llm-tools-gemma-3-12b", "omni3d_bench", 24.4), ("1", "valor", "countbenchqa", 75.9),
    ("2", "vigorl", "omni3d_bench", 13.2), ("2", "grit", "gqa", 75.0), ("3", "vadar", "gqa", 46.1),
    ("3", "valor", "gqa", 63.0), ("4", "direct-gemini-2.0-flash", "countbenchqa", 88.6),
    ("4", "direct-llama-3.2-11b-vision", "robospatial", 39.9), ("5", "valor-rl-n400", "omni3d_bench", 40.8),
    ("6", "valor-sft", "robospatial", 64.5), ("7", "direct-gpt-5-mini-grounded", "tallyqa", 55.4),
    ("7", "direct-gpt-5-mini", "vsr", 84.4), ("8", "llm-tools-qwen3-8b-tuned-gd", "robospatial", 66.7),
    ("8", "llm-tools-qwen3-8b", "realworldqa", 55.3), ("9", "valor-sft", "blink", 67.2),
]
# Where one system's number on one benchmark differs between tables, as printed.
KNOWN_DIFFERENCES = {("llm-tools-qwen3-8b", "realworldqa"),  # Table 1: 53.3, Table 8: 55.3
                     ("valor-rl", "gqa"), ("valor", "gqa")}  # Table 3 uses VADAR's GQA subset


@pytest.fixture(scope="module")
def paper():
    return load_paper()


@pytest.mark.parametrize("table", sorted(SHAPES))
def test_each_table_has_the_printed_rows_and_columns(paper, table):
    rows, columns = SHAPES[table]
    numbers = paper.table(table)
    assert paper.systems(table) == [system for system, _ in rows]
    assert paper.benchmarks(table) == columns
    labels = {n.system: n.row for n in numbers}
    assert [labels[system] for system, _ in rows] == [label for _, label in rows]
    cells = Counter((n.system, n.benchmark) for n in numbers)
    assert set(cells) == {(s, b) for s, _ in rows for b in columns} and set(cells.values()) == {1}
    assert all(0.0 <= n.value <= 100.0 and n.printed == f"{n.value:.1f}" for n in numbers)
    if table in GROUPS:
        assert [next(n.group for n in numbers if n.system == s) for s, _ in rows] == GROUPS[table]


def test_names_are_our_systems_and_tasks(paper):
    systems, tasks = SystemRegistry(), set(TaskRegistry().names())
    for n in paper.numbers:
        if n.table == "other":
            continue
        assert n.benchmark in tasks, n.source
        if n.system not in SLUGS:
            assert n.system in systems.names(), n.source
            assert n.table in systems.config(n.system).tables, f"{n.system} does not list table {n.table}"


@pytest.mark.parametrize("table,system,benchmark,value", SPOT_VALUES)
def test_spot_values(paper, table, system, benchmark, value):
    assert paper.value(table, system, benchmark) == value


def test_a_system_prints_the_same_number_in_every_table(paper):
    values: dict[tuple[str, str], set[float]] = {}
    for n in paper.numbers:
        if n.table != "other":
            values.setdefault((n.system, n.benchmark), set()).add(n.value)
    differing = {key for key, seen in values.items() if len(seen) > 1}
    assert differing == KNOWN_DIFFERENCES
    assert paper.value("5", "llm-tools-qwen3-8b", "omni3d_bench") == paper.value("1", "llm-tools-qwen3-8b",
                                                                                "omni3d_bench")
    assert paper.value("5", "valor-rl-n800", "omni3d_bench") == paper.value("1", "valor-rl", "omni3d_bench")


def test_other_numbers_and_the_ablation_reads_table5():
    other = {(n.system, n.metric): n.value for n in load_table("other")}
    assert other[("groundingdino-t-base", "mAP")] == 48.4 and other[("groundingdino-t-valor", "mAP")] == 48.7
    assert [other[(f"pseudo-labels-{s}", "precision")] for s in ("coarse", "crop", "dedup")] == [45.0, 50.0, 75.0]
    assert paper_table5() == {0: 37.5, 40: 40.0, 160: 39.2, 400: 40.8, 800: 43.9}


def test_every_table_has_a_layout(paper):
    assert paper.tables() == [str(t) for t in range(1, 10)]
    assert paper.layouts["1"].rank == "group" and paper.layouts["1"].sections
    assert paper.layouts["3"].columns == {"base_model": "Base model"}


HEADER = "table,system,row,base_model,benchmark,value,group,notes\n"


@pytest.mark.parametrize("line,message", [
    ("1,valor,VALOR,Qwen3-8B,vsr,175.6,,\n", "outside [0, 100]"),
    ("1,valor,VALOR,Qwen3-8B,vsr,n/a,,\n", "is not a number"),
    ("2,valor,VALOR,Qwen3-8B,vsr,75.6,,\n", "table '2' in the file of table '1'"),
    ("1,VALOR,VALOR,Qwen3-8B,vsr,75.6,,\n", "not a lowercase name"),
    ("1,valor,VALOR,Qwen3-8B,vsr,75.6\n", "expected 8 fields"),
])
def test_malformed_lines_are_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "table1.csv"
    path.write_text(HEADER + "1,valor,VALOR,Qwen3-8B,blink,69.2,,\n" + line)
    with pytest.raises(PaperDataError, match=rf"table1\.csv:3: .*{re.escape(message)}"):
        read_numbers(path)


def test_duplicates_and_missing_layouts_are_refused(tmp_path):
    path = tmp_path / "table1.csv"
    path.write_text(HEADER + "1,valor,VALOR,Qwen3-8B,vsr,75.6,,\n1,valor,VALOR (again),Qwen3-8B,vsr,75.6,,\n")
    with pytest.raises(PaperDataError, match=r"table1\.csv:3: valor on vsr \(accuracy\) is already on line 2"):
        read_numbers(path)
    path.write_text(HEADER + "1,valor,VALOR,Qwen3-8B,vsr,75.6,,\n")
    (tmp_path / "tables.yaml").write_text("benchmarks: {vsr: VSR}\ntables: {'2': {title: x}}\n")
    with pytest.raises(PaperDataError, match=r"tables without a layout: \['1'\]"):
        load_paper(tmp_path)


def test_the_package_finds_the_committed_files():
    assert PAPER_DIR == Path(__file__).resolve().parents[1] / "results" / "paper"
    assert (PAPER_DIR / "README.md").is_file()
