"""Running reference programs through the oracle tools, with the sandbox's semantics."""

from __future__ import annotations

from typing import Any

from harness.sandbox.runtime import ImageHandle, execute, program_namespace
from harness.scoring.strict import score_strict
from harness.synthetic.oracle import OracleTools
from harness.synthetic.oracle_backend import SceneOracleBackend
from harness.synthetic.questions import Question
from harness.tools import ToolContext, in_process_caller


def run_program(program: str, tools: OracleTools) -> dict[str, Any]:
    """The outcome of one program: status, answer (JSON-safe), Python type, detail.

    Our own reference programs only: this runs in-process, not in the sandbox.
    """
    backend = SceneOracleBackend(tools)
    session = backend.session(ToolContext(None, (tools.width, tools.height), key=tools.key))
    namespace = program_namespace(session.names, in_process_caller(session), ImageHandle(tools.width, tools.height))
    return execute(program, namespace)


def reference_score(question: Question, tools: OracleTools) -> tuple[float, dict[str, Any]]:
    """Strict score of the question's reference program run through ``tools``."""
    outcome = run_program(question.program, tools)
    if outcome["status"] != "ok":
        return 0.0, outcome
    result = score_strict(question.answer_type, outcome["answer"], question.answer, question.choices)
    return result.score, outcome


def check(question: Question, tools: OracleTools) -> tuple[bool, str]:
    """Whether the reference program answers exactly (score 1.0) with the given tools."""
    score, outcome = reference_score(question, tools)
    if score == 1.0:
        return True, ""
    if outcome["status"] != "ok":
        return False, f"{outcome['status']}: {(outcome.get('detail') or '').strip().splitlines()[-1:]}"
    return False, f"answered {outcome['answer']!r}, gold {question.answer!r} (score {score})"
