"""Fine-tuning GroundingDINO on pseudo-labels (the paper's section 3.2 and appendix A.6.4).

The recipe of the paper (its Table 11), as ``DetectorTrainConfig``'s defaults:
AdamW, learning rate 1e-6, weight decay 1e-4, batch 16, 4 epochs, StepLR with
gamma 0.1, gradient clipping at norm 0.1, the Swin backbone and the BERT text
encoder frozen. Where the paper is silent, VALOR's Open-GroundingDino config
(``cfg_odvg.py``) decides: its regularisation (no dropout in the transformer,
stochastic depth 0.2 in the Swin backbone, 0.1 in the image-text fusion) and its
parameter groups (``lr_backbone`` for the encoders when they train,
``lr_linear_proj`` for the reference-point head and the deformable sampling
offsets). The model is transformers' ``GroundingDinoForObjectDetection`` with the
PIL image processor, loaded exactly as the ``gd_detect`` tool loads it, trained
with the corrected loss of :mod:`harness.grounding.loss`.

Runs are seeded: the draws, the captions and every random mask (stochastic
depth) come from ``seed``, re-seeded at each epoch, so two runs of one config
give the same losses and a resumed run continues as the uninterrupted one
would. Several processes (``torchrun``, :mod:`harness.grounding.distributed`)
share each step's images; the optimiser step is the same as on one process.

An output folder holds ``train_log.jsonl`` (one line per optimiser step: epoch,
learning rate, loss and each of its terms), ``run_info.json``, one checkpoint per
epoch (``epoch-N/``: model, processor, optimiser and scheduler state) and
``final/`` (model and processor), which a system uses as
``tool_options.real.detector.checkpoint``. ``resume`` continues after the last
complete epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from harness.grounding import distributed
from harness.grounding.odvg import OdvgDataset, read_odvg, subset_size
from harness.jsonl import JsonlAppender, json_objects
from harness.results import write_json_atomically
from harness.tools.detector import DEFAULT_CHECKPOINT, load_grounding_dino
from harness.training.recipe_config import RecipeConfigError, load_recipe

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
RUN_INFO_FILE = "run_info.json"
STATE_FILE = "trainer_state.json"  # written last in a checkpoint: its presence marks it complete
OPTIMIZER_FILE = "optimizer.pt"
FINAL_DIR = "final"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
# Settings that may change when a run is resumed (more epochs, another machine).
RESUMABLE_CHANGES = ("epochs", "device", "precision", "num_workers", "check_images", "progress")
PRECISIONS = ("auto", "float32", "bfloat16")
# Open-GroundingDino's lr_backbone_names (backbone.0, bert) and lr_linear_proj_names
# (ref_point_head, sampling_offsets), under transformers' parameter names.
BACKBONE_NAMES = ("model.backbone.", "model.text_backbone.")
LINEAR_PROJ_NAMES = ("reference_points_head", "sampling_offsets")


@dataclass
class DetectorTrainConfig:
    """``recipes/grounding_sft/config.yaml``; the defaults are the paper's."""

    data: list[str]  # ODVG files or pseudo-label folders (their labels.odvg.jsonl)
    output_dir: str
    checkpoint: str = DEFAULT_CHECKPOINT  # a transformers folder or hub id, or an original-format .pth
    revision: str | None = None
    original_config: str = DEFAULT_CHECKPOINT  # architecture and processor of an original-format checkpoint
    epochs: int = 4
    learning_rate: float = 1e-6
    weight_decay: float = 1e-4
    batch_size: int = 16  # images per optimiser step: micro_batch_size x gradient accumulation
    micro_batch_size: int = 4  # images per forward pass
    lr_step_epochs: int = 4  # StepLR step_size, in epochs
    lr_gamma: float = 0.1
    max_grad_norm: float = 0.1
    # Parameter groups as Open-GroundingDino forms them (None: learning_rate). Names are
    # matched as substrings of the transformers parameter names.
    lr_backbone: float | None = None
    lr_backbone_names: list[str] = field(default_factory=lambda: list(BACKBONE_NAMES))
    lr_linear_proj: float | None = None
    lr_linear_proj_names: list[str] = field(default_factory=lambda: list(LINEAR_PROJ_NAMES))
    # Regularisation as Open-GroundingDino trains (transformers' defaults: 0.1, 0.1, 0.1).
    dropout: float = 0.0  # transformer encoder and decoder layers
    drop_path: float = 0.2  # stochastic depth of the Swin blocks (rising linearly to this)
    fusion_drop_path: float = 0.1  # stochastic depth of the image-text fusion layers
    freeze_backbone: bool = True  # Swin
    freeze_text_encoder: bool = True  # BERT
    auxiliary_loss: bool = True  # a loss on every decoder layer, as Open-GroundingDino trains
    max_phrases: int = 50  # phrases per caption, the image's own plus sampled negatives
    balanced_sources: bool = True  # each source equally likely per draw
    subset: int | float | None = None  # train on this many images (int) or this share (float)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bfloat16 autocast on a CUDA GPU that supports it, else float32
    num_workers: int = 4  # image-loading processes
    check_images: bool = True  # open every image's header when reading the labels
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        problems = []
        if not self.data:
            problems.append("data: name at least one ODVG file or pseudo-label folder")
        for name in ("epochs", "batch_size", "micro_batch_size", "lr_step_epochs", "max_phrases"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("dropout", "drop_path", "fusion_drop_path"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("lr_backbone", "lr_linear_proj"):
            if getattr(self, name) is not None and float(getattr(self, name)) < 0:
                problems.append(f"{name} must be a learning rate (>= 0) or null, got {getattr(self, name)!r}")
        if not problems and self.batch_size % self.micro_batch_size:
            problems.append(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                            f"({self.micro_batch_size})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.subset is not None:
            try:
                subset_size(self.subset, 1)
            except ValueError as exc:
                problems.append(f"subset: {exc}")
        if problems:
            raise RecipeConfigError("; ".join(problems))

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimiser step over all processes."""
        return self.batch_size // self.micro_batch_size

    def model_overrides(self) -> dict[str, Any]:
        """The regularisation, set in the model's config before its layers are built."""
        return {"dropout": float(self.dropout), "backbone_config.drop_path_rate": float(self.drop_path),
                "fusion_droppath": float(self.fusion_drop_path)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DetectorTrainConfig:
    return load_recipe(DetectorTrainConfig, path, overrides)


def training_dtype(precision: str, device: str) -> str:
    """Weights stay float32; ``bfloat16`` runs the forward pass under autocast, on CUDA only
    (on a CPU bfloat16 is slow and loses precision for nothing)."""
    import torch

    on_cuda = device.startswith("cuda")
    if precision == "auto":
        return "bfloat16" if on_cuda and torch.cuda.is_bf16_supported() else "float32"
    if precision == "bfloat16" and not on_cuda:
        raise RecipeConfigError(f"precision bfloat16 needs a CUDA GPU; the device is {device} (use float32)")
    return precision


def epoch_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete epoch checkpoints, in order."""
    found = []
    for child in output_dir.iterdir() if output_dir.is_dir() else ():
        match = _EPOCH_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    epochs_run: list[int] = field(default_factory=list)
    steps: int = 0
    last_log: dict[str, Any] | None = None


class DetectorTrainer:
    """Loads the data and the model, then ``train()``; ``resume`` continues after the last complete epoch."""

    def __init__(self, config: DetectorTrainConfig, resume: bool = False) -> None:
        import torch

        self.config = config
        self.output_dir = Path(config.output_dir)
        self.start_epoch, self.step, state_dir = 0, 0, None
        checkpoints = epoch_checkpoints(self.output_dir)
        if not resume and (checkpoints or (self.output_dir / LOG_FILE).exists()):
            raise FileExistsError(f"{self.output_dir} already holds a training run; pass --resume to continue it "
                                  "or choose another output_dir")
        if resume and checkpoints:
            self.start_epoch, state_dir = checkpoints[-1]
            saved = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
            self._check_resumable(saved["config"], state_dir)
            self.step = int(saved["step"])
        self.world, self.device = distributed.join(config.device)
        if config.batch_size % (config.micro_batch_size * self.world.size):
            log.warning("batch_size %d is not a multiple of micro_batch_size x processes (%d x %d): the processes "
                        "get unequal shares of each step", config.batch_size, config.micro_batch_size, self.world.size)
        self.dtype = training_dtype(config.precision, self.device)
        self.data: OdvgDataset = read_odvg(config.data, check_images=config.check_images).subset(
            config.subset, config.seed)
        self.model, self.processor = load_grounding_dino(str(state_dir) if state_dir else config.checkpoint,
                                                         None if state_dir else config.revision,
                                                         config.original_config,
                                                         config_overrides=config.model_overrides())
        self.trainable = self._prepare_model()
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_step_epochs,
                                                         gamma=config.lr_gamma)
        if state_dir is not None:
            states = torch.load(state_dir / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
            self.optimizer.load_state_dict(states["optimizer"])
            self.scheduler.load_state_dict(states["scheduler"])
            log.info("resuming after epoch %d (step %d) from %s", self.start_epoch, self.step, state_dir)

    def _check_resumable(self, saved: dict[str, Any], where: Path) -> None:
        current = self.config.to_dict()
        changed = sorted(k for k in set(saved) | set(current)
                         if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
        if changed:
            raise RecipeConfigError(f"cannot resume from {where}: these settings differ from the saved run: "
                                    + ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in changed))

    def _prepare_model(self) -> list[Any]:
        from harness.grounding import loss

        model, config = self.model, self.config
        if config.freeze_backbone:
            model.model.freeze_backbone()
        if config.freeze_text_encoder:
            model.model.text_backbone.requires_grad_(False)
        model.config.auxiliary_loss = config.auxiliary_loss
        loss.install(model)
        model.to(self.device).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in model.parameters())
        log.info("parameters: %d in all, %d trainable, %d frozen (backbone frozen: %s, text encoder frozen: %s)",
                 total, sum(p.numel() for p in trainable), total - sum(p.numel() for p in trainable),
                 config.freeze_backbone, config.freeze_text_encoder)
        return trainable

    # ------------------------------------------------------------------ data

    def _batches(self, epoch: int, plan: list[tuple[list[list[int]], int]]) -> Iterable[dict[str, Any]]:
        """This process's micro-batches of the epoch, in step order (images are decoded in
        ``num_workers`` processes)."""
        import torch

        from harness.grounding.finetune_data import BalancedSampler, Collator, EpochDataset, PhraseBudget

        config = self.config
        sampler = BalancedSampler(self.data.sources(), config.seed, config.balanced_sources)
        budget = PhraseBudget(self.processor.tokenizer, self.model.config.max_text_len)
        dataset = EpochDataset(self.data, sampler.epoch(epoch), budget, config.max_phrases, config.seed, epoch)
        micro_batches = [positions for mine, _ in plan for positions in mine]
        if not micro_batches:
            return []
        return torch.utils.data.DataLoader(dataset, batch_sampler=micro_batches, num_workers=config.num_workers,
                                           collate_fn=Collator(self.processor))

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.images) / self.config.batch_size)

    # ------------------------------------------------------------------ training

    def _micro_step(self, batch: dict[str, Any], share: float) -> dict[str, float]:
        import torch

        inputs = {k: v.to(self.device) for k, v in batch["inputs"].items()}
        labels = [{k: v.to(self.device) for k, v in target.items()} for target in batch["labels"]]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.dtype == "bfloat16"
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.model(**inputs, labels=labels)
        (outputs.loss * share).backward()
        terms = {k: float(v.detach()) for k, v in outputs.loss_dict.items()}
        return {"loss": float(outputs.loss.detach()), **terms}

    def train(self) -> TrainResult:
        config, world = self.config, self.world
        result = TrainResult(self.output_dir, self.output_dir / FINAL_DIR)
        log_file = None
        if world.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._trim_log()
            write_json_atomically(self.output_dir / RUN_INFO_FILE, {
                "config": config.to_dict(), "device": self.device, "precision": self.dtype,
                "processes": world.size, "images": len(self.data.images), "sources": self.data.counts(),
                "phrases": len(self.data.phrases), "trainable_parameters": sum(p.numel() for p in self.trainable),
                "steps_per_epoch": self.steps_per_epoch(), "micro_batches_per_step": config.accumulation})
            log_file = JsonlAppender(self.output_dir / LOG_FILE)
        try:
            for epoch in range(self.start_epoch, config.epochs):
                result.last_log = self._train_epoch(epoch, log_file) or result.last_log
                self.scheduler.step()
                if world.main:
                    self._save_checkpoint(epoch + 1)
                world.barrier()
                result.epochs_run.append(epoch + 1)
        finally:
            if log_file is not None:
                log_file.close()
        if world.main:
            self._save_model(result.final_dir)
        world.barrier()
        world.close()
        result.steps = self.step
        return result

    def _train_epoch(self, epoch: int, log_file: JsonlAppender | None) -> dict[str, Any] | None:
        import torch

        config, world = self.config, self.world
        torch.manual_seed(epoch_seed(config.seed, epoch, world.rank))
        self.model.train()
        plan = distributed.step_plan(len(self.data.images), config.batch_size, config.micro_batch_size, world)
        batches = iter(self._batches(epoch, plan))
        bar = tqdm(total=len(plan), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not (config.progress and world.main))
        last = None
        started = time.perf_counter()
        for mine, count in plan:
            totals: dict[str, float] = {"images": 0.0, "dropped_boxes": 0.0}
            for _ in mine:
                batch = next(batches)
                for key, value in self._micro_step(batch, 1 / count).items():
                    totals[key] = totals.get(key, 0.0) + value / count
                totals["images"] += len(batch["labels"])
                totals["dropped_boxes"] += batch["dropped_boxes"]
            world.sum_gradients(self.trainable)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            summed: dict[str, float] = {}
            for part in world.gather(totals):
                for key, value in part.items():
                    summed[key] = summed.get(key, 0.0) + value
            images, dropped = int(summed.pop("images")), int(summed.pop("dropped_boxes"))
            last = {"step": self.step, "epoch": epoch + 1, "lr": lr, "images": images, **summed,
                    "grad_norm": float(grad_norm), "dropped_boxes": dropped,
                    "seconds": round(time.perf_counter() - started, 3)}
            if log_file is not None:
                log_file.append(last)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update()
            started = time.perf_counter()
        bar.close()
        return last

    def _trim_log(self) -> None:
        """Keep the log lines up to the step the run restarts from (a resumed run redoes the rest)."""
        path = self.output_dir / LOG_FILE
        if not path.exists():
            return
        kept = [entry for _, entry in json_objects(path, ValueError, torn_tail_ok=True)
                if int(entry.get("step", 0)) <= self.step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in kept), encoding="utf-8")
        tmp.replace(path)

    def _save_model(self, folder: Path) -> None:
        """Model and processor (tokenizer + PIL image processor): a folder the ``gd_detect``
        tool, ``from_pretrained`` and this trainer load directly."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    def _save_checkpoint(self, epoch: int) -> None:
        import torch

        folder = self.output_dir / f"epoch-{epoch}"
        self._save_model(folder)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / OPTIMIZER_FILE)
        write_json_atomically(folder / STATE_FILE, {"epoch": epoch, "step": self.step, "config": self.config.to_dict()})
        log.info("epoch %d saved in %s", epoch, folder)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one process's epoch: every random mask of a run follows from the recipe's
    seed, and a run resumed at an epoch draws what the uninterrupted run drew there."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def parameter_groups(model: Any, config: DetectorTrainConfig) -> list[dict[str, Any]]:
    """Open-GroundingDino's ``ddetr_in_mmdet`` groups over the trainable parameters: the
    encoders (``lr_backbone``), the reference-point head and sampling offsets
    (``lr_linear_proj``), and the rest (``learning_rate``). A name matching both named groups
    goes to the encoders'. Groups without trainable parameters are left out."""
    groups: dict[str, list[Any]] = {"rest": [], "backbone": [], "linear_proj": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if any(key in name for key in config.lr_backbone_names):
            groups["backbone"].append(parameter)
        elif any(key in name for key in config.lr_linear_proj_names):
            groups["linear_proj"].append(parameter)
        else:
            groups["rest"].append(parameter)
    rates = {"rest": config.learning_rate,
             "backbone": config.learning_rate if config.lr_backbone is None else config.lr_backbone,
             "linear_proj": config.learning_rate if config.lr_linear_proj is None else config.lr_linear_proj}
    return [{"params": params, "lr": float(rates[name]), "name": name} for name, params in groups.items() if params]


def train_detector(config: DetectorTrainConfig, resume: bool = False) -> TrainResult:
    return DetectorTrainer(config, resume).train()
