"""The synthetic benchmark: renderer geometry, determinism, balance, reference programs, oracle tools, task."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harness.synthetic import VERSION
from harness.synthetic.dataset import (
    MANIFEST,
    QUESTIONS,
    benchmark_dir,
    build_benchmark,
    ensure_benchmark,
    normalize_options,
)
from harness.synthetic.oracle import OracleTools, Phrase, parse_phrase
from harness.synthetic.questions import FAMILIES, Question
from harness.synthetic.render import render
from harness.synthetic.layout import generate_scene
from harness.synthetic.scene import Camera, Scene, make_object
from harness.synthetic.validate import reference_score, run_program
from harness.tools import ToolContext
from harness.tools.api import IMAGE_MARKER
from harness.synthetic.oracle_backend import SceneOracleBackend
from toy import SMALL_SYNTHETIC_TASK

CAMERA = Camera()
F, CX, CY, G = CAMERA.focal, CAMERA.cx, CAMERA.cy, CAMERA.elevation


def one_object_scene(*specs: tuple[str, str, float, float, dict]) -> Scene:
    objects = [make_object(i, shape, color, x, z, size, CAMERA) for i, (shape, color, x, z, size) in enumerate(specs)]
    return Scene(0, 0, CAMERA, objects)


def project(x: float, y: float, z: float) -> tuple[float, float]:
    return CX + F * x / z, CY + F * y / z


def as_question(row: dict) -> Question:
    return Question(row["family"], row["question"], row["answer"], row["answer_type"], row["program"], row["choices"])


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    """A 36-scene benchmark: enough for every family to appear several times."""
    root = tmp_path_factory.mktemp("synthetic")
    manifest = build_benchmark(root, seed=3, n_scenes=36, questions_per_scene=4)
    rows = [json.loads(line) for line in (root / QUESTIONS).read_text().splitlines()]
    return root, rows, manifest


def tools_for(root: Path, row: dict, **kwargs) -> OracleTools:
    return OracleTools.from_files(root / row["scene_json"], root / row["depth"], **kwargs)


# --------------------------------------------------------------------------- renderer geometry

def test_cube_silhouette_matches_projected_corners():
    side, x, z = 0.5, 0.6, 3.0
    scene = one_object_scene(("cube", "red", x, z, {"side": side}))
    rendering = render(scene)
    box = scene.objects[0].visible_box
    front, back = z - side / 2, z + side / 2
    # Right of the optical axis, the cube shows its front and its left face; its top is above the camera.
    expected = (project(x - side / 2, 0, back)[0], project(0, G - side, front)[1],
                project(x + side / 2, 0, front)[0], project(0, G, front)[1])
    assert np.allclose(box, expected, atol=1.0), (box, expected)
    # Depth on the front face is exactly its z.
    u, v = project(x, G - side / 2, front)
    assert rendering.depth[int(v), int(u)] == pytest.approx(front, abs=1e-5)
    assert rendering.ids[int(v), int(u)] == 0


def test_ground_and_sky_depth():
    scene = one_object_scene(("sphere", "blue", -1.0, 4.0, {"radius": 0.2}))
    rendering = render(scene)
    row, col = 200, 300  # below the horizon, away from the sphere
    assert rendering.ids[row, col] == -1
    assert rendering.depth[row, col] == pytest.approx(G * F / (row + 0.5 - CY), rel=1e-5)
    assert math.isinf(rendering.depth[5, 300]) and rendering.ids[5, 300] == -1
    assert rendering.rgb.shape == (240, 320, 3) and rendering.rgb.dtype == np.uint8
    # The sky above the horizon is bluish, lighter at the horizon than at the top.
    top, horizon = rendering.rgb[0, 300].astype(int), rendering.rgb[118, 300].astype(int)
    assert top[2] > top[0] and horizon.sum() > top.sum()


def test_nearer_object_hides_farther_one():
    scene = one_object_scene(("cube", "green", 0.0, 4.5, {"side": 0.5}),
                             ("cylinder", "red", 0.05, 2.0, {"radius": 0.15, "height": 0.6}))
    rendering = render(scene)
    far, near = scene.objects
    u, v = project(near.center[0], near.center[1], near.nearest_z)
    assert rendering.ids[int(v), int(u)] == near.id
    assert far.visible_pixels < far.full_pixels
    assert near.visible_pixels == near.full_pixels
    # The far cube still shows on both sides of the cylinder, so its box spans the cube.
    assert np.sum(rendering.ids == far.id) == far.visible_pixels > 0


def test_height_from_box_and_depth_is_exact_for_cubes_and_cylinders():
    """Pitch 0 and a camera below the tops: pixel height x centre depth / f = metric height."""
    scene = one_object_scene(("cylinder", "yellow", -0.7, 2.5, {"radius": 0.2, "height": 0.7}),
                             ("cube", "purple", 0.8, 3.5, {"side": 0.45}))
    rendering = render(scene)
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.visible_box
        z = float(rendering.depth[int((y1 + y2) / 2), int((x1 + x2) / 2)])
        assert (y2 - y1) * z / F == pytest.approx(obj.height, abs=1.2 * z / F)


# --------------------------------------------------------------------------- scenes

def test_generated_scenes_respect_the_constraints():
    for index in range(12):
        scene = generate_scene(0, index)
        assert 3 <= len(scene.objects) <= 7
        for obj in scene.objects:
            assert obj.height >= 0.22 and G - obj.height < 0  # the top is above the camera
            assert 1.5 <= obj.center[2] <= 5.5
            assert obj.visible_pixels >= 150 and obj.visible_fraction >= 0.6
            assert obj.center[1] == pytest.approx(G - obj.height / 2)
        for a in scene.objects:
            for b in scene.objects:
                if a.id < b.id:
                    gap = math.hypot(a.center[0] - b.center[0], a.center[2] - b.center[2])
                    assert gap >= a.footprint_radius + b.footprint_radius


def test_scene_json_round_trip():
    scene = generate_scene(5, 2)
    again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert again.to_dict() == scene.to_dict()


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_benchmark(a, seed=7, n_scenes=4)
    build_benchmark(b, seed=7, n_scenes=4)
    build_benchmark(c, seed=8, n_scenes=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != MANIFEST)
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "scenes/0000.png").read_bytes() != (c / "scenes/0000.png").read_bytes()
    assert (a / QUESTIONS).read_text() != (c / QUESTIONS).read_text()


# --------------------------------------------------------------------------- questions

def test_rows_have_the_documented_fields(bench):
    root, rows, _ = bench
    for row in rows:
        assert set(row) >= {"id", "scene", "family", "question", "answer", "answer_type", "choices", "program",
                            "image", "scene_json", "depth"}
        assert (root / row["image"]).is_file() and (root / row["scene_json"]).is_file()
        if row["answer_type"] == "multiple_choice":
            assert row["answer"] in row["choices"] and row["question"].endswith("}.")
    assert len({r["id"] for r in rows}) == len(rows)


def test_every_family_appears_and_answers_are_balanced(bench):
    _, rows, manifest = bench
    by_family: dict[str, list[dict]] = {}
    for row in rows:
        by_family.setdefault(row["family"], []).append(row)
    assert set(by_family) == set(FAMILIES)
    for family, items in by_family.items():
        kind = items[0]["answer_type"]
        if kind == "yesno":
            answers = Counter(r["answer"] for r in items)
            assert abs(answers["yes"] - answers["no"]) <= 1, (family, answers)
        elif kind == "multiple_choice":
            letters = Counter(r["choices"].index(r["answer"]) for r in items)
            width = len(items[0]["choices"])
            assert set(letters) == set(range(width)) and max(letters.values()) - min(letters.values()) <= 1, letters
    counts = Counter(r["answer"] for r in by_family["count"])
    assert set(counts) == {0, 1, 2, 3, 4} and max(counts.values()) - min(counts.values()) <= 1, counts
    assert manifest["questions"] == len(rows)
    assert {f: v["kept"] for f, v in manifest["families"].items()} == {f: len(v) for f, v in by_family.items()}


def test_size_answers_are_not_the_true_sizes(bench):
    root, rows, _ = bench
    for row in (r for r in rows if r["family"] == "size_reference"):
        scene = json.loads((root / row["scene_json"]).read_text())
        heights = {o["name"]: o["dimensions"]["height"] for o in scene["objects"]}
        target = row["question"].split("how tall is the ")[1].split(",")[0]
        assert abs(row["answer"] / heights[target] - 1) > 0.05


def test_every_reference_program_scores_one_through_the_oracle(bench):
    root, rows, _ = bench
    for row in rows:
        score, outcome = reference_score(as_question(row), tools_for(root, row))
        assert score == 1.0, (row["id"], row["question"], row["answer"], outcome)
        if row["answer_type"] == "float":
            assert abs(outcome["answer"] - row["answer"]) / row["answer"] < 0.02


def test_noise_changes_tools_deterministically_and_lowers_accuracy(bench):
    root, rows, _ = bench
    row = rows[0]
    clean = tools_for(root, row)
    noisy = tools_for(root, row, noise=0.8, noise_seed=1)
    same = tools_for(root, row, noise=0.8, noise_seed=1)
    calls = [("gd_detect", [["objects"]]), ("depth", [[100, 100, 140, 130]]), ("vqa", [[100, 100, 140, 130], "What color is this object?"])]
    assert [getattr(noisy, n)(*a) for n, a in calls] == [getattr(same, n)(*a) for n, a in calls]
    assert noisy.gd_detect(["objects"]) != clean.gd_detect(["objects"])
    assert noisy.depth([160, 200]) != clean.depth([160, 200])
    assert clean.depth([160, 200]) == tools_for(root, row).depth([160, 200])

    def accuracy(noise: float, seed: int = 0) -> list[float]:
        return [reference_score(as_question(r), tools_for(root, r, noise=noise, noise_seed=seed))[0] for r in rows]

    noisy_scores = accuracy(0.6)
    assert noisy_scores == accuracy(0.6)  # re-running gives identical results
    assert np.mean(noisy_scores) < 0.9
    assert np.mean(accuracy(1.0)) < np.mean(accuracy(0.2)) <= 1.0


# --------------------------------------------------------------------------- oracle tools

@pytest.fixture(scope="module")
def two_objects() -> OracleTools:
    scene = one_object_scene(("cube", "red", -0.8, 3.0, {"side": 0.5}),
                             ("sphere", "blue", 0.8, 3.5, {"radius": 0.25}))
    rendering = render(scene)
    return OracleTools(scene, rendering.depth, (320, 240))


@pytest.mark.parametrize("phrase, expected", [
    ("red cube", Phrase("red", "cube")), ("cubes", Phrase(None, "cube")), ("red objects", Phrase("red", None)),
    ("sphere", Phrase(None, "sphere")), ("balls", Phrase(None, "sphere")), ("a block", Phrase(None, "cube")),
    ("things", Phrase()), ("Violet Boxes", Phrase("purple", "cube")),
    ("dog", None), ("red blue cube", None), ("large red cube", None),
])
def test_phrase_parsing(phrase, expected):
    assert parse_phrase(phrase) == expected


def test_gd_detect_contract(two_objects):
    cube, sphere = two_objects.scene.objects
    detections = two_objects.gd_detect(["red cube", "blue ball", "dog"])
    assert [d["label"] for d in detections] == ["red cube", "blue ball"]
    assert detections[0]["box"] == [float(v) for v in cube.visible_box]
    assert all(isinstance(v, float) for d in detections for v in d["box"]) and all(0 < d["score"] < 1 for d in detections)
    assert len(two_objects.gd_detect(["objects"])) == 2 and two_objects.gd_detect(["green cone"]) == []
    assert two_objects.gd_detect(["dog"]) == []


def test_depth_contract(two_objects):
    cube = two_objects.scene.objects[0]
    assert two_objects.depth(list(cube.visible_box)) == pytest.approx(cube.nearest_z, abs=1e-5)
    assert isinstance(two_objects.depth([5, 5]), float) and math.isinf(two_objects.depth([5, 5]))
    assert two_objects.depth([-40, 1e4]) == two_objects.depth([0, 239])  # clamped into the image


def test_vqa_contract(two_objects):
    cube, sphere = two_objects.scene.objects
    assert two_objects.vqa(list(cube.visible_box), "What color is this object?") == "red"
    assert two_objects.vqa(list(sphere.visible_box), "What shape is this?") == "sphere"
    assert two_objects.vqa(list(sphere.visible_box), "What is this?") == "blue sphere"
    assert two_objects.vqa(list(sphere.visible_box), "Is this a ball?") == "yes"
    assert two_objects.vqa(list(cube.visible_box), "Is it blue or red?") == "red"
    assert two_objects.vqa(None, "How many cubes are there?") == "1"
    assert two_objects.vqa(None, "Is there a green cone?") == "no"
    assert two_objects.vqa(None, "What color is the sphere?") == "blue"


@pytest.mark.parametrize("name, args, kwargs, argument", [
    ("gd_detect", ["image", 3], {}, "phrases"),
    ("gd_detect", ["image", ""], {}, "phrases"),
    ("gd_detect", ["image"], {}, "phrases"),
    ("depth", ["image", [1, 2, 3]], {}, "box_or_point"),
    ("depth", ["image", [1, 2, float("nan"), 4]], {}, "box_or_point"),
    ("depth", ["image", "centre"], {}, "box_or_point"),
    ("vqa", ["image", [0, 0, 10]], {"question": "What color?"}, "box"),
    ("vqa", ["image", [10, 10, 0, 0]], {"question": "What color?"}, "box"),
    ("vqa", ["image", None], {}, "question"),
    ("vqa", ["image"], {"query": "What?"}, "query"),
])
def test_argument_errors_name_the_argument(two_objects, name, args, kwargs, argument):
    session = SceneOracleBackend(two_objects).session(ToolContext(None, (two_objects.width, two_objects.height)))
    args = [IMAGE_MARKER if a == "image" else a for a in args]
    with pytest.raises(ValueError, match=argument):
        session.call(name, args, kwargs)


def test_argument_errors_reach_programs_as_tool_errors(two_objects):
    outcome = run_program("final_answer = depth(image, [1, 2, 3])", two_objects)
    assert outcome["status"] == "tool_error" and "box_or_point" in outcome["detail"]
    caught = run_program("try:\n    vqa(image, None)\nexcept ToolError:\n    final_answer = 'caught'", two_objects)
    assert caught["answer"] == "caught"


def test_noise_must_be_in_range(two_objects):
    with pytest.raises(ValueError, match="noise"):
        OracleTools(two_objects.scene, two_objects.depth_map, noise=1.5)


# --------------------------------------------------------------------------- cache and task

def test_options_are_checked():
    assert normalize_options({"seed": 2}) == {"seed": 2, "scenes": 120, "questions_per_scene": 4}
    with pytest.raises(ValueError, match="scene_count"):
        normalize_options({"scene_count": 3})
    with pytest.raises(ValueError, match="scenes"):
        normalize_options({"scenes": "many"})


def test_ensure_benchmark_builds_once_and_replaces_leftovers(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    options = {"seed": 1, "scenes": 2}
    final = benchmark_dir(options)
    final.mkdir(parents=True)
    (final / "half-written").write_text("x")  # a leftover without a manifest
    path = ensure_benchmark(options)
    assert path == final and (path / MANIFEST).is_file() and not (path / "half-written").exists()
    assert path.parent == tmp_path / "synthetic" and f"v{VERSION}" in path.name
    stamp = (path / MANIFEST).stat().st_mtime_ns
    assert ensure_benchmark(options) == path and (path / MANIFEST).stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging folders left


def test_task_loads_with_meta(tmp_path, monkeypatch):
    from harness.tasks import TaskRegistry

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    task = TaskRegistry().task("synthetic")
    samples = list(task.samples())
    assert 400 <= len(samples) <= 600
    assert task.revision.startswith(f"synthetic-v{VERSION} seed=0 scenes=120")
    assert {s.subset for s in samples} == set(FAMILIES)
    for sample in samples:
        assert sample.error is None, sample.error
        assert sample.cluster == str(int(sample.id.split("-")[0]))  # questions on one scene share a cluster
        assert set(sample.meta) == {"reference_program", "scene", "depth", "compat"}
        assert Path(sample.meta["scene"]).is_file() and Path(sample.meta["depth"]).is_file()
        assert Path(sample.image.path).is_file()
        if sample.answer_type == "multiple_choice":
            assert sample.answer in sample.choices
        if sample.answer_type == "integer":
            assert type(sample.answer) is int
    first = samples[0]
    tools = OracleTools.from_files(first.meta["scene"], first.meta["depth"])
    outcome = run_program(first.meta["reference_program"], tools)
    assert outcome["status"] == "ok"
    assert (tmp_path / "synthetic").is_dir()


# --------------------------------------------------------------------------- through the CLI and the sandbox

def test_reference_system_scores_everything_in_the_sandbox_and_less_with_noise(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    base = ["run", "--system", "reference", "--tasks", "synthetic_small", "--include-path", str(include)]
    assert main([*base, "--output-path", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())["results"]["synthetic_small"]
    n = clean["n"]
    assert n >= 40 and clean["accuracy,strict"] == 1.0 and clean["status_counts"] == {"ok": n}
    assert len(clean["subsets"]) == 9 and clean["accuracy_clustered_stderr,strict"] == 0.0
    record = json.loads((tmp_path / "clean" / "samples_synthetic_small.jsonl").read_text().splitlines()[0])
    assert record["program"] and record["tool_calls"] and "seccomp" in record["isolation"]

    noisy = []
    for attempt in ("noisy", "noisy-again"):  # the same noise seed gives the same tool outputs
        assert main([*base, "--output-path", str(tmp_path / attempt), "--system-args", "tool_options.oracle.noise=0.6"]) == 0
        records = (tmp_path / attempt / "samples_synthetic_small.jsonl").read_text().splitlines()
        noisy.append(sorted((r["id"], r["prediction"]) for r in map(json.loads, records)))
        accuracy = json.loads((tmp_path / attempt / "results.json").read_text())["results"]["synthetic_small"]
        assert 0.3 < accuracy["accuracy,strict"] < 0.95
    assert noisy[0] == noisy[1]


def test_exec_command_with_oracle_tools(bench, tmp_path, capsys):
    from harness.cli import main

    root, rows, _ = bench
    row = next(r for r in rows if r["family"] == "count")
    program = tmp_path / "count.py"
    program.write_text(row["program"])
    code = main(["exec", str(program), "--image", str(root / row["image"]), "--scene", str(root / row["scene_json"])])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["status"] == "ok" and result["answer"] == row["answer"]
    assert result["tool_calls"][0]["tool"] == "gd_detect"
