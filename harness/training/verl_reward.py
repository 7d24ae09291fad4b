"""The reward as verl's custom reward function (verl 0.9: ``reward.custom_reward_function``).

verl calls ``compute_score`` once per rollout, many at a time, with keyword
arguments ``data_source``, ``solution_str``, ``ground_truth`` and ``extra_info``
(plus the ``reward_kwargs`` of the config). We read the question from
``extra_info["question"]`` (written by ``harness.training.data``); there is no
ground truth. The returned dict's ``score`` is the reward; the other keys
(each part, failed judgements) are logged by verl as ``reward_extra_info``.

Configure with ``reward.custom_reward_function.reward_kwargs.config=<reward YAML>``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from harness.training.reward import RewardConfig, RewardModel

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def reward_model(config_path: str | None) -> RewardModel:
    """One reward model per worker process and configuration (a sandbox, a verifier pool, a cache)."""
    config = RewardConfig.from_yaml(config_path) if config_path else RewardConfig()
    log.warning("VALOR reward in use: weights %s, verifier %s (%s)", config.weights,
                config.verifier.get("model"), config.verifier.get("backend"))
    return RewardModel(config)


async def compute_score(data_source: str, solution_str: str, ground_truth: Any = None,
                        extra_info: dict | None = None, config: str | None = None, **_: Any) -> dict[str, float]:
    question = (extra_info or {}).get("question")
    if not question:
        raise ValueError("the VALOR reward needs the question in extra_info['question'] "
                         "(write training data with `python -m harness training-data`)")
    result = (await reward_model(config).ascore_many([question], [solution_str]))[0]
    return result.log_fields()
