"""The label-free reward: six binary parts from a parser, the sandbox and an LLM verifier.

    reward = format * (w_syntax * syntax + w_logic * logic + w_attribute * attribute
                       + w_spatial * spatial + w_adherence * adherence)

- format: the reply has a plan and a program (a hard gate: without it nothing
  else is computed and the reward is 0);
- syntax: the program runs in the sandbox against stub tools;
- logic, attribute, spatial (question and plan) and adherence (plan and
  program): the verifier's judgements.

How each part is decided (the parser, the verifier's prompts and settings, the
verdict's reading, the syntax rule) is the reward's *protocol*
(:mod:`harness.training.protocol`): ``paper``, the original's rules with its
prompts from the pinned upstream files, or ``harness``, ours.

Rewards are computed for a batch at once: syntax checks run on a few sandboxed
workers while every verifier request of the batch goes out together (identical
deterministic requests are sent once and cached). A failed judgement is never a
silent zero: the result is marked ``excluded`` (the trainer leaves it out of its
group's advantage where it can), its part counts 0 in ``score`` for trainers that
cannot exclude, and it is counted, logged, and reported with the result.
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
from harness.protocol import ProtocolError, check_protocol
from harness.training.protocol import RewardProtocol, make_protocol, protocol_class
from harness.training.verifier import VERIFIED_PARTS, Judgement
from harness.training import protocol as protocol_module
from harness.upstream import PaperTexts

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
    protocol: str = "paper"  # paper | harness: see harness.training.protocol
    weights: RewardWeights = field(default_factory=RewardWeights)
    # The verifier: a chat backend kind and its options (the paper: Gemini-2.5-Flash). With the
    # protocol's backend (or none named), keys not given take the protocol's defaults; another
    # backend's settings are taken as written. ``max_concurrency`` is the total in flight
    # over every process that scores rewards (it is divided among them).
    verifier: dict[str, Any] = field(default_factory=dict)
    verifier_sampling: dict[str, Any] | None = None  # None: the protocol's
    cache: bool | str = True  # verdicts kept on disk (SQLite), keyed by verifier and exact inputs
    syntax_workers: int = 4  # sandboxed programs checked at once
    syntax_timeout_s: float = 10.0  # per run of a program
    data_dir: str | None = None  # where the pinned upstream files are (paper): DATA_DIR/damianomarsili/VALOR/...

    def __post_init__(self) -> None:
        check_protocol(self.protocol, "reward protocol")
        defaults = protocol_class(self.protocol)
        given = dict(self.verifier or {})
        if given.get("backend", defaults.verifier_defaults["backend"]) == defaults.verifier_defaults["backend"]:
            given = {**defaults.verifier_defaults, **given}  # another backend's settings are taken as written
        self.verifier = given
        if self.verifier_sampling is None:
            self.verifier_sampling = dict(defaults.sampling_defaults)
        if not self.verifier.get("backend"):
            raise ValueError("reward verifier: needs a backend")

    @property
    def syntax_policy(self) -> SandboxPolicy:
        return SandboxPolicy(wall_seconds=self.syntax_timeout_s, cpu_seconds=max(1, math.ceil(self.syntax_timeout_s)),
                             memory_mb=1024)

    @classmethod
    def from_yaml(cls, path: str | Path, protocol: str | None = None) -> "RewardConfig":
        """The reward YAML; ``protocol`` (a recipe's) must agree with the file's when both say."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of reward settings")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown reward settings {sorted(unknown)}")
        if protocol is not None:
            check_protocol(protocol, "protocol")
            if data.get("protocol", protocol) != protocol:
                raise ProtocolError(f"{path}: the reward's protocol is {data['protocol']!r} but the recipe's is "
                                    f"{protocol!r}; make them agree")
            data["protocol"] = protocol
        weights = RewardWeights(**(data.pop("weights", None) or {}))
        try:
            return cls(weights=weights, **data)
        except (ProtocolError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


@dataclass
class RewardResult:
    score: float  # the weighted reward, a failed judgement's part counted 0 (for trainers that cannot exclude)
    parts: dict[str, float]  # every part (a failed judgement counts 0 here...)
    failed: list[str] = field(default_factory=list)  # ...and is named here
    notes: dict[str, str] = field(default_factory=dict)  # why a part is 0: parser notes, sandbox status, verifier reason
    unreadable: list[str] = field(default_factory=list)  # verdicts the protocol scored 0 for want of a verdict

    @property
    def excluded(self) -> bool:
        """A judgement failed: the rollout has no reliable reward and should not move its group's baseline."""
        return bool(self.failed)

    def log_fields(self) -> dict[str, float]:
        """Flat numbers for training logs: the score, each part, and failed judgements."""
        return {"score": self.score, **self.parts, "verifier_failures": float(len(self.failed)),
                "excluded": float(self.excluded), "unreadable_verdicts": float(len(self.unreadable))}


class RewardModel:
    """Computes rewards; one instance per process serves every batch (it holds the
    sandbox and the verifier's connection pool and cache). ``processes``: how many
    processes score rewards at once (training processes, reward workers), among
    which the verifier's ``max_concurrency`` is divided."""

    def __init__(self, config: RewardConfig | None = None, verifier: ChatBackend | None = None,
                 sandbox: Sandbox | None = None, texts: PaperTexts | None = None, processes: int = 1) -> None:
        self.config = config or RewardConfig()
        if texts is None and self.config.protocol == "paper":
            texts = protocol_module.paper_texts(self.config.data_dir)
        self.protocol: RewardProtocol = make_protocol(self.config.protocol, texts)
        if verifier is None:
            options = dict(self.config.verifier)
            if options.get("max_concurrency") and processes > 1:
                options["max_concurrency"] = max(1, math.ceil(int(options["max_concurrency"]) / processes))
            verifier = make_chat_backend(options.pop("backend"), cache=self.config.cache, **options)
        self.verifier = verifier
        self.sandbox = sandbox or Sandbox()
        self._syntax_pool = ThreadPoolExecutor(self.config.syntax_workers, thread_name_prefix="syntax-check")
        self._lock = threading.Lock()
        self.stats: Counter = Counter()  # judgements asked, failed, per part; programs checked; excluded

    def score_many(self, queries: Sequence[str], completions: Sequence[str]) -> list[RewardResult]:
        """The synchronous entry point (no event loop may be running in this thread)."""
        return asyncio.run(self.ascore_many(queries, completions))

    async def ascore_many(self, queries: Sequence[str], completions: Sequence[str]) -> list[RewardResult]:
        if len(queries) != len(completions):
            raise ValueError(f"{len(queries)} queries for {len(completions)} completions")
        protocol = self.protocol
        parsed = [protocol.parse(text) for text in completions]
        gated = [i for i, p in enumerate(parsed) if p.gated]
        loop = asyncio.get_running_loop()
        policy = self.config.syntax_policy
        syntax = [loop.run_in_executor(self._syntax_pool, protocol.syntax, self.sandbox, parsed[i].code, policy)
                  for i in gated]
        requests = [(i, part) for i in gated for part in VERIFIED_PARTS]
        messages = [protocol.request(part, queries[i], parsed[i].plan, parsed[i].code) for i, part in requests]
        replies = await self.verifier.acomplete_many(messages, **self.config.verifier_sampling) if messages else []
        syntax_results = await asyncio.gather(*syntax)

        judgements: dict[tuple[int, str], Judgement] = {}
        for key, reply in zip(requests, replies):
            judgements[key] = (Judgement(None, error=str(reply)) if isinstance(reply, BackendError)
                               else protocol.read(reply))
        results = [RewardResult(0.0, dict.fromkeys(PARTS, 0.0), notes={"format": p.note or "not gated"})
                   for p in parsed]
        for i, checked in zip(gated, syntax_results):
            results[i] = self._combine(i, checked, judgements, parsed[i].note)
        self._count(results, len(gated))
        return results

    def _combine(self, index: int, syntax: Any, judgements: dict[tuple[int, str], Judgement],
                 parse_note: str) -> RewardResult:
        parts = {"format": 1.0, "syntax": 1.0 if syntax.ok else 0.0}
        notes = {"format": parse_note} if parse_note else {}
        failed, unreadable = [], []
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
                if judgement.unreadable:
                    unreadable.append(part)
                if judgement.reason:
                    notes[part] = judgement.reason
        weights = asdict(self.config.weights)
        score = parts["format"] * sum(weights[part] * parts[part] for part in weights)
        return RewardResult(score, parts, failed, notes, unreadable)

    def _count(self, results: list[RewardResult], gated: int) -> None:
        failures = Counter(part for r in results for part in r.failed)
        unreadable = Counter(part for r in results for part in r.unreadable)
        with self._lock:
            self.stats["completions"] += len(results)
            self.stats["gated"] += gated
            self.stats["judgements"] += gated * len(VERIFIED_PARTS)
            self.stats["excluded"] += sum(r.excluded for r in results)
            for part, count in failures.items():
                self.stats[f"failed_{part}"] += count
            for part, count in unreadable.items():
                self.stats[f"unreadable_{part}"] += count
        if failures:
            log.warning("verifier failed on %d of %d judgements in this batch (%s); %d rollouts excluded",
                        sum(failures.values()), gated * len(VERIFIED_PARTS),
                        ", ".join(f"{p}: {n}" for p, n in sorted(failures.items())),
                        sum(r.excluded for r in results))

    def close(self) -> None:
        self._syntax_pool.shutdown(wait=True)
        self.sandbox.close()
        self.verifier.close()

