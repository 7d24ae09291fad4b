"""Every `python -m harness ...` command written in README.md and docs/*.md exists, with every
flag it shows: the pages are read and each command is checked against the CLI's own parser.

A command is found in a code block (with its continuation lines: a trailing backslash, or
following lines of a usage synopsis indented under it) or in an inline code span.
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_COMMAND = re.compile(r"python -m harness\s+([a-z][a-z0-9-]*)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_FENCE = re.compile(r"^\s*```")


def commands_in(text: str) -> list[tuple[int, str]]:
    """(line number, command text) of every harness command on a page."""
    found: list[tuple[int, str]] = []
    lines = text.splitlines()
    in_block = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if _FENCE.match(line):
            in_block = not in_block
            index += 1
            continue
        if in_block:
            if "python -m harness" in line:
                start = line.index("python -m harness")
                command = [line[start:]]
                indent = len(line) - len(line.lstrip())
                while index + 1 < len(lines):
                    following = lines[index + 1]
                    continued = command[-1].rstrip().endswith("\\")
                    synopsis = (following.strip().startswith("[")
                                and len(following) - len(following.lstrip()) > indent)
                    if not (continued or synopsis) or _FENCE.match(following):
                        break
                    command.append(following)
                    index += 1
                found.append((index + 1, " ".join(part.rstrip("\\") for part in command)))
        else:
            for span in re.findall(r"`([^`]+)`", line):
                if "python -m harness" in span:
                    found.append((index + 1, span[span.index("python -m harness"):]))
        index += 1
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def problems_of(command: str, commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    command = command.split(" #")[0]  # a shell comment after the command
    match = _COMMAND.match(command)
    if match is None:
        return []  # `python -m harness --help` and the like
    name = match.group(1)
    if name not in commands:
        return [f"no command {name!r}"]
    options = {option for action in commands[name]._actions for option in action.option_strings}
    return [f"{name} has no flag {flag}" for flag in _FLAG.findall(command[match.end():]) if flag not in options]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_command_and_flag_on_the_page_exists(page):
    commands = _subparsers(build_parser())
    problems = [f"{page.name}:{number}: {problem}: {command.strip()}"
                for number, command in commands_in(page.read_text(encoding="utf-8"))
                for problem in problems_of(command, commands)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_commands_and_catches_wrong_ones():
    page = ("Run `python -m harness run --system S --tasks T` or:\n\n```bash\n"
            "python -m harness run --system S --tasks T [--limit N]\n"
            "                      [--no-such-flag]\n"
            "python -m harness check --baseline A \\\n    --candidate B --nope\n"
            "python -m harness frobnicate\n```\n")
    found = commands_in(page)
    assert [number for number, _ in found] == [1, 5, 7, 8]
    commands = _subparsers(build_parser())
    assert problems_of(found[0][1], commands) == []
    assert problems_of(found[1][1], commands) == ["run has no flag --no-such-flag"]
    assert problems_of(found[2][1], commands) == ["check has no flag --nope"]
    assert problems_of(found[3][1], commands) == ["no command 'frobnicate'"]


_SCRIPT = re.compile(r"python ((?:benchmarks|tools|recipes)/[\w/.-]+\.py)([^`\n#]*)")


@functools.lru_cache(maxsize=None)
def _help_of(path: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / path), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    return done.stdout if done.returncode == 0 else ""


def script_problems(text: str) -> list[str]:
    """Scripts of the repository that a page runs (`python benchmarks/x.py --flag`): each exists,
    answers --help, and takes every flag shown."""
    problems = []
    for path, arguments in _SCRIPT.findall(text):
        if not (REPO / path).is_file():
            problems.append(f"no script {path}")
            continue
        usage = _help_of(path)
        if not usage:
            problems.append(f"{path} --help fails")
            continue
        head = arguments.split(" -- ")[0]  # after `--`, the flags belong to another program
        problems += [f"{path} has no flag {flag}" for flag in _FLAG.findall(head)
                     if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage)]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_script_and_flag_on_the_page_exists(page):
    problems = script_problems(page.read_text(encoding="utf-8"))
    assert not problems, "\n".join(f"{page.name}: {problem}" for problem in problems)


def test_the_script_check_catches_wrong_ones():
    assert script_problems("`python tools/check_extras.py --list`") == []
    assert script_problems("`python tools/check_extras.py --nope`") == ["tools/check_extras.py has no flag --nope"]
    assert script_problems("`python benchmarks/missing.py`") == ["no script benchmarks/missing.py"]
