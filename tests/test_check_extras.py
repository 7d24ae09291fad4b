"""tools/check_extras.py: every documented install line is checked, and pip's verdicts are read right."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("check_extras", REPO / "tools" / "check_extras.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


_INSTALL = re.compile(r"pip install (?:-q )?-e \"?'?\.(?:\[(?P<extras>[\w,-]+)\])?\"?'?(?P<rest>(?: +\"?[\w\[\]=.<>-]+\"?)*)")


def documented_lines() -> set[str]:
    """Every ``pip install -e .[EXTRAS] [more]`` line of the docs, READMEs, recipes and CI, as a set name."""
    found = set()
    files = [*REPO.glob("*.md"), *REPO.glob("docs/*.md"), *REPO.glob("recipes/*/*.md"), *REPO.glob("recipes/*/*.sh"),
             REPO / ".ci" / "run"]
    for path in files:
        for match in _INSTALL.finditer(path.read_text(encoding="utf-8")):
            extras = match.group("extras")
            rest = [w.strip('"') for w in match.group("rest").split() if not w.startswith(("&&", "-"))]
            name = f".[{extras}]" if extras else "."
            found.add(" ".join([name, *rest]))
    return found


def test_every_documented_install_line_is_resolved_by_the_check():
    tool = load_tool()
    core, extras = tool.read_pyproject()
    names = {s.name for s in tool.install_sets(extras)}
    documented = documented_lines()
    assert ".[dev]" in documented and ".[verl,api]" in documented  # the scan finds the lines
    assert documented <= names, f"install lines the check does not resolve: {sorted(documented - names)}"
    assert {f".[{extra}]" for extra in extras} <= names and "." in names  # each extra alone, and the core


def test_pins_that_must_agree(tmp_path):
    """The pins that made `.[verl]` and `.[vllm,tools]` unresolvable stay compatible: the core's
    huggingface-hub below 2 (verl's transformers), numpy below 2.4 (vLLM), transformers below 5.21."""
    tool = load_tool()
    core, extras = tool.read_pyproject()
    pins = dict(line.split("==") for line in core if "==" in line)
    assert pins["huggingface-hub"].startswith("1.") and tuple(map(int, pins["numpy"].split(".")[:2])) < (2, 4)
    transformers = [line for line in extras["tools"] if line.startswith("transformers==")][0]
    assert transformers in extras["dev"]  # the tests run the stack users install
    assert tuple(map(int, transformers.split("==")[1].split(".")[:2])) < (5, 21)
    assert "torch==2.13.0" in extras["dev"]


def test_pips_verdicts_are_read_and_failures_fail(tmp_path, capsys):
    """A stand-in pip: a set naming vllm conflicts, one naming verl cannot reach the index, the rest resolve."""
    fake = tmp_path / "pip.py"
    fake.write_text(
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "reqs = open(args[args.index('-r') + 1]).read()\n"
        "if 'verl' in reqs:\n"
        "    print('WARNING: Retrying ... Failed to establish a new connection', file=sys.stderr); sys.exit(1)\n"
        "if 'vllm' in reqs:\n"
        "    print('ERROR: ResolutionImpossible: for help visit ...', file=sys.stderr); sys.exit(1)\n"
        "report = args[args.index('--report') + 1]\n"
        "json.dump({'install': [{'metadata': {'name': 'Torch', 'version': '2.13.0'}},\n"
        "                       {'metadata': {'name': 'huggingface_hub', 'version': '1.33.0'}}]}, open(report, 'w'))\n")
    tool = load_tool()
    pip = f"{sys.executable} {fake}"
    assert tool.main(["--pip", pip, "--only", ".[tools]", "--only", ".[depth]"]) == 0
    out = capsys.readouterr().out
    assert "all 2 install sets resolve" in out and "2.13.0" in out and "1.33.0" in out
    assert tool.main(["--pip", pip, "--only", ".[vllm]"]) == 1
    captured = capsys.readouterr()
    assert "conflict" in captured.out and "ResolutionImpossible" in captured.err
    assert tool.main(["--pip", pip, "--only", ".[verl]"]) == 1
    assert "unreachable" in capsys.readouterr().out
    assert tool.main(["--pip", pip, "--only", ".[verl]", "--allow-offline"]) == 0


def test_listing_needs_no_network(capsys):
    tool = load_tool()
    assert tool.main(["--list", "--only", ".[verl,api]"]) == 0
    listing = capsys.readouterr().out
    assert "verl[vllm]==0.9.1" in listing and "google-genai" in listing and json.dumps  # the extras' requirements
