"""benchmarks/run_all.py: which scripts it runs, and the page it writes from a JSON file of figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_ALL = REPO / "benchmarks" / "run_all.py"


def _module():
    spec = importlib.util.spec_from_file_location("run_all_under_test", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_scripts_that_define_measure_are_benchmarks(tmp_path):
    run_all = _module()
    (tmp_path / "fast.py").write_text("def measure(quick):\n    return []\n")
    (tmp_path / "old.py").write_text("def main():\n    print('a table')\n")
    (tmp_path / "nested.py").write_text("class A:\n    def measure(self, quick):\n        return []\n")
    (tmp_path / "figures.py").write_text("def measure(quick):\n    return []\n")
    (tmp_path / "helper.py").write_text("def measure(task, n, replicas):\n    return 1.0\n")
    (tmp_path / "sized.py").write_text("def measure(quick=False, samples=None, *, repeats=3):\n    return []\n")
    assert run_all.benchmarks(tmp_path) == ["fast", "sized"]
    found = run_all.benchmarks()
    assert "data_path" in found and "quickstart" in found and "ray_scaling" not in found


def _figures_file(path: Path) -> Path:
    figures = [{"benchmark": "b", "name": "speed", "unit": "x/s", "runs": [3.0, 1.0, 2.0], "target": ">= 1.5",
                "note": "how it is measured", "extra": {}},
               {"benchmark": "b", "name": "memory", "unit": "MB", "runs": [9.0, 8.0, 10.0], "target": "<= 5",
                "note": "", "extra": {}}]
    machine = {"cpu": "Some CPU", "cores": 2, "python": "3.11.7", "system": "Linux", "date": "2026-01-02",
               "quick": False}
    path.write_text(json.dumps({"machine": machine, "figures": figures, "failed": {"c": "exit 1: boom"}}))
    return path


def test_the_page_is_made_from_the_json_and_only_its_table_is_replaced(tmp_path):
    data = _figures_file(tmp_path / "perf.json")
    page = tmp_path / "performance.md"
    command = [sys.executable, str(RUN_ALL), "--from-json", str(data), "--write-docs", str(page)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1  # a benchmark failed in the measured run
    text = page.read_text()
    assert "Some CPU, 2 cores, Python 3.11.7" in text and "2026-01-02" in text
    assert "| b | speed | 2 x/s | 1 - 3 | 3 | >= 1.5 | PASS |" in " ".join(text.split())
    assert "| MISS |" in text and "b, speed: how it is measured" in text and "c: exit 1: boom" in text
    edited = text.replace("# Performance", "# Performance\n\nA paragraph written by hand.")
    page.write_text(edited + "\nA closing line.\n")
    subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    again = page.read_text()
    assert "A paragraph written by hand." in again and again.endswith("A closing line.\n")
    assert " ".join(again.split()).count("| b | speed |") == 1


def test_a_file_that_is_not_figures_is_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    done = subprocess.run([sys.executable, str(RUN_ALL), "--from-json", str(tmp_path / "bad.json")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: ") and len(done.stderr.splitlines()) == 1
