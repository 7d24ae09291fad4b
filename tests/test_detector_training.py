"""Detector fine-tuning on pseudo-labels, COCO mAP, program replay and the Figure 7 ablation, on a CPU.

A tiny random GroundingDINO (tests/tiny_models.py) trains on a pseudo-label folder
in the pipeline's export layout, built from synthetic scenes and their true boxes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.grounding.odvg import OdvgError, read_odvg
from test_recipes import RECIPES, load_entry
from pseudo_labels import write_pseudo_labels
from tiny_models import save_grounding_dino, write_bert_vocab

TINY = RECIPES / "grounding_sft/config_cpu_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    return save_grounding_dino(tmp_path_factory.mktemp("detector") / "gdino")


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    """Two sources, three images and one: the balanced sampler's uneven case."""
    return write_pseudo_labels(tmp_path_factory.mktemp("labels"), {"vsr_train": 3, "generated": 1})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- reading ODVG


def test_odvg_reader_reads_the_export_layout(labels, tmp_path):
    data = read_odvg([labels])
    assert len(data.images) == 4 and set(data.sources()) == {"vsr_train", "generated"}
    first = data.images[0]
    assert first.path == labels / "images/vsr_train/000000.png" and first.path.is_file()
    assert first.origin == f"{labels / 'labels.odvg.jsonl'}:1"
    assert data.phrases == sorted(json.loads((labels / "label_map.json").read_text()).values())
    assert all(box.category in data.phrases for image in data.images for box in image.boxes)

    # A second file whose lines carry no source: its name is the source; images relative to it.
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "pic.png").write_bytes(first.path.read_bytes())
    row = {"filename": "pic.png", "width": first.width, "height": first.height,
           "detection": {"instances": [{"bbox": [1, 2, 30, 40], "category": "Purple  Cone"}]}}
    (extra / "omni3d.odvg.jsonl").write_text(json.dumps(row) + "\n")
    both = read_odvg([labels / "labels.odvg.jsonl", extra / "omni3d.odvg.jsonl"])
    assert both.sources()["omni3d"] == [4] and both.images[4].boxes[0].category == "purple cone"
    assert "purple cone" in both.phrases

    # Nested subsets: a smaller share lies inside a larger one, with one seed.
    quarter, half = both.subset(0.25, 7), both.subset(0.5, 7)
    assert len(quarter.images) == 2 and len(half.images) == 3
    assert {i.origin for i in quarter.images} <= {i.origin for i in half.images}
    assert len(both.subset(2, 7).images) == 2 and both.subset(None, 7) is both


@pytest.mark.parametrize("change, message", [
    (lambda row: row.update(filename="images/none.png"), r":1: field 'filename': image .*none\.png does not exist"),
    (lambda row: row["detection"]["instances"][0].update(bbox=[0, 0, 9999, 10]), r":1: detection\.instances\[0\]: field 'bbox' .* outside the 320x240 image"),
    (lambda row: row["detection"]["instances"][0].update(bbox=[5, 5, 5, 9]), r"field 'bbox' .* is empty"),
    (lambda row: row["detection"]["instances"][0].update(label=999), r"field 'label' 999 is not in the label map"),
    (lambda row: row["detection"]["instances"][0].update(category="a zebra"), r"field 'category' 'a zebra' differs from label"),
    (lambda row: row.update(width=100), r"fields 'width', 'height' say 100x240, but .* is 320x240"),
    (lambda row: row.pop("detection"), r"field 'detection' is missing"),
    (lambda row: row.update(height="tall"), r"field 'height' must be a positive integer"),
])
def test_odvg_reader_names_file_line_and_field(labels, tmp_path, change, message):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "images").symlink_to(labels / "images")
    (folder / "label_map.json").write_text((labels / "label_map.json").read_text())
    rows = lines(labels / "labels.odvg.jsonl")
    change(rows[0])
    (folder / "labels.odvg.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(OdvgError, match=message) as error:
        read_odvg(folder)
    assert str(folder / "labels.odvg.jsonl") in str(error.value)


# --------------------------------------------------------------------------- sampling and captions


def test_balanced_sampler_draws_sources_equally_and_deterministically():
    from harness.grounding.finetune_data import BalancedSampler

    sources = {"big": list(range(60)), "small": [60, 61, 62], "single": [63]}
    sampler = BalancedSampler(sources, seed=5)
    draws = sampler.epoch(0, 9000)
    shares = np.array([sum(i < 60 for i in draws), sum(60 <= i < 63 for i in draws), draws.count(63)]) / 9000
    assert np.allclose(shares, 1 / 3, atol=0.02), shares
    assert len(sampler.epoch(0)) == 64  # an epoch is as many draws as images
    first = sampler.epoch(0, 500)
    assert first == BalancedSampler(sources, seed=5).epoch(0, 500)  # seeded: a resumed run draws the same
    assert sampler.epoch(1, 500) != first and BalancedSampler(sources, seed=6).epoch(0, 500) != first
    # Within a source, images come in a shuffled cycle: the small source's three before any repeats.
    small = [i for i in draws if 60 <= i < 63]
    assert sorted(small[:3]) == [60, 61, 62]
    plain = BalancedSampler(sources, seed=5, balanced=False).epoch(0)
    assert sorted(plain) == list(range(64)) and plain != list(range(64))


def test_captions_hold_the_image_phrases_and_fit_the_text_length(labels, tmp_path):
    from transformers import BertTokenizerFast

    from harness.grounding.finetune_data import PhraseBudget, build_example

    tokenizer = BertTokenizerFast(vocab=str(write_bert_vocab(tmp_path / "vocab.txt")))
    data = read_odvg(labels)
    pool = data.phrases + ["table", "chair", "orange mug", "the left cat", "a dog"]
    for max_len in (12, 32):
        budget = PhraseBudget(tokenizer, max_len)
        for index, image in enumerate(data.images):
            example = build_example(image, pool, 8, budget, np.random.default_rng(index))
            assert len(tokenizer(example.caption)["input_ids"]) <= max_len
            assert len(set(example.phrases)) == len(example.phrases) <= 8
            labels_ = example.target["class_labels"].tolist()
            kept = [box for box in image.boxes if box.category in example.phrases]
            assert [example.phrases[i] for i in labels_] == [box.category for box in kept]
            assert example.dropped_boxes == len(image.boxes) - len(kept)
            if max_len == 32:  # room for all of the image's own phrases; negatives fill the rest
                assert set(image.categories) <= set(example.phrases) and example.dropped_boxes == 0
            x1, y1, x2, y2 = kept[0].bbox
            cx, cy, w, h = example.target["boxes"][0].tolist()
            assert np.allclose([cx * image.width, cy * image.height, w * image.width, h * image.height],
                               [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-3)
    # Seeded: the same generator gives the same caption.
    budget = PhraseBudget(tokenizer, 32)
    one = build_example(data.images[0], pool, 8, budget, np.random.default_rng(3))
    assert one.caption == build_example(data.images[0], pool, 8, budget, np.random.default_rng(3)).caption


# --------------------------------------------------------------------------- the batched loss bug


def _three_captions_batch(tiny_detector, labels):
    """A forward pass on 3 images whose captions differ in phrases and in phrase count."""
    from harness.grounding.finetune_data import Collator, PhraseBudget, build_example
    from harness.tools.detector import load_grounding_dino

    model, processor = load_grounding_dino(str(tiny_detector))
    data = read_odvg(labels)
    budget = PhraseBudget(processor.tokenizer, model.config.max_text_len)
    examples = [build_example(data.images[i], data.phrases, phrases, budget, np.random.default_rng(i))
                for i, phrases in zip(range(3), (3, 6, 4))]
    assert len({len(e.phrases) for e in examples}) == 3
    batch = Collator(processor)([*examples])
    model.config.auxiliary_loss = False
    with torch.no_grad():
        outputs = model(**batch["inputs"])
    return model, batch, outputs


def test_batched_targets_and_loss_equal_each_image_alone(tiny_detector, labels):
    """transformers offsets image i's phrase rows by its own phrase count; ours by the earlier images'."""
    from transformers.loss.loss_grounding_dino import (
        GroundingDinoForObjectDetectionLoss, GroundingDinoHungarianMatcher, GroundingDinoImageLoss)
    from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps, build_text_mask

    from harness.grounding.loss import CumulativeOffsetImageLoss, grounding_dino_loss

    model, batch, out = _three_captions_batch(tiny_detector, labels)
    targets = batch["labels"]
    maps = build_label_maps(out.logits, batch["inputs"]["input_ids"])
    mask = build_text_mask(out.logits, batch["inputs"]["attention_mask"])
    outputs = {"logits": out.logits, "pred_boxes": out.pred_boxes, "label_maps": maps, "text_mask": mask}
    matcher = GroundingDinoHungarianMatcher(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0)
    indices = matcher(outputs, targets)

    ours = CumulativeOffsetImageLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(outputs, targets, indices)
    for i in range(3):
        alone = CumulativeOffsetImageLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(
            {"logits": out.logits[i:i + 1], "label_maps": (maps[i],)}, [targets[i]], [indices[i]])
        assert torch.equal(ours[i], alone[0])
        rows = ours[i][indices[i][0]]  # each matched query's target is its phrase's tokens in its own caption
        assert torch.equal(rows, maps[i][targets[i]["class_labels"][indices[i][1]]])
    try:
        stock = GroundingDinoImageLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(outputs, targets, indices)
        assert not torch.equal(stock, ours)
    except IndexError:
        pass  # the stock offsets can also run past the concatenated maps

    # The whole loss on the batch is the box-weighted mean of the per-image losses, with ours only.
    extra = {"encoder_logits": out.encoder_logits, "encoder_pred_boxes": out.encoder_pred_boxes}
    _, batched, _ = grounding_dino_loss(out.logits, targets, "cpu", out.pred_boxes, model.config, maps, mask, **extra)
    boxes = [len(t["boxes"]) for t in targets]
    weighted = {}
    for i in range(3):
        _, alone, _ = grounding_dino_loss(out.logits[i:i + 1], [targets[i]], "cpu", out.pred_boxes[i:i + 1],
                                          model.config, (maps[i],), mask[i:i + 1],
                                          encoder_logits=out.encoder_logits[i:i + 1],
                                          encoder_pred_boxes=out.encoder_pred_boxes[i:i + 1])
        for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc"):
            weighted[key] = weighted.get(key, 0.0) + float(alone[key]) * boxes[i] / sum(boxes)
    for key, value in weighted.items():
        assert float(batched[key]) == pytest.approx(value, rel=1e-5), key
    try:
        _, stock_terms, _ = GroundingDinoForObjectDetectionLoss(out.logits, targets, "cpu", out.pred_boxes,
                                                                model.config, maps, mask, **extra)
        assert float(stock_terms["loss_ce"]) != pytest.approx(weighted["loss_ce"], rel=1e-3)
    except IndexError:
        pass


def test_corrected_loss_equals_the_stock_loss_on_one_shared_caption(tiny_detector, labels):
    """Where transformers is right (one caption for the batch), the two losses agree term by term."""
    from PIL import Image
    from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss

    from harness.grounding.loss import grounding_dino_loss
    from harness.tools.detector import load_grounding_dino

    model, processor = load_grounding_dino(str(tiny_detector))
    model.config.auxiliary_loss = True
    images = [i.path for i in read_odvg(labels).images[:2]]
    inputs = processor(images=[Image.open(p).convert("RGB") for p in images], text=["red cube. cone. blue sphere."] * 2,
                       return_tensors="pt", padding=True)
    targets = [{"class_labels": torch.tensor([2, 0]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .5, .2, .3]])},
               {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]
    model.loss_function = grounding_dino_loss
    ours = model(**inputs, labels=targets)
    model.loss_function = GroundingDinoForObjectDetectionLoss
    stock = model(**inputs, labels=targets)
    assert set(ours.loss_dict) == set(stock.loss_dict) and "loss_ce_0" in ours.loss_dict
    assert float(ours.loss.detach()) == pytest.approx(float(stock.loss.detach()), rel=1e-6)
    for key in stock.loss_dict:
        assert float(ours.loss_dict[key].detach()) == pytest.approx(float(stock.loss_dict[key].detach()), rel=1e-6), key


def test_encoder_proposals_learn_as_in_the_original(tiny_detector, labels):
    """The *_enc term scores the proposals the decoder starts from, with gradients into the proposal head."""
    from PIL import Image
    from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss

    from harness.grounding.loss import install, selected_proposals
    from harness.tools.detector import load_grounding_dino

    model, processor = load_grounding_dino(str(tiny_detector))
    model.train()
    image = Image.open(read_odvg(labels).images[0].path).convert("RGB")
    inputs = processor(images=[image], text=["red cube. cone."], return_tensors="pt")
    targets = [{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .5, .2, .3]])}]
    head = model.model.enc_output.weight

    model.loss_function = GroundingDinoForObjectDetectionLoss
    stock = model(**inputs, labels=targets)
    stock.loss.backward()
    assert head.grad is None or not head.grad.any()  # transformers: the proposal head learns nothing
    _, boxes = selected_proposals(stock.enc_outputs_class, stock.enc_outputs_coord_logits, model.config.num_queries)
    assert torch.allclose(boxes, stock.encoder_pred_boxes)  # the same proposals, now attached to the graph

    model.zero_grad()
    install(model)
    ours = model(**inputs, labels=targets)
    ours.loss.backward()
    assert head.grad is not None and head.grad.abs().sum() > 0 and "loss_ce_enc" in ours.loss_dict


# --------------------------------------------------------------------------- training end to end


def test_two_steps_freeze_log_save_reload_and_resume(tiny_detector, labels, tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    from harness.grounding.finetune import DetectorTrainer, load_config
    from harness.grounding.loss import TrainingLoss
    from harness.tools import ToolContext, make_backend
    from harness.tools.api import IMAGE_MARKER
    from harness.tools.detector import GroundingDinoDetector
    from harness.types import FileImage

    out = tmp_path / "run"
    sets = [f"data=[{labels}]", f"output_dir={out}", f"checkpoint={tiny_detector}"]
    trainer = DetectorTrainer(load_config(TINY, sets))
    assert isinstance(trainer.model.loss_function, TrainingLoss)  # the corrected loss trains the model
    result = trainer.train()
    assert result.steps == 2 and result.epochs_run == [1]

    log = lines(out / "train_log.jsonl")
    assert [(e["step"], e["epoch"], e["images"]) for e in log] == [(1, 1, 2), (2, 1, 2)]
    for entry in log:
        assert entry["lr"] == 1e-4 and entry["loss"] > 0 and {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc"} <= set(entry)
    info = json.loads((out / "run_info.json").read_text())
    assert info["images"] == 4 and info["sources"]["generated"]["images"] == 1 and info["precision"] == "float32"

    before, after = load_file(tiny_detector / "model.safetensors"), load_file(out / "final/model.safetensors")
    frozen = [k for k in before if k.startswith(("model.backbone.conv_encoder.model.", "model.text_backbone."))]
    trained = [k for k in before if k not in frozen and k in after]
    assert len(frozen) > 20 and len(trained) > 20
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # bit-identical
    unchanged = [k for k in trained if torch.equal(before[k], after[k])]
    assert not unchanged  # the encoder's proposal head included (transformers' own loss leaves it alone)
    assert (out / "epoch-1/trainer_state.json").is_file() and (out / "epoch-1/optimizer.pt").is_file()

    # The saved folder is a detector checkpoint: the tool server loads it and detects what the trained model does.
    settings = {"box_threshold": 0.0, "text_threshold": 0.0, "label_match": "span"}
    picture = FileImage(str(read_odvg(labels).images[0].path))
    backend = make_backend("real", device="cpu", cache=False, detector={"checkpoint": str(out / "final"), **settings})
    served = backend.session(ToolContext(picture, picture.size())).call("gd_detect", [IMAGE_MARKER, "red cube"], {})
    backend.close()
    in_memory = GroundingDinoDetector.from_loaded(trainer.model.eval(), trainer.processor, **settings)
    expected = in_memory.detect_batch([(Image.open(picture.path).convert("RGB"), ["red cube"])])[0]
    assert served and served == expected

    # Starting again over it is refused; a changed recipe cannot resume; --resume with more epochs continues.
    with pytest.raises(FileExistsError, match="--resume"):
        DetectorTrainer(load_config(TINY, sets))
    assert main(["train-detector", "--config", str(TINY), *[a for s in sets for a in ("--set", s)],
                 "--set", "learning_rate=0.5", "--resume"]) == 2
    assert load_entry("grounding_sft/train.py").main(
        ["--config", str(TINY), *[a for s in sets for a in ("--set", s)], "--set", "epochs=2", "--resume"]) == 0
    log = lines(out / "train_log.jsonl")
    assert [(e["step"], e["epoch"]) for e in log] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    state = json.loads((out / "epoch-2/trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 4
    assert not torch.equal(load_file(out / "final/model.safetensors")["bbox_embed.0.layers.0.weight"],
                           after["bbox_embed.0.layers.0.weight"])


def test_recipe_configs_hold_the_paper_settings():
    from harness.grounding.finetune import load_config, training_dtype
    from harness.training.recipe_config import RecipeConfigError

    paper = load_config(RECIPES / "grounding_sft/config.yaml")
    assert (paper.learning_rate, paper.weight_decay, paper.batch_size, paper.epochs) == (1e-6, 1e-4, 16, 4)
    assert (paper.lr_gamma, paper.lr_step_epochs, paper.max_grad_norm) == (0.1, 4, 0.1)
    assert paper.freeze_backbone and paper.freeze_text_encoder and paper.accumulation == 4
    with pytest.raises(RecipeConfigError, match="multiple of micro_batch_size"):
        load_config(RECIPES / "grounding_sft/config.yaml", ["micro_batch_size=3"])
    with pytest.raises(RecipeConfigError, match="unknown settings"):
        load_config(RECIPES / "grounding_sft/config.yaml", ["learning_rat=1"])
    with pytest.raises(RecipeConfigError, match="bfloat16 needs a CUDA GPU"):
        training_dtype("bfloat16", "cpu")
    assert training_dtype("auto", "cpu") == "float32"


# --------------------------------------------------------------------------- COCO mAP


def test_coco_map_plumbing_with_a_detector_we_control(labels):
    from harness.grounding.coco_eval import coco_metrics, detect, read_coco

    coco = read_coco(labels / "coco.json", labels)
    truth: dict[int, list] = {}
    for annotation in coco.data["annotations"]:
        truth.setdefault(annotation["image_id"], []).append(annotation)

    def stub(shift: float):
        position = iter(coco.images)

        def predict(images, names):
            out = []
            for _ in images:
                entries = truth[next(position)["id"]]
                boxes = np.array([[x + shift * w, y, x + w + shift * w, y + h] for x, y, w, h in
                                  (a["bbox"] for a in entries)])
                labels_ = np.array([coco.category_ids.index(a["category_id"]) for a in entries])
                out.append((boxes, np.full(len(entries), 0.9), labels_))
            return out
        return predict

    perfect = coco_metrics(coco, detect(coco, stub(0.0), batch_size=3, progress=False))
    assert perfect["AP"] == perfect["AP50"] == perfect["AP75"] == pytest.approx(1.0)
    shifted = coco_metrics(coco, detect(coco, stub(0.3), batch_size=3, progress=False))
    assert shifted["AP"] < 0.6 and shifted["AP50"] > shifted["AP75"]
    assert coco_metrics(coco, [])["AP"] == 0.0
    limited = read_coco(labels / "coco.json", labels, limit=2)
    assert [i["id"] for i in limited.images] == [1, 2]
    assert coco_metrics(limited, detect(limited, stub(0.0), progress=False))["AP"] == pytest.approx(1.0)


def test_categories_beyond_the_text_length_take_several_passes(tmp_path):
    from transformers import BertTokenizerFast

    from harness.grounding.coco_eval import GroundingDinoPredictor, caption_passes

    lengths = {"a": 2, "bb": 5, "c": 2}.get  # tokens per "name."; [CLS] and [SEP] take two more
    assert caption_passes(["a", "bb", "c"], lengths, 8) == [[0], [1], [2]]
    assert caption_passes(["a", "bb", "c"], lengths, 9) == [[0, 1], [2]]
    assert caption_passes(["a", "bb", "c"], lengths, 11) == [[0, 1, 2]]

    class FakeDetector:
        """Two queries; query q scores category k of a pass with (k + 1) / 10 + q / 100."""
        tokenizer = BertTokenizerFast(vocab=str(write_bert_vocab(tmp_path / "vocab.txt")))
        max_text_len = 8  # [CLS] + 3 phrases of 2 tokens + [SEP]
        calls: list[list[str]] = []

        def query_scores(self, requests, reduce):
            assert reduce == "mean"
            self.calls.append(requests[0][1])
            phrases = requests[0][1]
            scores = np.array([[(k + 1) / 10 + q / 100 for k in range(len(phrases))] for q in range(2)])
            return [(np.array([[0, 0, 5, 5], [1, 1, 9, 9]], float), scores) for _ in requests]

    names = ["cat", "dog", "car", "box", "cube"]
    detector = FakeDetector()
    predictor = GroundingDinoPredictor(detector, top_k=4)
    [(boxes, scores, categories)] = predictor([None], names)
    assert detector.calls == [["cat", "dog", "car"], ["box", "cube"]]
    assert scores.tolist() == pytest.approx([0.31, 0.30, 0.21, 0.21])
    assert categories.tolist() == [2, 2, 1, 4] and boxes[0].tolist() == [1, 1, 9, 9]


def test_detector_map_end_to_end(tiny_detector, labels, tmp_path, capsys):
    report = tmp_path / "map.json"
    assert main(["detector-map", str(tiny_detector), "--coco", str(labels / "coco.json"), "--images", str(labels),
                 "--device", "cpu", "--batch-size", "2", "--limit", "3", "--no-progress",
                 "--output-path", str(report)]) == 0
    result = json.loads(report.read_text())
    # every (query, category) pair of the 20 queries, up to the top 300 per image
    assert result["images"] == 3 and result["caption_passes"] >= 2
    assert result["detections"] == 3 * min(300, 20 * result["categories"])
    assert set(result["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert "| AP | AP50 | AP75 | APs | APm | APl | AR100 |" in capsys.readouterr().out
    assert main(["detector-map", str(tiny_detector), "--coco", str(tmp_path / "none.json"), "--images",
                 str(labels)]) == 2


# --------------------------------------------------------------------------- replaying programs


@pytest.fixture
def reference_run(tmp_path, monkeypatch):
    from toy import SMALL_SYNTHETIC_TASK

    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    run = tmp_path / "reference"
    assert main(["run", "--system", "reference", "--tasks", "synthetic_small", "--limit", "10",
                 "--include-path", str(include), "--output-path", str(run)]) == 0
    return include, run


def test_replay_runs_the_recorded_programs_with_other_tools(reference_run, tmp_path):
    include, run = reference_run
    samples = run / "samples_synthetic_small.jsonl"
    records = lines(samples)
    # The earlier run's model wrote no program for one sample: a format error, kept as it was.
    records[1].update(status="format_error", program=None, detail="no <answer> block", raw="I cannot.")
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))

    replay = tmp_path / "replay"
    assert main(["run", "--system", "replay", "--tasks", "synthetic_small", "--limit", "12", "--include-path",
                 str(include), "--output-path", str(replay),
                 "--system-args", f"run={run},tool_options.oracle.noise=1.0"]) == 0
    again = {r["id"]: r for r in lines(replay / "samples_synthetic_small.jsonl")}
    assert len(again) == 12
    earlier = {r["id"]: r for r in records}
    for sample_id, record in earlier.items():
        assert again[sample_id]["program"] == record["program"]
    assert again[records[1]["id"]]["status"] == "format_error" and again[records[1]["id"]]["raw"] == "I cannot."
    missing = [r for r in again.values() if r["id"] not in earlier]
    assert len(missing) == 2 and all(r["status"] == "missing" and "has no record" in r["detail"] for r in missing)
    ran = [i for i, r in earlier.items() if r["status"] == "ok"]
    assert any(again[i]["prediction"] != earlier[i]["prediction"] for i in ran)  # noisy tools, other answers
    assert all(again[i]["tool_calls"] for i in ran)
    config = json.loads((replay / "run.json").read_text())["system_config"]
    assert config["params"]["tools"] == "oracle" and config["params"]["tool_options"]["oracle"]["noise"] == 1.0
    assert config["params"]["limits"] == {"wall_seconds": 30, "cpu_seconds": 10}  # inherited
    assert config["replayed_system"] == "reference"


def test_replay_wraps_step_programs_as_their_system_did(tmp_path):
    from harness.systems import SystemConfigError, SystemRegistry
    from harness.systems.program import Program
    from harness.systems.visprog import sandbox_program
    from harness.types import Sample

    steps = "BOX0=DETECT(image=IMAGE, object='mug')\nANSWER0=COUNT(box=BOX0)\nFINAL_RESULT=RESULT(var=ANSWER0)"
    run = tmp_path / "visprog-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"system": "visprog-gpt-4o",
                                              "system_config": {"kind": "visprog", "params": {"tools": "oracle"}}}))
    (run / "samples_toy.jsonl").write_text(json.dumps(
        {"id": "1", "question": "How many mugs?", "status": "ok", "program": steps, "plan": None, "raw": "r"}) + "\n")
    system = SystemRegistry().build("replay", {"run": str(run)})
    try:
        program = system.write_program(Sample("1", "toy", "How many mugs?", 2, "integer"))
        assert isinstance(program, Program) and program.code == sandbox_program(steps) and program.source == steps
        other = system.write_program(Sample("1", "toy", "How many cups?", 2, "integer"))
        assert other.status == "missing" and "asked another question" in other.detail
        assert system.write_program(Sample("1", "other", "How many mugs?", 2, "integer")).status == "missing"
    finally:
        system.close()
    (run / "run.json").write_text(json.dumps({"system": "direct-gpt-4o", "system_config": {"kind": "direct_vlm"}}))
    with pytest.raises(SystemConfigError, match="writes no programs"):
        SystemRegistry().build("replay", {"run": str(run)})


def test_another_detector_through_system_args(reference_run, tiny_detector, monkeypatch):
    """`--tools real --system-args ...detector.checkpoint=DIR` reaches the tool server, for replay and valor-rl."""
    from harness.systems import SystemRegistry

    _, run = reference_run
    registry = SystemRegistry()
    system = registry.build("replay", {"run": str(run), "tools": "real",
                                       "tool_options.real.detector.checkpoint": str(tiny_detector)})
    try:
        detector = system.backend.detector.settings
        assert detector.checkpoint == str(tiny_detector) and detector.box_threshold == 0.35
    finally:
        system.close()
    for name in ("valor-rl", "llm-tools-gpt-4o"):
        params = registry.resolved_params(name, {"tool_options.real.detector.checkpoint": str(tiny_detector)})
        assert params["tool_options"]["real"]["detector"]["checkpoint"] == str(tiny_detector)
    with pytest.raises(ValueError, match="run=RUN_DIR"):
        registry.build("replay")

    # End to end: the recorded programs' detector calls answered by that checkpoint (VQA by a local server).
    from fake_openai import Reply, running_chat_server

    include, _ = reference_run
    out = run.parent / "replay-real"
    monkeypatch.setenv("TINY_VLM_KEY", "sk-test")
    with running_chat_server(monkeypatch) as server:
        server.default = Reply(content="red")
        assert main(["run", "--system", "replay", "--tools", "real", "--device", "cpu", "--tasks", "synthetic_small",
                     "--limit", "4", "--include-path", str(include), "--output-path", str(out), "--system-args",
                     f"run={run},tool_options.real.detector.checkpoint={tiny_detector},"
                     f"tool_options.real.detector.box_threshold=0.0,tool_options.real.vqa.base_url={server.url},"
                     "tool_options.real.vqa.api_key_env=TINY_VLM_KEY",
                     "--skip-preflight"]) == 0  # the programs call no depth: MoGe's weights are never read
    params = json.loads((out / "run.json").read_text())["system_config"]["params"]
    assert params["tools"] == "real" and params["tool_options"]["real"]["detector"]["checkpoint"] == str(tiny_detector)
    detections = [call for record in lines(out / "samples_synthetic_small.jsonl") for call in record["tool_calls"]
                  if call["tool"] == "gd_detect"]
    assert detections and all("result" in call for call in detections)


# --------------------------------------------------------------------------- the Figure 7 ablation


def test_figure7_dry_run_prints_every_command(tmp_path, capsys):
    work = tmp_path / "ablation"
    base = tmp_path / "valor-rl-base"
    assert load_entry("grounding_sft/ablation.py").main(
        ["--config", str(RECIPES / "grounding_sft/ablation.yaml"), "--dry-run", "--set", f"work_dir={work}",
         "--set", f"base_run={base}", "--set", "python=python", "--amounts", "0.25,1.0,500"]) == 0
    assert not work.exists()
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    replay = "python -m harness run --system replay --tools real --tasks robospatial,vsr,countbenchqa --system-args"
    assert commands[0] == f"{replay} run={base.resolve()} --label valor-gd-0 --output-path {work}/eval/base --resume"
    for amount, slug, label in (("0.25", "share-0.25", "valor-gd-25pct"), ("1.0", "share-1", "valor-gd-100pct"),
                                ("500", "images-500", "valor-gd-500")):
        assert (f"python -m harness train-detector --config recipes/grounding_sft/config.yaml --resume "
                f"--set 'data=[\"runs/pseudo_labels\"]' --set subset={amount} --set seed=0 "
                f"--set output_dir={work}/detectors/{slug}") in commands
        detector = (work / "detectors" / slug / "final").resolve()
        assert (f"{replay} run={base.resolve()},tool_options.real.detector.checkpoint={detector} "
                f"--label {label} --output-path {work}/eval/{slug} --resume") in commands  # the leaderboard's row
    assert len(commands) == 1 + 3 * 2


def test_figure7_table_from_fixture_runs(tmp_path):
    from harness.grounding.ablation import load_plan, write_table

    work = tmp_path / "ablation"
    accuracy = {"base": (0.60, 0.70, 0.55), "share-0.25": (0.62, 0.71, 0.58), "share-1": (0.65, 0.74, 0.61)}
    for slug, values in accuracy.items():
        folder = work / "eval" / slug
        folder.mkdir(parents=True)
        results = {task: {"n": 100, "accuracy,compat": v, "accuracy,strict": v - 0.01,
                          "accuracy_ci95,compat": [v - 0.1, v + 0.1]}
                   for task, v in zip(("robospatial", "vsr", "countbenchqa"), values)}
        if slug == "share-1":
            del results["countbenchqa"]["accuracy,compat"]
        (folder / "results.json").write_text(json.dumps({"results": results}))
    (work / "detectors/share-0.25").mkdir(parents=True)
    (work / "detectors/share-0.25/run_info.json").write_text(json.dumps({"images": 2750}))
    plan = load_plan(RECIPES / "grounding_sft/ablation.yaml", [f"work_dir={work}", "amounts=[0.25, 0.5, 1.0]"])
    text = write_table(plan)
    assert (work / "figure7.md").read_text() == text
    rows = text.splitlines()
    assert "| base detector | 0 | 60.0 [50.0, 70.0] | 70.0 [60.0, 80.0] | 55.0 [45.0, 65.0] |" in rows
    assert "| 25% | 2,750 | 62.0 [52.0, 72.0] | 71.0 [61.0, 81.0] | 58.0 [48.0, 68.0] |" in rows
    assert "| 50% | - | - | - | - |" in rows and "| 100% | - | 65.0 [55.0, 75.0] | 74.0 [64.0, 84.0] | - |" in rows
    assert rows[-1] == "Not evaluated yet: 50%, 100%."
    table = list(csv.DictReader(io.StringIO((work / "figure7.csv").read_text())))
    assert [r["amount"] for r in table] == ["0", "0.25", "0.5", "1.0"]
    assert table[1]["images"] == "2750" and table[1]["vsr"] == "71.0" and table[1]["vsr_ci_high"] == "81.0"
    assert table[2]["robospatial"] == "" and table[1]["countbenchqa_n"] == "100"


# --------------------------------------------------------------------------- Open-GroundingDino's regime, seeds, processes


def test_regularisation_and_parameter_groups_follow_open_groundingdino(tiny_detector, labels, tmp_path):
    from harness.grounding.finetune import DetectorTrainer, load_config

    paper = load_config(RECIPES / "grounding_sft/config.yaml")
    assert (paper.dropout, paper.drop_path, paper.fusion_drop_path) == (0.0, 0.2, 0.1)
    assert paper.lr_backbone is None and paper.lr_linear_proj is None
    sets = [f"data=[{labels}]", f"output_dir={tmp_path / 'run'}", f"checkpoint={tiny_detector}",
            "lr_linear_proj=3.0e-5", "freeze_backbone=false", "lr_backbone=2.0e-5"]
    trainer = DetectorTrainer(load_config(TINY, sets))
    config = trainer.model.config
    assert config.dropout == 0.0 and config.fusion_droppath == 0.1 and config.backbone_config.drop_path_rate == 0.2
    # The layers were built with them: the last Swin block drops paths at 0.2, no transformer dropout.
    drops = [m.drop_prob for n, m in trainer.model.named_modules() if type(m).__name__ == "SwinDropPath"]
    assert drops and max(drops) == pytest.approx(0.2)
    assert all(m.dropout == 0.0 for m in trainer.model.model.decoder.layers)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == {"rest": 1e-4, "backbone": 2e-5, "linear_proj": 3e-5}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert all("sampling_offsets" in names[id(p)] or "reference_points_head" in names[id(p)]
               for p in groups["linear_proj"]["params"])
    assert any("reference_points_head" in names[id(p)] for p in groups["linear_proj"]["params"])
    assert all(names[id(p)].startswith("model.backbone.") for p in groups["backbone"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(trainer.trainable)
    with pytest.raises(Exception, match="drop_path must be in"):
        load_config(TINY, ["drop_path=1.5"])


def test_two_seeded_runs_give_identical_losses(tiny_detector, labels, tmp_path):
    """Dropout-like randomness (stochastic depth at 0.2) is on, and still two runs agree to the bit;
    another seed differs."""
    from harness.grounding.finetune import DetectorTrainer, load_config

    def losses(name: str, seed: int) -> list[float]:
        sets = [f"data=[{labels}]", f"output_dir={tmp_path / name}", f"checkpoint={tiny_detector}", "epochs=2",
                f"seed={seed}"]
        DetectorTrainer(load_config(TINY, sets)).train()
        return [e["loss"] for e in lines(tmp_path / name / "train_log.jsonl")]

    first, second = losses("a", 0), losses("b", 0)
    assert len(first) == 4 and first == second
    assert losses("c", 1) != first


def test_two_processes_train_as_one_with_the_same_batch(tiny_detector, labels, tmp_path):
    """torchrun with two CPU processes (gloo): each step's two images are split between them,
    and the losses and the weights equal one process accumulating both."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    # No random masks anywhere (the frozen BERT's dropout included): each process draws its own
    # (seeded by rank), where one process draws one set.
    quiet = save_grounding_dino(tmp_path / "quiet")
    config = json.loads((quiet / "config.json").read_text())
    config["text_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (quiet / "config.json").write_text(json.dumps(config))
    common = [f"data=[{labels}]", f"checkpoint={quiet}", "batch_size=2", "micro_batch_size=1",
              "drop_path=0.0", "fusion_drop_path=0.0"]
    alone = tmp_path / "alone"
    assert main(["train-detector", "--config", str(TINY), *[a for s in [*common, f"output_dir={alone}"]
                                                            for a in ("--set", s)]]) == 0
    pair = tmp_path / "pair"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "harness", "train-detector", "--config", str(TINY),
               *[a for s in [*common, f"output_dir={pair}"] for a in ("--set", s)]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = lines(alone / "train_log.jsonl"), lines(pair / "train_log.jsonl")
    assert [(e["step"], e["images"]) for e in two] == [(e["step"], e["images"]) for e in one] == [(1, 2), (2, 2)]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert json.loads((pair / "run_info.json").read_text())["processes"] == 2
    weights_one, weights_two = load_file(alone / "final/model.safetensors"), load_file(pair / "final/model.safetensors")
    for key, value in weights_one.items():  # AdamW turns summation-order noise into up to ~5% of one step
        torch.testing.assert_close(weights_two[key], value, rtol=0, atol=1e-5)
