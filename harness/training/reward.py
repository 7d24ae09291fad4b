"""The label-free reward: six binary parts from a parser, the sandbox and an LLM verifier.

    reward = format * (w_syntax * syntax + w_logic * logic + w_attribute * attribute
                       + w_spatial * spatial + w_adherence * adherence)

- format: the reply has a non-empty ``<plan>...</plan>`` and a non-empty
  ``<answer>...</answer>`` (a hard gate: without it nothing else is computed and
  the reward is 0; when a tag repeats, the last non-empty block is judged);
- syntax: the program runs in the sandbox, with objects found and with none
  (:mod:`harness.training.syntax`);
- logic, attribute, spatial (question and plan) and adherence (plan and
  program): the verifier's judgements (:mod:`harness.training.verifier`).

Rewards are computed for a batch at once: syntax checks run on a few sandboxed
workers while every verifier request of the batch goes out together (identical
requests, frequent within a GRPO group, are sent once and cached). A failed or
unreadable judgement is never a silent zero: it scores 0 in the reward, and is
counted, logged, and reported with the result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import yaml

from harness.backends import BackendError, ChatBackend, make_chat_backend
from harness.sandbox.executor import Sandbox, SandboxPolicy
from harness.systems.parsing import parse_reply
from harness.training.syntax import check_syntax
from harness.training.verifier import VERIFIED_PARTS, Judgement, read_judgement, verifier_request

log = logging.getLogger(__name__)

PARTS = ("format", "syntax", *VERIFIED_PARTS)


@dataclass(frozen=True)
class RewardWeights:
    """The paper's weights: syntax lowered, logic raised."""

    syntax: float = 0.1
    logic: float = 0.3
    attribute: float = 0.2
    spatial: float = 0.2
    adherence: float = 0.2


@dataclass
class RewardConfig:
    weights: RewardWeights = field(default_factory=RewardWeights)
    # The verifier: a chat backend kind and its options (the paper: Gemini-2.5-Flash).
    verifier: dict[str, Any] = field(default_factory=lambda: {
        "backend": "genai", "model": "gemini-2.5-flash", "thinking_budget": 0, "max_concurrency": 256})
    verifier_sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    cache: bool | str = True  # verdicts kept on disk (SQLite), keyed by verifier and exact inputs
    syntax_workers: int = 4  # sandboxed programs checked at once
    syntax_timeout_s: float = 10.0  # per run of a program (it runs twice)

    @property
    def syntax_policy(self) -> SandboxPolicy:
        return SandboxPolicy(wall_seconds=self.syntax_timeout_s, cpu_seconds=max(1, math.ceil(self.syntax_timeout_s)),
                             memory_mb=1024)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RewardConfig":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown reward settings {sorted(unknown)}")
        weights = RewardWeights(**(data.pop("weights", None) or {}))
        return cls(weights=weights, **data)


@dataclass
class RewardResult:
    score: float
    parts: dict[str, float]  # every part, 0 or 1 (a failed judgement counts 0 here...)
    failed: list[str] = field(default_factory=list)  # ...and is named here
    notes: dict[str, str] = field(default_factory=dict)  # why a part is 0: parser notes, sandbox status, verifier reason

    def log_fields(self) -> dict[str, float]:
        """Flat numbers for training logs: the score, each part, and failed judgements."""
        return {"score": self.score, **self.parts, "verifier_failures": float(len(self.failed))}


class RewardModel:
    """Computes rewards; one instance per process serves every batch (it holds the
    sandbox and the verifier's connection pool and cache)."""

    def __init__(self, config: RewardConfig | None = None, verifier: ChatBackend | None = None,
                 sandbox: Sandbox | None = None) -> None:
        self.config = config or RewardConfig()
        if verifier is None:
            options = dict(self.config.verifier)
            verifier = make_chat_backend(options.pop("backend"), cache=self.config.cache, **options)
        self.verifier = verifier
        self.sandbox = sandbox or Sandbox()
        self._syntax_pool = ThreadPoolExecutor(self.config.syntax_workers, thread_name_prefix="syntax-check")
        self._lock = threading.Lock()
        self.stats: Counter = Counter()  # judgements asked, failed, per part; programs checked

    def score_many(self, queries: Sequence[str], completions: Sequence[str]) -> list[RewardResult]:
        """The synchronous entry point (no event loop may be running in this thread)."""
        return asyncio.run(self.ascore_many(queries, completions))

    async def ascore_many(self, queries: Sequence[str], completions: Sequence[str]) -> list[RewardResult]:
        if len(queries) != len(completions):
            raise ValueError(f"{len(queries)} queries for {len(completions)} completions")
        parsed = [parse_reply(text) for text in completions]
        gated = [i for i, p in enumerate(parsed) if p.plan and p.code and _well_formed(p.notes)]
        loop = asyncio.get_running_loop()
        policy = self.config.syntax_policy
        syntax = [loop.run_in_executor(self._syntax_pool, check_syntax, self.sandbox, parsed[i].code, policy)
                  for i in gated]
        requests = [(i, part) for i in gated for part in VERIFIED_PARTS]
        messages = [verifier_request(part, queries[i], parsed[i].plan, parsed[i].code) for i, part in requests]
        replies = await self.verifier.acomplete_many(messages, **self.config.verifier_sampling) if messages else []
        syntax_results = await asyncio.gather(*syntax)

        judgements: dict[tuple[int, str], Judgement] = {}
        for key, reply in zip(requests, replies):
            judgements[key] = (Judgement(None, error=str(reply)) if isinstance(reply, BackendError)
                               else read_judgement(reply))
        results = [RewardResult(0.0, dict.fromkeys(PARTS, 0.0), notes={"format": "; ".join(p.notes) or "not gated"})
                   for p in parsed]
        for i, checked in zip(gated, syntax_results):
            results[i] = self._combine(i, checked, judgements)
        self._count(results, len(gated))
        return results

    def _combine(self, index: int, syntax: Any, judgements: dict[tuple[int, str], Judgement]) -> RewardResult:
        parts = {"format": 1.0, "syntax": 1.0 if syntax.ok else 0.0}
        notes, failed = {}, []
        if not syntax.ok:
            notes["syntax"] = syntax.detail
        for part in VERIFIED_PARTS:
            judgement = judgements[(index, part)]
            if judgement.score is None:
                failed.append(part)
                notes[part] = f"verifier failed: {judgement.error}"
                parts[part] = 0.0
            else:
                parts[part] = judgement.score
                if judgement.reason:
                    notes[part] = judgement.reason
        weights = asdict(self.config.weights)
        score = parts["format"] * sum(weights[part] * parts[part] for part in weights)
        return RewardResult(score, parts, failed, notes)

    def _count(self, results: list[RewardResult], gated: int) -> None:
        failures = Counter(part for r in results for part in r.failed)
        with self._lock:
            self.stats["completions"] += len(results)
            self.stats["gated"] += gated
            self.stats["judgements"] += gated * len(VERIFIED_PARTS)
            for part, count in failures.items():
                self.stats[f"failed_{part}"] += count
        if failures:
            log.warning("verifier failed on %d of %d judgements in this batch (%s); they score 0",
                        sum(failures.values()), gated * len(VERIFIED_PARTS),
                        ", ".join(f"{p}: {n}" for p, n in sorted(failures.items())))

    def close(self) -> None:
        self._syntax_pool.shutdown(wait=True)
        self.sandbox.close()
        self.verifier.close()


def _well_formed(notes: list[str]) -> bool:
    """The format gate wants both pairs of tags, closed: an unclosed tag or a code
    fence standing in for <answer> does not pass, though evaluation reads them."""
    return not any("not closed" in note or "no <answer> tags" in note for note in notes)
