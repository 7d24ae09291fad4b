"""Our tasks as lm-evaluation-harness or lmms-eval tasks (``harness export``).

Each task becomes a local dataset (one parquet file holding, per sample, the
prompt exactly as this project's direct-VLM systems send it, the image bytes as
stored in the source, the gold answer, its type and options) and a task YAML
naming that folder by absolute path, so the other harness needs neither the hub
nor this package: it reads the rows and hands over the stored prompt. Prompts
are therefore ours for every sample by construction, whatever our formatters
and datasets did to build them. One ``utils.py`` (``task_utils``) serves all
exported tasks; ``valor_export.json`` records what was exported from what.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
from tqdm import tqdm

from harness import __version__
from harness.interop.gold import answer_text
from harness.systems import SystemRegistry
from harness.tasks import Task, TaskRegistry
from harness.types import ImageError, Sample

log = logging.getLogger(__name__)

FLAVORS = ("lm-eval", "lmms-eval")
MANIFEST = "valor_export.json"
DEFAULT_PREFIX = "valor_"
GROUP_TAG = "valor_harness"  # `--tasks valor_harness` runs every exported task
SPLIT = "test"
DEFAULT_MAX_TOKENS = 1024
_BATCH = 64  # rows per parquet write


class ExportError(ValueError):
    """An export that cannot be written; the message names the task, system or folder."""


@dataclass
class ExportedTask:
    task: str  # our name
    name: str  # the name in the other harness
    rows: int
    skipped: dict[str, str] = field(default_factory=dict)  # sample id -> why it is not exported
    fingerprint: str = ""
    revision: str = ""


class PromptBuilder:
    """The prompt a direct-VLM system of ours sends for a sample (its text part)."""

    def __init__(self, systems: SystemRegistry, name: str, overrides: dict[str, Any] | None = None) -> None:
        self.system = systems.build(name, overrides)
        if not callable(getattr(self.system, "instructions", None)):
            raise ExportError(f"system {name!r} (kind {systems.config(name).kind}) does not ask a VLM directly; "
                              "export needs a direct_vlm system to take its prompts from")
        self.name = name

    def __call__(self, sample: Sample) -> str:
        return self.system.instructions(sample, sample.image.size())

    def generation(self) -> dict[str, Any]:
        """Greedy decoding with the system's token budget, as its runs use."""
        params = self.system.params
        budget = ((params.get("vlm") or {}).get("max_new_tokens") or (params.get("sampling") or {}).get("max_tokens")
                  or DEFAULT_MAX_TOKENS)
        return {"max_tokens": int(budget)}

    def close(self) -> None:
        self.system.close()


def _features() -> Any:
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "task": datasets.Value("string"),
        "subset": datasets.Value("string"),
        "question": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "image": datasets.Image(),
    })


def _rows(task: Task, limit: float | None, prompt: PromptBuilder, skipped: dict[str, str]) -> Iterator[dict[str, Any]]:
    for sample in tqdm(task.samples(limit), desc=f"export {task.name}", unit="sample", disable=None):
        if sample.error:  # our runs record such rows as data errors without asking any model
            skipped[sample.id] = sample.error
            continue
        if sample.image is None:
            skipped[sample.id] = f"sample {sample.id}: no image"
            continue
        try:
            data = sample.image.read_bytes()
            text = prompt(sample)
        except ImageError as exc:
            skipped[sample.id] = str(exc)
            continue
        yield {
            "id": sample.id, "task": sample.task, "subset": sample.subset or "", "question": sample.question,
            "prompt": text, "answer": answer_text(sample.answer), "answer_type": sample.answer_type,
            "choices": list(sample.choices or []), "image": {"bytes": data, "path": sample.image.file_name()},
        }


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = _features()
    schema = features.arrow_schema  # carries the feature types, so `image` loads as a PIL image
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def _function(name: str) -> str:
    return f"!function utils.{name}"


def task_yaml(flavor: str, name: str, data_folder: Path, task: Task, generation: dict[str, Any],
              prompt_system: str, skipped: list[str]) -> str:
    """The task file; ``!function`` entries are written as text (no YAML dumper emits that tag)."""
    metadata = {
        "version": task.config.version,
        "harness_task": task.name,
        "harness_fingerprint": task.config.fingerprint(),
        "harness_revision": task.revision,
        "source_dataset": task.config.dataset.path,
        "source_parts": [p.label for p in task.config.dataset.parts],
        "prompt_system": prompt_system,
        "harness_skipped": skipped,  # samples not exported: the rows' order is ours without them
        "harness_version": __version__,
    }
    plain: dict[str, Any] = {"task": name}
    # `until: []` stops at the end of the reply only: both harnesses otherwise stop at the first
    # blank line, cutting off the answer line our prompts ask for after any reasoning.
    if flavor == "lm-eval":
        plain["tag"] = [GROUP_TAG]
        functions = {"doc_to_image": "doc_to_image", "doc_to_text": "doc_to_text"}
        kwargs = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": generation["max_tokens"]}
    else:
        plain["tag"] = GROUP_TAG
        functions = {"doc_to_visual": "lmms_doc_to_visual", "doc_to_text": "lmms_doc_to_text"}
        kwargs = {"max_new_tokens": generation["max_tokens"], "temperature": 0, "do_sample": False, "until": []}
    plain.update({"dataset_path": str(data_folder.resolve()), "test_split": SPLIT, "output_type": "generate_until"})
    tail = {
        "doc_to_target": "answer",
        "generation_kwargs": kwargs,
        "metric_list": [{"metric": "answer_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": metadata,
    }
    lines = [f"# {task.name} as this project asks it ({task.config.description.strip()})",
             "# Written by `python -m harness export`; the rows under dataset_path hold the prompts.",
             yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip()]
    lines += [f"{key}: {_function(fn)}" for key, fn in functions.items()]
    lines.append(f"process_results: {_function('process_results')}")
    lines.append(yaml.safe_dump(tail, sort_keys=False, allow_unicode=True).rstrip())
    return "\n".join(lines) + "\n"


def _prepare_folder(out: Path, flavor: str, overwrite: bool) -> list[dict[str, Any]]:
    """An empty folder, or one an earlier export of the same format wrote; returns the
    tasks that export recorded (a task exported again replaces its entry and files)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        earlier = json.loads(manifest.read_text(encoding="utf-8"))
        if earlier.get("format") != flavor:
            raise ExportError(f"{out} holds a {earlier.get('format')} export; write the {flavor} one to another --out")
        return list(earlier.get("tasks") or [])
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty and holds no earlier export ({MANIFEST}); choose another --out "
                          "or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return []


def _export_task(flavor: str, task: Task, out: Path, prefix: str, prompt: PromptBuilder,
                 limit: float | None) -> ExportedTask:
    """One task's data folder and YAML."""
    target = f"{prefix}{task.name}"
    folder = out / "data" / target
    if folder.exists():
        shutil.rmtree(folder)
    record = ExportedTask(task.name, target, 0, fingerprint=task.config.fingerprint(), revision=task.revision)
    record.rows = _write_parquet(_rows(task, limit, prompt, record.skipped), folder / f"{SPLIT}-00000-of-00001.parquet")
    (out / f"{target}.yaml").write_text(
        task_yaml(flavor, target, folder, task, prompt.generation(), prompt.name, list(record.skipped)),
        encoding="utf-8")
    if record.skipped:
        log.warning("%s: %d samples not exported (first: %s)", task.name, len(record.skipped),
                    next(iter(record.skipped.values())))
    return record


def export_tasks(flavor: str, names: list[str], out: Path, tasks: TaskRegistry, systems: SystemRegistry,
                 prompt_system: str, system_args: dict[str, Any] | None = None, data_dir: str | None = None,
                 limit: float | None = None, prefix: str = DEFAULT_PREFIX,
                 overwrite: bool = False) -> list[ExportedTask]:
    if flavor not in FLAVORS:
        raise ExportError(f"unknown export format {flavor!r}; choose one of {', '.join(FLAVORS)}")
    for name in names:
        if not tasks.config(name).answers:
            raise ExportError(f"task {name!r} holds training questions without answers; it cannot be exported")
    prompt = PromptBuilder(systems, prompt_system, system_args)
    exported: list[ExportedTask] = []
    try:
        entries = _prepare_folder(out, flavor, overwrite)
        (out / "utils.py").write_text((Path(__file__).parent / "task_utils.py").read_text(encoding="utf-8"),
                                      encoding="utf-8")
        for name in names:
            record = _export_task(flavor, tasks.task(name, data_dir), out, prefix, prompt, limit)
            exported.append(record)
            # Recorded task by task, so an export stopped by a missing dataset still lists what it wrote.
            entries = [e for e in entries if e.get("task") != name]
            entries.append({**asdict(record), "prompt_system": prompt_system, "system_args": system_args or {},
                            "limit": limit})
            manifest = {"format": flavor, "harness_version": __version__, "tasks": entries}
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    finally:
        prompt.close()
    return exported
