"""The gold answer as text: the target an exported task compares against, and what an
imported row's target must equal."""

from __future__ import annotations

from typing import Any


def answer_text(gold: Any) -> str:
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold)) if abs(gold) < 1e15 else repr(gold)
    return str(gold)
