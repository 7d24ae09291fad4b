"""The syntax reward: does the program run, both when objects are found and when none are?

The program runs in the sandbox twice against dummy tools that need no image:
once with one plausible box per detector phrase, once with nothing detected
(the path programs most often forget). It earns the reward only if both runs
end with an answer. Malformed tool calls fail as they would with real tools,
because the dummy backend receives calls checked by the same tool API.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.sandbox.executor import Sandbox, SandboxPolicy
from harness.tools import ToolContext
from harness.tools.dummy import DummyBackend

DUMMY_IMAGE_SIZE = (640, 480)


@dataclass
class SyntaxResult:
    ok: bool
    detail: str | None = None  # why it failed: which run, which status, the last line of the error


def check_syntax(sandbox: Sandbox, code: str, policy: SandboxPolicy) -> SyntaxResult:
    """Run the program with objects found and with none; both runs must give an answer."""
    context = ToolContext(None, DUMMY_IMAGE_SIZE, key="syntax")
    for found in (True, False):
        result = sandbox.run(code, DummyBackend(found).session(context), DUMMY_IMAGE_SIZE, policy)
        if result.status != "ok":
            last = (result.detail or "").strip().splitlines()[-1:] or [""]
            path = "objects found" if found else "nothing detected"
            return SyntaxResult(False, f"{path}: {result.status}: {last[0]}")
    return SyntaxResult(True)
