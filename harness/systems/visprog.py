"""A VisProg-style baseline: the model writes a step program, one step per line.

    BOXES=DETECT(phrase='red cube')
    N=COUNT(boxes=BOXES)
    ANSWER=EVAL(expr='{N} > 2')
    FINAL=RESULT(value=ANSWER)

The interpreter (:mod:`harness.systems.visprog_interpreter`) runs inside the
sandbox: its whole source travels there with the model's step program as a
string literal (:mod:`harness.systems.prelude`), so the evaluating process
never reads the steps with anything but a pattern.
"""

from __future__ import annotations

import re
from typing import Any

from harness.systems import visprog_interpreter
from harness.systems.llm_program import LLMProgramSystem
from harness.systems.parsing import parse_reply
from harness.systems.prelude import module_source, sandbox_code
from harness.systems.program import Program
from harness.systems.visprog_interpreter import SHAPE_HINT

INTERPRETER_FILE = "<visprog-interpreter>"


def interpreter_source() -> str:
    """The interpreter, exactly as the sandbox runs it."""
    return module_source(visprog_interpreter.__file__)


def sandbox_program(steps: str) -> str:
    """The sandbox program that runs a step program with the interpreter."""
    return sandbox_code("VisProg-style step program, run by our interpreter inside the sandbox.",
                        interpreter_source(), INTERPRETER_FILE, "visprog", "run_program", steps)


# A line shaped like a step; a reply with none is a format error, not a program.
_STEP_LINE = re.compile(r"^\s*[A-Za-z_]\w*\s*=\s*[A-Za-z_]\w*\s*\(", re.M)


class VisProgSystem(LLMProgramSystem):
    """The model writes a step program (``prompts/visprog.md`` by default); the sandbox runs it
    with our interpreter against the same tools as every program system.

    Parameters: those of :class:`LLMProgramSystem`.
    """

    kind = "visprog"
    original_dialect = False  # its own step language over our tool API, under either protocol
    default_prompt = "prompts/visprog.md"

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, {"prompt": self.default_prompt, **params}, seed)

    def program_from_reply(self, reply: str) -> Program | str:
        parsed = parse_reply(reply)
        if not parsed.ok:
            return "; ".join(parsed.notes)
        steps = parsed.code.strip()
        if not _STEP_LINE.search(steps):
            return f"no step program: no line of the form {SHAPE_HINT[len('expected '):]}"
        return Program(sandbox_program(steps), plan=parsed.plan, raw=reply, source=steps)
