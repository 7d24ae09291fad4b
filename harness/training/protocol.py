"""The reward's two protocols: ``paper`` (the original's rules) and ``harness`` (ours).

A protocol decides everything about a reward that is a choice rather than a
computation: how a reply is cut into plan and program and gated, what the
verifier is asked and how its verdict is read, what makes the syntax part 1,
and the verifier's default settings. The weights (0.3 logic, 0.1 syntax, 0.2
attribute, 0.2 spatial, 0.2 adherence) and the format gate are common.

``paper`` follows the released training code of VALOR (``docs/training.md``
lists each rule): the original verifier prompts, fetched from the pinned
upstream files (:mod:`harness.upstream`), each one user turn filled with the
query, plan and program and the original tool API text; Gemini-2.5-Flash with
its default generation settings (thinking on); the verdict is the integer inside
``<answer>`` (or the whole reply), and a reply that is no integer scores 0; the
syntax part is 1 when the program runs once against the original's stub tools
without an error and sets ``final_answer``. ``harness`` is this project's: our
rubrics behind a shared system message (prefix caching), JSON verdicts whose
unreadable replies are failures, thinking off at temperature 0, and two runs of
the program, with objects found and with none.

In both, a judgement that fails (the verifier's call failed, or under
``harness`` its reply could not be read) is never a silent 0: the rollout is
marked excluded, counted, and left out of its group's advantage where the
trainer allows it (TRL), and logged either way.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

from harness.protocol import PAPER, ProtocolError, check_protocol
from harness.sandbox.executor import Sandbox, SandboxPolicy
from harness.systems.parsing import parse_reply
from harness.training.syntax import DUMMY_IMAGE_SIZE, SyntaxResult, check_syntax
from harness.training.verifier import VERIFIED_PARTS, Judgement, read_judgement, verifier_request
from harness.upstream import (
    API_PROMPT,
    ATTRIBUTE_REWARD,
    CODE_REWARD,
    LOGIC_REWARD,
    SPATIAL_REWARD,
    PaperTexts,
    UpstreamAssetError,
)


# Which original template judges which part, and the order of its three {} slots.
PAPER_TEMPLATES = {"logic": LOGIC_REWARD, "attribute": ATTRIBUTE_REWARD, "spatial": SPATIAL_REWARD,
                   "adherence": CODE_REWARD}
_PAPER_SLOTS = {"logic": ("query", "plan", "api"), "attribute": ("query", "plan", "api"),
                "spatial": ("query", "plan", "api"), "adherence": ("plan", "code", "api")}


@dataclass
class ParsedReply:
    """A reply cut into plan and program, and whether it passes the format gate."""

    gated: bool
    plan: str
    code: str
    note: str = ""  # why it did not pass, or what the parser noticed


class RewardProtocol:
    """The rules one protocol gives the reward."""

    name = ""
    # The verifier's backend and options, and its per-request sampling, when the reward YAML
    # does not set them.
    verifier_defaults: dict[str, Any] = {}
    sampling_defaults: dict[str, Any] = {}

    def parse(self, text: str) -> ParsedReply:
        raise NotImplementedError

    def request(self, part: str, query: str, plan: str, code: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def read(self, reply: str) -> Judgement:
        raise NotImplementedError

    def syntax(self, sandbox: Sandbox, code: str, policy: SandboxPolicy) -> SyntaxResult:
        raise NotImplementedError


# ----------------------------------------------------------------------------- harness


class HarnessProtocol(RewardProtocol):
    name = "harness"
    verifier_defaults = {"backend": "genai", "model": "gemini-2.5-flash", "thinking_budget": 0,
                         "max_concurrency": 256}
    sampling_defaults = {"temperature": 0.0}

    def parse(self, text: str) -> ParsedReply:
        parsed = parse_reply(text)
        # Both pairs of tags, closed: an unclosed tag or a code fence standing in for
        # <answer> does not pass, though evaluation reads them.
        closed = not any("not closed" in note or "no <answer> tags" in note for note in parsed.notes)
        gated = bool(parsed.plan and parsed.code and closed)
        return ParsedReply(gated, parsed.plan or "", parsed.code or "", "; ".join(parsed.notes) or
                           ("" if gated else "no plan or no program"))

    def request(self, part: str, query: str, plan: str, code: str) -> list[dict[str, Any]]:
        return verifier_request(part, query, plan, code)

    def read(self, reply: str) -> Judgement:
        return read_judgement(reply)

    def syntax(self, sandbox: Sandbox, code: str, policy: SandboxPolicy) -> SyntaxResult:
        return check_syntax(sandbox, code, policy)


# ----------------------------------------------------------------------------- paper

_PLAN = re.compile(r"<plan>(.*?)</plan>", re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_VERDICT = re.compile(r"<answer\b[^>]*>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_FENCED = re.compile(r"^\s*```[A-Za-z0-9_+-]*\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


def paper_parse(text: str) -> ParsedReply:
    """The original's reading of a reply: the gate needs at least one ``<plan>`` and one
    ``<answer>`` block; plan and program are taken only when each appears exactly once
    (else they are empty, and still judged); a Markdown fence around the program is
    removed; text outside the tags is ignored."""
    plans, answers = _PLAN.findall(text), _ANSWER.findall(text)
    if not plans or not answers:
        return ParsedReply(False, "", "", "no <plan> or no <answer> block")
    plan = plans[0].strip() if len(plans) == 1 else ""
    code = answers[0] if len(answers) == 1 else ""
    fenced = _FENCED.match(code.strip()) if code else None
    code = (fenced.group(1) if fenced else code).strip()
    note = "" if len(plans) == len(answers) == 1 else "a tag repeats: plan and program are judged empty"
    return ParsedReply(True, plan, code, note)


def paper_verdict(reply: str) -> Judgement:
    """The original's verdict: the text inside the first ``<answer>`` tag (or the whole reply),
    as an integer; anything else scores 0. The integer is used as it is, as the original does."""
    match = _VERDICT.search(reply)
    text = (match.group(1) if match else reply).strip()
    try:
        return Judgement(float(int(text)))
    except ValueError:
        return Judgement(0.0, reason="not an integer: scored 0, as the original does", unreadable=True)


# The original's stub tools for its syntax check, by their original signatures: they
# need no image and always answer.
def _gd_detect(img_pth: Any, prompt: Any) -> list[dict[str, Any]]:
    terms = [t for t in re.split(r"\s*,\s*", str(prompt).strip()) if t]
    return [{"bbox": [0, 0, 10, 10], "label": term} for term in terms]


def _depth(img_pth: Any, bbox: Any) -> float:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError("bbox must be a length-4 sequence")
    return 0.5


def _vqa(img_pth: Any, bbox: Any, prompt: Any) -> str:
    return f"dummy answer for {prompt}"


ORIGINAL_STUBS: dict[str, Callable[..., Any]] = {"gd_detect": _gd_detect, "depth": _depth, "vqa": _vqa}


class OriginalStubSession:
    """A tool handler answering as the original's stubs: calls are bound to the original
    signatures (``gd_detect(img_pth, prompt)``, ``depth(img_pth, bbox)``,
    ``vqa(img_pth, bbox, prompt)``); a call the stub rejects fails as it would there."""

    names = list(ORIGINAL_STUBS)

    def call(self, name: str, args: list, kwargs: dict) -> Any:
        stub = ORIGINAL_STUBS.get(name)
        if stub is None:
            raise ValueError(f"unknown tool {name!r}")
        try:
            bound = inspect.signature(stub).bind(*args, **kwargs)
        except TypeError as exc:
            raise ValueError(f"{name}(): {exc}") from None
        return stub(*bound.args, **bound.kwargs)


def check_original_syntax(sandbox: Sandbox, code: str, policy: SandboxPolicy) -> SyntaxResult:
    """The original's syntax part: the program runs once against the stubs without an error
    and ends with ``final_answer`` set (not None)."""
    # In the original's execution wrapper (the paper dialect): `return x` yields final_answer.
    result = sandbox.run(code, OriginalStubSession(), DUMMY_IMAGE_SIZE, policy, dialect=PAPER)
    if result.status == "ok":
        return SyntaxResult(True)
    last = (result.detail or "").strip().splitlines()[-1:] or [""]
    return SyntaxResult(False, f"{result.status}: {last[0]}")


class PaperProtocol(RewardProtocol):
    name = "paper"
    # Gemini-2.5-Flash as the original called it: its default generation settings (thinking
    # on, the model's own temperature), text only. None removes our backend's temperature 0.
    verifier_defaults = {"backend": "genai", "model": "gemini-2.5-flash", "temperature": None,
                         "max_concurrency": 256}
    sampling_defaults: dict[str, Any] = {}

    def __init__(self, texts: PaperTexts) -> None:
        self.api = texts.verifier_prompt(API_PROMPT)
        self.templates = {part: texts.verifier_prompt(path) for part, path in PAPER_TEMPLATES.items()}
        for part, template in self.templates.items():
            if template.count("{}") != 3:
                raise UpstreamAssetError(f"{PAPER_TEMPLATES[part]}: the verifier prompt should have three {{}} "
                                         f"slots, has {template.count('{}')}")

    def parse(self, text: str) -> ParsedReply:
        return paper_parse(text)

    def request(self, part: str, query: str, plan: str, code: str) -> list[dict[str, Any]]:
        if part not in self.templates:
            raise ValueError(f"unknown verifier part {part!r}; parts: {', '.join(VERIFIED_PARTS)}")
        values = {"query": query, "plan": plan, "code": code, "api": self.api}
        return [{"role": "user", "content": self.templates[part].format(*(values[s] for s in _PAPER_SLOTS[part]))}]

    def read(self, reply: str) -> Judgement:
        return paper_verdict(reply)

    def syntax(self, sandbox: Sandbox, code: str, policy: SandboxPolicy) -> SyntaxResult:
        return check_original_syntax(sandbox, code, policy)


def paper_texts(data_dir: str | None = None) -> PaperTexts:
    """The original texts from the pinned files: ``data_dir`` (an offline copy), else
    ``HARNESS_DATA_DIR``, the cache, or a download (see :mod:`harness.upstream`)."""
    from pathlib import Path

    from harness.upstream import AssetStore

    return PaperTexts(AssetStore(data_dir=Path(data_dir).expanduser() if data_dir else None))


def protocol_class(name: str) -> type[RewardProtocol]:
    """The class of protocol ``name`` (its defaults, without reading any upstream file)."""
    return PaperProtocol if check_protocol(name) == "paper" else HarnessProtocol


def make_protocol(name: str, texts: PaperTexts | None = None) -> RewardProtocol:
    """The protocol ``name``; ``paper`` reads the original prompts through ``texts`` (default:
    the pinned upstream files, from ``HARNESS_DATA_DIR``, the cache or a download)."""
    check_protocol(name)
    return PaperProtocol(texts or paper_texts()) if name == "paper" else HarnessProtocol()
