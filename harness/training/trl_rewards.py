"""The reward as TRL reward functions: one per part, so TRL logs each part separately.

Part ``p`` returns ``format * p`` for every completion, and TRL's weighted sum
with the paper's weights (format weighted 0, logged only) is exactly
``format * (w_syntax * syntax + ...)``. TRL awaits async reward functions
together; the six share one computation per batch, so each completion is
parsed, run and judged once.

A completion whose judgement failed gets None from every part: TRL then leaves
it out of its group's mean and standard deviation, gives it no advantage, and
leaves it out of the logged part means (rather than scoring the failed part 0).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict
from typing import Any, Callable

from harness.training.reward import PARTS, RewardModel, RewardResult


def completion_text(completion: Any) -> str:
    """TRL passes plain strings, or message lists for conversational data."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


class TRLRewards:
    def __init__(self, model: RewardModel) -> None:
        self.model = model
        self._pending: dict[str, tuple[asyncio.Future, list[int]]] = {}  # batch key -> (results, readers left)

    async def _results(self, questions: list[str], texts: list[str]) -> list[RewardResult]:
        key = hashlib.sha256(repr((questions, texts)).encode()).hexdigest()
        if key not in self._pending:
            future = asyncio.get_running_loop().create_future()
            self._pending[key] = (future, [len(PARTS)])
            try:
                future.set_result(await self.model.ascore_many(questions, texts))
            except BaseException as exc:
                future.set_exception(exc)
        future, readers = self._pending[key]
        readers[0] -= 1
        if readers[0] == 0:  # every part has read this batch: forget it
            del self._pending[key]
        return await future

    def functions(self) -> tuple[list[Callable], list[float]]:
        """Reward functions and their weights for ``GRPOTrainer(reward_funcs=..., args=GRPOConfig(reward_weights=...))``."""
        weights = asdict(self.model.config.weights)

        def make(part: str) -> Callable:
            async def reward(prompts: list, completions: list, question: list[str] | None = None,
                             **_: Any) -> list[float | None]:
                if question is None:
                    raise ValueError("the training data needs a 'question' column (see harness.training.data)")
                results = await self._results(list(question), [completion_text(c) for c in completions])
                return [None if r.excluded else r.parts["format"] * r.parts[part] for r in results]

            reward.__name__ = reward.__qualname__ = part
            return reward

        return [make(part) for part in PARTS], [weights.get(part, 0.0) for part in PARTS]
