"""The reward as verl's custom reward function (verl 0.9: ``reward.custom_reward_function``).

verl calls ``compute_score`` once per rollout, many at a time, with keyword
arguments ``data_source``, ``solution_str``, ``ground_truth`` and ``extra_info``
(plus the ``reward_kwargs`` of the config). We read the question from
``extra_info["question"]`` (written by ``harness.training.data``); there is no
ground truth. The returned dict's ``score`` is the reward.

``reward_kwargs`` (set by ``recipes/reasoning_grpo_verl/train.sh``):

- ``config``: the reward YAML; ``protocol``: the run's protocol (must agree with it);
- ``processes``: the reward workers (``reward.num_workers``), among which the
  verifier's ``max_concurrency`` is divided, so the YAML's number is the total;
- ``log_dir``, ``run``, ``rollouts_per_step``, ``checkpoint_dir``: every rollout's
  score, parts, verifier failures and exclusion go to ``log_dir/rollouts.jsonl``
  with its training step (:mod:`harness.training.rollout_log`), since verl 0.9
  logs the extra keys only during validation.

verl cannot leave one rollout out of its group's advantage: a rollout whose
judgement failed keeps the score with that part counted 0, and is marked
``excluded`` and counted in the log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from harness.training.reward import RewardConfig, RewardModel
from harness.training.rollout_log import RolloutLog

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def reward_model(config_path: str | None, protocol: str | None = None, processes: int = 1) -> RewardModel:
    """One reward model per worker process and configuration (a sandbox, a verifier pool, a cache)."""
    config = (RewardConfig.from_yaml(config_path, protocol) if config_path
              else RewardConfig(**({"protocol": protocol} if protocol else {})))
    log.warning("VALOR reward in use: protocol %s, weights %s, verifier %s (%s), %d worker(s)", config.protocol,
                config.weights, config.verifier.get("model"), config.verifier.get("backend"), processes)
    return RewardModel(config, processes=processes)


@functools.lru_cache(maxsize=None)
def rollout_log(log_dir: str, run: str, rollouts_per_step: int, checkpoint_dir: str | None) -> RolloutLog:
    return RolloutLog(log_dir, run, rollouts_per_step, checkpoint_dir)


async def compute_score(data_source: str, solution_str: str, ground_truth: Any = None,
                        extra_info: dict | None = None, config: str | None = None, protocol: str | None = None,
                        processes: int = 1, log_dir: str | None = None, run: str | None = None,
                        rollouts_per_step: int | None = None, checkpoint_dir: str | None = None,
                        **_: Any) -> dict[str, float]:
    question = (extra_info or {}).get("question")
    if not question:
        raise ValueError("the VALOR reward needs the question in extra_info['question'] "
                         "(write training data with `python -m harness training-data`)")
    result = (await reward_model(config, protocol, int(processes)).ascore_many([question], [solution_str]))[0]
    fields = result.log_fields()
    if log_dir:
        if not run or not rollouts_per_step:
            raise ValueError("reward_kwargs.log_dir needs run and rollouts_per_step as well (see train.sh)")
        entry = {**fields, **{part: None for part in result.failed}, "source": data_source,
                 "index": (extra_info or {}).get("index"), "failed": result.failed}
        rollout_log(log_dir, str(run), int(rollouts_per_step), checkpoint_dir).append(entry)
    return fields
