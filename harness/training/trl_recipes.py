"""GRPO and SFT with TRL on one machine: the library side of ``recipes/reasoning_grpo_trl``
and ``recipes/reasoning_sft``.

A recipe YAML maps onto :class:`GRPORecipe` or :class:`SFTRecipe`: the model,
the data, the reward configuration, and the trainer's own settings passed as
they are to ``GRPOConfig`` / ``SFTConfig`` (so every TRL option is available
and documented by TRL). What this module adds:

- the protocol (``paper`` or ``harness``, :mod:`harness.training.protocol`): the
  reward's rules, and whether Qwen3 thinks (the original trained with thinking
  on, our protocol turns it off); the training data must have been written with
  the same protocol (its ``manifest.json`` says);
- the reward: :class:`~harness.training.trl_rewards.TRLRewards` over a
  :class:`~harness.training.reward.RewardModel` built from the reward YAML; its
  six parts are logged by TRL as ``rewards/<part>/mean``, and per step, summed
  over the training processes, the judgements asked, failed and unreadable and the
  completions excluded for a failed judgement (``verifier/*``). They live in the
  trainer's log history, which checkpoints carry, so they survive a resume, and
  ``reward_stats.json`` is their total;
- the paper's batch semantics: one optimizer update per generation batch of 64
  prompts x 5 completions (``updates_per_generation: 1``), whatever the number
  of processes, by deriving ``gradient_accumulation_steps``;
- verl's ``filter_overlong_prompts``: prompts longer than ``max_prompt_tokens``
  are dropped before training, since TRL 1.x has no prompt-length limit.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.protocol import ProtocolError, check_protocol
from harness.training.recipe_config import RecipeConfigError, load_recipe
from harness.training.reward import RewardConfig, RewardModel
from harness.training.trl_rewards import TRLRewards

log = logging.getLogger(__name__)

REWARD_STATS_FILE = "reward_stats.json"
TRAINING_LOG_FILE = "training_log.json"  # every logged step: loss, reward, each reward part, KL, ...


# ----------------------------------------------------------------------------- data


def load_rows(path: str | Path) -> Any:
    """Training rows as a ``datasets.Dataset``: a JSONL file (TRL format, as
    ``harness training-data`` and the SFT sampler write it), a parquet file, or a
    folder saved with ``Dataset.save_to_disk``."""
    import datasets

    path = Path(path)
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return datasets.Dataset(pq.read_table(path))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"training data {path} holds no rows")
    return datasets.Dataset.from_list(rows)


def check_data_protocol(train_data: str | Path, protocol: str) -> None:
    """Refuse training data written for the other protocol (its prompts differ), as its
    ``manifest.json`` records; data without a manifest is taken as it is."""
    path = Path(train_data)
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    if not manifest.is_file():
        return
    written = (json.loads(manifest.read_text(encoding="utf-8")).get("options") or {}).get("protocol")
    if written is not None and written != protocol:
        raise RecipeConfigError(f"{train_data} was written for protocol {written!r} ({manifest}), the recipe "
                                f"trains with {protocol!r}; write it again with `harness training-data "
                                f"--protocol {protocol}` or change the recipe's protocol")


def require_columns(dataset: Any, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source}: the training data lacks the columns {missing} (it has {dataset.column_names}); "
                         f"write it with `python -m harness training-data`")


def prompt_tokens(tokenizer: Any, messages: list[dict[str, Any]], chat_template_kwargs: dict[str, Any]) -> int:
    """Tokens of a conversational prompt as the trainer renders it (with the generation prompt)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **chat_template_kwargs)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def drop_long_prompts(dataset: Any, tokenizer: Any, max_tokens: int,
                      chat_template_kwargs: dict[str, Any] | None = None) -> Any:
    """The rows whose prompt fits in ``max_tokens``; the others are dropped and counted
    (verl's ``filter_overlong_prompts``; the paper's limit is 6000)."""
    kwargs = chat_template_kwargs or {}
    keep = [i for i, prompt in enumerate(dataset["prompt"]) if prompt_tokens(tokenizer, prompt, kwargs) <= max_tokens]
    dropped = len(dataset) - len(keep)
    if dropped:
        log.warning("dropped %d of %d prompts longer than %d tokens", dropped, len(dataset), max_tokens)
    if not keep:
        raise ValueError(f"every prompt is longer than max_prompt_tokens={max_tokens}")
    return dataset.select(keep) if dropped else dataset


# ----------------------------------------------------------------------------- GRPO


@dataclass
class GRPORecipe:
    """``recipes/reasoning_grpo_trl/config.yaml``: see the recipe's README for the paper's values."""

    model: str  # a hub id or a local folder; a path, not a model object: TRL rebuilds the reference model from it
    train_data: str  # TRL rows: a conversational ``prompt`` and the ``question`` the reward judges
    output_dir: str
    protocol: str = "paper"  # paper | harness: the reward's rules and thinking (see harness.training.protocol)
    reward_config: str | None = None  # a reward YAML (RewardConfig); None: the protocol's reward with Gemini
    max_prompt_tokens: int | None = 6000  # longer prompts are dropped (verl: filter_overlong_prompts)
    updates_per_generation: int = 1  # optimizer updates per generation batch (the paper: 1)
    peft: dict[str, Any] | None = None  # LoraConfig arguments; None: full fine-tuning, as the paper
    grpo: dict[str, Any] = field(default_factory=dict)  # GRPOConfig arguments, passed as they are

    def __post_init__(self) -> None:
        try:
            check_protocol(self.protocol)
        except ProtocolError as exc:
            raise RecipeConfigError(str(exc)) from None
        for key in ("output_dir", "reward_weights"):
            if key in self.grpo:
                where = "the recipe's output_dir" if key == "output_dir" else "the reward YAML's weights"
                raise RecipeConfigError(f"grpo.{key} is set by {where}; remove it from grpo")
        if self.updates_per_generation < 1:
            raise RecipeConfigError("updates_per_generation must be at least 1")


def load_grpo_recipe(path: str | Path, overrides: Sequence[str] = ()) -> GRPORecipe:
    return load_recipe(GRPORecipe, path, overrides)


def grpo_arguments(recipe: GRPORecipe) -> Any:
    """``GRPOConfig`` from the recipe.

    Why derive ``gradient_accumulation_steps``: in TRL a generation batch of
    ``generation_batch_size`` completions is consumed in ``steps_per_generation``
    micro-batches of ``per_device_train_batch_size`` per process, and every
    ``gradient_accumulation_steps`` micro-batches make one optimizer update.
    The paper (verl, ``ppo_mini_batch_size`` = the 64 prompts of a step) makes
    one update per generation batch; accumulating over all of its micro-batches
    does the same here, on any number of processes (TRL knows the number when
    the config is built, so the config is built once to read it).
    """
    from trl import GRPOConfig

    kwargs = dict(recipe.grpo)
    # The original trained Qwen3 with thinking on (nothing passed to the template); ours turns it off.
    kwargs.setdefault("chat_template_kwargs", THINKING[recipe.protocol])
    if "gradient_accumulation_steps" not in kwargs and kwargs.get("generation_batch_size"):
        micro_steps = GRPOConfig(output_dir=recipe.output_dir, **kwargs).steps_per_generation
        if micro_steps % recipe.updates_per_generation:
            raise RecipeConfigError(f"{micro_steps} micro-batches per generation batch cannot make "
                                    f"{recipe.updates_per_generation} equal updates")
        kwargs["gradient_accumulation_steps"] = micro_steps // recipe.updates_per_generation
    return GRPOConfig(output_dir=recipe.output_dir, **kwargs)


THINKING = {"paper": {}, "harness": {"enable_thinking": False}}
# Counts logged per step (summed over the processes), as TRL metrics.
COUNT_METRICS = {"verifier/judgements": "judgements", "verifier/failed_judgements": "failed",
                 "verifier/unreadable_verdicts": "unreadable", "verifier/excluded_completions": "excluded",
                 "reward/completions": "completions"}


def processes() -> int:
    """Training processes (accelerate and torchrun set WORLD_SIZE), each scoring its own rollouts."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def build_reward_model(reward_config: str | None, protocol: str | None = None) -> RewardModel:
    """The reward of a reward YAML (its protocol must agree with ``protocol`` when given), or the
    protocol's reward with Gemini (default: paper)."""
    config = (RewardConfig.from_yaml(reward_config, protocol) if reward_config
              else RewardConfig(protocol=protocol or "paper"))
    log.info("reward: protocol %s, weights %s, verifier %s (%s)", config.protocol, config.weights,
             config.verifier.get("model"), config.verifier.get("backend"))
    return RewardModel(config, processes=processes())


def _batch_counts(model: RewardModel) -> dict[str, float]:
    stats = model.stats
    return {"judgements": stats["judgements"], "completions": stats["completions"], "excluded": stats["excluded"],
            "failed": sum(n for key, n in stats.items() if key.startswith("failed_")),
            "unreadable": sum(n for key, n in stats.items() if key.startswith("unreadable_"))}


def _sum_over_processes(values: list[float]) -> list[float]:
    """``values`` summed over the training processes (every process scores its own share of a
    batch, and all of them call the reward functions together)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def reward_functions(model: RewardModel) -> tuple[list[Callable], list[float]]:
    """TRL reward functions (one per part, with the reward YAML's weights), the first of
    which also logs the batch's counts (``COUNT_METRICS``) through TRL's ``log_metric``.

    The six functions share one computation per batch (see TRLRewards); by the
    time the first returns, the batch's judgements are counted in
    ``model.stats``, so the counts' change since the previous batch is this
    batch's.
    """
    functions, weights = TRLRewards(model).functions()
    first = functions[0]
    seen = dict.fromkeys(COUNT_METRICS.values(), 0.0)

    async def with_counts(*args: Any, log_metric: Callable[[str, float], None] | None = None,
                          **kwargs: Any) -> list[float | None]:
        rewards = await first(*args, **kwargs)
        now = _batch_counts(model)
        batch = _sum_over_processes([float(now[key] - seen[key]) for key in COUNT_METRICS.values()])
        seen.update(now)
        if log_metric is not None:
            for metric, value in zip(COUNT_METRICS, batch):
                log_metric(metric, value)
        return rewards

    with_counts.__name__ = with_counts.__qualname__ = first.__name__
    return [with_counts, *functions[1:]], weights


def reward_totals(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The counts of ``COUNT_METRICS`` over the whole run, from the trainer's log history (a
    resumed run's history holds the steps before its checkpoint, never those redone). Each
    entry holds its logging interval's mean per step."""
    totals = dict.fromkeys(COUNT_METRICS.values(), 0.0)
    previous = 0
    for entry in log_history:
        if not any(metric in entry for metric in COUNT_METRICS) or "step" not in entry:
            continue
        steps = max(1, int(entry["step"]) - previous)
        previous = int(entry["step"])
        for metric, key in COUNT_METRICS.items():
            totals[key] += float(entry.get(metric, 0.0)) * steps
    return totals


def peft_config(options: dict[str, Any] | None) -> Any:
    if not options:
        return None
    from peft import LoraConfig

    return LoraConfig(**{"task_type": "CAUSAL_LM", **options})


def build_grpo_trainer(recipe: GRPORecipe, reward_model: RewardModel | None = None) -> tuple[Any, RewardModel]:
    """A ready ``GRPOTrainer`` and the reward model it scores with (close it after training)."""
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    args = grpo_arguments(recipe)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    check_data_protocol(recipe.train_data, recipe.protocol)
    dataset = load_rows(recipe.train_data)
    require_columns(dataset, ("prompt", "question"), recipe.train_data)
    if recipe.max_prompt_tokens:
        dataset = drop_long_prompts(dataset, tokenizer, recipe.max_prompt_tokens, args.chat_template_kwargs)
    reward_model = reward_model or build_reward_model(recipe.reward_config, recipe.protocol)
    if reward_model.config.protocol != recipe.protocol:
        raise RecipeConfigError(f"the reward's protocol is {reward_model.config.protocol!r}, the recipe's "
                                f"{recipe.protocol!r}")
    functions, weights = reward_functions(reward_model)
    args.reward_weights = weights
    trainer = GRPOTrainer(model=recipe.model, reward_funcs=functions, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config(recipe.peft))
    return trainer, reward_model


def run_grpo(recipe: GRPORecipe, reward_model: RewardModel | None = None) -> dict[str, Any]:
    """Train, save the final model (and tokenizer) in ``output_dir``, and write the
    reward's counters beside it. Returns the trainer's log history and the counters."""
    trainer, reward_model = build_grpo_trainer(recipe, reward_model)
    try:
        trainer.train(resume_from_checkpoint=_last_checkpoint(recipe.output_dir))
        trainer.save_model(recipe.output_dir)
        stats = reward_totals(trainer.state.log_history)
        if trainer.is_world_process_zero():
            _write_json(Path(recipe.output_dir, TRAINING_LOG_FILE), trainer.state.log_history)
            _write_json(Path(recipe.output_dir, REWARD_STATS_FILE), stats)
        return {"log_history": trainer.state.log_history, "reward_stats": stats}
    finally:
        reward_model.close()


def _last_checkpoint(output_dir: str) -> str | None:
    """A killed run continues from its newest ``checkpoint-N`` folder."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


# ----------------------------------------------------------------------------- SFT


@dataclass
class SFTRecipe:
    """``recipes/reasoning_sft/train.yaml``: SFT on the verifier-filtered programs."""

    model: str
    train_data: str  # the sampler's ``sft.jsonl``: conversational ``prompt`` and ``completion``
    output_dir: str
    peft: dict[str, Any] | None = None
    sft: dict[str, Any] = field(default_factory=dict)  # SFTConfig arguments, passed as they are

    def __post_init__(self) -> None:
        if "output_dir" in self.sft:
            raise RecipeConfigError("sft.output_dir is set by the recipe's output_dir; remove it from sft")


def load_sft_recipe(path: str | Path, overrides: Sequence[str] = ()) -> SFTRecipe:
    return load_recipe(SFTRecipe, path, overrides)


# Columns SFTTrainer reads from a prompt-completion row; the sampler's bookkeeping
# columns (question, reward, parts) are dropped before training.
SFT_COLUMNS = ("prompt", "completion", "chat_template_kwargs")


def build_sft_trainer(recipe: SFTRecipe) -> Any:
    """A ready ``SFTTrainer``: completion-only loss on the assistant turn (TRL's default
    for prompt-completion rows), each row's ``chat_template_kwargs`` (thinking off)
    applied when it is tokenized."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    kwargs = {"completion_only_loss": True, **recipe.sft}
    args = SFTConfig(output_dir=recipe.output_dir, **kwargs)
    dataset = load_rows(recipe.train_data)
    require_columns(dataset, ("prompt", "completion"), recipe.train_data)
    dataset = dataset.select_columns([c for c in SFT_COLUMNS if c in dataset.column_names])
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    return SFTTrainer(model=recipe.model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config(recipe.peft))


def run_sft(recipe: SFTRecipe) -> dict[str, Any]:
    trainer = build_sft_trainer(recipe)
    trainer.train(resume_from_checkpoint=_last_checkpoint(recipe.output_dir))
    trainer.save_model(recipe.output_dir)
    if trainer.is_world_process_zero():
        _write_json(Path(recipe.output_dir, TRAINING_LOG_FILE), trainer.state.log_history)
    return {"log_history": trainer.state.log_history}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
