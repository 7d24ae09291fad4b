"""VLM-verified detector pseudo-labels, offline: phrases, sources, the pipeline, its files and precision."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from dataset_fixtures import VSR_ZEROSHOT, arrow_image, colour, write_image_file, write_jsonl, write_parquet
from fake_openai import KEY_ENV, Reply, running_chat_server
from harness.backends import BackendError, ChatBackend
from harness.cli import main
from harness.grounding.export import export, read_records
from harness.grounding.pairs import exclusion_key, read_exclusions, read_pairs
from harness.grounding.phrases import extract_phrases
from harness.grounding.pipeline import PseudoLabelConfig, PseudoLabeler
from harness.grounding.precision import LabelsError, label_precision
from harness.grounding.verifier import read_selection, read_yes_no
from harness.replies import ReplyError
from harness.tasks import TaskRegistry
from harness.types import ImageError, LazyImage
from tiny_models import save_grounding_dino
from toy import SMALL_SYNTHETIC_TASK

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "grounding_pseudolabels"
COARSE, CROP, DEDUP = "open-vocabulary object detector", "cut out of a larger photograph", "checked for what they contain"


# ----------------------------------------------------------------------------- phrases


@pytest.mark.parametrize("code, phrases", [
    ('d = gd_detect(image, "Red  Mug, chair")', ["red mug", "chair"]),
    ('d = gd_detect(image=image, phrases="chair . table")', ["chair", "table"]),
    ('d = gd_detect(img_pth, prompt="red mug, chair")', ["red mug", "chair"]),  # the original's API
    ('target = "Cup"\nd = gd_detect(image, target)', ["cup"]),
    ('d = gd_detect(image, "red" + " " + "cube")', ["red cube"]),
    ('c = "blue"\nd = gd_detect(image, f"{c} sphere")\ne = gd_detect(image, f"cone")', ["blue sphere", "cone"]),
    ('d = gd_detect(image, ", ".join(["cup", "plate"]))', ["cup", "plate"]),
    ('names = ("fork", "knife")\nd = gd_detect(image, ", ".join(names))', ["fork", "knife"]),
    ('for name in ["cup", "plate"]:\n    d = gd_detect(image, name)', ["cup", "plate"]),
    ('for c in ("red", "blue"):\n    for s in ["cube", "cone"]:\n        gd_detect(image, c + " " + s)',
     ["red cube", "red cone", "blue cube", "blue cone"]),
    ('boxes = [gd_detect(image, n) for n in ["dog", "cat"]]', ["dog", "cat"]),
    ('a, b = "cup", "plate"\ngd_detect(image, a)\ngd_detect(image, b)', ["cup", "plate"]),
    ('p = "bus"\nif image.width > 9:\n    p = "bus"\ngd_detect(image, p)', ["bus"]),
    ('d = gd_detect(image, "cup")\nif not d:\n    final_answer = 0\n    return\ne = gd_detect(image, "CUP")', ["cup"]),
])
def test_phrases_from_every_supported_form(code, phrases):
    extraction = extract_phrases(code)
    assert extraction.phrases == phrases
    assert extraction.unresolved == [] and extraction.error is None


def test_phrases_that_need_running_the_program_are_reported_never_guessed():
    code = "\n".join([
        'def find(x):',
        '    return gd_detect(image, x)',                      # a parameter
        'q = vqa(image, None, "what is it?")',
        'gd_detect(image, q)',                                 # a run-time value
        'names = ["a"]',
        'names.append("b")',
        'for n in names:',
        '    gd_detect(image, n)',                             # a list changed before use
        'if image.width > 10:',
        '    p = "car"',
        'else:',
        '    p = "truck"',
        'gd_detect(image, p)',                                 # different values on different paths
        'gd_detect(image, ["cup"])',                           # not a string
        'gd_detect(image)',                                    # no phrases at all
        'gd_detect(image, "chair")',
    ])
    extraction = extract_phrases(code)
    assert extraction.phrases == ["chair"] and extraction.calls == 7
    assert [(u.expression, u.line) for u in extraction.unresolved] == [
        ("x", 2), ("q", 4), ("n", 8), ("p", 13), ('["cup"]', 14), ("gd_detect(image)", 15)]
    assert "comma-separated string" in extraction.unresolved[4].reason


def test_a_program_that_does_not_parse_says_why():
    extraction = extract_phrases('d = gd_detect(image, "cup"\n')
    assert extraction.phrases == [] and "does not parse" in extraction.error and "line 1" in extraction.error


# ----------------------------------------------------------------------------- verifier replies


def test_verifier_replies_are_read_leniently_and_checked_strictly():
    assert read_selection('```json\n{"keep": [2, "1"], "removed": {"3": "a dog"}}\n```', 3) == ([1, 2], {3: "a dog"})
    assert read_selection('[1]', 2) == ([1], {})
    assert read_selection('{"keep": [], "removed": [{"number": 1, "reason": "x"}]}', 1) == ([], {1: "x"})
    for bad in ('{"keep": [4]}', '{"keep": [1], "removed": {"1": "?"}}', '{"keep": "all"}', "no json", '{"k": 1}'):
        with pytest.raises(ReplyError):
            read_selection(bad, 3)
    assert read_yes_no("Yes.") == (True, "")
    assert read_yes_no('{"answer": "no", "reason": "two mugs"}') == (False, "two mugs")
    for bad in ("maybe", '{"answer": "probably"}', "yes and no"):
        with pytest.raises(ReplyError):
            read_yes_no(bad)


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    return save_grounding_dino(tmp_path_factory.mktemp("gdino") / "gdino")


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    """The small synthetic benchmark, generated once, as a local copy under a data folder."""
    import os

    from harness.synthetic.dataset import ensure_benchmark

    root = tmp_path_factory.mktemp("synthetic")
    previous = os.environ.get("HARNESS_CACHE_DIR")
    os.environ["HARNESS_CACHE_DIR"] = str(root / "cache")
    try:
        built = ensure_benchmark({"seed": 5, "scenes": 12})
    finally:
        if previous is None:
            os.environ.pop("HARNESS_CACHE_DIR", None)
        else:
            os.environ["HARNESS_CACHE_DIR"] = previous
    shutil.copytree(built, root / "data" / "synthetic" / "small")
    include = root / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    return root


def write_script(path: Path, lines: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"match": m, "response": r}) + "\n" for m, r in lines), encoding="utf-8")
    return path


# Coarse keeps boxes 1-3 (candidates 0-2); crops of cones are refused; dedup keeps the first survivor.
SCRIPT = [
    (COARSE, '{"keep": [1, 2, 3], "removed": {"4": "not that object", "5": "covers two objects"}}'),
    (DEDUP, '{"keep": [1], "removed": {"2": "duplicate of 1"}}'),
    ('cone"', '{"answer": "no", "reason": "not one cone"}'),
    (CROP, '{"answer": "yes", "reason": "one object"}'),
]


def tiny_config(data: Path, detector: Path, **changes: Any) -> PseudoLabelConfig:
    config = PseudoLabelConfig.from_yaml(RECIPE / "config_cpu_tiny.yaml", [f"detector.checkpoint={detector}"])
    config.data_dir = str(data / "data")
    config.include_paths = [str(data / "include")]
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def cli(data: Path, detector: Path, out: Path, *extra: str) -> int:
    return main(["pseudo-labels", "--config", str(RECIPE / "config_cpu_tiny.yaml"), "--out", str(out),
                 "--include-path", str(data / "include"), "--data-dir", str(data / "data"),
                 "--set", f"detector.checkpoint={detector}", "--no-progress", *extra])


def test_end_to_end_with_reference_programs_and_a_scripted_verifier(synthetic_data, detector_dir, tmp_path, capsys):
    script = write_script(tmp_path / "verifier.jsonl", SCRIPT)
    out = tmp_path / "out"
    assert cli(synthetic_data, detector_dir, out, "--set", f"verifier.path={script}") == 0
    printed = capsys.readouterr().out
    assert "| coarse" in printed and "| dedup" in printed

    records = read_records(out)
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    programs = {f"synthetic_small/{s.id}": s.meta["reference_program"] for s in
                TaskRegistry([synthetic_data / "include"]).task("synthetic_small", synthetic_data / "data").samples()}
    for record in records:
        assert record["program"] == programs[record["id"]]  # the writer's program, untouched
        assert record["phrases"] == extract_phrases(record["program"]).phrases
        assert [c["index"] for c in record["candidates"]] == list(range(5))  # max_candidates
        assert {c["label"] for c in record["candidates"]} <= set(record["phrases"])
        coarse, crop, dedup = (record["stages"][s] for s in ("coarse", "crop", "dedup"))
        assert (coarse["kept"], coarse["removed"]) == ([0, 1, 2], [3, 4])
        assert coarse["reasons"] == {"3": "not that object", "4": "covers two objects"}
        cones = [i for i in coarse["kept"] if record["candidates"][i]["label"].endswith("cone")]
        assert crop["removed"] == cones and crop["kept"] == [i for i in coarse["kept"] if i not in cones]
        assert all(crop["reasons"][str(i)] == "not one cone" for i in cones)
        assert dedup["kept"] == crop["kept"][:1] and dedup["removed"] == crop["kept"][1:]
        assert record["kept"] == dedup["kept"]
        assert record["kept_boxes"] == [record["candidates"][i] for i in record["kept"]]
        assert record["image"].startswith("images/synthetic_small/") and (out / record["image"]).is_file()

    labelled = [r for r in records if r["kept"]]
    label_map = json.loads((out / "label_map.json").read_text())
    phrases = sorted({r["candidates"][i]["label"] for r in labelled for i in r["kept"]})
    assert label_map == {str(i): p for i, p in enumerate(phrases)}
    lines = [json.loads(line) for line in (out / "labels.odvg.jsonl").read_text().splitlines()]
    assert len(lines) == len(labelled)
    for line, record in zip(lines, labelled):
        assert line["filename"] == record["image"] and not Path(line["filename"]).is_absolute()
        with Image.open(out / line["filename"]) as stored:
            assert stored.size == (line["width"], line["height"])
        assert line["source"] == "synthetic_small"
        for instance, index in zip(line["detection"]["instances"], record["kept"]):
            assert instance["bbox"] == record["candidates"][index]["box"]
            assert label_map[str(instance["label"])] == instance["category"] == record["candidates"][index]["label"]
    coco = json.loads((out / "coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [line["filename"] for line in lines]
    assert [c["id"] for c in coco["categories"]] == [i + 1 for i in range(len(phrases))]
    first = lines[0]["detection"]["instances"][0]
    x1, y1, x2, y2 = first["bbox"]
    assert coco["annotations"][0]["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert coco["annotations"][0]["category_id"] == first["label"] + 1 and coco["annotations"][0]["iscrowd"] == 0

    stats = json.loads((out / "stats.json").read_text())
    assert stats["status"] == {"ok": 4} and stats["stages"]["detector"]["boxes"] == 20
    assert stats["stages"]["coarse"] == {"images": 4, "boxes_in": 20, "kept": 12, "removed": 8, "failed": 0}
    assert stats["stages"]["crop"]["boxes_in"] == 12
    assert stats["sources"]["synthetic_small"]["boxes"] == stats["labels"]["boxes"] == len(label_lines(lines))

    index = (out / "pages" / "index.html").read_text()
    for record in records:
        page = (out / "pages" / f"{record['id'].replace('/', '_')}.html").read_text()
        for stage in ("detector", "coarse", "crop", "dedup"):
            assert f"<h3>{stage}</h3>" in page
        assert page.count("data:image/jpeg;base64,") == 4 and record["query"] in page
        assert f"href='{record['id'].replace('/', '_')}.html'" in index

    from harness.grounding.odvg import read_odvg  # the detector trainer's reader takes these files as they are

    assert len(read_odvg(out).images) == len(lines)
    detector_trained_on(out, detector_dir, tmp_path / "trained")


def detector_trained_on(labels: Path, detector: Path, out: Path) -> None:
    """The pseudo-labels as written train the detector (`train-detector`), and the trained folder
    serves `gd_detect` through the tool server: the issue's whole loop, on a tiny model."""
    from harness.tools import ToolContext, make_backend
    from harness.tools.api import IMAGE_MARKER
    from harness.types import FileImage

    recipe = RECIPE.parent / "grounding_sft" / "config_cpu_tiny.yaml"
    assert main(["train-detector", "--config", str(recipe), "--set", f"data=[{labels}]",
                 "--set", f"output_dir={out}", "--set", f"checkpoint={detector}"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log and all(entry["loss"] > 0 for entry in log)
    image = labels / json.loads((labels / "labels.odvg.jsonl").read_text().splitlines()[0])["filename"]
    backend = make_backend("real", detector={"checkpoint": str(out / "final"), "box_threshold": 0.0,
                                             "text_threshold": 0.0, "device": "cpu"})
    try:
        context = ToolContext(FileImage(str(image)), FileImage(str(image)).size())
        found = backend.session(context).call("gd_detect", [IMAGE_MARKER, "cube"], {})
    finally:
        backend.close()
    assert found and all(d["label"] == "cube" for d in found)


def label_lines(lines: list[dict]) -> list[dict]:
    return [i for line in lines for i in line["detection"]["instances"]]


def stage_named(text: str) -> str:
    return "coarse" if COARSE in text else "crop" if CROP in text else "dedup" if DEDUP in text else "?"


def stage_of(body: dict) -> str:
    """The verifier stage of a request as the server received it."""
    return stage_named(" ".join(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"))


def http_config(data: Path, detector: Path, url: str, **changes: Any) -> PseudoLabelConfig:
    verifier = {"backend": "openai", "model": "test-model", "base_url": url, "api_key_env": KEY_ENV,
                "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5, "max_retries": 2}
    return tiny_config(data, detector, verifier=verifier, **changes)


def good_reply(body: dict) -> Reply:
    return Reply(content={"coarse": '{"keep": [1, 2]}', "crop": "yes", "dedup": '{"keep": [1, 2]}'}[stage_of(body)])


def test_a_verifier_over_http_gets_the_images_and_is_retried(synthetic_data, detector_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")
    with running_chat_server(monkeypatch) as server:
        server.respond = good_reply
        server.script = [Reply(status=500)]  # the first request fails once, then succeeds
        labeler = PseudoLabeler(http_config(synthetic_data, detector_dir, server.url, size=2))
        stats = labeler.run(tmp_path / "out", progress=False)
        labeler.close()
        bodies = [r["body"] for r in server.requests]
    assert stats.status == {"ok": 2}
    stages = [stage_of(b) for b in bodies]
    assert stages.count("coarse") == 3 and stages.count("crop") == 4 and stages.count("dedup") == 2
    for body in bodies:
        parts = body["messages"][-1]["content"]
        images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert len(images) == (1 if stage_of(body) == "crop" else 2)
        assert all(url.startswith("data:image/png;base64,") for url in images)
        if stage_of(body) == "crop":
            crop = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
            assert max(crop.size) == 640
    assert [r["kept"] for r in read_records(tmp_path / "out")] == [[0, 1], [0, 1]]


class FakeDetector:
    """Three boxes per phrase, best first, counting its calls: for tests where the detector's
    own output does not matter (the real tiny model runs in the tests above)."""

    def __init__(self) -> None:
        self.calls = 0

    def detect_batch(self, requests):
        self.calls += 1
        return [[{"box": [10.0 * k, 5.0, 10.0 * k + 30, 40.0], "label": phrase, "score": 0.9 - 0.1 * k}
                 for phrase in phrases for k in range(3)] for _, phrases in requests]


def test_a_failing_verifier_fails_images_that_a_rerun_retries(synthetic_data, detector_dir, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setenv(KEY_ENV, "test-key")
    out = tmp_path / "out"
    detector = FakeDetector()
    with running_chat_server(monkeypatch) as server:
        server.default = Reply(status=500)
        labeler = PseudoLabeler(http_config(synthetic_data, detector_dir, server.url, size=2), detector=detector)
        stats = labeler.run(out, progress=False)
        assert stats.status == {"failed": 2} and stats.failed_by_stage == {"coarse": 2}
        assert len(server.requests) == 2 * 3  # each request tried 1 + max_retries times
    first = read_records(out)
    assert all(r["stage"] == "coarse" and "500" in r["error"] for r in first)
    assert export(out)["failed_by_stage"] == {"coarse": 2}
    assert not (out / "labels.odvg.jsonl").read_text()
    detections = detector.calls

    with running_chat_server(monkeypatch) as server:
        server.respond = good_reply
        labeler = PseudoLabeler(http_config(synthetic_data, detector_dir, server.url, size=2), detector=detector)
        stats = labeler.run(out, progress=False)
    assert stats.status == {"ok": 2} and stats.already_done == 0
    assert detector.calls == detections  # the recorded program and candidates were reused
    again = read_records(out)
    assert [r["candidates"] for r in again] == [r["candidates"] for r in first]
    assert len((out / "records.jsonl").read_text().splitlines()) == 4  # both tries are kept; the last wins

    capsys.readouterr()
    assert main(["pseudo-labels", "--out", str(out), "--export-only"]) == 0  # no model, no verifier
    assert "2 images labelled with 4 boxes" in capsys.readouterr().out


@pytest.mark.parametrize("stage, reply, error", [
    ("coarse", "I would rather not say.", "unreadable reply: no JSON"),
    ("coarse", '{"keep": [7]}', "box 7 does not exist"),
    ("crop", "maybe", "unreadable reply"),
])
def test_unreadable_replies_fail_the_image_at_their_stage(synthetic_data, detector_dir, tmp_path, monkeypatch, stage,
                                                          reply, error):
    monkeypatch.setenv(KEY_ENV, "test-key")
    with running_chat_server(monkeypatch) as server:
        server.respond = lambda body: Reply(content=reply) if stage_of(body) == stage else good_reply(body)
        labeler = PseudoLabeler(http_config(synthetic_data, detector_dir, server.url, size=2), detector=FakeDetector())
        stats = labeler.run(tmp_path / "out", progress=False)
    assert stats.failed_by_stage == {stage: 2}
    for record in read_records(tmp_path / "out"):
        assert record["status"] == "failed" and record["stage"] == stage and error in record["error"]
        assert record["reply"] == reply  # the start of what could not be read
        assert "kept" not in record
    assert export(tmp_path / "out")["stages"][stage]["failed"] == 2


class Interrupting(ChatBackend):
    """Scripted answers that stop the process (as Ctrl-C would) at a chosen coarse call."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at, self.coarse_calls = stop_at, 0

    @property
    def fingerprint(self) -> str:
        return "interrupting"

    def complete(self, messages, **sampling) -> str:
        raise NotImplementedError

    def complete_many(self, requests, **sampling) -> list[str | BackendError]:
        replies = []
        for request in requests:
            stage = stage_named(" ".join(p["text"] for p in request[-1]["content"] if p["type"] == "text"))
            if stage == "coarse":
                self.coarse_calls += 1
                if self.coarse_calls == self.stop_at:
                    raise KeyboardInterrupt
            replies.append({"coarse": '{"keep": [1]}', "crop": "yes", "dedup": '{"keep": [1]}'}[stage])
        return replies


def test_an_interrupted_run_resumes_without_redoing_or_duplicating(synthetic_data, detector_dir, tmp_path):
    out = tmp_path / "out"
    config = tiny_config(synthetic_data, detector_dir, batch_size=2, size=4)
    with pytest.raises(KeyboardInterrupt):
        PseudoLabeler(config, verifier_backend=Interrupting(stop_at=3), detector=FakeDetector()).run(out, progress=False)
    assert len(read_records(out)) == 2  # the first batch was written before the interruption
    with (out / "records.jsonl").open("a") as handle:
        handle.write('{"id": "synthetic_small/torn", "sta')  # a line cut short by a crash
    detector = FakeDetector()
    stats = PseudoLabeler(config, verifier_backend=Interrupting(stop_at=0), detector=detector).run(out, progress=False)
    assert (stats.already_done, stats.processed) == (2, 2) and detector.calls == 1  # only the second batch
    lines = (out / "records.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 4 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_no_program_no_phrases_and_no_detections_are_recorded_with_their_reason(detector_dir, tmp_path):
    images = tmp_path / "gen" / "images"
    queries = []
    for number, question in enumerate(["q-format", "q-computed", "q-nothing", "q-fine"]):
        write_image_file(images, f"{number}.png", colour(number), fmt="PNG")
        queries.append({"image": f"images/{number}.png", "query": question})  # source: "generated" by default
    write_jsonl(tmp_path / "gen", "queries.jsonl", queries)
    writer = write_script(tmp_path / "writer.jsonl", [
        ("q-format", "I cannot write a program for this."),
        ("q-computed", "<plan>p</plan><answer>x = vqa(image, None, 'what?')\nd = gd_detect(image, x)</answer>"),
        ("q-nothing", "<plan>p</plan><answer>d = gd_detect(image, 'purple cat')</answer>"),
        ("q-fine", "<plan>p</plan><answer>d = gd_detect(image, 'red cube')</answer>"),
    ])
    include = tmp_path / "include"
    include.mkdir()
    (include / "scripted-writer.yaml").write_text(
        "system: scripted-writer\nkind: llm_program\n"
        f"params:\n  llm: {{backend: scripted, path: {json.dumps(str(writer))}}}\n  tools: oracle\n")

    class Detector:
        def detect_batch(self, requests):
            return [[] if phrases == ["purple cat"] else [{"box": [1.0, 1.0, 9.0, 8.0], "label": phrases[0],
                                                           "score": 0.5}] for _, phrases in requests]

    verifier = write_script(tmp_path / "verifier.jsonl", [(COARSE, '{"keep": [1]}'), (DEDUP, '{"keep": [1]}'),
                                                          (CROP, "yes")])
    config = PseudoLabelConfig(sources=[str(tmp_path / "gen" / "queries.jsonl")], system="scripted-writer",
                               include_paths=[str(include)], verifier={"backend": "scripted", "path": str(verifier)},
                               cache=False)
    PseudoLabeler(config, detector=Detector()).run(tmp_path / "out", progress=False)
    records = {r["query"]: r for r in read_records(tmp_path / "out")}
    assert records["q-format"]["status"] == "no_program" and "format_error" in records["q-format"]["reason"]
    assert records["q-format"]["reply"] == "I cannot write a program for this."
    computed = records["q-computed"]
    assert computed["status"] == "no_phrases" and computed["unresolved"][0]["expression"] == "x"
    assert records["q-nothing"]["status"] == "no_detections" and "image" not in records["q-nothing"]
    fine = records["q-fine"]
    assert fine["status"] == "ok" and fine["source"] == "generated" and fine["image"] == "images/generated/3.png"
    stats = export(tmp_path / "out")
    assert stats["unresolved"]["images"] == 1 and stats["unresolved"]["most_common"][0]["expression"] == "x"


def test_settings_are_checked(tmp_path, synthetic_data, detector_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [a]\nverifer: {}\n")
    with pytest.raises(ValueError, match="verifer"):
        PseudoLabelConfig.from_yaml(bad)
    assert PseudoLabelConfig.from_yaml(RECIPE / "config.yaml").verifier["model"] == "gpt-5-mini"
    config = tiny_config(synthetic_data, detector_dir, system="predictions")
    with pytest.raises(ValueError, match="does not write programs"):
        PseudoLabeler(config, verifier_backend=Interrupting(0)).system
    config = tiny_config(synthetic_data, detector_dir, system_args={"limits": {"wall_seconds": 5}, "concurrency": 2})
    system = PseudoLabeler(config, verifier_backend=Interrupting(0)).system
    assert system.params["limits"] == {"wall_seconds": 5, "cpu_seconds": 10} and system.params["concurrency"] == 2


# ----------------------------------------------------------------------------- label precision


def precision_records(path: Path) -> Path:
    def record(record_id: str, coarse: list[int], crop: list[int], dedup: list[int], status: str = "ok") -> dict:
        candidates = [{"index": i, "label": "cup", "box": [0, 0, 1, 1], "score": 0.5} for i in range(5)]
        stages = {"coarse": {"kept": coarse, "removed": [i for i in range(5) if i not in coarse]},
                  "crop": {"kept": crop, "removed": [i for i in coarse if i not in crop]},
                  "dedup": {"kept": dedup, "removed": [i for i in crop if i not in dedup]}}
        return {"id": record_id, "source": "s", "status": status, "candidates": candidates, "stages": stages,
                "kept": dedup}

    rows = [record("a", [0, 1, 2, 3], [0, 1, 2], [0, 1]), record("b", [0, 4], [0], [0]),
            {"id": "c", "source": "s", "status": "failed", "stage": "crop"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_precision_per_stage(tmp_path, capsys):
    records = precision_records(tmp_path / "records.jsonl")
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "a", "correct": [0, 2], "missed": 1}\n{"id": "b", "correct": [4]}\n')
    report = label_precision(records, labels)
    scores = {name: (s.tp, s.fp, s.fn) for name, s in report.stages.items()}
    # a: correct {0, 2}, one missed; b: correct {4}
    assert scores == {"detector": (3, 7, 1), "coarse": (3, 3, 1), "crop": (2, 2, 2), "dedup": (1, 2, 3)}
    assert report.stages["coarse"].precision == 0.5 and report.stages["dedup"].recall == 0.25
    assert main(["label-precision", str(records), str(labels)]) == 0
    assert "| dedup" in capsys.readouterr().out


@pytest.mark.parametrize("line, message", [
    ('{"id": "zzz", "correct": []}', "labels.jsonl:1 (id zzz): no such record"),
    ('{"id": "a", "correct": [5]}', "names candidates [5], but the record has 5"),
    ('{"id": "c", "correct": []}', "the record is failed at crop"),
    ('{"id": "a", "correct": [0], "missed": -1}', "'missed' must be"),
    ('{"id": "a", "correct": [0]}\n{"id": "a", "correct": [1]}', "labels.jsonl:2 (id a): already labelled on line 1"),
    ('{"correct": [0]}', "needs a string 'id'"),
])
def test_label_precision_errors_name_the_line_and_id(tmp_path, line, message, capsys):
    records = precision_records(tmp_path / "records.jsonl")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(line + "\n")
    with pytest.raises(LabelsError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        label_precision(records, labels)
    assert main(["label-precision", str(records), str(labels)]) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- training sources


GQA = "lmms-lab/GQA"
GQA_QUESTIONS = datasets.Features({name: datasets.Value("string") for name in
                                   ("id", "imageId", "question", "answer", "fullAnswer")})
GQA_IMAGES = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})


def build_gqa(data_dir: Path) -> Path:
    """lmms-lab/GQA's layout: one folder per config, and a README declaring both."""
    root = data_dir / GQA
    questions = {"id": ["q1", "q2", "q3", "q4"], "imageId": ["2370", "2370", "61", "999"],
                 "question": ["Is the cup on the table?", "What is left of the cup?", "Are there dogs?",
                              "Is the sky blue?"],
                 "answer": ["SENTINEL"] * 4, "fullAnswer": ["SENTINEL"] * 4}
    write_parquet(root, "train_balanced_instructions/train-00000-of-00001.parquet", questions, GQA_QUESTIONS)
    images = {"id": ["61", "2370", "5"], "image": [arrow_image(colour(n)) for n in (61, 70, 5)]}
    write_parquet(root, "train_balanced_images/train-00000-of-00001.parquet", images, GQA_IMAGES)
    configs = []
    for config in ("train_balanced_images", "train_balanced_instructions"):
        configs += [f"- config_name: {config}", "  data_files:", "  - split: train", f"    path: {config}/train-*"]
    (root / "README.md").write_text("\n".join(["---", "configs:", *configs, "---", "", "# GQA", ""]))
    return root


def test_gqa_train_joins_its_image_table_lazily(tmp_path):
    build_gqa(tmp_path / "data")
    task = TaskRegistry().task("gqa_train", tmp_path / "data")
    samples = list(task.samples())
    assert [s.id for s in samples] == ["q1", "q2", "q3", "q4"]
    assert [s.cluster for s in samples] == ["2370", "2370", "61", "999"]
    assert all(s.answer is None and "SENTINEL" not in json.dumps(s.meta) for s in samples)
    assert all(isinstance(s.image, LazyImage) for s in samples)
    assert samples[0].image.load().getpixel((0, 0)) == colour(70)
    assert samples[2].image.load().getpixel((0, 0)) == colour(61)
    with pytest.raises(ImageError, match="id=999"):
        samples[3].image.load()
    pairs, counts = read_pairs(["gqa_train"], TaskRegistry(), data_dir=str(tmp_path / "data"))
    assert counts["gqa_train"].images == 3 and len(pairs) == 3  # one question per image


def test_image_table_settings_are_checked(tmp_path):
    from harness.tasks.config import TaskConfigError, parse_task_config

    data = {"task": "t", "dataset": {"path": "p", "image_table": {"config": "c"}}}
    with pytest.raises(TaskConfigError, match="image_table needs a 'split'"):
        parse_task_config(data, "t.yaml")
    data["dataset"]["image_table"] = {"split": "train", "column": "x"}
    with pytest.raises(TaskConfigError, match="unknown key 'column'"):
        parse_task_config(data, "t.yaml")


def build_vsr_train(data_dir: Path, coco_ids: list[int]) -> None:
    root = data_dir / VSR_ZEROSHOT
    rows = [{"image": f"{i:012d}.jpg", "image_link": f"http://images.invalid/{i:012d}.jpg",
             "caption": f"The cat is left of thing {i}.", "label": 1, "relation": "left of"} for i in coco_ids]
    rows.append(dict(rows[0], caption="The cat is under the first thing."))  # a second question on one image
    write_jsonl(root, "train.jsonl", rows)
    for i in coco_ids:
        write_image_file(root, f"images/{i:012d}.jpg", colour(i % 250))


def test_images_are_excluded_by_coco_file_name(tmp_path):
    build_vsr_train(tmp_path / "data", [139, 285, 632, 724])
    coco = tmp_path / "instances_val2017.json"
    coco.write_text(json.dumps({"images": [{"id": 139, "file_name": "000000000139.jpg"},
                                           {"id": 632, "file_name": "000000000632.jpg"}], "annotations": []}))
    pairs, counts = read_pairs(["vsr_train"], TaskRegistry(), data_dir=str(tmp_path / "data"),
                               exclude=read_exclusions(coco))
    assert sorted(p.file_name for p in pairs) == ["000000000285.jpg", "000000000724.jpg"]
    assert (counts["vsr_train"].read, counts["vsr_train"].excluded, counts["vsr_train"].images) == (5, 3, 2)
    assert all(p.image.load().getpixel((0, 0)) == pytest.approx(colour(int(p.file_name[:12]) % 250), abs=12)
               for p in pairs)
    # COCO 2014 names are the same pictures as their 2017 names.
    assert exclusion_key("train2014/COCO_train2014_000000000285.jpg") == exclusion_key("000000000285.jpg")
    names = tmp_path / "names.txt"
    names.write_text("# VSR images to leave out\nCOCO_val2014_000000000724.jpg\n\n")
    pairs, _ = read_pairs(["vsr_train"], TaskRegistry(), data_dir=str(tmp_path / "data"),
                          exclude=read_exclusions(names))
    assert sorted(p.file_name for p in pairs) == ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]
    (tmp_path / "empty.json").write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="needs an 'images' list"):
        read_exclusions(tmp_path / "empty.json")
