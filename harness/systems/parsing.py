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
