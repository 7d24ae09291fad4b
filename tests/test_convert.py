"""``convert-detector``: original GroundingDINO checkpoints -> transformers folders.

A tiny random transformers GroundingDINO is exported, by code written here from the
original repository's layout (not by inverting the converter's rules), into the
original key layout; converting that back must give a model with the same outputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from transformers import AutoProcessor, GroundingDinoConfig, GroundingDinoForObjectDetection  # noqa: E402

from harness.cli import main  # noqa: E402
from harness.tools.convert import ConversionError, convert_detector  # noqa: E402
from tiny_models import grounding_dino_config, grounding_dino_processor  # noqa: E402

CAPTION = "a red cube. the dog left of a cat."
SWIN = "model.backbone.conv_encoder.model.swin."


# --- the original layout, written from the original code ------------------------------------------


def export_original(model: GroundingDinoForObjectDetection, config: GroundingDinoConfig) -> dict[str, Any]:
    """The state dict the original GroundingDINO code would hold for these weights."""
    hf = {k: v.detach().clone() for k, v in model.state_dict().items()}
    used: set[str] = set()
    out: dict[str, Any] = {}

    def take(name: str) -> Any:
        used.add(name)
        return hf[name]

    def copy(original: str, target: str, leaves: tuple[str, ...] = ("weight", "bias")) -> None:
        for leaf in leaves:
            out[f"{original}.{leaf}"] = take(f"{target}.{leaf}")

    def fuse(original: str, targets: list[str], leaves: dict[str, str]) -> None:
        # q, k and v stacked along dim 0 in that order, as Linear(dim, 3 * dim) stores them.
        for fused, leaf in leaves.items():
            out[f"{original}.{fused}"] = torch.cat([take(f"{t}.{leaf}") for t in targets], dim=0)

    mha = {"in_proj_weight": "weight", "in_proj_bias": "bias"}
    # Swin backbone (backbone.0); backbone.1 is the parameter-free sine position embedding.
    copy("backbone.0.patch_embed.proj", SWIN + "embeddings.patch_embeddings.projection")
    copy("backbone.0.patch_embed.norm", SWIN + "embeddings.norm")
    swin = config.backbone_config
    for layer, depth in enumerate(swin.depths):
        for block in range(depth):
            o, t = f"backbone.0.layers.{layer}.blocks.{block}", f"{SWIN}encoder.layers.{layer}.blocks.{block}"
            copy(f"{o}.norm1", f"{t}.layernorm_before")
            copy(f"{o}.norm2", f"{t}.layernorm_after")
            fuse(f"{o}.attn.qkv", [f"{t}.attention.{p}_proj" for p in "qkv"], {"weight": "weight", "bias": "bias"})
            copy(f"{o}.attn.proj", f"{t}.attention.o_proj")
            out[f"{o}.attn.relative_position_bias_table"] = take(
                f"{t}.attention.relative_position_bias.relative_position_bias_table")
            window = swin.window_size
            out[f"{o}.attn.relative_position_index"] = torch.arange(window**4).reshape(window**2, window**2)
            copy(f"{o}.mlp.fc1", f"{t}.mlp.fc1")
            copy(f"{o}.mlp.fc2", f"{t}.mlp.fc2")
        if layer < len(swin.depths) - 1:
            out[f"backbone.0.layers.{layer}.downsample.reduction.weight"] = take(
                f"{SWIN}encoder.layers.{layer}.downsample.reduction.weight")
            copy(f"backbone.0.layers.{layer}.downsample.norm", f"{SWIN}encoder.layers.{layer}.downsample.norm")
    for layer in (1, 2, 3):  # the original's out_indices, 0-based Swin layers
        copy(f"backbone.0.norm{layer}", f"model.backbone.conv_encoder.model.hidden_states_norms.stage{layer + 1}")

    # BERT, with the buffers and pooler the original state dict carries.
    for name in [k for k in hf if k.startswith("model.text_backbone.")]:
        out["bert." + name.removeprefix("model.text_backbone.")] = take(name)
    out["bert.embeddings.position_ids"] = torch.arange(config.text_config.max_position_embeddings)[None]
    out["bert.pooler.dense.weight"] = torch.randn(32, 32)
    out["bert.pooler.dense.bias"] = torch.randn(32)
    copy("feat_map", "model.text_projection")
    for level in range(config.num_feature_levels):
        copy(f"input_proj.{level}.0", f"model.input_proj_vision.{level}.0")
        copy(f"input_proj.{level}.1", f"model.input_proj_vision.{level}.1")

    out["transformer.level_embed"] = take("model.level_embed")
    out["transformer.tgt_embed.weight"] = take("model.query_position_embeddings.weight")
    copy("transformer.enc_output", "model.enc_output")
    copy("transformer.enc_output_norm", "model.enc_output_norm")
    for j in range(3):
        copy(f"transformer.enc_out_bbox_embed.layers.{j}", f"model.encoder_output_bbox_embed.layers.{j}")
        for i in range(config.decoder_layers):
            # One shared head, saved under every name the original registers it.
            copy(f"bbox_embed.{i}.layers.{j}", f"bbox_embed.{i}.layers.{j}")
            copy(f"transformer.decoder.bbox_embed.{i}.layers.{j}", f"model.decoder.bbox_embed.{i}.layers.{j}")
    for j in range(2):
        copy(f"transformer.decoder.ref_point_head.layers.{j}", f"model.decoder.reference_points_head.layers.{j}")
    copy("transformer.decoder.norm", "model.decoder.layer_norm")
    # The denoising queries' label embedding (dn_labelbook_size + 1 rows), in every released checkpoint.
    out["label_enc.weight"] = torch.randn(92, config.d_model)

    for i in range(config.encoder_layers):
        o, t = f"transformer.encoder.layers.{i}", f"model.encoder.layers.{i}.deformable_layer"
        for part in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            copy(f"{o}.self_attn.{part}", f"{t}.self_attn.{part}")
        copy(f"{o}.norm1", f"{t}.self_attn_layer_norm")
        copy(f"{o}.linear1", f"{t}.fc1")
        copy(f"{o}.linear2", f"{t}.fc2")
        copy(f"{o}.norm2", f"{t}.final_layer_norm")

        o, t = f"transformer.encoder.text_layers.{i}", f"model.encoder.layers.{i}.text_enhancer_layer"
        fuse(f"{o}.self_attn", [f"{t}.self_attn.{p}" for p in ("query", "key", "value")], mha)
        copy(f"{o}.self_attn.out_proj", f"{t}.self_attn.out_proj")
        copy(f"{o}.linear1", f"{t}.fc1")
        copy(f"{o}.linear2", f"{t}.fc2")
        copy(f"{o}.norm1", f"{t}.layer_norm_before")
        copy(f"{o}.norm2", f"{t}.layer_norm_after")

        o, t = f"transformer.encoder.fusion_layers.{i}", f"model.encoder.layers.{i}.fusion_layer"
        out[f"{o}.gamma_v"] = take(f"{t}.vision_param")
        out[f"{o}.gamma_l"] = take(f"{t}.text_param")
        copy(f"{o}.layer_norm_v", f"{t}.layer_norm_vision")
        copy(f"{o}.layer_norm_l", f"{t}.layer_norm_text")
        for short, long in (("v", "vision"), ("l", "text")):
            copy(f"{o}.attn.{short}_proj", f"{t}.attn.{long}_proj")
            copy(f"{o}.attn.values_{short}_proj", f"{t}.attn.values_{long}_proj")
            copy(f"{o}.attn.out_{short}_proj", f"{t}.attn.out_{long}_proj")

    for i in range(config.decoder_layers):
        o, t = f"transformer.decoder.layers.{i}", f"model.decoder.layers.{i}"
        for part in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            copy(f"{o}.cross_attn.{part}", f"{t}.encoder_attn.{part}")
        copy(f"{o}.norm1", f"{t}.encoder_attn_layer_norm")
        fuse(f"{o}.ca_text", [f"{t}.encoder_attn_text.{p}" for p in ("query", "key", "value")], mha)
        copy(f"{o}.ca_text.out_proj", f"{t}.encoder_attn_text.out_proj")
        copy(f"{o}.catext_norm", f"{t}.encoder_attn_text_layer_norm")
        fuse(f"{o}.self_attn", [f"{t}.self_attn.{p}" for p in ("query", "key", "value")], mha)
        copy(f"{o}.self_attn.out_proj", f"{t}.self_attn.out_proj")
        copy(f"{o}.norm2", f"{t}.self_attn_layer_norm")
        copy(f"{o}.linear1", f"{t}.fc1")
        copy(f"{o}.linear2", f"{t}.fc2")
        copy(f"{o}.norm3", f"{t}.final_layer_norm")

    # The exporter itself must miss nothing but the Swin layernorm the original does not have.
    assert set(hf) - used == {SWIN + "layernorm.weight", SWIN + "layernorm.bias"}
    # As saved from a DistributedDataParallel wrapper, for part of the keys.
    return {("module." + k if k.startswith(("transformer.", "bert.")) else k): v for k, v in out.items()}


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random detector, its config-and-processor folder, and its weights in the original layout."""
    root = tmp_path_factory.mktemp("convert")
    config = grounding_dino_config()
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval()
    with torch.no_grad():  # off the initialisation's ones and zeros, so swapped norms or heads show
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    source = root / "source"
    source.mkdir()
    processor = grounding_dino_processor(root)
    processor.save_pretrained(source)
    config.save_pretrained(source)
    original = export_original(model, config)
    checkpoint = root / "original.pth"
    torch.save({"model": original, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}, checkpoint)
    image = Image.fromarray((np.random.default_rng(0).random((120, 150, 3)) * 255).astype(np.uint8))
    return {"root": root, "model": model, "source": source, "processor": processor, "original": original,
            "checkpoint": checkpoint, "image": image}


def outputs(model: GroundingDinoForObjectDetection, processor: Any, image: Image.Image) -> tuple[Any, Any]:
    inputs = processor(images=image, text=CAPTION, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return out.logits, out.pred_boxes


def save_original(tmp_path: Path, state: dict[str, Any]) -> Path:
    path = tmp_path / "edited.pth"
    torch.save(state, path)  # a plain state dict, as some releases ship it
    return path


# --- tests -------------------------------------------------------------------------------------------


def test_cli_converts_to_an_equivalent_model(tiny: dict[str, Any], tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "converted"
    assert main(["convert-detector", str(tiny["checkpoint"]), str(out_dir), "--config", str(tiny["source"])]) == 0
    printed = capsys.readouterr().out
    # 4 Swin qkv, 1 text-enhancer and 2 x 2 decoder in_proj tensors, weight and bias each.
    assert "split:     18 fused q,k,v keys -> 54 tensors" in printed
    # relative_position_index x 4, position_ids, pooler weight and bias, label_enc.
    assert "ignored:   8 keys" in printed
    # Every ignored key is listed under the reason it may be dropped.
    listed = printed[printed.index("ignored:"):printed.index("'module.' prefix")]
    assert "denoising label embedding" in listed and "label_enc.weight" in listed
    for key in ("bert.pooler.dense.weight", "backbone.0.layers.3.blocks.0.attn.relative_position_index",
                "bert.embeddings.position_ids"):
        assert key in listed
    assert "'module.' prefix stripped" in printed and "swin.layernorm.weight" in printed

    written = {p.name for p in out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= written
    assert {p.name for p in tiny["source"].iterdir()} <= written  # every processor file of the source
    converted = GroundingDinoForObjectDetection.from_pretrained(out_dir).eval()
    processor = AutoProcessor.from_pretrained(out_dir)
    inputs = processor(images=tiny["image"], text=CAPTION, return_tensors="pt")
    expected_inputs = tiny["processor"](images=tiny["image"], text=CAPTION, return_tensors="pt")
    assert inputs.keys() == expected_inputs.keys()
    assert all(torch.equal(inputs[k], expected_inputs[k]) for k in inputs)

    logits, boxes = outputs(converted, processor, tiny["image"])
    want_logits, want_boxes = outputs(tiny["model"], tiny["processor"], tiny["image"])
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, want_boxes, atol=1e-5, rtol=0)
    assert torch.isfinite(logits).any() and not torch.equal(boxes, torch.zeros_like(boxes))

    # The parameter left unset really is unused: changing it changes nothing.
    with torch.no_grad():
        converted.get_parameter(SWIN + "layernorm.weight").mul_(3.0).add_(1.0)
        converted.get_parameter(SWIN + "layernorm.bias").add_(5.0)
    logits_after, boxes_after = outputs(converted, processor, tiny["image"])
    assert torch.equal(logits_after, logits) and torch.equal(boxes_after, boxes)


def test_missing_tensor_is_refused_by_name(tiny: dict[str, Any], tmp_path: Path, capsys) -> None:
    state = {k: v for k, v in tiny["original"].items() if k != "module.transformer.encoder.fusion_layers.0.gamma_v"}
    out_dir = tmp_path / "converted"
    assert main(["convert-detector", str(save_original(tmp_path, state)), str(out_dir),
                 "--config", str(tiny["source"])]) == 2
    error = capsys.readouterr().err
    assert "model.encoder.layers.0.fusion_layer.vision_param" in error
    assert "transformer.encoder.fusion_layers.0.gamma_v" in error
    assert not out_dir.exists()


def test_missing_part_of_a_fused_tensor_names_the_fused_key(tiny: dict[str, Any], tmp_path: Path) -> None:
    dropped = "module.transformer.decoder.layers.1.ca_text.in_proj_bias"
    state = {k: v for k, v in tiny["original"].items() if k != dropped}
    with pytest.raises(ConversionError, match=r"transformer\.decoder\.layers\.1\.ca_text\.in_proj_bias \(part q"):
        convert_detector(save_original(tmp_path, state), tmp_path / "out", str(tiny["source"]))


def test_unexpected_key_is_refused_or_dropped_and_reported(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = dict(tiny["original"], **{"transformer.decoder.query_scale.weight": torch.ones(3)})
    checkpoint = save_original(tmp_path, state)
    with pytest.raises(ConversionError, match=r"transformer\.decoder\.query_scale\.weight"):
        convert_detector(checkpoint, tmp_path / "refused", str(tiny["source"]))
    assert not (tmp_path / "refused").exists()
    report = convert_detector(checkpoint, tmp_path / "out", str(tiny["source"]), allow_unexpected=True)
    assert report.unexpected == ["transformer.decoder.query_scale.weight"]
    assert "UNEXPECTED, dropped: 1 keys" in report.summary()


def test_wrong_architecture_and_untied_heads_are_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = dict(tiny["original"])
    state["module.transformer.decoder.layers.2.norm3.weight"] = torch.ones(32)  # a third decoder layer
    with pytest.raises(ConversionError, match=r"(?s)no place in the model.*decoder\.layers\.2\.final_layer_norm"):
        convert_detector(save_original(tmp_path, state), tmp_path / "out", str(tiny["source"]))
    state = dict(tiny["original"])
    state["bbox_embed.1.layers.0.bias"] = state["bbox_embed.1.layers.0.bias"] + 1.0
    with pytest.raises(ConversionError, match="decoder_bbox_embed_share"):
        convert_detector(save_original(tmp_path, state), tmp_path / "out", str(tiny["source"]))


def test_detector_converts_an_original_checkpoint_on_first_use(tiny, tmp_path, monkeypatch):
    """A system file may name the original-format .pth directly; it is converted once, into the cache."""
    from harness.tools.detector import GroundingDinoDetector

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    detector = GroundingDinoDetector(checkpoint=str(tiny["checkpoint"]), original_config=str(tiny["source"]),
                                     box_threshold=0.0, text_threshold=0.0, label_match="span")
    found = detector.detect_batch([(tiny["image"], ["red cube"])])
    converted = list((tmp_path / "cache" / "detectors").iterdir())
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    again = GroundingDinoDetector(checkpoint=str(tiny["checkpoint"]), original_config=str(tiny["source"]),
                                  box_threshold=0.0, text_threshold=0.0, label_match="span")
    assert again.detect_batch([(tiny["image"], ["red cube"])]) == found
    assert list((tmp_path / "cache" / "detectors").iterdir()) == converted


def test_download_converts_an_original_checkpoint_in_place(tiny, tmp_path, monkeypatch):
    """`download` leaves a detector copy a run loads directly: no conversion model needed on the GPU node."""
    import shutil

    from harness.download import Outcome, convert_detectors
    from harness.requirements import HubRepo
    from harness.tools.detector import GroundingDinoDetector

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    (data / "org" / "tuned").mkdir(parents=True)
    shutil.copy(tiny["checkpoint"], data / "org" / "tuned" / "original.pth")
    shutil.copytree(tiny["source"], data / "org" / "base")
    needed = [HubRepo("org/tuned", option=("detector", "checkpoint"), needs="config.json"),
              HubRepo("org/base", option=("detector", "original_config"))]
    outcome = Outcome()
    convert_detectors(needed, data, outcome)
    assert outcome.fetched and not outcome.failed and (data / "org" / "tuned" / "config.json").is_file()
    assert not list((data / "org" / "tuned").glob(".converting-*"))
    settings = {"box_threshold": 0.0, "text_threshold": 0.0, "label_match": "span"}
    local = GroundingDinoDetector(checkpoint=str(data / "org" / "tuned"), **settings)
    first_use = GroundingDinoDetector(checkpoint=str(tiny["checkpoint"]), original_config=str(tiny["source"]),
                                      **settings)
    assert local.detect_batch([(tiny["image"], ["red cube"])]) == first_use.detect_batch([(tiny["image"], ["red cube"])])
    again = Outcome()
    convert_detectors(needed, data, again)  # already converted: nothing to do
    assert not again.fetched and not again.failed
