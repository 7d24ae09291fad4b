"""Reading other harnesses' per-sample outputs into one row type.

- lm-evaluation-harness ``--log_samples``: ``samples_<task>_<date>.jsonl`` beside
  ``results_<date>.json``; each line holds ``doc_id``, ``doc``, ``target``,
  ``arguments`` (the prompt first), ``resps``, ``filtered_resps``, ``filter`` and the
  doc/prompt/target hashes. A task with several filters writes one line per filter.
- lmms-eval ``--log_samples``: ``<date>_samples_<task>.jsonl`` beside
  ``<date>_results.json``; since 0.7 a line holds ``doc_id``, ``target``, ``input``
  (the prompt), ``filtered_resps`` and ``resps`` (left out when equal), ``doc_hash``;
  the ``doc`` is dropped (older versions kept it).
- VLMEvalKit: ``<model>_<dataset>.xlsx`` (or ``.tsv``/``.csv``): the dataset's
  columns without the image (``index``, ``question``, ``answer``, options, ...)
  plus ``prediction``.

Which of our samples a row answers is decided in ``harness.interop.matching``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

FORMATS = ("lm-eval", "lmms-eval", "vlmevalkit")
VLMEVALKIT_FAILURE = "Failed to obtain answer"  # VLMEvalKit's stand-in reply for a failed model call

_LM_EVAL_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")
_LMMS_EVAL_SAMPLES = re.compile(r"^(?P<date>\d{8}_\d{6})_samples_(?P<task>.+)\.jsonl$")
_VLMEVALKIT_SUFFIXES = (".xlsx", ".tsv", ".csv")


class PredictionsFileError(ValueError):
    """A predictions file that cannot be read or matched to the tasks; names the file, line and field."""


@dataclass
class ForeignRow:
    where: str  # "line 12" / "row 12", for messages
    doc_id: int | None = None  # row of their dataset split (lm-eval, lmms-eval)
    index: str | None = None  # VLMEvalKit's own row index
    doc: dict[str, Any] | None = None
    question: str | None = None  # the question column they hold (VLMEvalKit)
    prompt: str | None = None  # the text they sent the model
    target: str | None = None
    response: str | None = None  # the model's reply, unfiltered
    extra: dict[str, Any] = field(default_factory=dict)  # filtered reply, hashes, their metrics


@dataclass
class ForeignFile:
    path: Path
    format: str
    task: str | None  # their task or dataset name, from the file name
    rows: list[ForeignRow]
    config: dict[str, Any] = field(default_factory=dict)  # their task config, from the results file
    results_file: Path | None = None
    model: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()), "sha256": file_sha256(self.path), "format": self.format,
            "task": self.task, "rows": len(self.rows),
            "results_file": str(self.results_file.resolve()) if self.results_file else None,
            "dataset": {k: self.config.get(k) for k in ("dataset_path", "dataset_name", "test_split")
                        if self.config.get(k) is not None},
            "model": self.model,
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- finding files

def _name_match(fmt: str, name: str) -> re.Match | None:
    pattern = _LM_EVAL_SAMPLES if fmt == "lm-eval" else _LMMS_EVAL_SAMPLES
    return pattern.match(name)


def find_files(path: Path, fmt: str) -> list[Path]:
    """The samples files at ``path``: the file itself, or those under a folder (searched recursively)."""
    if fmt not in FORMATS:
        raise PredictionsFileError(f"unknown predictions format {fmt!r}; choose one of jsonl, {', '.join(FORMATS)}")
    if not path.exists():
        raise PredictionsFileError(f"predictions file {path} does not exist")
    if path.is_file():
        return [path]
    if fmt == "vlmevalkit":
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in _VLMEVALKIT_SUFFIXES
                       and not p.stem.endswith(("_acc", "_score")) and p.is_file())
    else:
        found = sorted(p for p in path.rglob("*.jsonl") if _name_match(fmt, p.name))
    if not found:
        layout = {"lm-eval": "samples_<task>_<date>.jsonl", "lmms-eval": "<date>_samples_<task>.jsonl",
                  "vlmevalkit": "<model>_<dataset>.xlsx or .tsv"}[fmt]
        raise PredictionsFileError(f"{path}: no {fmt} samples files ({layout}) in this folder")
    return found


def _results_beside(path: Path, fmt: str, date: str | None) -> tuple[Path | None, dict[str, Any]]:
    if date is None:
        return None, {}
    name = f"results_{date}.json" if fmt == "lm-eval" else f"{date}_results.json"
    results = path.parent / name
    if not results.is_file():
        return None, {}
    try:
        return results, json.loads(results.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PredictionsFileError(f"{results}: cannot read the results file beside {path.name} ({exc})") from exc


def _model_info(results: dict[str, Any]) -> dict[str, Any]:
    config = results.get("config") or {}
    info = {k: config.get(k) for k in ("model", "model_args") if config.get(k) is not None}
    for key in ("model_name", "model_name_sanitized"):
        if results.get(key):
            info[key] = results[key]
    return info


# --------------------------------------------------------------------------- lm-eval and lmms-eval

def _first_text(value: Any) -> str | None:
    """The first string in nested lists (lm-eval nests replies per request, then per repeat)."""
    while isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    return None if value is None else str(value)


def _replies(value: Any) -> list[Any]:
    """The replies to a document's request: several with ``repeats``, else one."""
    if not isinstance(value, list):
        return [value]
    return value[0] if value and isinstance(value[0], list) else value


def _prompt_lm_eval(arguments: Any) -> str | None:
    # The writer stores {"gen_args_0": {"arg_0": prompt, "arg_1": kwargs, ...}}; in memory it is [[prompt, ...]].
    if isinstance(arguments, dict):
        first = arguments.get("gen_args_0") or {}
        value = first.get("arg_0") if isinstance(first, dict) else None
    else:
        value = _first_text(arguments)
    return value if isinstance(value, str) else None


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PredictionsFileError(f"{path}: line {number} is not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise PredictionsFileError(f"{path}: line {number} is not a JSON object")
            yield number, row


_KNOWN_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics", "doc_hash",
               "prompt_hash", "target_hash", "input", "token_counts", "input_media"}


def read_harness_log(path: Path, fmt: str) -> ForeignFile:
    """An lm-eval or lmms-eval samples file; one row per document (the first filter's line)."""
    match = _name_match(fmt, path.name)
    results_file, results = _results_beside(path, fmt, match.group("date") if match else None)
    task = match.group("task") if match else None
    rows: dict[int, ForeignRow] = {}
    for number, line in _json_lines(path):
        if "doc_id" not in line:
            hint = " (is it this project's own JSONL? then leave out --predictions-format)" if "id" in line else ""
            raise PredictionsFileError(f"{path}: line {number} has no 'doc_id'; not an {fmt} samples file{hint}")
        try:
            doc_id = int(line["doc_id"])
        except (TypeError, ValueError):
            raise PredictionsFileError(
                f"{path}: line {number}: doc_id {line['doc_id']!r} is not a row number") from None
        raw = line.get("resps", line.get("filtered_resps"))
        if isinstance(raw, list) and len(raw) > 1 and all(isinstance(r, list) for r in raw):
            raise PredictionsFileError(f"{path}: line {number}: doc_id {doc_id} holds one response per answer "
                                       "option (a log-likelihood task), not a generated reply")
        response = _first_text(raw)
        if doc_id in rows:
            first = rows[doc_id]
            if first.response != response:
                raise PredictionsFileError(f"{path}: line {number}: doc_id {doc_id} answered twice with different "
                                           f"replies (first on {first.where})")
            first.extra.setdefault("other_filters", {})[str(line.get("filter"))] = line.get("filtered_resps")
            continue
        doc = line.get("doc") if isinstance(line.get("doc"), dict) else None
        prompt = _prompt_lm_eval(line.get("arguments")) if fmt == "lm-eval" else line.get("input")
        if fmt == "lm-eval" and prompt is None and isinstance(line.get("input"), str):
            prompt = line["input"]
        extra = {"filtered_resps": line.get("filtered_resps"), "filter": line.get("filter"),
                 **{k: line[k] for k in ("doc_hash", "prompt_hash", "target_hash") if k in line},
                 "their_metrics": {k: v for k, v in line.items() if k not in _KNOWN_KEYS}}
        replies = _replies(raw)
        if len(replies) > 1:
            extra["all_resps"] = replies  # repeats: the first reply is scored, every reply kept
        rows[doc_id] = ForeignRow(
            where=f"line {number}", doc_id=doc_id, doc=doc, prompt=prompt if isinstance(prompt, str) else None,
            target=None if line.get("target") is None else str(line["target"]), response=response, extra=extra)
    config = (results.get("configs") or {}).get(task or "", {}) if results else {}
    return ForeignFile(path, fmt, task, list(rows.values()), config, results_file, _model_info(results))


# --------------------------------------------------------------------------- VLMEvalKit

def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN: an empty cell read by a spreadsheet tool
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value)
    return text if text.strip() else None


def _table(path: Path) -> tuple[list[str], list[list[Any]]]:
    if path.suffix.lower() == ".xlsx":
        try:
            import openpyxl
        except ImportError as exc:
            raise PredictionsFileError(f"{path}: reading .xlsx files needs openpyxl "
                                       "(pip install -e \".[interop]\")") from exc
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            values = list(book.worksheets[0].iter_rows(values_only=True))
        finally:
            book.close()
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(encoding="utf-8", newline="") as handle:
            values = list(csv.reader(handle, delimiter=delimiter))
    if not values:
        raise PredictionsFileError(f"{path}: the file is empty")
    header = [str(h).strip() if h is not None else "" for h in values[0]]
    return header, [list(r) for r in values[1:] if any(c not in (None, "") for c in r)]


def vlmevalkit_dataset(path: Path) -> str:
    """The part of ``<model>_<dataset>`` after the model name is not separable in general
    (both may hold underscores); the whole stem is kept and matched by its end."""
    return path.stem


def read_vlmevalkit(path: Path) -> ForeignFile:
    header, body = _table(path)
    missing = [c for c in ("index", "question", "prediction") if c not in header]
    if missing:
        raise PredictionsFileError(f"{path}: not a VLMEvalKit prediction file: no column {', '.join(missing)} "
                                   f"(columns: {', '.join(header)})")
    rows = []
    for number, values in enumerate(body, start=2):
        cells = {name: _cell(values[i]) if i < len(values) else None for i, name in enumerate(header) if name}
        options = {k: v for k, v in cells.items() if re.fullmatch(r"[A-Z]", k) and v is not None}
        others = {k: v for k, v in cells.items() if k not in ("index", "question", "answer", "prediction", *options)}
        rows.append(ForeignRow(
            where=f"row {number}", index=cells.get("index"), question=cells.get("question"),
            target=cells.get("answer"), response=cells.get("prediction"), extra={"options": options, **others},
        ))
    return ForeignFile(path, "vlmevalkit", vlmevalkit_dataset(path), rows)


def read_file(path: Path, fmt: str) -> ForeignFile:
    return read_vlmevalkit(path) if fmt == "vlmevalkit" else read_harness_log(path, fmt)
