"""The SFT baseline's data (the paper's Tables 6 and 9): sample, score, keep the good ones.

For every training query the base model writes ``samples_per_query`` replies
(any chat backend: vLLM, transformers, an OpenAI-compatible server); the reward
(:class:`~harness.training.reward.RewardModel`, the same verifier as GRPO)
scores each, and replies scoring at least ``min_reward`` (0.7) become SFT rows
in TRL's conversational prompt-completion format.

Crash safety: every scored reply is appended to ``candidates.jsonl`` (flushed
and synced per batch) before the next batch is sampled. That file is the
record; ``sft.jsonl`` is derived from it, rebuilt at start-up and appended
after each batch, so a killed run resumes where it stopped (a torn last line is
ignored) and a new threshold re-filters without sampling again. Replies are
drawn in rounds: round ``j`` samples every query once with seed ``seed + j``,
so each query's ``k`` replies differ while each one stays reproducible.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.backends import BackendError, ChatBackend, make_chat_backend
from harness.jsonl import JsonlAppender
from harness.training.recipe_config import RecipeConfigError, load_recipe
from harness.training.reward import RewardModel
from harness.training.trl_recipes import build_reward_model, load_rows, require_columns

log = logging.getLogger(__name__)

CANDIDATES_FILE, SFT_FILE, SUMMARY_FILE = "candidates.jsonl", "sft.jsonl", "summary.json"


@dataclass
class SamplingRecipe:
    """``recipes/reasoning_sft/sample.yaml``."""

    train_data: str  # TRL rows (``python -m harness training-data``): ``prompt`` and ``question``
    output_dir: str
    backend: dict[str, Any]  # a chat backend: ``kind`` plus its options (model or checkpoint, endpoint, ...)
    reward_config: str | None = None  # the reward YAML; None: the paper's reward with Gemini
    samples_per_query: int = 8
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0, "top_p": 1.0, "max_tokens": 2000})
    seed: int = 1234
    min_reward: float = 0.7  # the paper's threshold
    dedupe: bool = True  # a query's identical replies are kept once (they would only weigh it up)
    batch_size: int = 64  # queries sampled, scored and written together
    limit: int | None = None  # only the first N queries
    # Written into each SFT row: SFTTrainer renders the row with them (Qwen3: thinking off,
    # as the replies were sampled and as the model is evaluated).
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})

    def __post_init__(self) -> None:
        if "kind" not in (self.backend or {}):
            raise RecipeConfigError("backend.kind is required (openai, transformers, vllm, genai, scripted)")
        if self.samples_per_query < 1 or self.batch_size < 1:
            raise RecipeConfigError("samples_per_query and batch_size must be at least 1")
        if "seed" in self.sampling:
            raise RecipeConfigError("sampling.seed: set the recipe's seed (round j samples with seed + j)")


def load_sampling_recipe(path: str | Path, overrides: Sequence[str] = ()) -> SamplingRecipe:
    return load_recipe(SamplingRecipe, path, overrides)


@dataclass
class SamplingSummary:
    queries: int = 0
    sampled: int = 0  # replies scored (this run and earlier ones)
    failed: int = 0  # model calls that failed in this run (retried by the next run)
    kept: int = 0  # SFT rows
    duplicates: int = 0  # good replies dropped as duplicates
    verifier_failures: int = 0  # failed judgements among the scored replies (each scored 0)
    mean_reward: float = 0.0


def build_sampler_backend(options: dict[str, Any]) -> ChatBackend:
    options = dict(options)
    return make_chat_backend(options.pop("kind"), **options)


def _write_lines(path: Path, records: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class _Filter:
    """Which candidates become SFT rows: reward at least the threshold, each
    query's identical replies once."""

    def __init__(self, recipe: SamplingRecipe, prompts: dict[str, list[dict[str, Any]]]) -> None:
        self.recipe = recipe
        self.prompts = prompts
        self.seen: set[tuple[str, str]] = set()
        self.duplicates = 0

    def rows(self, candidates: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in candidates:
            if record.get("reward") is None or record["reward"] < self.recipe.min_reward:
                continue
            key = (record["query_id"], record["completion"].strip())
            if self.recipe.dedupe and key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            prompt = self.prompts.get(record["query_id"])
            if prompt is None:  # a query no longer in the training data
                continue
            row = {"prompt": prompt, "completion": [{"role": "assistant", "content": record["completion"]}],
                   "question": record["question"], "query_id": record["query_id"], "reward": record["reward"]}
            if self.recipe.chat_template_kwargs:
                row["chat_template_kwargs"] = self.recipe.chat_template_kwargs
            yield row


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def sample_sft_data(recipe: SamplingRecipe, backend: ChatBackend | None = None,
                    reward_model: RewardModel | None = None) -> SamplingSummary:
    """Sample, score and filter (resuming what ``output_dir`` already holds); returns the counts.

    ``backend`` and ``reward_model`` default to the recipe's; ones passed in are
    not closed here.
    """
    dataset = load_rows(recipe.train_data)
    require_columns(dataset, ("prompt", "question"), recipe.train_data)
    if recipe.limit is not None:
        dataset = dataset.select(range(min(recipe.limit, len(dataset))))
    ids = [str(x) for x in (dataset["id"] if "id" in dataset.column_names else range(len(dataset)))]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{recipe.train_data}: the 'id' column repeats; cannot tell queries apart")
    queries = list(zip(ids, dataset["question"], dataset["prompt"]))
    prompts = {query_id: prompt for query_id, _, prompt in queries}

    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidates_path, sft_path = out / CANDIDATES_FILE, out / SFT_FILE
    # Opening the candidates cuts off a torn last line (a killed run), so appending continues cleanly.
    candidates_file = JsonlAppender(candidates_path)
    candidates = list(candidates_file.records)
    done = {(c["query_id"], c["sample"]) for c in candidates}
    keep = _Filter(recipe, prompts)
    kept = list(keep.rows(candidates))
    _write_lines(sft_path, kept)  # derived from the record, whatever a killed run left
    sft_file = JsonlAppender(sft_path)
    summary = SamplingSummary(queries=len(queries), kept=len(kept))
    if done:
        log.info("resuming: %d replies already scored in %s", len(done), candidates_path)

    own_backend, own_reward = backend is None, reward_model is None
    try:
        backend = backend or build_sampler_backend(recipe.backend)
        reward_model = reward_model or build_reward_model(recipe.reward_config)
        for round_index in range(recipe.samples_per_query):
            todo = [q for q in queries if (q[0], round_index) not in done]
            for batch in _batches(todo, recipe.batch_size):
                new = _sample_batch(recipe, backend, reward_model, batch, round_index, summary)
                for record in new:
                    candidates_file.append(record)
                for row in keep.rows(new):
                    sft_file.append(row)
                    summary.kept += 1
                candidates.extend(new)
            log.info("round %d of %d done: %d replies scored so far", round_index + 1, recipe.samples_per_query,
                     len(candidates))
    finally:
        candidates_file.close()
        sft_file.close()
        if own_backend and backend is not None:
            backend.close()
        if own_reward and reward_model is not None:
            reward_model.close()

    rewards = [c["reward"] for c in candidates]
    summary.sampled = len(candidates)
    summary.duplicates = keep.duplicates
    summary.verifier_failures = sum(len(c.get("failed") or []) for c in candidates)
    summary.mean_reward = sum(rewards) / len(rewards) if rewards else 0.0
    (out / SUMMARY_FILE).write_text(json.dumps({**asdict(summary), "recipe": asdict(recipe)}, indent=2) + "\n",
                                    encoding="utf-8")
    return summary


def _sample_batch(recipe: SamplingRecipe, backend: ChatBackend, reward_model: RewardModel,
                  batch: Sequence[tuple[str, str, list[dict[str, Any]]]], round_index: int,
                  summary: SamplingSummary) -> list[dict[str, Any]]:
    """One round's replies for a batch of queries, scored; failed model calls are
    logged and left out (so the next run asks again)."""
    replies = backend.complete_many([prompt for _, _, prompt in batch], **recipe.sampling,
                                    seed=recipe.seed + round_index)
    answered = [(query, reply) for query, reply in zip(batch, replies) if not isinstance(reply, BackendError)]
    for (query_id, _, _), reply in zip(batch, replies):
        if isinstance(reply, BackendError):
            summary.failed += 1
            log.warning("query %s, sample %d: the model call failed: %s", query_id, round_index, reply)
    if not answered:
        return []
    results = reward_model.score_many([q[1] for q, _ in answered], [reply for _, reply in answered])
    return [{"query_id": query_id, "sample": round_index, "question": question, "completion": reply,
             "reward": result.score, "parts": result.parts, "failed": result.failed, "notes": result.notes}
            for ((query_id, question, _), reply), result in zip(answered, results)]
