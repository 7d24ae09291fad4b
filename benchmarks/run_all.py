"""Run every benchmark, print one table of its figures, and write them as JSON; or make
``docs/performance.md`` from such a JSON file.

A benchmark is a script in this folder that defines ``measure(quick: bool) -> list[Figure]``
(see ``figures.py``). Each runs in a process of its own, so that one's memory and imports do not
weigh on the next; a benchmark that fails is named in the table's place and makes the exit
status 1, after the others have run.

    python benchmarks/run_all.py [--quick] [--only NAME,...] --json FILE
    python benchmarks/run_all.py --from-json FILE --write-docs docs/performance.md
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from figures import Figure, table, write_json  # noqa: E402

BEGIN = "<!-- benchmarks/run_all.py: begin -->"
END = "<!-- benchmarks/run_all.py: end -->"
PAGE_HEAD = """\
# Performance

Every figure below is printed by a script in `benchmarks/`; the table is made by
`benchmarks/run_all.py` and nothing else on this page states a measured number. Each figure is the
median of its runs, with their range, against its target (PASS or MISS). To measure your machine:

```
python benchmarks/run_all.py --json perf.json
python benchmarks/run_all.py --from-json perf.json --write-docs docs/performance.md
```

`--quick` runs smaller workloads (a figure measured at another size than its target's is shown
without a target).

"""


def _takes_quick_alone(node: ast.FunctionDef) -> bool:
    """Whether ``measure(quick)`` is a call the function takes (another script's ``measure`` of
    other arguments is a helper of its own, not this runner's entry point)."""
    positional = node.args.posonlyargs + node.args.args
    required_kw = [arg for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults) if default is None]
    return bool(positional) and len(positional) - len(node.args.defaults) <= 1 and not required_kw


def benchmarks(folder: Path = HERE) -> list[str]:
    """The scripts of ``folder`` that define ``measure(quick)``, found by reading them (none is imported)."""
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name in ("run_all.py", "figures.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "measure" and _takes_quick_alone(node)
               for node in tree.body):
            found.append(path.stem)
    return found


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def _worker(name: str, quick: bool, out: Path) -> None:
    """Run one benchmark in this process and write its figures to ``out``."""
    import importlib

    module = importlib.import_module(name)
    figures = module.measure(quick)
    out.write_text(json.dumps([f.to_dict() for f in figures]), encoding="utf-8")


def _figure(data: dict) -> Figure:
    return Figure(data["benchmark"], data["name"], data["unit"], data["runs"], data.get("target"),
                  data.get("note", ""), data.get("extra") or {})


def run(names: list[str], quick: bool) -> tuple[list[Figure], dict[str, str]]:
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    for name in names:
        print(f"running {name}{' (quick)' if quick else ''} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            command = [sys.executable, __file__, "--worker", name, "--worker-out", str(out)] + (["--quick"] if quick else [])
            proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0 or not out.is_file():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                failed[name] = f"exit {proc.returncode}: {last}"
                print(f"  {name} failed: {failed[name]}", file=sys.stderr)
                continue
            figures += [_figure(d) for d in json.loads(out.read_text(encoding="utf-8"))]
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return figures, failed


def read_json(path: Path) -> tuple[dict, list[Figure], dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["machine"], [_figure(d) for d in data["figures"]], data.get("failed") or {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: {path}: not a file written by run_all.py --json ({type(exc).__name__}: {exc})")


def page_section(machine_info: dict, figures: list[Figure], failed: dict[str, str], quick: bool) -> str:
    lines = [BEGIN, "",
             f"Measured on {machine_info['date']}: {machine_info['cpu']}, {machine_info['cores']} cores, "
             f"Python {machine_info['python']}, {machine_info['system']}"
             + (" (`--quick` workloads)." if quick else "."), "", table(figures), ""]
    notes = [f"- {f.benchmark}, {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["How each figure is measured:", "", *notes, ""]
    if failed:
        lines += ["Benchmarks that failed in this run (no figures):", "",
                  *[f"- {name}: {why}" for name, why in failed.items()], ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_docs(path: Path, section: str) -> None:
    """Replace the generated part of the page (between its markers); a page without them is written anew."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = PAGE_HEAD + section
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a quick look")
    parser.add_argument("--only", metavar="NAME,...", help="run only these benchmarks (script names, no .py)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the machine and every figure here")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="run nothing: read the figures of FILE")
    parser.add_argument("--write-docs", type=Path, metavar="PAGE",
                        help="write the table into PAGE, between its markers; a page without them is written anew")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.quick, args.worker_out)
        return 0
    if args.from_json:
        machine_info, figures, failed = read_json(args.from_json)
        quick = bool(machine_info.get("quick"))
    else:
        available = benchmarks()
        names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else available
        unknown = sorted(set(names) - set(available))
        if unknown:
            parser.error(f"no benchmark {', '.join(unknown)} (those with measure(): {', '.join(available)})")
        machine_info = {**machine(), "quick": args.quick}
        figures, failed = run(names, args.quick)
        quick = args.quick
        if args.json:
            write_json(figures, args.json, machine_info)
            if failed:  # kept beside the figures, so a page made from the file says so
                data = json.loads(args.json.read_text(encoding="utf-8"))
                args.json.write_text(json.dumps({**data, "failed": failed}, indent=2) + "\n", encoding="utf-8")
    print(table(figures))
    for name, why in failed.items():
        print(f"FAILED {name}: {why}")
    if args.write_docs:
        args.write_docs.parent.mkdir(parents=True, exist_ok=True)
        write_docs(args.write_docs, page_section(machine_info, figures, failed, quick))
        print(f"wrote {args.write_docs}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
