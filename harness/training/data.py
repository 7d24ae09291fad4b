"""Training queries without answers, written for verl and for TRL from the same rows.

Sources are tasks of the registry (e.g. ``omni3d_bench_train``, Omni3D-Bench
rows 100-500 with answers withheld) and JSONL files of generated queries
(``{"image": ..., "query": ..., "source": ...}``, as
:mod:`harness.training.querygen` writes them). Only the question text and a
reference to the image are ever read: no answer field is read, kept or written.

Selection (:func:`select_rows`), all seeded:

1. de-duplication of identical questions (case and spacing ignored), first
   within each source, then across sources in the order given (the model sees
   only the text, so the same question on another image is the same prompt);
2. each source's unique rows shuffled with a seed derived from ``seed`` and the
   source's name, so adding a source never reorders another;
3. ``size`` rows taken: with ``balanced`` an equal share per source (the
   paper's data-size ablation, e.g. 40/160/400/800, half Omni3D and half
   generated), a source short of its share giving the rest to the others;
   else a uniform sample of the union. Because every source's order is fixed,
   a smaller size with the same seed selects a subset of a larger one;
4. the selected rows shuffled together, so training batches mix the sources.

Each row carries its training prompt (:mod:`harness.training.prompts`), as the protocol
(``--protocol``) lays it out:

- ``paper`` (the default): the original's system prompt, read verbatim from the
  pinned upstream file (:mod:`harness.upstream`), as the system message, and the
  bare question as the user turn, as the original training did;
- ``harness``: the prompt built by the evaluation's own code
  (:class:`~harness.systems.llm_program.LLMProgramSystem`: the same prompt file
  and ``{api}`` substitution); ``layout="system"`` puts it in the system message
  and the question in the user message, ``"user"`` puts both in one user turn.

The source ``valor_queries`` is the original release's 816 training queries,
read from the pinned upstream file (never stored here); keep its 7 repeated
questions with ``dedup=False`` (``--keep-duplicates``) to train on exactly its rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.jsonl import json_objects
from harness.tasks import TaskRegistry
from harness.training.prompts import DEFAULT_PROMPT, PaperTrainingPrompt, TrainingPrompt
from harness.types import AnswerType, Sample

log = logging.getLogger(__name__)

UPSTREAM_SOURCE = "valor_queries"  # the original's training queries, from the pinned upstream file
UNNAMED_SOURCE = "web-images"  # the original's rows without a data_source: free-form questions on web images
ABILITY = "spatial_reasoning"
VERL_FILE, TRL_FILE, MANIFEST_FILE = "train.parquet", "train.jsonl", "manifest.json"
_JSONL_SUFFIXES = (".jsonl", ".json")


class TrainingDataError(ValueError):
    """Sources that cannot give the data asked for; the message says why."""


@dataclass
class QueryRow:
    """One training query: the question and where it came from, never an answer."""

    question: str
    source: str  # the data source written to the files: a task name, or the JSONL row's ``source``
    origin: str  # the --sources item it was read from (the unit of balancing)
    id: str  # stable within its origin: ``task/sample id`` or ``file:line``
    image: str | None  # a reference to the image (a path, or the dataset row it lives in)
    # Task rows: the sample without its answer, for callers that need the image itself
    # or the sample's meta (the synthetic benchmark's reference programs).
    sample: Sample | None = field(default=None, repr=False, compare=False)


@dataclass
class DataOptions:
    """What :func:`build_training_data` selects and how each prompt is laid out."""

    size: int | None = None  # rows in all; None: every unique row of every source
    balanced: bool = True  # equal shares per source; False: a uniform sample of the union
    seed: int = 0
    dedup: bool = True
    protocol: str = "paper"  # paper: the original's prompt and layout; harness: ours (below)
    layout: str | None = None  # harness: "system" (default, as the paper trained) or "user" (as it evaluated)
    prompt: str | None = None  # harness: a prompt file, resolved like a system file's ``prompt``
    question_template: str | None = None  # harness: the user turn (default: the bare question)
    data_dir: str | None = None  # local dataset copies for task sources, and the upstream files (--data-dir)
    allow_eval_tasks: bool = False  # tasks with answers are evaluation data: refused unless asked for

    def __post_init__(self) -> None:
        if self.protocol not in ("paper", "harness"):
            raise TrainingDataError(f"protocol must be 'paper' or 'harness', got {self.protocol!r}")
        if self.protocol == "paper":
            given = [name for name in ("layout", "prompt", "question_template") if getattr(self, name) is not None]
            if given:
                raise TrainingDataError(f"{', '.join(given)}: the paper protocol lays prompts out as the original "
                                        f"did (its system prompt, then the bare question); use --protocol harness")
        else:
            self.layout = self.layout or "system"
            self.prompt = self.prompt or DEFAULT_PROMPT
            self.question_template = self.question_template or "{question}"
            if self.layout not in ("system", "user"):
                raise TrainingDataError(f"layout must be 'system' or 'user', got {self.layout!r}")
        if self.size is not None and self.size < 1:
            raise TrainingDataError(f"size must be at least 1, got {self.size}")


def training_prompt(options: DataOptions) -> TrainingPrompt | PaperTrainingPrompt:
    """The request layout the options ask for: the original's under ``paper``, ours under ``harness``."""
    if options.protocol == "paper":
        return PaperTrainingPrompt(options.data_dir)
    return TrainingPrompt(options.prompt or DEFAULT_PROMPT, options.layout or "system",
                          options.question_template or "{question}")


@dataclass
class SourceCounts:
    read: int = 0  # rows read (unreadable task rows are not counted)
    unique: int = 0  # after de-duplication
    selected: int = 0
    unreadable: int = 0  # task rows that could not be read (logged)


@dataclass
class TrainingData:
    rows: list[QueryRow]
    messages: list[list[dict[str, str]]]  # the prompt of each row, in order
    counts: dict[str, SourceCounts] = field(default_factory=dict)  # per --sources item
    prompt_sha256: str = ""


# ----------------------------------------------------------------------------- reading sources


def is_file_source(spec: str) -> bool:
    return spec.lower().endswith(_JSONL_SUFFIXES) or Path(spec).is_file()


def without_answer(sample: Sample) -> Sample:
    """The sample with its answer, and everything derived from it, removed."""
    meta = {key: value for key, value in sample.meta.items() if key != "compat"}
    return dataclasses.replace(sample, answer=None, compat_gold=None, answer_type=AnswerType.NONE, meta=meta)


def read_task_source(name: str, registry: TaskRegistry, data_dir: str | None = None,
                     allow_eval_tasks: bool = False, limit: int | None = None) -> tuple[list[QueryRow], int]:
    """Questions of a task (its first ``limit`` rows), and the number of rows that could not be read.

    Only the question and the image are kept: each row's ``sample`` has its
    answer removed. A task that carries answers is an evaluation task: training
    on its questions would contaminate its results, so it is refused unless
    ``allow_eval_tasks``.
    """
    config = registry.config(name)
    if config.answers and not allow_eval_tasks:
        raise TrainingDataError(
            f"task {name!r} is an evaluation task (it has answers); training on its questions contaminates "
            f"its results. Use a training task (e.g. omni3d_bench_train) or pass --allow-eval-tasks.")
    rows, skipped = [], 0
    for sample in registry.task(name, data_dir).samples(limit):
        if sample.error or not sample.question.strip():
            skipped += 1
            log.warning("training data: skipping %s/%s: %s", name, sample.id, sample.error or "empty question")
            continue
        image = sample.image.describe() if sample.image is not None else None
        rows.append(QueryRow(sample.question.strip(), name, name, f"{name}/{sample.id}", image,
                             without_answer(sample)))
    return rows, skipped


def read_query_file(path: str | Path, default_source: str | None = None) -> list[QueryRow]:
    """Generated queries: JSON lines with ``query`` (required), ``image`` and ``source``
    (when a line has none: ``default_source``, else the file's name without its suffix).

    Relative image paths are read relative to the file's folder, so a folder of
    images and its query file can move together. A torn last line (a generator
    still writing) is skipped; any other malformed line is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file {path} does not exist")
    rows: list[QueryRow] = []
    for number, entry in json_objects(path, TrainingDataError, torn_tail_ok=True):
        where = f"{path}:{number}"
        query = entry.get("query")
        if not isinstance(query, str) or not query.strip():
            raise TrainingDataError(f"{where}: needs a non-empty string 'query'")
        image = entry.get("image")
        if image is not None:
            # Written relative to the file's folder (see querygen); absolute here, so the
            # training files name the image wherever they are read.
            image = str((path.parent / str(image)).resolve())
        source = entry.get("source") or default_source or path.stem
        rows.append(QueryRow(query.strip(), str(source), str(path), f"{path.name}:{number}", image))
    return rows


def read_upstream_queries(data_dir: str | None = None) -> list[QueryRow]:
    """The original release's training queries (``problem`` of each row), from the pinned file."""
    from harness.training.protocol import paper_texts

    rows = []
    for number, row in enumerate(paper_texts(data_dir).training_queries(), 1):
        question = row.get("problem")
        if not isinstance(question, str) or not question.strip():
            raise TrainingDataError(f"{UPSTREAM_SOURCE} row {number}: no 'problem' text")
        rows.append(QueryRow(question.strip(), str(row.get("data_source") or UNNAMED_SOURCE), UPSTREAM_SOURCE,
                             f"{UPSTREAM_SOURCE}:{number}", None))
    return rows


def read_source(spec: str, registry: TaskRegistry, options: DataOptions) -> tuple[list[QueryRow], int]:
    """Rows of one --sources item (``valor_queries``, a JSONL file or a task name) and the rows skipped."""
    if spec == UPSTREAM_SOURCE:
        return read_upstream_queries(options.data_dir), 0
    if is_file_source(spec):
        return read_query_file(spec), 0
    return read_task_source(spec, registry, options.data_dir, options.allow_eval_tasks)


# ----------------------------------------------------------------------------- selection


def question_key(question: str) -> str:
    """What makes two questions identical: the words, ignoring case and spacing."""
    return re.sub(r"\s+", " ", question).strip().casefold()


def _source_rng(seed: int, origin: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random (not Python's salted hash),
    # so the order is the same in every process.
    return random.Random(f"{seed}:{origin}")


def _shares(size: int, available: Sequence[int]) -> list[int]:
    """An equal share of ``size`` per source; a source with fewer rows gives all it
    has and the rest is split among the others (remainders to the first ones)."""
    shares = [0] * len(available)
    open_sources = [i for i, n in enumerate(available) if n > 0]
    left = size
    while left > 0 and open_sources:
        each, extra = divmod(left, len(open_sources))
        for rank, i in enumerate(list(open_sources)):
            want = each + (1 if rank < extra else 0)
            take = min(want, available[i] - shares[i])
            shares[i] += take
            left -= take
        open_sources = [i for i in open_sources if shares[i] < available[i]]
    return shares


def _row_question_key(row: QueryRow) -> str:
    return question_key(row.question)


def select_rows(pools: dict[str, list[QueryRow]], options: DataOptions,
                key: Callable[[QueryRow], str] = _row_question_key) -> tuple[list[QueryRow], dict[str, int]]:
    """The selected rows (shuffled together) and the number of unique rows per source.

    Rows with the same ``key`` are duplicates (by default identical questions;
    the pseudo-labelling pipeline uses one row per image)."""
    seen: set[str] = set()
    unique: dict[str, list[QueryRow]] = {}
    for origin, rows in pools.items():
        kept = []
        for row in rows:
            row_key = key(row)
            if options.dedup and row_key in seen:
                continue
            seen.add(row_key)
            kept.append(row)
        dropped = len(rows) - len(kept)
        if dropped:
            log.info("selection: %s: %d duplicates dropped", origin, dropped)
        _source_rng(options.seed, origin).shuffle(kept)
        unique[origin] = kept

    total = sum(len(rows) for rows in unique.values())
    if options.size is None:
        selected = [row for rows in unique.values() for row in rows]
    elif options.size > total:
        counts = ", ".join(f"{origin}: {len(rows)}" for origin, rows in unique.items())
        raise TrainingDataError(f"asked for {options.size} rows but the sources hold only {total} unique "
                                f"rows ({counts})")
    elif options.balanced:
        shares = _shares(options.size, [len(rows) for rows in unique.values()])
        equal = options.size // len(unique)
        short = [f"{origin} ({len(rows)})" for origin, rows in unique.items() if len(rows) < equal]
        if short:
            log.warning("selection: below an equal share of %d: %s; the other sources fill the rest",
                        equal, ", ".join(short))
        selected = [row for (_, rows), share in zip(unique.items(), shares) for row in rows[:share]]
    else:
        union = [row for rows in unique.values() for row in rows]
        # The first rows of one seeded permutation, so a smaller size is again a subset.
        _source_rng(options.seed, "<union>").shuffle(union)
        selected = union[:options.size]
    random.Random(f"{options.seed}:<mix>").shuffle(selected)
    return selected, {origin: len(rows) for origin, rows in unique.items()}


# ----------------------------------------------------------------------------- building and writing


def build_training_data(sources: Sequence[str], options: DataOptions | None = None,
                        registry: TaskRegistry | None = None) -> TrainingData:
    """Read every source, select rows and lay out their prompts."""
    options = options or DataOptions()
    if not sources:
        raise TrainingDataError("no sources given")
    if len(set(sources)) != len(sources):
        raise TrainingDataError(f"a source is named twice: {', '.join(sources)}")
    registry = registry or TaskRegistry()
    prompt = training_prompt(options)
    prompt_text = prompt.text  # a missing prompt file fails here, before any data is read
    pools: dict[str, list[QueryRow]] = {}
    counts: dict[str, SourceCounts] = {}
    for spec in sources:
        rows, skipped = read_source(spec, registry, options)
        if not rows:
            raise TrainingDataError(f"source {spec!r} holds no usable questions")
        origin = rows[0].origin
        pools[origin] = rows
        counts[origin] = SourceCounts(read=len(rows), unreadable=skipped)
    selected, unique = select_rows(pools, options)
    for origin, n in unique.items():
        counts[origin].unique = n
    for row in selected:
        counts[row.origin].selected += 1
    return TrainingData(selected, [prompt.messages(row.question) for row in selected], counts,
                        hashlib.sha256(prompt_text.encode("utf-8")).hexdigest())


def verl_records(data: TrainingData) -> list[dict[str, Any]]:
    """Rows in verl's RL dataset layout. There is no ground truth: the reward
    (:mod:`harness.training.verl_reward`) reads ``extra_info["question"]``."""
    return [{
        "data_source": row.source,
        "prompt": messages,
        "ability": ABILITY,
        "reward_model": {"style": "model", "ground_truth": ""},
        "extra_info": {"question": row.question, "source": row.source, "index": index, "image": row.image,
                       "id": row.id},
    } for index, (row, messages) in enumerate(zip(data.rows, data.messages))]


def trl_records(data: TrainingData) -> list[dict[str, Any]]:
    """Rows of a conversational TRL dataset; every column but ``prompt`` reaches the
    reward functions. The image reference is ``image_ref``, not ``image``: TRL's
    trainers treat an ``image`` column as pixels to feed a vision-language model."""
    return [{"prompt": messages, "question": row.question, "source": row.source, "index": index,
             "image_ref": row.image, "id": row.id}
            for index, (row, messages) in enumerate(zip(data.rows, data.messages))]


def write_verl_parquet(data: TrainingData, path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    # An explicit schema: inferred types would break on a column that is null in every row.
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(message)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("question", pa.string()), ("source", pa.string()), ("index", pa.int64()),
                                  ("image", pa.string()), ("id", pa.string())])),
    ])
    path = Path(path)
    pq.write_table(pa.Table.from_pylist(verl_records(data), schema=schema), path)
    return path


def write_trl_jsonl(data: TrainingData, path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for record in trl_records(data):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def load_trl_dataset(path: str | Path) -> Any:
    """``train.jsonl`` as a ``datasets.Dataset`` for ``GRPOTrainer(train_dataset=...)``."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


def manifest(data: TrainingData, sources: Sequence[str], options: DataOptions) -> dict[str, Any]:
    by_source: dict[str, int] = {}
    for row in data.rows:
        by_source[row.source] = by_source.get(row.source, 0) + 1
    settings = {k: v for k, v in asdict(options).items() if k != "data_dir"}
    return {
        "rows": len(data.rows),
        "sources": list(sources),
        "counts": {origin: asdict(c) for origin, c in data.counts.items()},
        "rows_per_data_source": by_source,
        "options": settings,
        "prompt_sha256": data.prompt_sha256,
        "files": {"verl": VERL_FILE, "trl": TRL_FILE},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_training_data(sources: Sequence[str], out_dir: str | Path, options: DataOptions | None = None,
                        registry: TaskRegistry | None = None) -> dict[str, Any]:
    """Build the data and write ``train.parquet``, ``train.jsonl`` and ``manifest.json``
    into ``out_dir``; returns the manifest."""
    options = options or DataOptions()
    data = build_training_data(sources, options, registry)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_verl_parquet(data, out / VERL_FILE)
    write_trl_jsonl(data, out / TRL_FILE)
    info = manifest(data, sources, options)
    (out / MANIFEST_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("training data: %d rows written to %s", len(data.rows), out)
    return info


def counts_table(info: dict[str, Any]) -> list[list[Any]]:
    """Rows for a printed summary: source, read, unique, selected, unreadable."""
    return [[origin, c["read"], c["unique"], c["selected"], c["unreadable"]] for origin, c in info["counts"].items()]


def split_sources(text: str) -> list[str]:
    """``a,b.jsonl`` -> ["a", "b.jsonl"]."""
    return [item.strip() for item in text.split(",") if item.strip()]
