"""Question text and gold answers as the original VALOR evaluation built them (the paper protocol).

One formatter per benchmark, keyed by the task's paper-compatible scoring rule
(``compat`` in the task file), so every task over the same benchmark asks the
same questions under this protocol. The gold handed to the original's rule
(``compat_gold``) keeps the type the original compared: VSR's 0/1 label,
CountBenchQA's integer, RoboSpatial's lowercased answer, the option *text* of
BLINK and RealWorldQA. A row the original's rewriting rejected (an answer
letter naming no option, options it cannot read) is a data error for that
sample, where the original stopped the whole evaluation.

The rewritings, per benchmark:

- BLINK: the question with its options lettered ("Options are A: x, B: y.
  Respond with only ..."), then rewritten to ``<question>? Options: {x,y}.``,
  keeping a doubled "??" when the question already ends with "?"; an option
  value holding a "." is cut there, as in the original;
- RealWorldQA: only when the text holds both "A." and "B.": the text before
  "Please answer", its option lines ("A. ...", "B) ...", "C: ...") read into
  values, a leading "Query:" dropped, the stem's closing punctuation replaced
  by "?" (or "." when it had no "?"), then ``<stem> Options: {v1,v2}.``; the
  gold letter (or option text, compared loosely) becomes the option text;
- VSR: ``Is <caption>?``; Omni3D-Bench, TallyQA, GQA, CountBenchQA,
  RoboSpatial: the question as stored.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from harness.registry import Registry
from harness.tasks.config import TaskConfig
from harness.tasks.formats import (
    Formatted, RowFormatError, field_value, omni3d_answer_type, render_question, typed_gold,
)
from harness.types import AnswerType

PaperFormatter = Callable[[dict, TaskConfig], Formatted]
PAPER_FORMATTERS: Registry[PaperFormatter] = Registry("paper-protocol row formatter")


def _strict_gold(raw: Any, config: TaskConfig, answer_type: str | None = None) -> Any:
    return typed_gold(raw, answer_type or config.answer_type, config.fields.answer or "answer")


@PAPER_FORMATTERS.register("omni3d")
def omni3d(row: dict, config: TaskConfig) -> Formatted:
    question = row.get(config.fields.question) or row.get("text")
    if not question:
        raise RowFormatError(f"field {config.fields.question!r} (question) is empty")
    raw = row.get(config.fields.answer, "")
    raw_type = row.get(config.fields.answer_type or "answer_type", "")
    answer_type = omni3d_answer_type(raw, raw_type, config.fields.answer_type)
    return Formatted(str(question), _strict_gold(raw, config, answer_type), answer_type, None, raw,
                     {"raw_answer_type": raw_type})


def _as_stored(row: dict, config: TaskConfig, gold: Any, answer_type: str | None = None) -> Formatted:
    question = str(field_value(row, config.fields.question, "question"))
    kind = answer_type or config.answer_type
    return Formatted(question, _strict_gold(gold, config, kind), kind, None, gold)


@PAPER_FORMATTERS.register("tallyqa")
def tallyqa(row: dict, config: TaskConfig) -> Formatted:
    return _as_stored(row, config, field_value(row, config.fields.answer, "answer"))


@PAPER_FORMATTERS.register("countbench")
def countbench(row: dict, config: TaskConfig) -> Formatted:
    return _as_stored(row, config, field_value(row, config.fields.answer, "answer"))


@PAPER_FORMATTERS.register("robospatial")
def robospatial(row: dict, config: TaskConfig) -> Formatted:
    raw = field_value(row, config.fields.answer, "answer")
    if not isinstance(raw, str):
        raise RowFormatError(f"field {config.fields.answer!r} should be text, got {raw!r}")
    return _as_stored(row, config, raw.lower())


@PAPER_FORMATTERS.register("judge")
def gqa(row: dict, config: TaskConfig) -> Formatted:
    formatted = _as_stored(row, config, field_value(row, config.fields.answer, "answer"))
    formatted.compat_meta = {"judge_question": formatted.question}
    return formatted


@PAPER_FORMATTERS.register("vsr")
def vsr(row: dict, config: TaskConfig) -> Formatted:
    label = field_value(row, config.fields.answer, "answer")
    return Formatted(render_question(row, config), _strict_gold(label, config), config.answer_type, None, label)


# ----------------------------------------------------------------------------- BLINK

_BLINK_RESPOND = re.compile(r"Respond with only[^.]*\.?", re.I)
_BLINK_OPTIONS = re.compile(r"Options?\s*(?:are|:)\s*(.*?)(?:\.\s*|$)", re.I)
_BLINK_ITEM = re.compile(r"^([A-Z])\s*(?::|\)|-)\s*(.+?)\s*$")


def blink_question(question: str, choices: list[str]) -> str:
    """The lettered question the original asked before rewriting it."""
    lettered = ", ".join(f"{'ABCD'[i]}: {choice}" for i, choice in enumerate(choices))
    if len(choices) == 2:
        return f"{question} Options are {lettered}. Respond with only A or B"
    if len(choices) == 4:
        return f"{question} Options are {lettered}. Respond with only A, B, C, or D."
    raise RowFormatError(f"BLINK rows have 2 or 4 options, this one has {len(choices)}")


def blink_rewrite(query: str, gold: str) -> tuple[str, str, list[str]]:
    """``Q? Options: {x,y}.``, the gold option's text and the option values, as the original rewrote them."""
    letter = re.search(r"[A-Z]", gold.strip().upper())
    if letter is None:
        raise RowFormatError(f"answer {gold!r} holds no option letter")
    cleaned = _BLINK_RESPOND.sub("", query).strip()
    options = _BLINK_OPTIONS.search(cleaned)
    if options is None:
        raise RowFormatError("no options found in the question")
    stem = cleaned[: options.start()].strip().rstrip(".")
    values: dict[str, str] = {}
    order: list[str] = []
    for item in (piece.strip() for piece in options.group(1).strip().split(",")):
        parsed = _BLINK_ITEM.match(item)
        if parsed is None:
            raise RowFormatError(f"cannot read the option {item!r}")
        value = parsed.group(2).strip().rstrip(".")
        values[parsed.group(1)] = value
        order.append(value)
    if letter.group() not in values:
        raise RowFormatError(f"answer letter {letter.group()!r} names none of the options")
    return f"{stem}? Options: {{{','.join(order)}}}.", values[letter.group()], order


@PAPER_FORMATTERS.register("blink")
def blink(row: dict, config: TaskConfig) -> Formatted:
    choices = [str(c) for c in field_value(row, config.fields.choices, "choices")]
    answer = str(field_value(row, config.fields.answer, "answer"))
    if len(answer) < 2:
        raise RowFormatError(f"answer {answer!r} is not of the form '(A)'")
    question, gold, values = blink_rewrite(
        blink_question(str(field_value(row, config.fields.question, "question")), choices), answer[1])
    return Formatted(question, gold, AnswerType.MULTIPLE_CHOICE, values, gold)


# ----------------------------------------------------------------------------- RealWorldQA

_RWQA_HEADER = re.compile(r"^\s*(?:answer|gt)\s*:\s*(.*)$", re.I | re.S)
_RWQA_INSTRUCTION = re.compile(r"^\s*Please answer\b", re.M | re.I)
_RWQA_FIRST_OPTION = re.compile(r"^\s*([A-Z])\s*(?:[.)]|:|- )\s*(.+)$", re.M | re.I)
_RWQA_OPTION = re.compile(r"^\s*([A-Z])\s*(?:[.)]|:|-)\s*(.+?)\s*$", re.M | re.I)
_RWQA_QUERY = re.compile(r"^\s*Query:\s*", re.I)
_RWQA_TAIL = re.compile(r"[?.!]+\s*$")
_RWQA_PUNCT = re.compile(r"[.,;:!?()\[\]{}]")


def _loose(text: str) -> str:
    text = " ".join(text.strip().strip("'\"").strip().split())
    return _RWQA_PUNCT.sub("", text).lower().strip()


def realworldqa_rewrite(block: str, answer: str) -> tuple[str, str, list[str]]:
    """``<stem> Options: {v1,v2}.``, the gold option's text and the option values, as the original
    rewrote them."""
    gold = answer.strip()
    header = _RWQA_HEADER.match(gold)
    if header:
        gold = header.group(1).strip()
    gold = gold.strip().strip("'\"").strip()
    core = _RWQA_INSTRUCTION.split(block)[0]
    first = _RWQA_FIRST_OPTION.search(core)
    if first is None:
        raise RowFormatError("no options found in the question")
    stem = _RWQA_QUERY.sub("", core[: first.start()].strip(), count=1).strip()
    asks = "?" in stem
    stem = (_RWQA_TAIL.sub("", stem).strip() or stem) + ("?" if asks else ".")
    by_letter: dict[str, str] = {}
    by_text: dict[str, str] = {}
    values: list[str] = []
    for label, text in _RWQA_OPTION.findall(core):
        value = text.strip().rstrip(".")
        values.append(value)
        by_letter[label.upper()] = value
        by_text[_loose(value)] = value
    if re.fullmatch(r"[A-Z]", gold.upper()):
        if gold.upper() not in by_letter:
            raise RowFormatError(f"answer letter {gold.upper()!r} names none of the options")
        target = by_letter[gold.upper()]
    elif _loose(gold) in by_text:
        target = by_text[_loose(gold)]
    else:
        quoted = re.fullmatch(r'"?([A-Z])"?', gold.strip(), re.I)
        if quoted is None or quoted.group(1).upper() not in by_letter:
            raise RowFormatError(f"answer {gold!r} matches none of the options")
        target = by_letter[quoted.group(1).upper()]
    return f"{stem} Options: {{{','.join(values)}}}.", target, values


@PAPER_FORMATTERS.register("realworldqa")
def realworldqa(row: dict, config: TaskConfig) -> Formatted:
    question = field_value(row, config.fields.question, "question")
    answer = field_value(row, config.fields.answer, "answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise RowFormatError("question and answer should be text")
    if "A." in question and "B." in question:
        question, gold, values = realworldqa_rewrite(question, answer)
        return Formatted(question, gold, AnswerType.MULTIPLE_CHOICE, values, gold)
    return Formatted(question, answer.strip(), AnswerType.WORD, None, answer)
