"""Commands of detector training without labels: pseudo-labels, label-precision, train-detector, detector-map."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.cli.common import chat_backend_options, failures_exit, key_value


def add_parsers(sub: Any) -> None:
    _add_grounding_parsers(sub)
    _add_detector_parsers(sub)


def _add_grounding_parsers(sub: Any) -> None:
    p = sub.add_parser("pseudo-labels", help="VLM-verified detector pseudo-labels from (image, query) pairs")
    p.add_argument("--config", type=Path, metavar="YAML",
                   help="settings (recipes/grounding_pseudolabels/config.yaml; default: the paper's)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder, continued if it holds records (records.jsonl, images/, labels, pages/)")
    p.add_argument("--sources", help="comma-separated task names and JSONL files of generated queries")
    p.add_argument("--system", help="the program writer, a program system of baselines/ (default: valor-rl)")
    p.add_argument("--verifier", metavar="KIND[:MODEL]", help="the VLM verifier's chat backend, e.g. openai:gpt-5-mini")
    p.add_argument("--verifier-option", action="append", default=[], type=key_value, metavar="K=V",
                   help="a setting of the verifier backend (repeatable), e.g. base_url=http://localhost:8000/v1")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N selected images")
    p.add_argument("--size", type=int, metavar="N", help="images selected in all, an equal share per source")
    p.add_argument("--seed", type=int, help="seed of the selection and of the program writer")
    p.add_argument("--exclude-images", metavar="FILE",
                   help="skip images named in a COCO JSON file (e.g. COCO val2017) or a text file of names")
    p.add_argument("--data-dir", metavar="DIR", help="local copies of the datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="extra folder of task or system YAML files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the config (repeatable), e.g. detector.device=cuda:1")
    p.add_argument("--allow-eval-tasks", action="store_true", help="allow tasks that have answers (evaluation data)")
    p.add_argument("--export-only", action="store_true", help="only rewrite the labels, stats and pages from records")
    p.add_argument("--no-pages", action="store_true", help="do not write the review pages")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("label-precision", help="precision of pseudo-labels per stage against hand labels")
    p.add_argument("records", type=Path, help="a pseudo-label folder or its records.jsonl")
    p.add_argument("labels", type=Path,
                   help='JSONL: {"id": record id, "correct": [candidate indices], "missed": N (optional)}')
    p.add_argument("--output-path", type=Path, metavar="FILE", help="also write the report as JSON")


def _add_detector_parsers(sub: Any) -> None:
    p = sub.add_parser("train-detector", help="fine-tune GroundingDINO on pseudo-labels (ODVG files)")
    p.add_argument("--config", type=Path, required=True, metavar="YAML",
                   help="training recipe, e.g. recipes/grounding_sft/config.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. data=[labels/] or epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue after the last complete epoch in output_dir")

    p = sub.add_parser("detector-map", help="COCO box mAP of a detector checkpoint on a COCO-format set")
    p.add_argument("checkpoint", help="transformers folder or hub id, or an original-format .pth")
    p.add_argument("--coco", type=Path, required=True, metavar="INSTANCES.json", help="COCO-format annotations")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder the file_name entries are in")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (by id)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass")
    p.add_argument("--top-k", type=int, default=300, metavar="K", help="detections kept per image (default: 300)")
    p.add_argument("--revision", help="hub revision of the checkpoint")
    p.add_argument("--output-path", type=Path, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tabulate import tabulate

    from harness.grounding.export import export, stage_table
    from harness.grounding.pipeline import FAILED, PseudoLabelConfig, PseudoLabeler
    from harness.training.data import TrainingDataError
    from harness.training.recipe_config import (
        RecipeConfigError,
        apply_overrides,
        from_mapping,
    )

    labeler = None
    if not args.export_only:
        try:
            if args.config:
                config = PseudoLabelConfig.from_yaml(args.config, args.set)
            else:
                config = from_mapping(PseudoLabelConfig, apply_overrides(asdict(PseudoLabelConfig()), args.set),
                                      "--set")
            config.verifier = chat_backend_options(config.verifier, args.verifier, args.verifier_option)
            for name, value in (("sources", args.sources), ("system", args.system), ("limit", args.limit),
                                ("size", args.size), ("seed", args.seed), ("exclude_images", args.exclude_images),
                                ("data_dir", args.data_dir)):
                if value is not None:
                    setattr(config, name, value)
            config.include_paths = [*config.include_paths, *map(str, args.include_path)]
            config.allow_eval_tasks = config.allow_eval_tasks or args.allow_eval_tasks
            config.__post_init__()  # check the settings as changed on the command line
            labeler = PseudoLabeler(config)
        except (RecipeConfigError, ValueError, TypeError) as exc:  # bad settings, or a backend that cannot start
            print(f"error: {exc}", file=sys.stderr)
            return 2
    run = None
    if labeler is not None:
        try:
            run = labeler.run(args.out, progress=not args.no_progress)
        except (RecipeConfigError, TrainingDataError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            labeler.close()
    stats = export(args.out, pages=not args.no_pages)
    if run is not None:
        print(tabulate([[origin, c.read, c.no_image + c.unreadable, c.excluded, c.images, c.selected]
                        for origin, c in run.sources.items()],
                       headers=["source", "rows", "no image", "excluded", "images", "selected"], tablefmt="github"))
        print(f"\nthis run: {run.processed} images processed, {run.already_done} already done; "
              + ", ".join(f"{status}: {n}" for status, n in sorted(run.status.items())) + "\n")
    print(tabulate(stage_table(stats), headers=["stage", "images", "boxes in", "kept", "removed", "failed"],
                   tablefmt="github"))
    print(f"\n{stats['labels']['images']} images labelled with {stats['labels']['boxes']} boxes of "
          f"{stats['labels']['categories']} phrases in {args.out} (labels.odvg.jsonl, coco.json, pages/index.html)")
    if run is None:
        return 0
    return failures_exit(run.status.get(FAILED, 0), run.failed_by_stage, args.out / "records.jsonl")


def cmd_label_precision(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.grounding.export import RecordsError
    from harness.grounding.precision import LabelsError, label_precision

    try:
        report = label_precision(args.records, args.labels)
    except (LabelsError, RecordsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(tabulate(report.table(), headers=["stage", "TP", "FP", "FN", "precision", "recall"], tablefmt="github",
                   disable_numparse=True))
    print(f"\n{report.images} labelled images")
    if args.output_path:
        args.output_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_train_detector(args: argparse.Namespace) -> int:
    from harness.grounding.finetune import load_config, train_detector
    from harness.grounding.odvg import OdvgError
    from harness.training.recipe_config import RecipeConfigError

    try:
        result = train_detector(load_config(args.config, args.set), resume=args.resume)
    except (OdvgError, RecipeConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = result.last_log or {}
    print(f"epochs run: {result.epochs_run or 'none (already done)'}; {result.steps} steps in all"
          + (f"; last step's loss {last['loss']:.4f}" if "loss" in last else ""))
    print(f"model: {result.final_dir} (use as tool_options.real.detector.checkpoint); "
          f"log: {result.output_dir / 'train_log.jsonl'}")
    return 0


def cmd_detector_map(args: argparse.Namespace) -> int:
    from harness.grounding.coco_eval import CocoEvalError, evaluate_detector

    try:
        report = evaluate_detector(args.checkpoint, args.coco, args.images, limit=args.limit, device=args.device,
                                   batch_size=args.batch_size, top_k=args.top_k, revision=args.revision,
                                   progress=not args.no_progress)
    except (CocoEvalError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if args.output_path:
        args.output_path.parent.mkdir(parents=True, exist_ok=True)
        args.output_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


COMMANDS = {
    "pseudo-labels": cmd_pseudo_labels,
    "label-precision": cmd_label_precision,
    "train-detector": cmd_train_detector,
    "detector-map": cmd_detector_map,
}
