"""Judges for open-ended answers: an LLM behind any chat endpoint, or exact match.

A judge sees the question, the reference and the candidate answer (never the
image) and returns a 0/1 verdict. Verdicts are cached by judge fingerprint and
exact inputs, so re-scoring a run costs nothing. A failed call is reported as
an error, never as a silent 0.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.backends import OpenAIChat
from harness.cache import ResponseCache, cache_key, default_cache_dir
from harness.judgespec import JudgeSpec
from harness.requirements import Requirement, UpstreamFile
from harness.scoring.extract import normalize_text

log = logging.getLogger(__name__)

JUDGE_PROMPT_VERSION = 1
_SYSTEM = (
    "You grade short answers to questions about images. You are given the question, "
    "the reference answer and a candidate answer; you do not see the image. Decide "
    "whether the candidate says the same thing as the reference. Synonyms, singular "
    "versus plural, letter case and extra words that leave the meaning unchanged are "
    "all acceptable; a different object, colour, count, side or yes/no is not. "
    "Reply with a single digit: 1 if the candidate matches the reference, 0 otherwise."
)
_USER = "Question: {question}\nReference answer: {gold}\nCandidate answer: {prediction}\nVerdict:"


def judge_requirements(spec: JudgeSpec, paper_judge: bool) -> list[Requirement]:
    """What judging needs: the LLM judge's key and endpoint (``--judge``), and with
    ``paper_judge`` (the paper protocol on a task of the ``judge`` rule) the original's
    judge prompt and the paper judge's key and endpoint."""
    from harness.upstream import METRICS

    needed: list[Requirement] = []
    if spec.model is not None:
        needed += OpenAIChat.requirements({"base_url": spec.base_url, "api_key_env": spec.api_key_env},
                                          f"the judge {spec.model} (--judge)")
    if paper_judge:
        needed.append(UpstreamFile(METRICS, "the GQA judge's prompt (paper protocol)"))
        needed += OpenAIChat.requirements({"base_url": spec.paper_base_url, "api_key_env": spec.api_key_env},
                                          f"the paper protocol's GQA judge ({spec.paper_model})")
    return needed


@dataclass
class Verdict:
    score: float | None  # None when the judge failed
    error: str | None = None
    cached: bool = False


class Judge:
    name: str = "judge"

    def judge(self, question: str, gold: Any, prediction: Any) -> Verdict:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model connection, if any."""


class ExactMatchJudge(Judge):
    """The fallback when no LLM judge is configured: normalised exact match."""

    name = "exact_match"

    def judge(self, question: str, gold: Any, prediction: Any) -> Verdict:
        return Verdict(float(normalize_text(str(prediction)) == normalize_text(str(gold))))


def parse_verdict(text: str) -> float | None:
    """Read a 0/1 verdict: <answer> tags, a JSON object, or a single 0/1 token
    ("1", "Verdict: 0"); reasoning inside <think> tags is ignored."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S).strip()
    tagged = re.search(r"<answer>\s*([01])\s*</answer>", text)
    if tagged:
        return float(tagged.group(1))
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        for key in ("verdict", "score", "answer"):
            item = value.get(key) if isinstance(value, dict) else None
            if isinstance(item, bool):
                return float(item)
            if str(item).strip() in ("0", "1"):
                return float(str(item).strip())
        return None
    tokens = set(re.findall(r"(?<![\w.])([01])(?!\w|\.\d)", text))
    return float(tokens.pop()) if len(tokens) == 1 else None


class ModelJudge(Judge):
    """A judge that asks a model through ``complete``, keeps its verdicts in ``cache`` and
    releases the model with ``on_close``."""

    def __init__(self, name: str, complete: Callable[[Any], str],
                 cache: ResponseCache | None = None, on_close: Callable[[], None] | None = None) -> None:
        self.name = name
        self._complete = complete
        self._cache = cache
        self._on_close = on_close

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


class LLMJudge(ModelJudge):
    """A judge that asks a chat model; ``complete`` maps messages to reply text."""

    def judge(self, question: str, gold: Any, prediction: Any) -> Verdict:
        key = cache_key("judge", self.name, JUDGE_PROMPT_VERSION, question, str(gold), str(prediction))
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                return Verdict(hit, cached=True)
        messages = [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _USER.format(question=question, gold=gold, prediction=prediction)},
        ]
        try:
            reply = self._complete(messages)
        except Exception as exc:
            log.warning("judge %s failed: %s", self.name, exc)
            return Verdict(None, error=f"{type(exc).__name__}: {exc}")
        score = parse_verdict(reply)
        if score is None:
            return Verdict(None, error=f"unreadable verdict: {reply[:200]!r}")
        if self._cache is not None:
            self._cache.put(key, score)
        return Verdict(score)


_PAPER_ANSWER = re.compile(r"<answer>(.*?)</answer>")
_PAPER_ANSWER_UNCLOSED = re.compile(r"<answer>(.*?)<answer>")


def paper_verdict(reply: str) -> tuple[float, str | None]:
    """The original judge's reading of a reply: the first ``<answer>`` (a line; a second
    ``<answer>`` may close it), else the whole reply, through ``int()``; 1 is a match and
    anything else, an unreadable reply included, is 0 (with a note saying so)."""
    found = _PAPER_ANSWER.findall(reply) or _PAPER_ANSWER_UNCLOSED.findall(reply)
    text = found[0] if found else reply
    try:
        return (1.0 if int(text) == 1 else 0.0), None
    except (TypeError, ValueError):
        return 0.0, f"unreadable verdict {reply[:120]!r} counts 0, as in the original"


class PaperJudge(ModelJudge):
    """GQA's judge under the paper protocol: the original's prompt (fetched from the pinned
    upstream file) with the question, the gold and the prediction as ``str.format`` writes
    them, every prediction included (a failed program's is ``None``), one user turn;
    ``complete`` maps that text to the reply."""

    def __init__(self, name: str, prompt: str, complete: Callable[[str], str],
                 cache: ResponseCache | None = None, on_close: Callable[[], None] | None = None) -> None:
        super().__init__(name, complete, cache, on_close)
        self.prompt = prompt

    def judge(self, question: str, gold: Any, prediction: Any) -> Verdict:
        try:
            text = self.prompt.format(question, gold, prediction)
        except Exception as exc:  # the original's str.format raised too, and scored 0
            return Verdict(0.0, error=f"the prediction cannot be formatted ({type(exc).__name__}); counts 0")
        key = cache_key("paper-judge", self.name, text)
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                return Verdict(hit[0], error=hit[1], cached=True)
        try:
            reply = self._complete(text)
        except Exception as exc:
            log.warning("paper judge %s failed: %s", self.name, exc)
            return Verdict(None, error=f"{type(exc).__name__}: {exc}")
        score, note = paper_verdict(reply)
        if self._cache is not None:
            self._cache.put(key, [score, note])
        return Verdict(score, error=note)


def make_judge(spec: JudgeSpec, cache_dir: Path | None = None) -> Judge:
    if spec.model is None:
        return ExactMatchJudge()
    cache = ResponseCache((cache_dir or default_cache_dir()) / "judge.sqlite")
    # The name keys the verdict cache; it stays as it was so existing caches keep serving.
    name = f"{spec.model}@{spec.base_url or 'default'}"
    backend = OpenAIChat(spec.model, base_url=spec.base_url, api_key_env=spec.api_key_env,
                         temperature=spec.temperature, timeout_s=spec.timeout_s, max_retries=spec.max_retries,
                         max_concurrency=spec.max_concurrency)
    return LLMJudge(name, backend.complete, cache, backend.close)


def make_paper_judge(spec: JudgeSpec, data_dir: str | Path | None = None, cache_dir: Path | None = None) -> Judge:
    """The original's GQA judge: its prompt from the pinned upstream file, ``spec.paper_model``
    (GPT-5-mini) through the Responses API with the model's default sampling, one user turn."""
    from harness.upstream import AssetStore, PaperTexts

    prompt = PaperTexts(AssetStore(data_dir=Path(data_dir) if data_dir else None)).judge_prompt()
    backend = OpenAIChat(spec.paper_model, base_url=spec.paper_base_url, api_key_env=spec.api_key_env,
                         api="responses", temperature=None, timeout_s=spec.timeout_s, max_retries=spec.max_retries,
                         max_concurrency=spec.max_concurrency)
    cache = ResponseCache((cache_dir or default_cache_dir()) / "judge.sqlite")
    name = f"paper:{spec.paper_model}@{spec.paper_base_url or 'default'}"
    return PaperJudge(name, prompt, lambda text: backend.complete([{"role": "user", "content": text}]), cache,
                      backend.close)
