"""Convert an original GroundingDINO checkpoint (``.pth``) into a transformers checkpoint folder.

The original releases (IDEA-Research's ``groundingdino_swint_ogc.pth``, and detectors
fine-tuned with Open-GroundingDino such as VALOR's) store the state dict of the
original code. transformers' ``GroundingDinoForObjectDetection`` holds the same
tensors under other names, with the fused ``q,k,v`` projections of Swin and of
``nn.MultiheadAttention`` split in three. Every key is renamed by one explicit rule
below; a key that no rule knows stops the conversion (``allow_unexpected`` drops it
instead, and the report lists it), and so does a model parameter that the
checkpoint leaves unset, except the few that the original architecture lacks and
the forward pass never reads (``UNUSED_PARAMETERS``).

The rules are written as module-path templates whose ``{name}`` fields stand for
layer and block numbers; the same templates, read backwards, name the original
key an unset parameter should have come from.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ConversionError", "ConversionReport", "UNUSED_PARAMETERS", "convert_detector"]

DEFAULT_CONFIG_SOURCE = "IDEA-Research/grounding-dino-tiny"

_SWIN = "model.backbone.conv_encoder.model.swin"
_BACKBONE = "model.backbone.conv_encoder.model"


class ConversionError(Exception):
    """The checkpoint cannot be converted faithfully with this config; the message says why."""


# ---------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class _Rename:
    """Original module path -> transformers module path; the rest of the key is kept."""

    original: str
    target: str


@dataclass(frozen=True)
class _Split:
    """A fused ``q,k,v`` tensor (stacked along dim 0 in that order) -> three tensors."""

    original: str  # the module holding the fused tensor
    targets: tuple[str, str, str]  # the modules receiving q, k and v
    leaves: tuple[tuple[str, str], ...]  # (fused tensor name, name in each target)


# nn.MultiheadAttention stores its input projection as in_proj_weight / in_proj_bias;
# Swin's attention stores it as an ordinary Linear called qkv.
_MHA_LEAVES = (("in_proj_weight", "weight"), ("in_proj_bias", "bias"))
_LINEAR_LEAVES = (("weight", "weight"), ("bias", "bias"))


def _qkv(prefix: str, names: tuple[str, str, str]) -> tuple[str, str, str]:
    return (f"{prefix}.{names[0]}", f"{prefix}.{names[1]}", f"{prefix}.{names[2]}")


_SPLITS: tuple[_Split, ...] = (
    _Split("backbone.0.layers.{L}.blocks.{B}.attn.qkv",
           _qkv(f"{_SWIN}.encoder.layers.{{L}}.blocks.{{B}}.attention", ("q_proj", "k_proj", "v_proj")),
           _LINEAR_LEAVES),
    _Split("transformer.encoder.text_layers.{i}.self_attn",
           _qkv("model.encoder.layers.{i}.text_enhancer_layer.self_attn", ("query", "key", "value")), _MHA_LEAVES),
    _Split("transformer.decoder.layers.{i}.ca_text",
           _qkv("model.decoder.layers.{i}.encoder_attn_text", ("query", "key", "value")), _MHA_LEAVES),
    _Split("transformer.decoder.layers.{i}.self_attn",
           _qkv("model.decoder.layers.{i}.self_attn", ("query", "key", "value")), _MHA_LEAVES),
)


def _layer_renames(original: str, target: str, pairs: dict[str, str]) -> list[_Rename]:
    return [_Rename(f"{original}.{a}", f"{target}.{b}") for a, b in pairs.items()]


_RENAMES: tuple[_Rename, ...] = (
    # Swin-T/B image backbone.
    _Rename("backbone.0.patch_embed.proj", f"{_SWIN}.embeddings.patch_embeddings.projection"),
    _Rename("backbone.0.patch_embed.norm", f"{_SWIN}.embeddings.norm"),
    *_layer_renames("backbone.0.layers.{L}.blocks.{B}", f"{_SWIN}.encoder.layers.{{L}}.blocks.{{B}}", {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "attn.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }),
    _Rename("backbone.0.layers.{L}.downsample", f"{_SWIN}.encoder.layers.{{L}}.downsample"),
    # The original names an output norm after its 0-based Swin layer, transformers after its
    # stage, and stage0 is the patch embedding: original norm{i} is stage{i+1}.
    *(_Rename(f"backbone.0.norm{i}", f"{_BACKBONE}.hidden_states_norms.stage{i + 1}") for i in range(4)),
    # BERT text encoder (the same BertModel, so its inner names agree) and its projection.
    _Rename("bert.embeddings", "model.text_backbone.embeddings"),
    _Rename("bert.encoder", "model.text_backbone.encoder"),
    _Rename("feat_map", "model.text_projection"),
    _Rename("input_proj.{I}", "model.input_proj_vision.{I}"),
    # Transformer-level tensors and the two-stage heads.
    _Rename("transformer.level_embed", "model.level_embed"),
    _Rename("transformer.tgt_embed", "model.query_position_embeddings"),
    _Rename("transformer.enc_output", "model.enc_output"),
    _Rename("transformer.enc_output_norm", "model.enc_output_norm"),
    _Rename("transformer.enc_out_bbox_embed", "model.encoder_output_bbox_embed"),
    _Rename("transformer.decoder.norm", "model.decoder.layer_norm"),
    _Rename("transformer.decoder.ref_point_head", "model.decoder.reference_points_head"),
    _Rename("transformer.decoder.bbox_embed.{I}", "model.decoder.bbox_embed.{I}"),
    _Rename("bbox_embed.{I}", "bbox_embed.{I}"),
    # Encoder layer: deformable self-attention over image tokens.
    *_layer_renames("transformer.encoder.layers.{i}", "model.encoder.layers.{i}.deformable_layer", {
        "self_attn": "self_attn",  # sampling_offsets, attention_weights, value_proj, output_proj
        "norm1": "self_attn_layer_norm",
        "linear1": "fc1",
        "linear2": "fc2",
        "norm2": "final_layer_norm",
    }),
    # Encoder layer: text enhancer (post-norm: norm1 after attention, norm2 after the FFN).
    *_layer_renames("transformer.encoder.text_layers.{i}", "model.encoder.layers.{i}.text_enhancer_layer", {
        "self_attn.out_proj": "self_attn.out_proj",
        "linear1": "fc1",
        "linear2": "fc2",
        "norm1": "layer_norm_before",
        "norm2": "layer_norm_after",
    }),
    # Encoder layer: bi-directional image-text fusion (v = vision, l = language).
    *_layer_renames("transformer.encoder.fusion_layers.{i}", "model.encoder.layers.{i}.fusion_layer", {
        "gamma_v": "vision_param",
        "gamma_l": "text_param",
        "layer_norm_v": "layer_norm_vision",
        "layer_norm_l": "layer_norm_text",
        "attn.v_proj": "attn.vision_proj",
        "attn.l_proj": "attn.text_proj",
        "attn.values_v_proj": "attn.values_vision_proj",
        "attn.values_l_proj": "attn.values_text_proj",
        "attn.out_v_proj": "attn.out_vision_proj",
        "attn.out_l_proj": "attn.out_text_proj",
    }),
    # Decoder layer. The original numbers its norms by creation, not by position: norm2 follows
    # self-attention, catext_norm the text cross-attention, norm1 the image cross-attention,
    # norm3 the FFN.
    *_layer_renames("transformer.decoder.layers.{i}", "model.decoder.layers.{i}", {
        "self_attn.out_proj": "self_attn.out_proj",
        "norm2": "self_attn_layer_norm",
        "ca_text.out_proj": "encoder_attn_text.out_proj",
        "catext_norm": "encoder_attn_text_layer_norm",
        "cross_attn": "encoder_attn",
        "norm1": "encoder_attn_layer_norm",
        "linear1": "fc1",
        "linear2": "fc2",
        "norm3": "final_layer_norm",
    }),
)

# Original keys with no transformers counterpart, and why dropping them loses nothing.
_IGNORED: tuple[tuple[str, str], ...] = (
    (r"backbone\.0\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
     "buffer: transformers recomputes it from the window size"),
    (r"backbone\.0\.(layers\.\d+\.)?(blocks\.\d+\.)?attn_mask",
     "buffer: the shifted-window mask is recomputed for each input size"),
    (r"bert\.embeddings\.(position_ids|token_type_ids)", "buffer: BERT recomputes it"),
    (r"bert\.pooler\.dense\.(weight|bias)",
     "BERT pooler: GroundingDINO reads only token features, transformers builds BERT without it"),
    (r"label_enc\.weight",
     "denoising label embedding: only training's contrastive denoising queries read it (released "
     "IDEA-Research and Open-GroundingDino checkpoints hold it); inference never does, and transformers' "
     "GroundingDINO has no denoising queries"),
)

# Model parameters the original architecture lacks and the forward pass never reads.
UNUSED_PARAMETERS: dict[str, str] = {
    f"{_SWIN}.layernorm.weight": "Swin's final layernorm: the backbone returns the per-stage "
                                  "hidden_states_norms outputs, never this norm's (set to identity)",
    f"{_SWIN}.layernorm.bias": "as above (set to zero)",
}

# ---------------------------------------------------------------------------------------------
# Template matching


def _template_regex(template: str) -> str:
    """``a.{i}.b`` -> a regex where each ``{name}`` is a named group of digits."""
    parts = re.split(r"\{(\w+)\}", template)
    return "".join(re.escape(p) if n % 2 == 0 else rf"(?P<{p}>\d+)" for n, p in enumerate(parts))


@dataclass(frozen=True)
class _Compiled:
    rename: _Rename
    forward: re.Pattern[str]
    backward: re.Pattern[str]


def _prefix_pattern(template: str) -> re.Pattern[str]:
    # A module path matches at a segment boundary only, so "norm1" never matches "norm10"
    # and "enc_output" never matches "enc_output_norm".
    return re.compile(_template_regex(template) + r"(?=\.|$)")


_COMPILED = tuple(_Compiled(r, _prefix_pattern(r.original), _prefix_pattern(r.target)) for r in _RENAMES)
_IGNORED_COMPILED = tuple((re.compile(p), reason) for p, reason in _IGNORED)


_SPLITS_COMPILED = tuple((rule, re.compile(_template_regex(rule.original) + re.escape("." + fused)), leaf)
                         for rule in _SPLITS for fused, leaf in rule.leaves)


def _match_split(key: str) -> tuple[_Split, dict[str, str], str] | None:
    """(rule, layer numbers, leaf in the targets) when ``key`` is a fused tensor."""
    for rule, pattern, leaf in _SPLITS_COMPILED:
        m = pattern.fullmatch(key)
        if m:
            return rule, m.groupdict(), leaf
    return None


def _rename(key: str) -> str | None:
    for rule in _COMPILED:
        m = rule.forward.match(key)
        if m:
            return rule.rename.target.format(**m.groupdict()) + key[m.end():]
    return None


def _ignore_reason(key: str) -> str | None:
    return next((reason for pattern, reason in _IGNORED_COMPILED if pattern.fullmatch(key)), None)


def original_name(target_key: str) -> str | None:
    """The original key a transformers parameter is converted from (for error messages)."""
    for rule in _COMPILED:
        m = rule.backward.match(target_key)
        if m:
            return rule.rename.original.format(**m.groupdict()) + target_key[m.end():]
    for split in _SPLITS:
        for part, target in enumerate(split.targets):
            for fused, leaf in split.leaves:
                m = re.fullmatch(_template_regex(target) + re.escape("." + leaf), target_key)
                if m:
                    name = split.original.format(**m.groupdict()) + "." + fused
                    return f"{name} (part {'qkv'[part]} of 3)"
    return None


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class ConversionReport:
    """What happened to every key of the original checkpoint."""

    checkpoint: str
    out_dir: str
    config_source: str
    renamed: dict[str, str] = field(default_factory=dict)  # original -> transformers
    split: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # fused original -> q, k, v
    ignored: dict[str, str] = field(default_factory=dict)  # original -> why it has no counterpart
    unexpected: list[str] = field(default_factory=list)  # dropped only with allow_unexpected
    unset: dict[str, str] = field(default_factory=dict)  # model parameter -> why it may stay unset
    stripped_module_prefix: int = 0  # keys saved from a DistributedDataParallel wrapper

    def summary(self) -> str:
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.ignored.items():
            by_reason.setdefault(reason, []).append(key)
        lines = [
            f"converted {self.checkpoint} -> {self.out_dir} (config and processor: {self.config_source})",
            f"  converted: {len(self.renamed)} keys renamed",
            f"  split:     {len(self.split)} fused q,k,v keys -> {3 * len(self.split)} tensors",
            f"  ignored:   {len(self.ignored)} keys without a counterpart, each with why dropping it loses nothing",
        ]
        for reason, keys in sorted(by_reason.items()):
            lines.append(f"    {len(keys):4d}  {reason}:")
            lines += [f"            {key}" for key in keys]
        if self.stripped_module_prefix:
            lines.append(f"  'module.' prefix stripped from {self.stripped_module_prefix} keys")
        if self.unset:
            lines.append(f"  left unset: {len(self.unset)} model parameters the forward pass does not use")
            lines += [f"    {name}" for name in self.unset]
        if self.unexpected:
            lines.append(f"  UNEXPECTED, dropped: {len(self.unexpected)} keys no rule knows")
            lines += [f"    {name}" for name in self.unexpected]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Conversion


def _format_list(items: Iterable[str], limit: int = 40) -> str:
    items = list(items)
    shown = "\n".join(f"  {item}" for item in items[:limit])
    return shown + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")


def load_original_state_dict(checkpoint: Path) -> tuple[dict[str, Any], int]:
    """The checkpoint's tensors, with any ``module.`` prefix removed, and how many keys had it.

    Only tensors and plain containers are unpickled (``weights_only``); ``argparse.Namespace``
    is allowed because DETR-style training scripts, Open-GroundingDino's among them, save
    their arguments beside the model.
    """
    import torch

    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint file {checkpoint}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long; the line naming the refused class is the useful one.
        lines = str(exc).splitlines()
        detail = next((line.strip() for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise ConversionError(f"{checkpoint} holds objects other than tensors, refused for safety (never unpickled "
                              f"with weights_only=False); re-save only its state dict. torch: {detail}") from exc
    except Exception as exc:  # torch.load fails on a damaged or foreign file with many error types
        raise ConversionError(f"cannot read {checkpoint} as a torch checkpoint: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{checkpoint} holds a {type(obj).__name__}, not a state dict")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{checkpoint} is not a state dict: these entries are not tensors (is the model "
                              f"under another key than 'model'?):\n" + _format_list(map(str, not_tensors)))
    state: dict[str, Any] = {}
    stripped = 0
    for key, tensor in obj.items():
        name = key.removeprefix("module.")
        stripped += name != key
        if name in state:
            raise ConversionError(f"{checkpoint} holds {name!r} both with and without a 'module.' prefix")
        state[name] = tensor
    return state, stripped


def map_state_dict(original: dict[str, Any], report: ConversionReport) -> dict[str, Any]:
    """Rename and split every key; record each in ``report`` (keys no rule knows go to ``unexpected``)."""
    converted: dict[str, Any] = {}
    bad_splits = []
    for key, tensor in original.items():
        reason = _ignore_reason(key)
        if reason is not None:
            report.ignored[key] = reason
            continue
        fused = _match_split(key)
        if fused is not None:
            rule, numbers, leaf = fused
            if tensor.shape[0] % 3:
                bad_splits.append(f"{key}: first dimension {tensor.shape[0]} is not a multiple of 3")
                continue
            q, k, v = (f"{target.format(**numbers)}.{leaf}" for target in rule.targets)
            converted.update(zip((q, k, v), tensor.chunk(3, dim=0)))
            report.split[key] = (q, k, v)
            continue
        target = _rename(key)
        if target is None:
            report.unexpected.append(key)
        else:
            converted[target] = tensor
            report.renamed[key] = target
    if bad_splits:
        raise ConversionError("fused q,k,v tensors that cannot be split in three:\n" + _format_list(bad_splits))
    return converted


def _check_against_model(converted: dict[str, Any], model: Any, report: ConversionReport) -> None:
    """Refuse unless every converted tensor fits one parameter and every parameter gets a value."""
    expected = model.state_dict()
    sources = {target: source for source, target in report.renamed.items()}
    sources.update({t: s for s, targets in report.split.items() for t in targets})

    nowhere = [f"{sources[k]} -> {k}" for k in converted if k not in expected]
    if nowhere:
        raise ConversionError("checkpoint tensors with no place in the model built from the config (does the "
                              "config match the checkpoint: Swin size, layer counts, two-stage?):\n"
                              + _format_list(nowhere))
    wrong_shape = [f"{k} (from {sources[k]}): checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                   for k, v in converted.items() if v.shape != expected[k].shape]
    if wrong_shape:
        raise ConversionError("shapes differ between the checkpoint and the model built from the config:\n"
                              + _format_list(wrong_shape))

    # Tied parameters (the shared box head) appear under several names: one value sets them all,
    # but the checkpoint must not hold different values for names the config ties together.
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    for names in aliases.values():
        given = [n for n in names if n in converted]
        if any(not converted[n].equal(converted[given[0]]) for n in given[1:]):
            raise ConversionError(f"the config ties {', '.join(names)} into one parameter, but the checkpoint "
                                  f"holds different values for them (was it trained with "
                                  f"dec_pred_bbox_embed_share=False? then set decoder_bbox_embed_share=False)")

    alias_of = {n: names for names in aliases.values() for n in names}
    unset = [k for k in expected if not any(a in converted for a in alias_of.get(k, [k]))]
    fatal = [k for k in unset if k not in UNUSED_PARAMETERS]
    if fatal:
        listed = [f"{k}  <- expected from {original_name(k) or '(no rule)'}" for k in fatal]
        raise ConversionError(f"{len(fatal)} model parameters are not set by the checkpoint; refusing to "
                              f"save a partly random detector:\n" + _format_list(listed))
    report.unset = {k: UNUSED_PARAMETERS[k] for k in unset}


def _load_sources(config_source: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoProcessor, GroundingDinoConfig

    try:
        config = AutoConfig.from_pretrained(config_source)
        processor = AutoProcessor.from_pretrained(config_source)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot load the config and processor from {config_source!r} ({exc}); pass "
                              f"--config with a local folder holding config.json and the processor files") from exc
    if not isinstance(config, GroundingDinoConfig):
        raise ConversionError(f"{config_source!r} holds a {config.model_type!r} config, not a GroundingDINO one")
    return config, processor


def convert_detector(checkpoint: Path, out_dir: Path, config_source: str = DEFAULT_CONFIG_SOURCE, *,
                     allow_unexpected: bool = False, overwrite: bool = False) -> ConversionReport:
    """Convert ``checkpoint`` (original GroundingDINO ``.pth``) into the folder ``out_dir``.

    ``config_source`` (a hub id or a local folder) gives the architecture and the processor
    files; ``out_dir`` then holds config, weights and processor, loadable with
    ``GroundingDinoForObjectDetection.from_pretrained`` and ``AutoProcessor.from_pretrained``.
    Nothing is written unless every check passes.
    """
    import torch
    from transformers import GroundingDinoForObjectDetection

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass --overwrite to write into it)")
    report = ConversionReport(str(checkpoint), str(out_dir), config_source)
    original, report.stripped_module_prefix = load_original_state_dict(checkpoint)
    converted = map_state_dict(original, report)
    if report.unexpected and not allow_unexpected:
        raise ConversionError("checkpoint keys that no conversion rule knows (a different architecture? "
                              "--allow-unexpected drops them):\n" + _format_list(report.unexpected))

    config, processor = _load_sources(config_source)
    model = GroundingDinoForObjectDetection(config).eval()
    _check_against_model(converted, model, report)
    with torch.no_grad():
        model.load_state_dict(converted, strict=False)
        # Deterministic values for the unused parameters, so two conversions give the same files.
        for name in report.unset:
            model.get_parameter(name).fill_(1.0 if name.endswith(".weight") else 0.0)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return report
