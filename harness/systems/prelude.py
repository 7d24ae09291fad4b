"""Trusted code that travels into the sandbox as source text, with the model's program.

Program systems whose programs run over an interpreter or an API of ours
(``visprog``, ``vipergpt``) send that code's source into the sandbox, where it
is loaded as a module of its own, and the model's program beside it as a string
literal: the evaluating process never runs either.
"""

from __future__ import annotations

import functools
from pathlib import Path

PRELUDE_MARKER = "# ---- PRELUDE_END"


@functools.lru_cache(maxsize=None)
def module_source(path: str) -> str:
    """A whole module's text: a module that runs in the sandbox entire."""
    return Path(path).read_text(encoding="utf-8")


def prelude_source(path: str) -> str:
    """A module's text down to its PRELUDE_END marker: the part that runs in the sandbox."""
    text = module_source(path)
    return text[: text.index(PRELUDE_MARKER)]


def sandbox_code(title: str, prelude: str, prelude_file: str, module: str, entry: str, program: str) -> str:
    """A sandbox program that loads ``prelude`` as a module of its own (so its
    ``from __future__`` line and globals behave as in a file) and hands the model's
    ``program`` text to its ``entry`` function with the image and the tools.

    Both texts travel as string literals: the evaluating process never runs either.
    """
    return (
        f"# {title}\n"
        "import linecache as _linecache\n"
        f"_prelude = {prelude!r}\n"
        "# Registered so that tracebacks through the prelude show its lines.\n"
        f"_linecache.cache[{prelude_file!r}] = (len(_prelude), None, _prelude.splitlines(True), {prelude_file!r})\n"
        f"_module = {{'__name__': {module!r}}}\n"
        f"exec(compile(_prelude, {prelude_file!r}, 'exec'), _module)\n"
        f"_program = {program!r}\n"
        "_tools = {'gd_detect': gd_detect, 'depth': depth, 'vqa': vqa}\n"
        f"final_answer = _module[{entry!r}](_program, image, _tools, ToolError)\n"
    )
