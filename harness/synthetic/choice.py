"""The balanced choice of questions for a scene: one per family, each the
candidate that best balances its family's answers so far and passes validation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from harness.synthetic.questions import BUILDERS, FAMILIES, Question, SceneContext

MAX_TRIES = 6  # candidates validated per family and scene before the family is skipped


@dataclass
class FamilyStats:
    """Per family: questions kept, and candidates whose reference program failed validation."""

    kept: int = 0
    validated: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)  # first few failures, for the build report


def choose_questions(ctx: SceneContext, rng: np.random.Generator, per_scene: int,
                     tallies: dict[str, Counter], validate: Callable[[Question], tuple[bool, str]],
                     stats: dict[str, FamilyStats]) -> list[Question]:
    """Up to ``per_scene`` questions from different families, each the candidate
    that best balances its family's answers so far and passes validation.

    Families with the fewest questions so far go first (ties: scene i starts
    at family i), so families that often have nothing unambiguous to ask in a
    scene (sizes, 3D distances) still get a similar share.
    """
    start = ctx.scene.index % len(FAMILIES)
    rotation = FAMILIES[start:] + FAMILIES[:start]
    order = sorted(rotation, key=lambda f: (stats[f].kept if f in stats else 0, rotation.index(f)))
    chosen: list[Question] = []
    for family in order:
        if len(chosen) >= per_scene:
            break
        candidates = BUILDERS[family](ctx, rng)
        if not candidates:
            continue
        tally = tallies.setdefault(family, Counter())
        ties = rng.random(len(candidates))
        ranked = sorted(range(len(candidates)),
                        key=lambda i: (tuple(tally[k] for k in candidates[i].keys), ties[i]))
        record = stats.setdefault(family, FamilyStats())
        for i in ranked[:MAX_TRIES]:
            question = candidates[i].make()
            record.validated += 1
            ok, detail = validate(question)
            if ok:
                record.kept += 1
                tally.update(candidates[i].keys)
                chosen.append(question)
                break
            record.dropped += 1
            if len(record.examples) < 5:
                record.examples.append(f"scene {ctx.scene.index}: {question.question} -> {detail}")
    return chosen

