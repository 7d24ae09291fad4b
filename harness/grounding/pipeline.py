"""VLM-verified pseudo-labels for the detector (the paper's section 3.2 and appendix A.4.2).

For each (image, query) pair (:mod:`harness.grounding.pairs`):

1. a program system of ``baselines/`` (by default ``valor-rl``) writes the
   query's program through its own ``write_programs``;
2. the phrases the program gives ``gd_detect`` are read from its syntax tree
   (:mod:`harness.grounding.phrases`);
3. GroundingDINO, with thresholds lowered (0.1 and 0.1) so that it
   over-predicts, detects them on the image (batched ``detect_batch``); the
   highest-scoring ``max_candidates`` boxes are the candidates;
4. the VLM verifier (:mod:`harness.grounding.verifier`) filters them in three
   stages: coarse, per crop, de-duplication. What survives is the image's labels.

Every image gets one JSON line in ``OUT/records.jsonl``, appended and flushed
per batch, whatever happened to it: ``ok``; ``no_program`` (the writer's reply
had no program), ``no_phrases`` (the program asks the detector for nothing that
can be read without running it, or does not parse), ``no_detections``; or
``failed`` with the ``stage`` (``image``, ``program``, ``detector``,
``coarse``, ``crop``, ``dedup``), the error and the start of an unreadable
reply. A later run over the same folder skips the images already done and tries
the failed ones again, from the stage that failed (a failed verifier stage
reuses the recorded program and candidates). Each image with candidates is
copied to ``OUT/images/<source>/``; :func:`harness.grounding.export.export`
then writes the labels, statistics and review pages.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image

from harness.backends import ChatBackend, make_chat_backend
from harness.grounding.pairs import ImagePair, PairCounts, read_exclusions, read_pairs
from harness.grounding.phrases import extract_phrases
from harness.grounding.verifier import STAGES, BoxVerifier, Candidate, StageJob, StageOutcome
from harness.jsonl import JsonlAppender
from harness.tasks import TaskRegistry
from harness.training.recipe_config import RecipeConfigError, load_recipe
from harness.types import AnswerType, ImageError, Prediction, Sample, Status

log = logging.getLogger(__name__)

RECORDS_FILE, RUN_FILE, IMAGES_DIR = "records.jsonl", "run.json", "images"
FINAL_STATUSES = ("ok", "no_program", "no_phrases", "no_detections")
FAILED = "failed"
REPLY_START = 500
# A failed model call is worth retrying; a reply without a program is the writer's answer.
_RETRIED_PROGRAM_STATUSES = (Status.API_ERROR, Status.SYSTEM_ERROR, Status.IMAGE_ERROR)
_IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


@dataclass
class PseudoLabelConfig:
    """Settings of a pseudo-labelling run (``recipes/grounding_pseudolabels/config.yaml``)."""

    # Task names (questions only) and JSONL files of generated queries.
    sources: list[str] = field(default_factory=lambda: ["omni3d_bench_train", "vsr_train", "tallyqa_train",
                                                        "gqa_train"])
    size: int | None = None  # images in all, an equal share per source; None: every image
    balanced: bool = True
    seed: int = 0  # the selection, and the program writer's sampling
    read_limit: int | None = None  # only the first N rows of each source are read (large tasks)
    limit: int | None = None  # only the first N selected images are processed (a quick look)
    data_dir: str | None = None  # local dataset copies (as --data-dir)
    include_paths: list[str] = field(default_factory=list)  # extra folders of task and system files
    allow_eval_tasks: bool = False  # tasks with answers are evaluation data: refused unless asked for
    exclude_images: str | None = None  # a COCO JSON file, or a text file of image file names
    # The program writer: a system of baselines/ and overrides of its parameters.
    system: str = "valor-rl"
    system_args: dict[str, Any] = field(default_factory=dict)  # nested or dotted: {llm: {model: m}}, {llm.model: m}
    # The over-predicting detector: settings of harness.tools.detector.GroundingDinoDetector.
    detector: dict[str, Any] = field(default_factory=lambda: {
        "checkpoint": "IDEA-Research/grounding-dino-tiny", "box_threshold": 0.1, "text_threshold": 0.1,
        "label_match": "exact", "device": "auto"})
    phrases_per_query: int = 1  # phrases per detector caption (1: each phrase on its own, as programs ask)
    detector_batch: int = 8  # (image, caption) pairs per forward pass
    max_candidates: int = 30  # highest-scoring boxes per image handed to the verifier
    # The VLM verifier: a chat backend kind and its options (the paper: GPT-5-mini, reasoning effort medium).
    verifier: dict[str, Any] = field(default_factory=lambda: {
        "backend": "openai", "model": "gpt-5-mini", "temperature": None,
        "extra": {"reasoning_effort": "medium"}, "max_concurrency": 32, "timeout_s": 300})
    verifier_sampling: dict[str, Any] = field(default_factory=dict)  # per-request overrides
    crop_padding: float = 0.1  # of the box's size, on every side
    crop_side: int = 640  # long side of a crop, in pixels
    batch_size: int = 64  # images whose programs, detections and verification go together
    retry_failed: bool = True
    cache: bool | str = True  # deterministic verifier requests (temperature 0 or a seed) kept on disk

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            self.sources = [s.strip() for s in self.sources.split(",") if s.strip()]
        if not self.sources:
            raise RecipeConfigError("pseudo-labels: sources is empty")
        if "backend" not in (self.verifier or {}):
            raise RecipeConfigError("pseudo-labels: verifier.backend is required")
        for name in ("phrases_per_query", "detector_batch", "max_candidates", "batch_size", "crop_side"):
            if int(getattr(self, name)) < 1:
                raise RecipeConfigError(f"pseudo-labels: {name} must be at least 1, got {getattr(self, name)}")
        if self.crop_padding < 0:
            raise RecipeConfigError(f"pseudo-labels: crop_padding must not be negative, got {self.crop_padding}")
        for name in ("size", "limit", "read_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeConfigError(f"pseudo-labels: {name} must be at least 1, got {value}")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "PseudoLabelConfig":
        return load_recipe(cls, path, overrides)


@dataclass
class RunStats:
    """What one run did (the whole folder's numbers are in ``stats.json``)."""

    selected: int = 0
    already_done: int = 0
    processed: int = 0
    status: dict[str, int] = field(default_factory=dict)
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    sources: dict[str, PairCounts] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Work:
    """One image in flight: its pair, the record being built, and the decoded image."""

    pair: ImagePair
    record: dict[str, Any]
    image: Image.Image | None = None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return "status" not in self.record

    def finish(self, status: str, reason: str | None = None, reply: str | None = None) -> None:
        self.record["status"] = status
        if reason is not None:
            self.record["reason"] = reason
        if reply is not None:
            self.record["reply"] = reply[:REPLY_START]

    def fail(self, stage: str, error: str, reply: str | None = None) -> None:
        self.record.update(status=FAILED, stage=stage, error=error)
        if reply is not None:
            self.record["reply"] = reply[:REPLY_START]


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def dotted(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"llm": {"model": m}}`` -> ``{"llm.model": m}``: nested overrides of a system's parameters
    in the dotted form the system registry takes (``--set system_args.llm.model=m`` nests them)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def safe_name(text: str) -> str:
    """``text`` as a file name: letters, digits, dots, dashes and underscores only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def stored_bytes(data: bytes, image: Image.Image) -> tuple[bytes, str]:
    """The bytes to store for an image and their extension: the original encoding when
    its pixels are those the detector saw, else PNG (unknown formats, and EXIF-rotated
    files, whose viewers would turn them away from the boxes' pixel grid)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            extension = _IMAGE_FORMATS.get(opened.format or "")
            upright = opened.getexif().get(0x0112, 1) == 1
    except Exception:  # PIL raises many unrelated types for bad files
        extension, upright = None, False
    if extension and upright:
        return data, extension
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


class PseudoLabeler:
    """Runs the pipeline over a config's pairs into an output folder."""

    def __init__(self, config: PseudoLabelConfig | None = None, *, registry: TaskRegistry | None = None,
                 verifier_backend: ChatBackend | None = None, detector: Any = None, system: Any = None) -> None:
        self.config = config or PseudoLabelConfig()
        self.registry = registry or TaskRegistry(self.config.include_paths)
        if verifier_backend is None:
            options = dict(self.config.verifier)
            verifier_backend = make_chat_backend(options.pop("backend"), cache=self.config.cache, **options)
        self.verifier = BoxVerifier(verifier_backend, self.config.verifier_sampling, self.config.crop_padding,
                                    self.config.crop_side)
        self._detector = detector
        self._system = system
        self._names: dict[str, str] = {}  # stored image path -> the record id it belongs to

    # -- components, built on first use (a rerun that only retries verification loads no writer)

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from harness.tools.detector import GroundingDinoDetector

            self._detector = GroundingDinoDetector(**self.config.detector)
        return self._detector

    @property
    def system(self) -> Any:
        if self._system is None:
            from harness.systems import SystemRegistry, system_class
            from harness.systems.program import ProgramSystem

            systems = SystemRegistry(self.config.include_paths)
            kind = systems.config(self.config.system).kind
            if not issubclass(system_class(kind), ProgramSystem):
                raise RecipeConfigError(f"system {self.config.system!r} (kind {kind}) does not write programs; "
                                        f"use a program system such as valor-rl, an llm-tools-* system or reference")
            self._system = systems.build(self.config.system, dotted(self.config.system_args), seed=self.config.seed)
        return self._system

    # -- the run

    def pairs(self) -> tuple[list[ImagePair], dict[str, PairCounts]]:
        c = self.config
        exclude = read_exclusions(c.exclude_images) if c.exclude_images else None
        pairs, counts = read_pairs(c.sources, self.registry, size=c.size, seed=c.seed, balanced=c.balanced,
                                   data_dir=c.data_dir, allow_eval_tasks=c.allow_eval_tasks,
                                   read_limit=c.read_limit, exclude=exclude)
        return (pairs[:c.limit] if c.limit is not None else pairs), counts

    def run(self, out: str | Path, progress: bool = True) -> RunStats:
        from tqdm import tqdm

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self._note_settings(out)
        pairs, counts = self.pairs()
        stats = RunStats(selected=len(pairs), sources=counts)
        records = JsonlAppender(out / RECORDS_FILE)
        try:
            latest = {r["id"]: r for r in records.records if "id" in r}
            self._names = {r["image"]: r["id"] for r in latest.values() if r.get("image")}
            todo = [p for p in pairs if not self._done(latest.get(p.id))]
            stats.already_done = len(pairs) - len(todo)
            if stats.already_done:
                log.info("pseudo-labels: %d of %d images already done in %s", stats.already_done, len(pairs), out)
            bar = tqdm(total=len(todo), unit="image", desc="pseudo-labels", disable=not progress)
            for chunk in _chunks(todo, self.config.batch_size):
                for work in self._process(chunk, latest, out):
                    records.append(work.record)
                    self._count(work.record, stats)
                    bar.update(1)
                bar.set_postfix(ok=stats.status.get("ok", 0), failed=stats.status.get(FAILED, 0))
            bar.close()
        finally:
            records.close()
        if stats.status.get(FAILED):
            log.warning("pseudo-labels: %d images failed (%s); run again to retry them", stats.status[FAILED],
                        ", ".join(f"{k}: {v}" for k, v in sorted(stats.failed_by_stage.items())))
        return stats

    def _note_settings(self, out: Path) -> None:
        """Keep the settings beside the records; say which ones a continued run changed."""
        settings = {k: v for k, v in asdict(self.config).items()
                    if k in ("system", "system_args", "detector", "phrases_per_query", "max_candidates", "verifier",
                             "verifier_sampling", "crop_padding", "crop_side")}
        path = out / RUN_FILE
        if path.is_file():
            before = json.loads(path.read_text(encoding="utf-8"))
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            if changed:
                log.warning("pseudo-labels: %s holds records made with other settings (%s); each record names its "
                            "system, detector and verifier", out, ", ".join(changed))
        path.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")

    def _done(self, record: dict[str, Any] | None) -> bool:
        if record is None:
            return False
        return record.get("status") in FINAL_STATUSES or (record.get("status") == FAILED
                                                          and not self.config.retry_failed)

    @staticmethod
    def _count(record: dict[str, Any], stats: RunStats) -> None:
        stats.processed += 1
        status = record["status"]
        stats.status[status] = stats.status.get(status, 0) + 1
        if status == FAILED:
            stage = record.get("stage", "?")
            stats.failed_by_stage[stage] = stats.failed_by_stage.get(stage, 0) + 1
            log.warning("pseudo-labels: %s failed at %s: %s", record["id"], stage, record.get("error"))

    # -- one batch

    def _process(self, chunk: list[ImagePair], latest: dict[str, dict[str, Any]], out: Path) -> list[_Work]:
        works = [self._start(pair, latest.get(pair.id)) for pair in chunk]
        for work in works:
            try:
                work.image = work.pair.image.load()
            except ImageError as exc:
                work.fail("image", str(exc))
        self._write_programs([w for w in works if w.open and "program" not in w.record])
        self._detect([w for w in works if w.open and "candidates" not in w.record], out)
        for stage in STAGES:
            self._verify(stage, [w for w in works if w.open])
        for work in works:
            if work.open:
                kept = work.record["stages"]["dedup"]["kept"]
                work.record["kept"] = kept
                work.record["kept_boxes"] = [work.record["candidates"][i] for i in kept]
                work.finish("ok")
            if "stages" in work.record:
                work.record["verifier"] = self.verifier.backend.fingerprint
        return works

    def _start(self, pair: ImagePair, previous: dict[str, Any] | None) -> _Work:
        record: dict[str, Any] = {"id": pair.id, "source": pair.source, "query": pair.query,
                                  "file_name": pair.file_name}
        work = _Work(pair, record)
        if previous is not None and previous.get("stage") in STAGES and previous.get("candidates"):
            # Verification failed last time: start again from the failed stage.
            for key in ("image", "width", "height", "program", "plan", "phrases", "unresolved", "candidates",
                        "candidates_dropped", "system", "detector"):
                if key in previous:
                    record[key] = previous[key]
            done = STAGES[:STAGES.index(previous["stage"])]
            record["stages"] = {stage: previous["stages"][stage] for stage in done}
            work.candidates = [Candidate.from_dict(c) for c in previous["candidates"]]
        return work

    def _write_programs(self, works: list[_Work]) -> None:
        if not works:
            return
        samples = [Sample(id=w.pair.id, task=w.pair.source, question=w.pair.query, answer=None,
                          answer_type=AnswerType.NONE, image=w.pair.image, meta=dict(w.pair.meta)) for w in works]
        programs = self.system.write_programs(samples)
        for work, program in zip(works, programs):
            work.record["system"] = self.config.system
            if isinstance(program, Prediction):
                detail = program.detail or program.status
                if program.status in _RETRIED_PROGRAM_STATUSES:
                    work.fail("program", f"{program.status}: {detail}")
                else:
                    work.finish("no_program", f"{program.status}: {detail}", program.raw)
                continue
            work.record["program"] = program.source or program.code
            work.record["plan"] = program.plan
            extraction = extract_phrases(work.record["program"])
            work.record["phrases"] = extraction.phrases
            work.record["unresolved"] = [u.to_dict() for u in extraction.unresolved]
            if extraction.error:
                work.finish("no_phrases", extraction.error)
            elif not extraction.phrases:
                work.finish("no_phrases", "the program never calls gd_detect" if not extraction.calls else
                            f"none of its {extraction.calls} gd_detect calls has phrases built from literals")

    def _detect(self, works: list[_Work], out: Path) -> None:
        size = self.config.phrases_per_query
        requests = [(work, phrases) for work in works for phrases in _chunks(work.record["phrases"], size)]
        found: dict[int, list[dict[str, Any]]] = {id(w): [] for w in works}
        errors: dict[int, str] = {}
        for chunk in _chunks(requests, self.config.detector_batch):
            try:
                results = self.detector.detect_batch([(work.image, phrases) for work, phrases in chunk])
            except Exception as exc:  # a model failure fails these images, not the run
                log.exception("pseudo-labels: detection failed")
                for work, _ in chunk:
                    errors[id(work)] = f"{type(exc).__name__}: {exc}"
                continue
            for (work, _), detections in zip(chunk, results):
                found[id(work)].extend(detections)
        for work in works:
            work.record["detector"] = self.config.detector
            if id(work) in errors:
                work.fail("detector", errors[id(work)])
                continue
            ranked = sorted(found[id(work)], key=lambda d: -d["score"])
            kept = ranked[:self.config.max_candidates]
            work.candidates = [Candidate(i, d["label"], [float(v) for v in d["box"]], float(d["score"]))
                               for i, d in enumerate(kept)]
            work.record["candidates"] = [c.to_dict() for c in work.candidates]
            work.record["candidates_dropped"] = len(ranked) - len(kept)
            if not kept:
                work.finish("no_detections", f"no box above the thresholds for {work.record['phrases']}")
                continue
            self._store_image(work, out)

    def _store_image(self, work: _Work, out: Path) -> None:
        pair, image = work.pair, work.image
        data, extension = stored_bytes(pair.image.read_bytes(), image)
        stem = Path(pair.file_name).stem if pair.file_name else pair.id
        folder = f"{IMAGES_DIR}/{safe_name(pair.source)}"
        relative = f"{folder}/{safe_name(stem)}{extension}"
        if self._names.get(relative, pair.id) != pair.id:  # another image already has this name
            relative = f"{folder}/{safe_name(stem)}-{short_hash(pair.id)}{extension}"
        self._names[relative] = pair.id
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)  # never half an image under the final name
        work.record.update(image=relative, width=image.width, height=image.height)

    def _verify(self, stage: str, works: list[_Work]) -> None:
        pending, jobs = [], []
        for work in works:
            stages = work.record.setdefault("stages", {})
            if stage in stages:
                continue  # done by an earlier run
            previous = STAGES.index(stage) - 1
            indices = [c.index for c in work.candidates] if previous < 0 else stages[STAGES[previous]]["kept"]
            if not indices:
                stages[stage] = StageOutcome().to_dict()  # nothing left to check
                continue
            if work.image is None:
                raise RuntimeError(f"{work.pair.id}: no image to verify")  # a bug: every open work has one
            pending.append(work)
            jobs.append(StageJob(work.image, work.candidates, indices))
        outcomes = getattr(self.verifier, stage)(jobs) if jobs else []
        for work, outcome in zip(pending, outcomes):
            if outcome.failed:
                work.fail(stage, outcome.error or "", outcome.reply)
            else:
                work.record["stages"][stage] = outcome.to_dict()

    def close(self) -> None:
        self.verifier.backend.close()
        if self._system is not None:
            self._system.close()
