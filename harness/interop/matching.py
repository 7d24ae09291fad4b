"""Which of our samples each row of another harness's output answers.

A row is tied to a sample by a stable key and checked by its question, never by
its position in the file:

- tasks we exported (``harness export``): lm-eval keeps the document, whose
  ``id`` is our sample id; lmms-eval 0.7 drops it, so ``doc_id`` (the row of the
  exported dataset, whose order is ours) is the key. The question and gold must
  agree either way.
- their own tasks on the same dataset (lmms-eval's ``countbenchqa``): ``doc_id``
  is the row of the dataset split, which the results file beside the samples
  names; the row's question (from the document, else inside the prompt) must be
  that dataset row's question.
- VLMEvalKit files: their ``index`` is their own numbering, so the key is the
  question text (and the gold where several rows ask the same question).

A file whose task, split or questions do not match ours is refused with one
message saying what differs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.interop.gold import answer_text
from harness.interop.logs import ForeignFile, ForeignRow, PredictionsFileError
from harness.scoring.extract import normalize_text
from harness.tasks import Task

log = logging.getLogger(__name__)

_EXPORTED_DOC_KEYS = {"id", "task", "question", "prompt", "answer"}
_SHOWN = 3  # examples quoted in a refusal


@dataclass
class OurSample:
    id: str
    subset: str
    split: str
    config: str | None
    row: int  # row within its dataset part
    question: str  # as we ask it
    raw_question: str | None  # the dataset's question column
    raw_id: str | None  # the dataset's id column, where the task has one
    raw_answer: Any
    gold: Any
    choices: list[str] | None
    error: bool


@dataclass
class Match:
    file: ForeignFile
    row: ForeignRow
    key: str  # how the row was tied to the sample, for the record


@dataclass
class TaskIndex:
    task: Task
    samples: list[OurSample]
    by_id: dict[str, OurSample] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {s.id: s for s in self.samples}

    @property
    def name(self) -> str:
        return self.task.name

    def describe(self) -> str:
        parts = ", ".join(f"{p.config}/{p.split}" if p.config else p.split for p in self.task.config.dataset.parts)
        return f"task {self.name!r} ({self.task.config.dataset.path}: {parts})"


def index_task(task: Task) -> TaskIndex:
    """Every sample of a task beside the dataset row it was made from."""
    fields = task.config.fields
    total = len(task.source)
    start, stop = task.config.rows or (0, total)
    rows = task.source.rows(start, min(stop, total))
    samples = []
    for sample, raw in zip(task.samples(), rows, strict=True):
        question = raw.data.get(fields.question) if fields.question else None
        raw_id = raw.data.get(fields.id) if fields.id else None
        samples.append(OurSample(
            id=sample.id, subset=sample.subset or raw.part.label, split=raw.part.split, config=raw.part.config,
            row=raw.part_index, question=sample.question, raw_question=None if question is None else str(question),
            raw_id=None if raw_id is None else str(raw_id),
            raw_answer=raw.data.get(fields.answer) if fields.answer else None, gold=sample.answer,
            choices=sample.choices, error=sample.error is not None,
        ))
    return TaskIndex(task, samples)


# --------------------------------------------------------------------------- which task a file holds

def squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def named_task(file: ForeignFile, known: Sequence[str]) -> str | None:
    """Our task a file names: in what an export recorded, else by its name (``valor_blink``,
    ``Model_CountBenchQA``: the longest ending, at an underscore, that is one of our names)."""
    exported = _exported_task(file)
    if exported in known:
        return exported
    if not file.task:
        return None
    by_squash = {squash(n): n for n in known}
    pieces = file.task.split("_")
    for i in range(len(pieces)):
        found = by_squash.get(squash("_".join(pieces[i:])))
        if found:
            return found
    return None


def _exported_task(file: ForeignFile) -> str | None:
    """The task of ours an exported file was made from (None: not one of our exports)."""
    recorded = (file.config.get("metadata") or {}).get("harness_task")
    if recorded:
        return str(recorded)
    docs = [r.doc for r in file.rows[:1] if r.doc is not None and _EXPORTED_DOC_KEYS <= set(r.doc)]
    return str(docs[0]["task"]) if docs else None


def is_exported(file: ForeignFile) -> bool:
    return _exported_task(file) is not None


# --------------------------------------------------------------------------- matching

def _same_question(ours: str | None, row: ForeignRow, question_field: str | None) -> bool | None:
    """Whether a harness-log row asks the dataset row's question; None when it cannot tell."""
    if ours is None:
        return None
    if row.doc is not None and question_field and question_field in row.doc:
        return normalize_text(str(row.doc[question_field])) == normalize_text(ours)
    if row.prompt is not None:
        return normalize_text(ours) in normalize_text(row.prompt)
    return None


def _shorten(text: Any, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _file_label(file: ForeignFile) -> str:
    dataset = file.config.get("dataset_path")
    split = file.config.get("test_split") or file.config.get("validation_split")
    where = ", ".join(x for x in (f"task {file.task!r}" if file.task else None, dataset and f"dataset {dataset}",
                                  file.config.get("dataset_name") and f"config {file.config['dataset_name']}",
                                  split and f"split {split}") if x)
    return f"{file.format} file {file.path}" + (f" ({where})" if where else "")


def _refuse(file: ForeignFile, index: TaskIndex, problems: list[str], total: int) -> PredictionsFileError:
    shown = "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
    return PredictionsFileError(f"{_file_label(file)} does not match {index.describe()}: {len(problems)} of "
                                f"{total} rows differ: {shown}")


def _match_exported(file: ForeignFile, index: TaskIndex) -> tuple[dict[str, Match], list[str]]:
    matched: dict[str, Match] = {}
    problems: list[str] = []
    skipped = set((file.config.get("metadata") or {}).get("harness_skipped") or ())
    order = [s for s in index.samples if not s.error and s.id not in skipped]
    for row in file.rows:
        doc = row.doc if row.doc is not None and _EXPORTED_DOC_KEYS <= set(row.doc) else None
        if doc is not None:
            sample, key = index.by_id.get(str(doc["id"])), f"exported doc id {doc['id']}"
            if sample is None:
                problems.append(f"{row.where}: sample id {str(doc['id'])!r} is not in the task")
                continue
            if str(doc["question"]) != sample.question:
                problems.append(f"{row.where}: sample {sample.id} asks {_shorten(doc['question'])}, "
                                f"ours {_shorten(sample.question)}")
                continue
        else:
            if row.doc_id is None or not 0 <= row.doc_id < len(order):
                problems.append(f"{row.where}: doc_id {row.doc_id} is not a row of the export ({len(order)} rows)")
                continue
            sample, key = order[row.doc_id], f"exported row {row.doc_id}"
            if row.prompt is None or sample.question.strip() not in row.prompt:
                problems.append(f"{row.where}: doc_id {row.doc_id} was asked {_shorten(row.prompt)}, "
                                f"which does not hold sample {sample.id}'s question {_shorten(sample.question)}")
                continue
        gold = answer_text(sample.gold)
        if row.target is not None and row.target != gold:
            problems.append(f"{row.where}: sample {sample.id} has target {row.target!r}, ours {gold!r}")
            continue
        _add(matched, problems, sample, Match(file, row, key))
    return matched, problems


def _add(matched: dict[str, Match], problems: list[str], sample: OurSample, match: Match) -> None:
    if sample.id in matched:
        problems.append(f"{match.row.where}: sample {sample.id} is answered again (first on "
                        f"{matched[sample.id].row.where})")
    else:
        matched[sample.id] = match


def _parts_for(file: ForeignFile, index: TaskIndex) -> list[tuple[str, str | None]]:
    """The (split, config) of ours the file's rows come from; refuses a split we do not read."""
    parts = [(p.split, p.config) for p in index.task.config.dataset.parts]
    split = file.config.get("test_split") or file.config.get("validation_split")
    if split is None:
        if len(parts) == 1:
            return parts
        raise PredictionsFileError(
            f"{_file_label(file)}: {index.describe()} reads several dataset parts and the file does not say "
            "which one it holds (no results file beside it); pass a file with its results file")
    config = file.config.get("dataset_name")
    chosen = [p for p in parts if p[0] == str(split) and (config is None or p[1] in (None, str(config)))]
    if not chosen:
        raise PredictionsFileError(
            f"{_file_label(file)} does not match {index.describe()}: it holds "
            f"{'config ' + str(config) + ' ' if config else ''}split {split!r}, which the task does not read")
    return chosen


def _match_by_row(file: ForeignFile, index: TaskIndex) -> tuple[dict[str, Match], list[str]]:
    """Their own task on our dataset: doc_id is the row of the split."""
    parts = _parts_for(file, index)
    by_row = {(s.split, s.config, s.row): s for s in index.samples}
    fields = index.task.config.fields
    matched: dict[str, Match] = {}
    problems: list[str] = []
    outside = 0
    for row in file.rows:
        found = [by_row[key] for key in ((split, config, row.doc_id) for split, config in parts) if key in by_row]
        if not found:
            outside += 1  # a dataset row outside the task's rows (e.g. a subset of the split)
            continue
        sample = found[0]
        if sample.raw_id is not None and row.doc is not None and fields.id in row.doc \
                and str(row.doc[fields.id]) != sample.raw_id:
            problems.append(f"{row.where}: doc_id {row.doc_id} has {fields.id} {row.doc[fields.id]!r}, "
                            f"ours {sample.raw_id!r}")
            continue
        same = _same_question(sample.raw_question, row, fields.question)
        if same is None:
            problems.append(f"{row.where}: doc_id {row.doc_id} carries neither the document nor the prompt, "
                            "so its question cannot be checked")
            continue
        if not same:
            asked = row.doc.get(fields.question) if row.doc and fields.question in row.doc else row.prompt
            problems.append(f"{row.where}: doc_id {row.doc_id} asks {_shorten(asked)}, where row {sample.row} "
                            f"of {sample.subset} asks {_shorten(sample.raw_question)}")
            continue
        _add(matched, problems, sample, Match(file, row, f"dataset row {sample.subset}/{sample.row}"))
    if outside:
        log.info("%s: %d rows are dataset rows outside %s", file.path, outside, index.describe())
    return matched, problems


def _agree(row: ForeignRow, sample: OurSample) -> bool:
    """Whether a VLMEvalKit row's answer is the sample's gold (letters read through the options)."""
    if row.target is None:
        return True
    theirs = {normalize_text(row.target)}
    letter = row.target.strip().strip("()").strip()
    if re.fullmatch(r"[A-Za-z]", letter):
        options = row.extra.get("options") or {}
        if letter.upper() in options:
            theirs.add(normalize_text(options[letter.upper()]))
        if sample.choices and 0 <= ord(letter.upper()) - ord("A") < len(sample.choices):
            theirs.add(normalize_text(sample.choices[ord(letter.upper()) - ord("A")]))
    ours = {normalize_text(answer_text(sample.gold)), normalize_text(str(sample.raw_answer))}
    return bool(theirs & ours)


def _match_by_question(file: ForeignFile, index: TaskIndex) -> tuple[dict[str, Match], list[str]]:
    """VLMEvalKit: the question text is the key; rows asking the same question are told
    apart by their gold, then paired in dataset order."""
    by_text: dict[str, list[OurSample]] = {}
    for sample in index.samples:
        for text in {sample.raw_question, sample.question} - {None}:
            by_text.setdefault(normalize_text(text), []).append(sample)
    taken: set[str] = set()
    matched: dict[str, Match] = {}
    problems: list[str] = []

    def number(row: ForeignRow) -> tuple[int, Any]:
        try:
            return 0, int(row.index or "")
        except ValueError:
            return 1, row.index or ""

    for row in sorted(file.rows, key=number):
        text = normalize_text(row.question or "")
        candidates = by_text.get(text, [])
        how = "question text"
        if not candidates and text:  # their question may hold extra words (or fewer) around ours
            candidates = [s for key, group in by_text.items() if key and (key in text or text in key) for s in group]
            how = "question text (contained)"
        candidates = [s for s in {c.id: c for c in candidates}.values() if s.id not in taken and _agree(row, s)]
        if how != "question text" and len(candidates) != 1:
            candidates = []
        if not candidates:
            problems.append(f"{row.where}: index {row.index} asks {_shorten(row.question)}"
                            + (f" (answer {row.target!r})" if row.target is not None else "")
                            + ", which no sample of ours asks")
            continue
        sample = candidates[0]
        taken.add(sample.id)
        matched[sample.id] = Match(file, row, f"{how}, their index {row.index}")
    return matched, problems


def match_file(file: ForeignFile, index: TaskIndex) -> dict[str, Match]:
    """Sample id -> the row answering it; refuses a file that is not of this task."""
    if not file.rows:
        raise PredictionsFileError(f"{_file_label(file)} holds no rows")
    exported_from = _exported_task(file)
    if exported_from is not None and exported_from != index.name:
        raise PredictionsFileError(f"{_file_label(file)} does not match {index.describe()}: it was exported from "
                                   f"task {exported_from!r}")
    if file.format == "vlmevalkit":
        matched, problems = _match_by_question(file, index)
    elif is_exported(file):
        matched, problems = _match_exported(file, index)
    else:
        matched, problems = _match_by_row(file, index)
    if problems:
        raise _refuse(file, index, problems, len(file.rows))
    if not matched:
        raise PredictionsFileError(f"{_file_label(file)} does not match {index.describe()}: none of its "
                                   f"{len(file.rows)} rows is a sample of the task")
    recorded = (file.config.get("metadata") or {}).get("harness_fingerprint")
    if recorded and recorded != index.task.config.fingerprint():
        log.warning("%s was exported from another definition of task %s (fingerprint %s, now %s); its questions "
                    "still match", file.path, index.name, recorded, index.task.config.fingerprint())
    return matched
