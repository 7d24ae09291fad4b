"""Reading a plan and a program out of a model's reply.

Models wrap the plan in ``<plan>`` and the program in ``<answer>`` tags, but
not always cleanly: tags repeat, the closing tag goes missing, the program
arrives in a fenced block, thinking text comes first. The rules, in order:

- ``<think>...</think>`` blocks are dropped (a model run with thinking on);
- the plan is the last non-empty ``<plan>`` block; an unclosed ``<plan>`` runs
  to the next ``<answer>`` or the end;
- the program is the last non-empty ``<answer>`` block, else the text after an
  unclosed ``<answer>``, else the last fenced code block; a fence inside the
  tags is removed;
- no program at all is a format error (the record's status says so); a missing
  plan is only noted.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_PLAN = re.compile(r"<plan>(.*?)</plan>", re.S | re.I)
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S | re.I)


@dataclass
class ParsedReply:
    plan: str | None
    code: str | None
    notes: list[str] = field(default_factory=list)  # what was irregular about the reply

    @property
    def ok(self) -> bool:
        return bool(self.code)


def _strip_fence(text: str) -> str:
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced and text.strip().startswith("```") else text
    return textwrap.dedent(body).strip("\n").rstrip()


def _tagged(text: str, tag: str, unclosed_until: str, notes: list[str]) -> str | None:
    """The last non-empty ``<tag>`` block; else the text after an unclosed ``<tag>``
    up to ``unclosed_until`` (a lookahead pattern)."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S | re.I)
    if len(blocks) > 1:
        notes.append(f"{len(blocks)} <{tag}> blocks; the last non-empty one is used")
    for block in reversed(blocks):
        if block.strip():
            return block
    opened = re.search(rf"<{tag}>((?:(?!</{tag}>).)*?)(?={unclosed_until})", text, re.S | re.I)
    if opened and opened.group(1).strip():
        notes.append(f"<{tag}> is not closed")
        return opened.group(1)
    return None


def parse_reply(text: str) -> ParsedReply:
    notes: list[str] = []
    if _THINK.search(text):
        text = _THINK.sub("", text)
        notes.append("dropped <think> blocks")
    plan = _tagged(text, "plan", r"<answer>|\Z", notes)
    code = _tagged(_PLAN.sub("", text), "answer", r"\Z", notes)
    if code is None:
        fences = [f for f in _FENCE.findall(text) if f.strip()]
        if fences:
            code = fences[-1]
            notes.append("no <answer> tags; the last fenced code block is used")
    if plan is None:
        notes.append("no plan")
    code = _strip_fence(code) if code else None
    if not code:
        notes.append("no program: neither <answer> tags nor a fenced code block")
    return ParsedReply(plan.strip() if plan else None, code or None, notes)


# ----------------------------------------------------------------------------- the paper protocol

_PAPER_PLAN = re.compile(r"<plan>(.*?)</plan>", re.S | re.I)
_PAPER_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
# An opening fence is three backticks and the rest of its line; the block ends at the next
# three backticks, a newline just before them not included.
_PAPER_FENCE = re.compile(r"```[^\n]*\n(.*?)\n?```", re.S)
# A program that is one whole fenced block (opening line: a language name at most).
_PAPER_WHOLE_FENCE = re.compile(r"\s*```[A-Za-z0-9_+-]*\s*\n(.*?)\n\s*```\s*", re.S)


def paper_reply_text(reply: str) -> str:
    """The reply as the original evaluation read it: every ``exit()`` removed."""
    return reply.replace("exit()", "")


def parse_reply_paper(text: str) -> ParsedReply:
    """Plan and program as the original evaluation read them (``text`` already through
    :func:`paper_reply_text`): the plan only when there is exactly one ``<plan>``
    block; the program from exactly one ``<answer>`` block, else exactly one fenced
    block, else the whole reply; a program that is one fenced block loses its fences.
    An empty program is a format error here (the original ran it and got no answer)."""
    notes: list[str] = []
    plans = _PAPER_PLAN.findall(text)
    answers = _PAPER_ANSWER.findall(text)
    fences = _PAPER_FENCE.findall(text)
    plan = plans[0].strip() if len(plans) == 1 else ""
    if len(plans) != 1:
        notes.append(f"{len(plans)} <plan> blocks: no plan")
    if len(answers) == 1:
        raw = answers[0]
    elif len(fences) == 1:
        raw = fences[0]
        notes.append(f"{len(answers)} <answer> blocks; the one fenced block is the program")
    else:
        raw = ""
    if raw:
        raw = raw.strip()
        whole = _PAPER_WHOLE_FENCE.fullmatch(raw)
        code = (whole.group(1) if whole else raw).strip()
    else:
        code = text.strip()
        notes.append("no single <answer> block or fenced block: the whole reply is the program")
    if not code:
        notes.append("no program: the reply is empty")
    return ParsedReply(plan or None, code or None, notes)
