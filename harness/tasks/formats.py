"""Row formatters: a dataset row -> the question as asked, the gold answer and its type.

Most tasks use ``default`` (a question template over the row's columns). A few
benchmarks need their options rebuilt the way the paper's evaluation asked them.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.registry import Registry
from harness.scoring.extract import normalize_text, parse_yes_no
from harness.tasks.config import TaskConfig
from harness.types import AnswerType


class RowFormatError(ValueError):
    """A row that lacks a field or holds a value of the wrong kind."""


@dataclass
class Formatted:
    question: str
    answer: Any
    answer_type: str
    choices: list[str] | None = None
    compat_gold: Any = None  # gold as the original evaluation compared it
    compat_meta: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # merged into Sample.meta
    subset: str | None = None  # overrides the dataset part as the sample's subset


Formatter = Callable[[dict, TaskConfig], Formatted]
FORMATTERS: Registry[Formatter] = Registry("row formatter")


def field_value(row: dict, name: str | None, role: str) -> Any:
    if name is None:
        raise RowFormatError(f"the task maps no column to {role!r}")
    if name not in row:
        raise RowFormatError(f"missing field {name!r} ({role})")
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowFormatError(f"field {name!r} ({role}) is empty")
    return value


def render_question(row: dict, config: TaskConfig) -> str:
    # A null or blank field would otherwise be asked as "Is None?" instead of failing the row.
    for _, name, _, _ in string.Formatter().parse(config.question_template):
        if name and name in row:
            field_value(row, name, "question_template")
    try:
        return config.question_template.format_map(row)
    except KeyError as exc:
        raise RowFormatError(f"missing field {exc.args[0]!r} used by question_template") from exc


def typed_gold(raw: Any, answer_type: str, column: str) -> Any:
    """The canonical gold answer for an answer type."""
    if answer_type == AnswerType.YESNO:
        value = parse_yes_no(raw)
        if value is None:
            raise RowFormatError(f"field {column!r} should be yes/no, got {raw!r}")
        return "yes" if value else "no"
    if answer_type in (AnswerType.INTEGER, AnswerType.FLOAT):
        try:
            number = float(str(raw).strip())
        except ValueError:
            raise RowFormatError(f"field {column!r} should be a number, got {raw!r}") from None
        if answer_type == AnswerType.INTEGER:
            if not number.is_integer():
                raise RowFormatError(f"field {column!r} should be an integer, got {raw!r}")
            return int(number)
        return number
    return str(raw).strip()


def _withheld(row: dict, config: TaskConfig) -> Formatted:
    return Formatted(render_question(row, config), None, AnswerType.NONE)


@FORMATTERS.register("default")
def default(row: dict, config: TaskConfig) -> Formatted:
    if not config.answers:
        return _withheld(row, config)
    question = render_question(row, config)
    raw = field_value(row, config.fields.answer, "answer")
    gold = typed_gold(raw, config.answer_type, config.fields.answer)
    compat_gold = raw.lower() if isinstance(raw, str) and config.answer_type == AnswerType.YESNO else raw
    choices = None
    if config.answer_type == AnswerType.MULTIPLE_CHOICE:
        choices = [str(c) for c in field_value(row, config.fields.choices, "choices")]
    return Formatted(question, gold, config.answer_type, choices, compat_gold)


def omni3d_answer_type(raw: Any, raw_type: Any, column: str | None) -> str:
    """Omni3D-Bench's per-row answer type (int, float, or str for yes/no and words) as ours."""
    if raw_type == "int":
        return AnswerType.INTEGER
    if raw_type == "float":
        return AnswerType.FLOAT
    if raw_type == "str":
        return AnswerType.YESNO if str(raw).strip().lower() in ("yes", "no") else AnswerType.WORD
    raise RowFormatError(f"field {column!r} should be int, float or str, got {raw_type!r}")


@FORMATTERS.register("omni3d")
def omni3d(row: dict, config: TaskConfig) -> Formatted:
    """Omni3D-Bench: the answer type is per row (int, float, or str for yes/no and words)."""
    if not config.answers:
        return _withheld(row, config)
    question = render_question(row, config)
    raw = field_value(row, config.fields.answer, "answer")
    raw_type = field_value(row, config.fields.answer_type, "answer_type")
    answer_type = omni3d_answer_type(raw, raw_type, config.fields.answer_type)
    gold = typed_gold(raw, answer_type, config.fields.answer)
    return Formatted(question, gold, answer_type, None, raw, {"raw_answer_type": raw_type})


def options_question(question: str, values: list[str]) -> str:
    """The options format the paper's program prompt expects: ``Q? Options: {a,b}.``"""
    return f"{question} Options: {{{','.join(values)}}}."


@FORMATTERS.register("blink_options")
def blink_options(row: dict, config: TaskConfig) -> Formatted:
    """BLINK: gold "(B)" becomes the option text; the question lists the option values."""
    question = str(field_value(row, config.fields.question, "question")).strip().rstrip("?.").strip() + "?"
    choices = [str(c).strip().rstrip(".") for c in field_value(row, config.fields.choices, "choices")]
    raw = str(field_value(row, config.fields.answer, "answer"))
    letter = re.search(r"[A-Z]", raw.upper())
    index = ord(letter.group()) - ord("A") if letter else -1
    if not 0 <= index < len(choices):
        raise RowFormatError(f"answer {raw!r} names no option among {len(choices)} choices")
    return Formatted(options_question(question, choices), choices[index], AnswerType.MULTIPLE_CHOICE,
                     choices, choices[index])


_OPTION_LINE = re.compile(r"^\s*([A-Z])\s*(?:[.):]|-\s)\s*(.+?)\s*$", re.M)
_INSTRUCTION = re.compile(r"^\s*Please answer\b.*", re.M | re.I | re.S)


@FORMATTERS.register("realworldqa_options")
def realworldqa_options(row: dict, config: TaskConfig) -> Formatted:
    """RealWorldQA: options written as lines "A. ..." inside the question text.

    With options, the question becomes multiple choice over the option values
    and a letter gold becomes the option text; without, it is a short answer
    asked exactly as written.
    """
    text = str(field_value(row, config.fields.question, "question"))
    raw = str(field_value(row, config.fields.answer, "answer")).strip()
    body = _INSTRUCTION.sub("", text)
    options = _OPTION_LINE.findall(body)
    if len(options) < 2:
        return Formatted(text.strip(), raw, AnswerType.WORD, None, raw)
    first = _OPTION_LINE.search(body)
    question = body[: first.start()].strip()
    letters = [letter for letter, _ in options]
    values = [value.rstrip(".").strip() for _, value in options]
    answer = raw.strip("\"'").strip()
    if re.fullmatch(r"[A-Za-z]", answer) and answer.upper() in letters:
        gold = values[letters.index(answer.upper())]
    else:
        matches = [v for v in values if normalize_text(v) == normalize_text(answer)]
        if not matches:
            raise RowFormatError(f"answer {raw!r} matches none of the options {values}")
        gold = matches[0]
    return Formatted(options_question(question, values), gold, AnswerType.MULTIPLE_CHOICE, values, gold)


# Columns ``per_row`` passes on to ``Sample.meta`` (column -> key), and the columns
# that name a row's subset, first present wins.
META_COLUMNS = {"program": "reference_program", "scene_json": "scene", "depth": "depth"}
SUBSET_COLUMNS = ("subset", "family")
_PER_ROW_TYPES = tuple(t for t in AnswerType.ALL if t != AnswerType.NONE)


def _gold_option(gold: str, choices: list[str], column: str) -> str:
    """The option a gold answer names: the option text itself, or its letter."""
    if gold in choices:
        return gold
    if re.fullmatch(r"\(?[A-Za-z]\)?", gold):
        index = ord(gold.strip("()").upper()) - ord("A")
        if 0 <= index < len(choices):
            return choices[index]
    matches = [c for c in choices if normalize_text(c) == normalize_text(gold)]
    if len(matches) == 1:
        return matches[0]
    raise RowFormatError(f"field {column!r}: answer {gold!r} names none of the options {choices}")


@FORMATTERS.register("per_row")
def per_row(row: dict, config: TaskConfig) -> Formatted:
    """Answer type and options read from each row (``fields.answer_type``, ``fields.choices``),
    for datasets that mix question kinds; reference programs, scene files and the
    subset travel along in ``meta`` (see META_COLUMNS and SUBSET_COLUMNS)."""
    if not config.answers:
        return _withheld(row, config)
    question = render_question(row, config)
    answer_type = field_value(row, config.fields.answer_type, "answer_type")
    if answer_type not in _PER_ROW_TYPES:
        raise RowFormatError(f"field {config.fields.answer_type!r} should be one of {', '.join(_PER_ROW_TYPES)}, "
                             f"got {answer_type!r}")
    raw = field_value(row, config.fields.answer, "answer")
    gold = typed_gold(raw, answer_type, config.fields.answer)
    choices = None
    if answer_type == AnswerType.MULTIPLE_CHOICE:
        values = field_value(row, config.fields.choices, "choices")
        if not isinstance(values, (list, tuple)) or len(values) < 2:
            raise RowFormatError(f"field {config.fields.choices!r} should list at least two options, got {values!r}")
        choices = [str(c) for c in values]
        gold = _gold_option(gold, choices, config.fields.answer)
    meta = {key: row[column] for column, key in META_COLUMNS.items() if row.get(column) is not None}
    subset = next((str(row[c]) for c in SUBSET_COLUMNS if row.get(c) not in (None, "")), None)
    return Formatted(question, gold, answer_type, choices, raw, meta=meta, subset=subset)
