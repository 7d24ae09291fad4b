"""The LLM verifier: four binary judgements of a plan and its program, without labels.

Each judgement is one chat request. Everything that does not depend on the
rollout (the role, the tool API, the output format, the part's rubric) is in
the system message, first, so a serving engine with prefix caching reuses it
across every request of a part; the query, plan and program follow in the user
message. The verifier answers with JSON ``{"reason": ..., "score": 0 or 1}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from harness.scoring.judge import parse_verdict
from harness.tools.api import describe_api

VERIFIED_PARTS = ("logic", "attribute", "spatial", "adherence")

_COMMON = """You review the work of a model that answers questions about photographs without seeing them. For each question it writes a plan and then a Python program that calls vision tools; the program's result is its answer. You do not see the image either, and you do not need to: you judge whether the reasoning is sound.

The tools the program may call:

```python
{api}
```

You judge exactly one criterion, described below. Be strict: when in doubt, give 0. Reply with a JSON object and nothing else: {"reason": "<one or two sentences>", "score": 1} if the criterion is met, {"reason": "<one or two sentences>", "score": 0} if it is not.

Criterion: """

RUBRICS = {
    "logic": (
        "LOGIC. You see the question and the plan. Score 1 only if the plan, carried out, answers "
        "exactly what the question asks: its steps follow from one another, it names every object it "
        "must find and every measurement it must take, it says what to do when the detector finds "
        "nothing, and it uses the question-answering tool only for attributes the detector cannot "
        "tell or as that fallback. Score 0 for plans that answer a different question, skip a needed "
        "step, guess instead of measuring, or declare the question unanswerable."
    ),
    "attribute": (
        "ATTRIBUTES. You see the question and the plan. Score 1 only if every quantity the question "
        "depends on (a size, a distance, a count, a colour, a state) is obtained from the tools, and "
        "the right one: real 3D sizes come from a box's extent in pixels times its depth (scaled by a "
        "reference object when the question gives one), never from pixel sizes alone or from what "
        "such objects usually measure; height, width and depth are not confused; attributes such as "
        "colour are asked of the right object. Score 0 otherwise."
    ),
    "spatial": (
        "SPATIAL RELATIONS. You see the question and the plan. Score 1 only if every spatial relation "
        "in the question is handled explicitly and correctly: left, right, above and below from the "
        "positions of the boxes in the image; in front, behind, closer and farther from depth; "
        "superlatives (closest, largest, leftmost) by comparing all the candidates; the objects being "
        "related are the ones the question names. A plan for a question without spatial relations "
        "scores 1 unless it invents one. Score 0 if a relation is ignored, assumed, or measured the "
        "wrong way."
    ),
    "adherence": (
        "ADHERENCE. You see the plan and the program. Score 1 only if the program carries out the plan "
        "step by step, calls the tools as documented above, computes its answer from the tools' outputs "
        "and stores it in final_answer. Score 0 if it departs from the plan, skips a step, hard-codes "
        "an answer or a measurement, or gives up (for example by answering that it cannot tell)."
    ),
}

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def system_message(part: str) -> str:
    # Plain substitution, not str.format: the text holds braces of its own.
    return _COMMON.replace("{api}", describe_api()) + RUBRICS[part]


def user_message(part: str, query: str, plan: str, code: str) -> str:
    if part == "adherence":
        return f"Plan:\n{plan.strip()}\n\nProgram:\n```python\n{code.strip()}\n```"
    return f"Question: {query.strip()}\n\nPlan:\n{plan.strip()}"


def verifier_request(part: str, query: str, plan: str, code: str) -> list[dict]:
    if part not in RUBRICS:
        raise ValueError(f"unknown verifier part {part!r}; parts: {', '.join(VERIFIED_PARTS)}")
    return [{"role": "system", "content": system_message(part)},
            {"role": "user", "content": user_message(part, query, plan, code)}]


@dataclass
class Judgement:
    score: float | None  # None: the verifier failed or its reply could not be read
    reason: str | None = None
    error: str | None = None
    unreadable: bool = False  # the reply held no verdict, and the protocol scores that 0 (paper)


def read_judgement(reply: str) -> Judgement:
    """A verdict from the verifier's reply: JSON (also inside a code fence), or a bare 0/1."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    reason = None
    if text.startswith("{"):
        try:
            reason = json.loads(text).get("reason")
        except (json.JSONDecodeError, AttributeError):
            pass
    score = parse_verdict(text)
    if score is None:
        return Judgement(None, error=f"unreadable verdict: {reply[:200]!r}")
    return Judgement(score, reason=str(reason) if reason is not None else None)
