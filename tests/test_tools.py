"""Real tool code paths on tiny random models: detector, depth, the batched and cached tool server."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from harness.tools import ToolContext, make_backend
from harness.tools.api import IMAGE_MARKER
from harness.tools.depth import DepthModel, depth_at
from harness.tools.detector import GroundingDinoDetector, caption_for, nms
from harness.types import BytesImage

from tiny_models import save_depth_anything, save_grounding_dino, save_moge


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {"detector": str(save_grounding_dino(root / "gdino")), "moge": str(save_moge(root / "moge.pt")),
            "depth_anything": str(save_depth_anything(root / "depth-anything"))}


def picture(colour, size=(64, 48)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], 90, 30), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return image


def as_ref(image: Image.Image) -> BytesImage:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return BytesImage(buffer.getvalue())


# --------------------------------------------------------------------------- detector

def test_caption_and_phrase_spans():
    caption, spans = caption_for(["Red  Cube", "ball"])
    assert caption == "red cube. ball."
    assert [caption[a:b] for a, b in spans] == ["red cube", "ball"]


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=float)
    assert nms(boxes, np.array([0.5, 0.9, 0.3]), 0.5) == [1, 2]
    assert nms(boxes, np.array([0.5, 0.9, 0.3]), 0.95) == [1, 0, 2]


def test_detector_runs_the_real_path_on_a_batch(checkpoints):
    detector = GroundingDinoDetector(checkpoint=checkpoints["detector"], box_threshold=0.0, text_threshold=0.0,
                                     label_match="span")
    images = [picture((200, 10, 10)), picture((10, 10, 200), (40, 60))]
    results = detector.detect_batch([(images[0], ["cat"]), (images[1], ["dog"])])
    assert len(results) == 2 and results[0] and results[1]
    for image, phrase, detections in zip(images, ["cat", "dog"], results):
        width, height = image.size
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True)
        for d in detections:
            x1, y1, x2, y2 = d["box"]
            assert d["label"] == phrase and 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert all(isinstance(v, float) for v in d["box"])


def test_labels_must_match_a_requested_phrase(checkpoints):
    """A box counts for a phrase only if its text-matched tokens are that phrase's (exact) or part of it (span)."""
    exact = GroundingDinoDetector(checkpoint=checkpoints["detector"], box_threshold=0.3, text_threshold=0.25)
    span = GroundingDinoDetector(checkpoint=checkpoints["detector"], box_threshold=0.3, text_threshold=0.25,
                                 label_match="span", nms_iou=0.5)
    exact._load()
    span._load()
    caption, spans = caption_for(["red cube", "ball"])
    tokens = exact._phrase_tokens(caption, spans)  # [CLS] red cube . ball . [SEP]
    assert tokens == [{1, 2}, {4}]
    probs = np.zeros((5, 32))
    probs[0, [1, 2]] = 0.9          # the whole phrase "red cube"
    probs[1, [2]] = 0.8             # only "cube": part of "red cube"
    probs[2, [2, 4]] = 0.7          # spans two phrases: matches neither
    probs[3, [3, 5, 0]] = 0.95      # separators and special tokens only: no phrase
    probs[4, [4]] = 0.2             # below the box threshold
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
                      [0.7, 0.7, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1]])
    found = exact._decode(probs, boxes, (100, 50), ["red cube", "ball"], tokens)
    assert [(d["label"], d["score"]) for d in found] == [("red cube", 0.9)]
    assert found[0]["box"] == [40.0, 20.0, 60.0, 30.0]
    found = span._decode(probs, boxes, (100, 50), ["red cube", "ball"], tokens)
    assert [d["label"] for d in found] == ["red cube"]  # the "cube"-only box overlaps and is suppressed
    wider = GroundingDinoDetector(checkpoint=checkpoints["detector"], label_match="span")
    wider._load()
    assert len(wider._decode(probs, boxes, (100, 50), ["red cube", "ball"], tokens)) == 2


def test_detector_settings_are_checked():
    with pytest.raises(ValueError, match="label_match"):
        GroundingDinoDetector(label_match="fuzzy")


# --------------------------------------------------------------------------- depth

def test_depth_at_handles_invalid_values():
    depth_map = np.full((10, 20), 4.0, dtype=np.float32)
    depth_map[4:6, 8:12] = np.inf  # masked around the box centre
    assert depth_at(depth_map, [5, 2, 15, 8]) == 4.0  # median of the valid central half
    assert depth_at(depth_map, [0, 0, 4, 4]) == 4.0
    assert depth_at(depth_map, [100, 100]) == 4.0  # clamped into the image
    depth_map[:, :] = np.nan
    assert depth_at(depth_map, [5, 2, 15, 8]) == float("inf")
    depth_map[5, 10] = -1.0
    assert depth_at(depth_map, [10, 5]) == float("inf")
    assert isinstance(depth_at(np.full((3, 3), 2.0, dtype=np.float32), [1, 1]), float)


def test_moge_depth_maps_are_per_image_and_batched(checkpoints):
    model = DepthModel(checkpoint=checkpoints["moge"], num_tokens=256)
    a, b, c = picture((200, 10, 10)), picture((10, 200, 10)), picture((10, 10, 200), (40, 30))
    maps = model.depth_maps([a, b, c])
    assert [m.shape for m in maps] == [(48, 64), (48, 64), (30, 40)]
    assert all(m.dtype == np.float32 for m in maps)
    assert not np.allclose(maps[0], maps[1], equal_nan=True)  # each image gets its own map
    alone = model.depth_maps([b])[0]
    assert np.allclose(alone, maps[1], rtol=1e-4, atol=1e-5, equal_nan=True)


def test_transformers_depth_fallback(checkpoints):
    model = DepthModel(backend="transformers", checkpoint=checkpoints["depth_anything"])
    maps = model.depth_maps([picture((1, 2, 3)), picture((9, 9, 9), (30, 40))])
    assert [m.shape for m in maps] == [(48, 64), (40, 30)]
    assert np.isfinite(maps[0]).all() and (maps[0] > 0).all()


def test_depth_settings_are_checked():
    with pytest.raises(ValueError, match="depth backend"):
        DepthModel(backend="sonar")


# --------------------------------------------------------------------------- the tool server

def backend_for(checkpoints, tmp_path, **options):
    defaults = dict(detector={"checkpoint": checkpoints["detector"], "box_threshold": 0.0, "text_threshold": 0.0,
                              "label_match": "span"},
                    depth={"checkpoint": checkpoints["moge"], "num_tokens": 256}, cache_dir=str(tmp_path / "cache"))
    return make_backend("real", **{**defaults, **options})


def test_tool_server_caches_every_answer_across_runs(checkpoints, tmp_path):
    image = as_ref(picture((120, 40, 200)))
    calls = [("gd_detect", [IMAGE_MARKER, "cat, dog"]), ("depth", [IMAGE_MARKER, [10, 10, 30, 30]]),
             ("depth", [IMAGE_MARKER, [5, 40]])]
    first = backend_for(checkpoints, tmp_path)
    session = first.session(ToolContext(image, (64, 48)))
    answers = [session.call(name, args, {}) for name, args in calls]
    assert isinstance(answers[1], float) and isinstance(answers[2], float)
    assert first.stats["gd_detect_computed"] == 1 and first.stats["depth_computed"] == 2
    assert first.stats["depth_maps"] == 1  # one depth map for the image, read twice
    first.close()

    again = backend_for(checkpoints, tmp_path)  # a new run sharing the cache file
    session = again.session(ToolContext(image, (64, 48)))
    assert [session.call(name, args, {}) for name, args in calls] == answers
    assert again.stats == {"gd_detect_cache_hits": 1, "depth_cache_hits": 2}
    again.close()

    stricter = backend_for(checkpoints, tmp_path, detector={"checkpoint": checkpoints["detector"],
                                                            "box_threshold": 0.5})
    stricter.session(ToolContext(image, (64, 48))).call(*calls[0], {})
    assert stricter.stats["gd_detect_computed"] == 1  # another model fingerprint: no stale answer
    stricter.close()


def test_each_image_gets_its_own_depth(checkpoints, tmp_path):
    backend = backend_for(checkpoints, tmp_path, cache=False)
    first, second = as_ref(picture((250, 250, 250))), as_ref(picture((5, 5, 5)))
    box = [IMAGE_MARKER, [0, 0, 64, 48]]
    a = backend.session(ToolContext(first, (64, 48))).call("depth", box, {})
    b = backend.session(ToolContext(second, (64, 48))).call("depth", box, {})
    assert a != b and backend.stats["depth_maps"] == 2
    backend.close()


def test_concurrent_requests_are_batched(checkpoints, tmp_path):
    backend = backend_for(checkpoints, tmp_path, cache=False, max_batch=8, max_wait_ms=300)
    images = [as_ref(picture((20 * i, 100, 50))) for i in range(6)]
    results = [None] * 6

    def detect(i):
        results[i] = backend.session(ToolContext(images[i], (64, 48))).call("gd_detect", [IMAGE_MARKER, "cat"], {})

    threads = [threading.Thread(target=detect, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in results)
    assert backend._detect.items == 6 and backend._detect.batches < 6
    backend.close()


def test_tool_errors_reach_the_caller(checkpoints, tmp_path):
    backend = backend_for(checkpoints, tmp_path, cache=False)
    session = backend.session(ToolContext(as_ref(picture((1, 1, 1))), (64, 48)))
    with pytest.raises(ValueError, match="phrases"):
        session.call("gd_detect", [IMAGE_MARKER, ""], {})
    with pytest.raises(ValueError, match="box_or_point"):
        session.call("depth", [IMAGE_MARKER, [1, 2, 3]], {})
    backend.close()


# --------------------------------------------------------------------------- end to end: real tools on the synthetic benchmark

def test_reference_programs_run_with_real_tools(checkpoints, tmp_path, monkeypatch):
    """`--tools real`: the same programs, now answered by (tiny) models and a VLM endpoint."""
    import json

    from fake_openai import Reply, running_chat_server
    from harness.cli import main
    from toy import SMALL_SYNTHETIC_TASK

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TINY_VLM_KEY", "sk-test")
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    with running_chat_server(monkeypatch) as server:
        server.default = Reply(content="Red.")
        real = {"detector": {"checkpoint": checkpoints["detector"], "box_threshold": 0.3},
                "depth": {"checkpoint": checkpoints["moge"], "num_tokens": 256},
                "vqa": {"backend": "openai", "model": "tiny-vlm", "base_url": server.url, "api_key_env": "TINY_VLM_KEY"}}
        (include / "reference_tiny.yaml").write_text(json.dumps({
            "system": "reference_tiny", "kind": "reference",
            "params": {"tools": "oracle", "tool_options": {"real": real}, "device": "cpu", "concurrency": 2,
                       "limits": {"wall_seconds": 60, "cpu_seconds": 20}}}))
        out = tmp_path / "run"
        assert main(["run", "--system", "reference_tiny", "--tools", "real", "--tasks", "synthetic_small",
                     "--limit", "16", "--include-path", str(include), "--output-path", str(out)]) == 0
    records = [json.loads(line) for line in (out / "samples_synthetic_small.jsonl").read_text().splitlines()]
    assert len(records) == 16
    assert {r["status"] for r in records} <= {"ok", "no_answer", "exception", "tool_error"}
    calls = [c for r in records for c in r["tool_calls"]]
    assert {c["tool"] for c in calls} >= {"gd_detect", "depth"}
    assert all("result" in c or "error" in c for c in calls)
    if any(c["tool"] == "vqa" for c in calls):
        assert server.requests and server.requests[0]["body"]["model"] == "tiny-vlm"
        assert any(c.get("result") == "red" for c in calls if c["tool"] == "vqa")
    run = json.loads((out / "run.json").read_text())
    assert run["system_config"]["params"]["tools"] == "real"


def test_grounding_eval_measures_tools_against_ground_truth(checkpoints, tmp_path, monkeypatch, capsys):
    import json

    from harness.cli import main
    from toy import SMALL_SYNTHETIC_TASK

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    base = ["grounding-eval", "--tasks", "synthetic_small", "--include-path", str(include), "--limit", "4"]

    assert main([*base, "--tools", "oracle", "--output-path", str(tmp_path / "oracle.json")]) == 0
    perfect = json.loads((tmp_path / "oracle.json").read_text())
    assert perfect["scenes"] == 4 and perfect["true_boxes"] > 10
    assert perfect["box_recall@0.5"] == perfect["box_precision@0.5"] == 1.0 and perfect["depth_abs_rel"] == 0.0
    assert "| box recall @ IoU 0.5 (%) | 100.0 |" in capsys.readouterr().out

    assert main([*base, "--tools", "oracle", "--tool-options", "noise=0.8", "--output-path", str(tmp_path / "noisy.json")]) == 0
    noisy = json.loads((tmp_path / "noisy.json").read_text())
    assert noisy["box_recall@0.5"] < 1.0 and 0.0 < noisy["depth_abs_rel"] < 0.5

    options = f"detector.checkpoint={checkpoints['detector']},depth.checkpoint={checkpoints['moge']},depth.num_tokens=256"
    assert main([*base, "--tools", "real", "--tool-options", options, "--device", "cpu",
                 "--output-path", str(tmp_path / "real.json")]) == 0
    real = json.loads((tmp_path / "real.json").read_text())
    assert real["scenes"] == 4 and real["true_boxes"] == perfect["true_boxes"]
    assert real["depth_points"] == perfect["depth_points"] and real["tools"]["backend"] == "real"
