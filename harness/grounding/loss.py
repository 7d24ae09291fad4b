"""GroundingDINO's training loss, with correct targets when a batch's captions differ.

transformers' criterion (``GroundingDinoImageLoss._get_target_classes_one_hot``
in 5.20.2, the pinned version) concatenates the per-image label maps (one row per
phrase of the image's caption) and then shifts image i's class indices by
``len(label_maps[i])``, the phrase count of image i itself, instead of the number
of phrases of all images before it. With one caption for the whole batch, which
is how it is usually trained, that happens to pick equal rows; with a caption per image, as
pseudo-label training needs (each image asks for its own phrases plus sampled
negatives), image 2 onwards trains toward another image's tokens, and an index
past the end raises an IndexError.

We fix it where it goes wrong rather than working around it: a subclass with
cumulative offsets, installed as the model's loss function for training. The
alternative, one image per forward pass with gradient accumulation, would be
correct too but gives up batching on the GPU, and a per-image loss would also
change the normalisation by the number of boxes in the batch. Everything else
(matching, focal loss, L1 and GIoU, the encoder and auxiliary terms and their
weights) is transformers' own, so a test compares this loss with the stock one
on a batch that shares one caption, where both are right.

The encoder-proposal term (``*_enc``) differs from the original code too:
transformers scores the selected proposals detached, and classifies them against
the text features from before the encoder's fusion, so nothing upstream learns
from that term (the proposal head ``enc_output``, ``enc_output_norm`` and
``encoder_output_bbox_embed`` never change). GroundingDINO and Open-GroundingDino
score them with gradients, against the fused text. :class:`TrainingLoss`, the
loss :func:`install` puts on the model, does the same: it takes the selected
proposals from the unselected ones the inner model returns
(``enc_outputs_class``, ``enc_outputs_coord_logits``), with the model's top-k.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.loss.loss_for_object_detection import _set_aux_loss
from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher, GroundingDinoImageLoss

# transformers weighs the classification term 2.0 (Open-GroundingDino's cls_loss_coef); not in the config.
CLASS_LOSS_WEIGHT = 2.0


class CumulativeOffsetImageLoss(GroundingDinoImageLoss):
    """``GroundingDinoImageLoss`` whose one-hot token targets index the concatenated
    label maps at each image's own rows."""

    def _get_target_classes_one_hot(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]],
                                    indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        logits, label_maps = outputs["logits"], outputs["label_maps"]
        first_row, rows = 0, []
        for image, (target, (_, matched)) in enumerate(zip(targets, indices)):
            labels = target["class_labels"][matched]
            if labels.numel() and int(labels.max()) >= len(label_maps[image]):
                raise ValueError(f"batch image {image}: class label {int(labels.max())} but its caption has "
                                 f"{len(label_maps[image])} phrases")
            rows.append(labels + first_row)
            first_row += len(label_maps[image])
        one_hot = torch.zeros_like(logits, dtype=torch.long)
        one_hot[self._get_source_permutation_idx(indices)] = torch.cat(label_maps)[torch.cat(rows)].to(torch.long)
        return one_hot


def loss_weights(config: Any) -> dict[str, float]:
    """The weight of every term the criterion returns (cardinality is logged, not trained)."""
    base = {"loss_ce": CLASS_LOSS_WEIGHT, "loss_bbox": config.bbox_loss_coefficient,
            "loss_giou": config.giou_loss_coefficient}
    weights = dict(base)
    if config.two_stage:
        weights.update({f"{k}_enc": v for k, v in base.items()})
    if config.auxiliary_loss:
        for layer in range(config.decoder_layers - 1):
            weights.update({f"{k}_{layer}": v for k, v in base.items()})
    return weights


def grounding_dino_loss(logits: torch.Tensor, labels: list[dict[str, torch.Tensor]], device: torch.device,
                        pred_boxes: torch.Tensor, config: Any, label_maps: tuple[torch.Tensor, ...],
                        text_mask: torch.Tensor, outputs_class: torch.Tensor | None = None,
                        outputs_coord: torch.Tensor | None = None, encoder_logits: torch.Tensor | None = None,
                        encoder_pred_boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict, list | None]:
    """The model's ``loss_function`` signature: (weighted total, every term, auxiliary outputs).
    Computed in float32 whatever the forward pass ran in: the matcher hands its costs to scipy,
    and the focal terms of small probabilities lose too much in bfloat16."""
    logits, pred_boxes, outputs_class, outputs_coord, encoder_logits, encoder_pred_boxes = (
        None if t is None else t.float()
        for t in (logits, pred_boxes, outputs_class, outputs_coord, encoder_logits, encoder_pred_boxes))
    with torch.autocast(logits.device.type, enabled=False):
        matcher = GroundingDinoHungarianMatcher(class_cost=config.class_cost, bbox_cost=config.bbox_cost,
                                                giou_cost=config.giou_cost)
        criterion = CumulativeOffsetImageLoss(matcher, config.focal_alpha, ["labels", "boxes", "cardinality"])
        text = {"label_maps": label_maps, "text_mask": text_mask}
        outputs: dict[str, Any] = {"logits": logits, "pred_boxes": pred_boxes, **text}
        auxiliary = None
        if config.auxiliary_loss:
            auxiliary = [{**layer, **text} for layer in _set_aux_loss(outputs_class, outputs_coord)]
            outputs["auxiliary_outputs"] = auxiliary
        terms = criterion.to(device)(outputs, labels)
        if config.two_stage:
            encoder = criterion({"logits": encoder_logits, "pred_boxes": encoder_pred_boxes, **text}, labels)
            terms.update({f"{k}_enc": v for k, v in encoder.items()})
        total = sum(terms[k] * weight for k, weight in loss_weights(config).items() if k in terms)
    return total, terms, auxiliary


def selected_proposals(classes: torch.Tensor, coords: torch.Tensor,
                       count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` encoder proposals the decoder starts from (best token score first, as the
    model picks them), still attached to the graph: their token logits and (cx, cy, w, h) boxes."""
    top = torch.topk(classes.max(-1)[0], count, dim=1)[1]
    logits = torch.gather(classes, 1, top.unsqueeze(-1).expand(-1, -1, classes.shape[-1]))
    boxes = torch.gather(coords, 1, top.unsqueeze(-1).expand(-1, -1, coords.shape[-1])).sigmoid()
    return logits, boxes


class TrainingLoss:
    """:func:`grounding_dino_loss` with the encoder proposals scored as the original trains them
    (see the module's docstring). A forward hook on the inner model keeps its unselected
    proposals for the loss computed at the end of the same forward pass."""

    def __init__(self, model: Any) -> None:
        self._proposals: tuple[torch.Tensor, torch.Tensor] | None = None
        model.model.register_forward_hook(self._keep)

    def _keep(self, module: Any, inputs: Any, output: Any) -> None:
        classes = getattr(output, "enc_outputs_class", None)
        coords = getattr(output, "enc_outputs_coord_logits", None)
        self._proposals = (classes, coords) if module.training and classes is not None and coords is not None else None

    def __call__(self, logits: torch.Tensor, labels: list[dict[str, torch.Tensor]], device: torch.device,
                 pred_boxes: torch.Tensor, config: Any, label_maps: tuple[torch.Tensor, ...], text_mask: torch.Tensor,
                 outputs_class: torch.Tensor | None = None, outputs_coord: torch.Tensor | None = None,
                 encoder_logits: torch.Tensor | None = None,
                 encoder_pred_boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict, list | None]:
        if self._proposals is not None and config.two_stage:
            encoder_logits, encoder_pred_boxes = selected_proposals(*self._proposals, config.num_queries)
        self._proposals = None
        return grounding_dino_loss(logits, labels, device, pred_boxes, config, label_maps, text_mask,
                                   outputs_class, outputs_coord, encoder_logits, encoder_pred_boxes)


def install(model: Any) -> TrainingLoss:
    """Make ``model`` (a ``GroundingDinoForObjectDetection``) train with the corrected loss."""
    model.loss_function = TrainingLoss(model)
    return model.loss_function
