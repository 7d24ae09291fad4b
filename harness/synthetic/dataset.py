"""Writing the synthetic benchmark to disk, and caching it by generator version and options.

Layout of a benchmark folder::

    scenes/0007.png         the image (PIL, identical bytes for identical options)
    scenes/0007.json        ground truth: camera, objects (3D centre, size, visible box)
    scenes/0007.depth.npz   float32 depth map ("depth"), camera z in metres, inf for sky
    questions.jsonl         one question per line
    manifest.json           version, options, counts, validation drops, build time (written last)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.synthetic import VERSION
from harness.synthetic.layout import generate_scene
from harness.synthetic.oracle import OracleTools
from harness.synthetic.choice import FamilyStats, choose_questions
from harness.synthetic.questions import FAMILIES, SceneContext
from harness.synthetic.render import Rendering, render
from harness.synthetic.validate import check

DEFAULT_OPTIONS: dict[str, int] = {"seed": 0, "scenes": 120, "questions_per_scene": 4}
MANIFEST = "manifest.json"
QUESTIONS = "questions.jsonl"


def normalize_options(options: dict[str, Any] | None) -> dict[str, int]:
    """The generator options with defaults filled in; unknown or malformed keys are errors."""
    merged = dict(DEFAULT_OPTIONS)
    for key, value in (options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise ValueError(f"unknown synthetic benchmark option {key!r}; known: {', '.join(DEFAULT_OPTIONS)}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"synthetic benchmark option {key!r} must be an integer, got {value!r}")
        merged[key] = value
    if merged["scenes"] < 1:
        raise ValueError(f"synthetic benchmark option 'scenes' must be at least 1, got {merged['scenes']}")
    if not 1 <= merged["questions_per_scene"] <= len(FAMILIES):
        raise ValueError(f"synthetic benchmark option 'questions_per_scene' must be in 1..{len(FAMILIES)}, "
                         f"got {merged['questions_per_scene']}")
    return merged


def scene_files(index: int) -> dict[str, str]:
    stem = f"scenes/{index:04d}"
    return {"image": f"{stem}.png", "scene_json": f"{stem}.json", "depth": f"{stem}.depth.npz"}


def _write_depth(path: Path, depth: np.ndarray) -> None:
    """Like np.savez_compressed, but with a fixed timestamp so equal maps give equal bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(depth), allow_pickle=False)
    info = zipfile.ZipInfo("depth.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, buffer.getvalue())


def _write_scene(root: Path, files: dict[str, str], scene_json: dict, rendering: Rendering) -> None:
    Image.fromarray(rendering.rgb).save(root / files["image"], format="PNG")
    (root / files["scene_json"]).write_text(json.dumps(scene_json, indent=1) + "\n", encoding="utf-8")
    _write_depth(root / files["depth"], rendering.depth)


def build_benchmark(root: str | Path, seed: int = 0, n_scenes: int = 120, questions_per_scene: int = 4) -> dict[str, Any]:
    """Generate, render, ask and validate; returns (and writes) the manifest."""
    started = time.perf_counter()
    root = Path(root)
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    tallies: dict[str, Counter] = {}
    stats: dict[str, FamilyStats] = {}
    rows = []
    for index in range(n_scenes):
        scene = generate_scene(seed, index)
        rendering = render(scene)
        files = scene_files(index)
        scene_json = {"version": VERSION, **scene.to_dict(), "image": Path(files["image"]).name,
                      "depth": Path(files["depth"]).name}
        _write_scene(root, files, scene_json, rendering)
        tools = OracleTools(scene, rendering.depth, key=f"{index:04d}")
        context = SceneContext(scene, rendering.depth, rendering.ids)
        question_rng = np.random.default_rng([seed, index, 1])  # a stream apart from the scene's
        for question in choose_questions(context, question_rng, questions_per_scene, tallies,
                                         lambda q: check(q, tools), stats):
            rows.append({"id": f"{index:04d}-{question.family}", "scene": index, "family": question.family,
                         "question": question.question, "answer": question.answer,
                         "answer_type": question.answer_type, "choices": question.choices,
                         "program": question.program, **files})
    with open(root / QUESTIONS, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = {
        "version": VERSION,
        "options": {"seed": seed, "scenes": n_scenes, "questions_per_scene": questions_per_scene},
        "questions": len(rows),
        "families": {f: {"kept": s.kept, "validated": s.validated, "dropped": s.dropped, "drop_examples": s.examples}
                     for f, s in sorted(stats.items())},
        "answers": answer_counts(rows),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def answer_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per family, how often each answer (for multiple choice: each gold letter) occurs."""
    counts: dict[str, Counter] = {}
    for row in rows:
        key = row["answer"]
        if row["choices"]:
            key = "ABCD"[row["choices"].index(row["answer"])]
        counts.setdefault(row["family"], Counter())[str(key)] += 1
    return {family: dict(sorted(c.items())) for family, c in sorted(counts.items())}


def benchmark_dir(options: dict[str, Any] | None = None) -> Path:
    from harness.cache import default_cache_dir

    opts = normalize_options(options)
    name = f"v{VERSION}-seed{opts['seed']}-scenes{opts['scenes']}-q{opts['questions_per_scene']}"
    return default_cache_dir() / "synthetic" / name


def ensure_benchmark(options: dict[str, Any] | None = None) -> Path:
    """The benchmark folder for these options, generated on first use.

    It is built in a temporary folder beside the final one and renamed into
    place, so a reader never sees half a benchmark; when two processes race,
    the first rename wins and the other's copy is discarded.
    """
    opts = normalize_options(options)
    final = benchmark_dir(opts)
    if (final / MANIFEST).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_benchmark(staging, opts["seed"], opts["scenes"], opts["questions_per_scene"])
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                # Not another process's finished copy: a leftover without a manifest. Replace it.
                shutil.rmtree(final, ignore_errors=True)
                os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
