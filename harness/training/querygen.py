"""The query-generation engine: spatial-reasoning questions for unlabeled images.

For each image of a folder (the paper used SA-1B photographs) a VLM (by
default Gemini-2.5-Flash, as in the paper) is asked two things, each one chat
request with the image:

1. is the photograph a good basis for spatial questions (several distinct
   objects a detector could box, a scene with some layout)? A JSON object
   ``{"suitable": bool, "reason": str, "objects": [str]}``;
2. for suitable photographs: five varied questions (3D sizes from a stated
   reference, distances, nearer/farther, counts with attributes, relations),
   answerable from the image; a JSON list of strings.

One of the candidates is drawn uniformly, with a random stream that depends
only on the seed and the image, so a resumed run draws as an uninterrupted
one would. Each answered image adds one line to the output::

    {"image": "<path relative to the output's folder>", "query": "...", "candidates": [...], "source": "generated"}

and every image processed, whatever happened, adds one line to the status
file beside it (``queries.jsonl`` -> ``queries.status.jsonl``): ``ok``,
``unsuitable`` (with the reason) or ``failed`` (with the stage, the error and
the start of the reply). Nothing is skipped silently. A later run over the same
output skips the images already answered or judged unsuitable and, unless told
otherwise, tries the failed ones again.

Images go out ``batch_size`` at a time through the backend's
``complete_many`` (concurrent requests); their lines are written, and flushed,
as soon as their batch is done, so a killed run loses at most one batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml
from PIL import Image

from harness.backends import BackendError, ChatBackend, make_chat_backend
from harness.jsonl import JsonlAppender
from harness.replies import ReplyError, extract_json

log = logging.getLogger(__name__)

SOURCE_NAME = "generated"

SUITABILITY_PROMPT = """You help build a training set of spatial-reasoning questions about photographs. Look at this photograph and decide whether it is a good basis for such questions.

It is suitable when:
- it shows a real scene, not a screenshot, a document, a drawing or mostly text;
- at least two distinct physical objects are clearly visible, each of which could be named with a short noun phrase and outlined with a box by an object detector;
- the objects are large and sharp enough to tell apart, and the scene has some depth or layout, so that questions about sizes, distances, positions or counts have one clear answer.

It is not suitable when it is a close-up of a single object, a blank, dark or blurred view, an abstract texture or pattern, or when everything of interest is too small, hidden or ambiguous to name.

Answer with one JSON object and nothing else:
{"suitable": true or false, "reason": "<one sentence>", "objects": ["<short noun phrase>", ...]}
where "objects" lists the clearly visible objects you would ask about (empty when the photograph is not suitable)."""

QUERIES_PROMPT = """You write questions for training a model that reasons about space in photographs. That model will never see this photograph: it answers by writing a program that calls an object detector, a metric depth estimator and a visual question-answering tool on it. Write {n} different questions about this photograph.

Every question must:
- be answerable from this photograph alone, with one definite answer: a number, yes or no, or the name of an object;
- name the objects it is about by what they look like ("the red car", "the wooden bench"), so that each name picks out the intended objects; never refer to objects by number or to regions by coordinates;
- be about objects that are clearly visible in the photograph.

Make the {n} questions as varied as you can, drawing on these kinds:
- 3D size with a reference: state the real size of one object and ask for another's ("If the door is 2 meters tall, how tall is the bookshelf in meters?");
- distances: how far an object is from the camera or from another object, in meters, or which of two objects is closer to a third;
- depth order: which object is nearer to or farther from the camera;
- counting with attributes: how many objects of a kind have a given colour, material or state;
- spatial relations: left of, right of, above, below, in front of, behind, the leftmost or the largest of several.

Answer with a JSON list of exactly {n} strings, the questions, and nothing else."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class QueryGenConfig:
    """Settings of a generation run (``recipes/query_generation/config.yaml``)."""

    # The VLM: a chat backend kind and its options. The paper used Gemini's default
    # hyperparameters: ``temperature: None`` leaves the model's own default in place.
    vlm: dict[str, Any] = field(default_factory=lambda: {
        "backend": "genai", "model": "gemini-2.5-flash", "temperature": None,
        "response_mime_type": "application/json", "max_concurrency": 16})
    sampling: dict[str, Any] = field(default_factory=dict)  # per-call overrides (max_tokens, seed, ...)
    num_candidates: int = 5
    seed: int = 0
    max_side: int | None = 1024  # longer images are shrunk first: fewer image tokens, smaller uploads
    batch_size: int = 32  # images whose requests go out together
    retry_failed: bool = True  # a later run tries failed images again
    cache: bool | str = True  # deterministic requests (temperature 0 or a seed) kept on disk
    limit: int | None = None  # only the first N images of the folder (sorted by path)
    max_queries: int | None = None  # stop after the batch in which the output reaches N queries

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QueryGenConfig":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown query-generation settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def __post_init__(self) -> None:
        if "backend" not in (self.vlm or {}):
            raise ValueError("query generation: vlm.backend is required")
        if self.num_candidates < 1 or self.batch_size < 1:
            raise ValueError("query generation: num_candidates and batch_size must be at least 1")


@dataclass
class GenerationStats:
    images: int = 0  # images in the folder (after ``limit``)
    already_done: int = 0  # skipped: answered or judged unsuitable by an earlier run
    processed: int = 0  # images sent this run
    ok: int = 0
    unsuitable: int = 0
    failed: int = 0
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    queries_in_file: int = 0  # lines of the output after this run
    stopped_early: bool = False  # max_queries was reached

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- requests and replies


def load_image(path: str | Path, max_side: int | None = None) -> Image.Image:
    """The image as RGB, its longer side at most ``max_side`` pixels."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _request(image: Image.Image, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def suitability_request(image: Image.Image) -> list[dict[str, Any]]:
    return _request(image, SUITABILITY_PROMPT)


def queries_request(image: Image.Image, n: int = 5) -> list[dict[str, Any]]:
    # Plain substitution, not str.format: the prompt may one day hold braces of its own.
    return _request(image, QUERIES_PROMPT.replace("{n}", str(n)))


@dataclass
class Suitability:
    suitable: bool
    reason: str = ""
    objects: list[str] = field(default_factory=list)


_TRUTH = {"true": True, "yes": True, "false": False, "no": False}


def read_suitability(reply: str) -> Suitability:
    value = extract_json(reply)
    if not isinstance(value, dict) or "suitable" not in value:
        raise ReplyError(f"expected an object with 'suitable', got {str(value)[:200]!r}")
    flag = value["suitable"]
    if isinstance(flag, str) and flag.strip().lower() in _TRUTH:
        flag = _TRUTH[flag.strip().lower()]
    if not isinstance(flag, bool):
        raise ReplyError(f"'suitable' must be true or false, got {flag!r}")
    objects = value.get("objects") or []
    return Suitability(flag, str(value.get("reason") or ""),
                       [str(o) for o in objects] if isinstance(objects, list) else [])


def read_queries(reply: str, n: int = 5) -> list[str]:
    """The distinct, non-empty questions of a reply (at most ``n``): a JSON list of
    strings, also under a ``"queries"`` key or as objects with a ``"query"``."""
    value = extract_json(reply)
    if isinstance(value, dict):
        value = value.get("queries", value.get("questions"))
    if not isinstance(value, list):
        raise ReplyError(f"expected a JSON list of questions, got {reply[:200]!r}")
    queries: list[str] = []
    seen: set[str] = set()
    for item in value:
        if isinstance(item, dict):
            item = item.get("query", item.get("question"))
        if not isinstance(item, str) or not item.strip():
            continue
        text = " ".join(item.split())
        if text.casefold() not in seen:
            seen.add(text.casefold())
            queries.append(text)
    if not queries:
        raise ReplyError(f"no questions in the reply: {reply[:200]!r}")
    if len(queries) < n:
        log.debug("query generation: %d distinct questions where %d were asked for", len(queries), n)
    return queries[:n]


def pick_query(candidates: Sequence[str], seed: int, key: str) -> str:
    """One candidate, uniformly, from a stream that depends only on ``seed`` and the image."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).choice(list(candidates))


# ----------------------------------------------------------------------------- files


def find_images(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    wanted = {e.lower() for e in extensions}
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def status_path(out: str | Path) -> Path:
    """``queries.jsonl`` -> ``queries.status.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.status.jsonl")


# ----------------------------------------------------------------------------- the engine


@dataclass
class _Outcome:
    """What became of one image this run."""

    path: Path
    status: str = "failed"  # ok, unsuitable, failed
    stage: str | None = None  # where it failed: image, suitability, queries
    error: str | None = None
    reply: str | None = None  # the start of the reply that could not be read
    suitability: Suitability | None = None
    candidates: list[str] = field(default_factory=list)

    def fail(self, stage: str, error: str, reply: str | None = None) -> None:
        self.status, self.stage, self.error = "failed", stage, error
        self.reply = reply[:500] if reply is not None else None


def _chunks(items: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class QueryGenerator:
    """Runs the two requests per image and keeps the output and status files."""

    def __init__(self, config: QueryGenConfig | None = None, backend: ChatBackend | None = None) -> None:
        self.config = config or QueryGenConfig()
        if backend is None:
            options = dict(self.config.vlm)
            backend = make_chat_backend(options.pop("backend"), cache=self.config.cache, **options)
        self.backend = backend

    def run(self, images_dir: str | Path, out: str | Path, progress: bool = True) -> GenerationStats:
        from tqdm import tqdm

        config, out = self.config, Path(out)
        images = find_images(images_dir)
        if config.limit is not None:
            images = images[:config.limit]
        queries_file, status_file = JsonlAppender(out), JsonlAppender(status_path(out))
        stats = GenerationStats(images=len(images), queries_in_file=len(queries_file.records))
        try:
            todo = self._todo(images, out, queries_file.records, status_file.records)
            stats.already_done = len(images) - len(todo)
            if stats.already_done:
                log.info("query generation: %d of %d images already done in %s", stats.already_done, len(images), out)
            bar = tqdm(total=len(todo), unit="image", desc="query generation", disable=not progress)
            for chunk in _chunks(todo, config.batch_size):
                if config.max_queries is not None and stats.queries_in_file >= config.max_queries:
                    stats.stopped_early = True
                    break
                for outcome in self._process(chunk):
                    self._record(outcome, out, queries_file, status_file, stats)
                    bar.update(1)
                    bar.set_postfix(ok=stats.ok, unsuitable=stats.unsuitable, failed=stats.failed)
            bar.close()
        finally:
            queries_file.close()
            status_file.close()
        if stats.failed:
            log.warning("query generation: %d images failed (%s); see %s", stats.failed,
                        ", ".join(f"{k}: {v}" for k, v in sorted(stats.failed_by_stage.items())), status_path(out))
        return stats

    def _todo(self, images: list[Path], out: Path, answered: list[dict], statuses: list[dict]) -> list[Path]:
        finished = {"ok", "unsuitable"} if self.config.retry_failed else {"ok", "unsuitable", "failed"}
        # An image with a query but no status line was cut off between the two writes: it is done.
        done = {_resolve(out, r["image"]) for r in answered if "image" in r}
        done |= {_resolve(out, r["image"]) for r in statuses if r.get("status") in finished and "image" in r}
        return [path for path in images if path.resolve() not in done]

    def _process(self, chunk: list[Path]) -> list[_Outcome]:
        config = self.config
        outcomes = [_Outcome(path) for path in chunk]
        loaded: list[tuple[_Outcome, Image.Image]] = []
        for outcome in outcomes:
            try:
                loaded.append((outcome, load_image(outcome.path, config.max_side)))
            except Exception as exc:  # PIL raises many unrelated types for bad files
                outcome.fail("image", f"cannot read image: {type(exc).__name__}: {exc}")

        replies = self.backend.complete_many([suitability_request(image) for _, image in loaded], **config.sampling)
        suitable: list[tuple[_Outcome, Image.Image]] = []
        for (outcome, image), reply in zip(loaded, replies):
            if isinstance(reply, BackendError):
                outcome.fail("suitability", str(reply))
                continue
            try:
                outcome.suitability = read_suitability(reply)
            except ReplyError as exc:
                outcome.fail("suitability", str(exc), reply)
                continue
            if outcome.suitability.suitable:
                suitable.append((outcome, image))
            else:
                outcome.status = "unsuitable"

        requests = [queries_request(image, config.num_candidates) for _, image in suitable]
        replies = self.backend.complete_many(requests, **config.sampling) if requests else []
        for (outcome, _), reply in zip(suitable, replies):
            if isinstance(reply, BackendError):
                outcome.fail("queries", str(reply))
                continue
            try:
                outcome.candidates = read_queries(reply, config.num_candidates)
            except ReplyError as exc:
                outcome.fail("queries", str(exc), reply)
                continue
            outcome.status = "ok"
        return outcomes

    def _record(self, outcome: _Outcome, out: Path, queries_file: JsonlAppender, status_file: JsonlAppender,
                stats: GenerationStats) -> None:
        image = _relative(out, outcome.path)
        stats.processed += 1
        status: dict[str, Any] = {"image": image, "status": outcome.status}
        if outcome.status == "ok":
            query = pick_query(outcome.candidates, self.config.seed, image)
            queries_file.append({"image": image, "query": query, "candidates": outcome.candidates,
                                 "source": SOURCE_NAME})
            stats.ok += 1
            stats.queries_in_file += 1
        elif outcome.status == "unsuitable":
            stats.unsuitable += 1
            status["reason"] = outcome.suitability.reason if outcome.suitability else ""
        else:
            stats.failed += 1
            stats.failed_by_stage[outcome.stage or "?"] = stats.failed_by_stage.get(outcome.stage or "?", 0) + 1
            status.update(stage=outcome.stage, error=outcome.error)
            if outcome.reply is not None:
                status["reply"] = outcome.reply
            log.warning("query generation: %s failed at %s: %s", image, outcome.stage, outcome.error)
        if outcome.suitability is not None:
            status["objects"] = outcome.suitability.objects
        status["vlm"] = self.backend.fingerprint
        status_file.append(status)

    def close(self) -> None:
        self.backend.close()


def _relative(out: Path, image: Path) -> str:
    """The image's path relative to the output's folder (so the two can move together)."""
    return Path(os.path.relpath(image.resolve(), out.parent.resolve())).as_posix()


def _resolve(out: Path, image: str) -> Path:
    return (out.parent / image).resolve()

