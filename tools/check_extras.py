"""Prove that every install line of the project resolves, with pip's own resolver.

    python tools/check_extras.py                 # every install set, a table, exit 1 on a conflict
    python tools/check_extras.py --only verl     # the sets whose name contains "verl"
    python tools/check_extras.py --list          # the sets and their requirements, nothing resolved

Each install set is the core dependencies of ``pyproject.toml`` plus some extras
(and, for a few documented lines, requirements beside them). For each, pip
resolves the requirements without installing anything
(``pip install --dry-run --ignore-installed --report``), exactly as a user's
``pip install -e ".[EXTRAS]"`` would, and the table shows the versions chosen
for the packages that decide compatibility. A set that pip cannot resolve makes
the exit status 1 and prints pip's explanation. The sets are every extra alone
with the core, plus every combination the documentation tells users to install
(``tests/test_check_extras.py`` checks that each documented ``pip install`` line
is one of them, so a new line in a README cannot go unchecked).

The registry must be reachable: a set pip could not resolve for want of the
network is reported as ``unreachable`` and fails the check too, unless
``--allow-offline`` (for machines without a package index) turns that into a
skip. Nothing is downloaded but package metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]

# Packages whose versions decide whether the stacks fit together; shown in the table.
SHOWN = ("torch", "transformers", "huggingface-hub", "tokenizers", "datasets", "trl", "vllm", "verl")

_NETWORK = re.compile(r"(Failed to establish a new connection|Temporary failure in name resolution|"
                      r"Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
                      r"No matching distribution found for .* \(from versions: none\)|"
                      r"Could not fetch URL|ProxyError|SSLError)")


@dataclass(frozen=True)
class InstallSet:
    """The core plus ``extras`` (plus ``also``: requirements a documented line installs beside them)."""

    extras: tuple[str, ...]
    also: tuple[str, ...] = ()
    why: str = ""

    @property
    def name(self) -> str:
        name = f".[{','.join(self.extras)}]" if self.extras else "."
        return " ".join((name, *self.also))


# Every extra alone with the core, then every line the documentation gives.
DOCUMENTED = (
    InstallSet(("dev",), why="the tests and CI (torch 2.13.0, CPU)"),
    InstallSet(("tools", "depth"), why="the real tools on a CPU or GPU"),
    InstallSet(("tools", "grounding"), why="detector fine-tuning (recipes/grounding_sft)"),
    InstallSet(("tools", "vllm"), why="pseudo-labels (recipes/grounding_pseudolabels)"),
    InstallSet(("vllm", "tools", "depth"), why="the evaluation environment"),
    InstallSet(("vllm", "tools", "depth", "ray"), why="the evaluation environment on a Ray cluster (docs/scaling.md)"),
    InstallSet(("trl-vllm", "api"), why="GRPO and SFT with TRL (recipes/reasoning_grpo_trl, reasoning_sft)"),
    InstallSet(("verl", "api"), why="GRPO with verl (recipes/reasoning_grpo_verl)"),
    InstallSet(("api",), ("verl==0.9.1", "torch==2.13.0"), why="verl without its rollout engine, on a CPU "
                                                              "(its start-up check; docs/training.md)"),
)


def read_pyproject(path: Path = ROOT / "pyproject.toml") -> tuple[list[str], dict[str, list[str]]]:
    """The core dependencies and every extra's requirements."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    return list(project.get("dependencies", [])), {k: list(v) for k, v in
                                                   project.get("optional-dependencies", {}).items()}


def install_sets(extras: dict[str, list[str]]) -> list[InstallSet]:
    """The core alone, each extra with the core, then the documented combinations (no repeats)."""
    sets = [InstallSet((), why="the core")]
    sets += [InstallSet((name,), why=f"the {name} extra") for name in extras]
    for documented in DOCUMENTED:
        unknown = [e for e in documented.extras if e not in extras]
        if unknown:
            raise SystemExit(f"tools/check_extras.py: documented install set {documented.name} names extras "
                             f"that pyproject.toml lacks: {unknown}")
        if documented.name not in {s.name for s in sets}:
            sets.append(documented)
    return sets


def requirements(install: InstallSet, core: list[str], extras: dict[str, list[str]]) -> list[str]:
    lines = list(core)
    for name in install.extras:
        lines += extras[name]
    return lines + list(install.also)


@dataclass
class Outcome:
    install: InstallSet
    status: str  # ok | conflict | unreachable | error
    versions: dict[str, str] = field(default_factory=dict)
    packages: int = 0
    seconds: float = 0.0
    detail: str = ""


def resolve(install: InstallSet, lines: list[str], pip: Sequence[str], timeout_s: float) -> Outcome:
    """pip's verdict on one set: the versions it would install, or why it cannot."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="check-extras-") as tmp:
        req = Path(tmp, "requirements.txt")
        req.write_text("\n".join(lines) + "\n", encoding="utf-8")
        report = Path(tmp, "report.json")
        command = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
                   "--report", str(report), "-r", str(req)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "PIP_NO_INPUT": "1"})
        except subprocess.TimeoutExpired:
            return Outcome(install, "error", seconds=time.monotonic() - started,
                           detail=f"pip did not finish in {timeout_s:.0f} s")
        seconds = time.monotonic() - started
        output = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                           if not line.startswith("WARNING: Location"))
        if done.returncode != 0:
            if "ResolutionImpossible" in output or "conflicting dependencies" in output:
                status = "conflict"
            elif _NETWORK.search(output):
                status = "unreachable"
            else:
                status = "error"
            return Outcome(install, status, seconds=seconds, detail=output.strip())
        try:
            installed = json.loads(report.read_text(encoding="utf-8"))["install"]
        except (OSError, ValueError, KeyError) as exc:
            return Outcome(install, "error", seconds=seconds, detail=f"unreadable pip report: {exc}")
    versions = {}
    for item in installed:
        metadata = item.get("metadata", {})
        name = re.sub(r"[-_.]+", "-", str(metadata.get("name", ""))).lower()
        if name in SHOWN:
            versions[name] = str(metadata.get("version"))
    return Outcome(install, "ok", versions, len(installed), seconds)


def render(outcomes: Sequence[Outcome]) -> str:
    header = ["install set", "result", "packages", *SHOWN, "s"]
    rows = [[o.install.name, o.status, str(o.packages or "-"), *(o.versions.get(p, "-") for p in SHOWN),
             f"{o.seconds:.0f}"] for o in outcomes]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only the sets whose name contains TEXT (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the sets and their requirements, resolve nothing")
    parser.add_argument("--jobs", type=int, default=8, help="sets resolved at once (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds per set; resolving many sets at once on 2 cores is slow (default: %(default)s)")
    parser.add_argument("--allow-offline", action="store_true",
                        help="a set that cannot reach the package index is skipped, not failed")
    parser.add_argument("--pip", default=f"{sys.executable} -m pip",
                        help="the pip command (default: this interpreter's pip)")
    args = parser.parse_args(argv)

    core, extras = read_pyproject()
    sets = [s for s in install_sets(extras) if not args.only or any(t in s.name for t in args.only)]
    if not sets:
        print(f"no install set matches {args.only}", file=sys.stderr)
        return 2
    if args.list:
        for install in sets:
            print(f"{install.name}  ({install.why})")
            print("".join(f"    {line}\n" for line in requirements(install, core, extras)), end="")
        return 0

    pip = args.pip.split()
    print(f"resolving {len(sets)} install sets with `{args.pip}` ...", flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda s: resolve(s, requirements(s, core, extras), pip, args.timeout), sets))
    print(render(outcomes))
    failed = [o for o in outcomes if o.status != "ok" and not (o.status == "unreachable" and args.allow_offline)]
    for o in outcomes:
        if o.status != "ok":
            print(f"\n{o.install.name} ({o.install.why}): {o.status}\n{o.detail}", file=sys.stderr)
    if failed:
        print(f"\n{len(failed)} of {len(outcomes)} install sets do not resolve: "
              + ", ".join(o.install.name for o in failed), file=sys.stderr)
        return 1
    print(f"all {len(outcomes)} install sets resolve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
