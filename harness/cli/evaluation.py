"""Evaluation commands: list, run, exec, grounding-eval, score, show, convert-detector."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.cli.common import add_judge_args, add_run_safety_args, judge_spec, parse_limit, run_exit_code
from harness.cli.experiment import EXPERIMENT_FILE, experiment_yaml, make_config_aware
from harness.cli.experiment import resolve as resolve_experiment
from harness.cli.ray_flags import add_ray_args, ray_settings
from harness.judgespec import JudgeSpec
from harness.protocol import HARNESS, LABEL_FILTERS, PAPER, PROTOCOLS


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("list", help="list tasks or systems")
    p.add_argument("what", choices=["tasks", "systems"])
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="extra folder of task or system YAML files")

    p = run_parser = sub.add_parser("run", help="evaluate a system on tasks")
    p.add_argument("--system", required=True, help="a system name (see `list systems`); required, here or in --config")
    p.add_argument("--tasks", required=True,
                   help="comma-separated task names, a tag, or 'all' (the paper's eight); "
                        "required, here or in --config")
    p.add_argument("--limit", type=parse_limit, metavar="N",
                   help="only the first N samples per task (a fraction when below 1)")
    p.add_argument("--output-path", type=Path, metavar="DIR",
                   help="run directory (default: results/runs/<system>-<time>)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--resume", action="store_true", help="continue the run in --output-path")
    p.add_argument("--data-dir", metavar="DIR",
                   help="local copies of the datasets, as DIR/<hub id>/... (default: $HARNESS_DATA_DIR)")
    p.add_argument("--predictions", metavar="FILE",
                   help="answers for the predictions system: a file, or a folder of lm-eval/lmms-eval/VLMEvalKit files")
    p.add_argument("--predictions-format", choices=["jsonl", "lm-eval", "lmms-eval", "vlmevalkit"],
                   help="what --predictions holds (default: this project's JSONL); see docs/interop.md")
    p.add_argument("--system-args", metavar="K=V,...", help="override parameters of the system file")
    p.add_argument("--log-samples", action="store_true",
                   help="also keep the full request sent to the model in each record")
    p.add_argument("--label", metavar="NAME",
                   help="name of this run in the leaderboard: a paper row such as valor-rl-n40 (default: the system)")
    p.add_argument("--tools", metavar="BACKEND", help="tool backend for program systems (oracle, real)")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="paper: the original evaluation's prompt, tool API, parsing, questions and scoring; "
                        "harness: ours (default: the one the system file names, else harness)")
    p.add_argument("--device", help="device for the models the system loads (auto, cpu, cuda, cuda:1, ...)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="extra folder of task or system YAML files")
    add_judge_args(p)
    add_run_safety_args(p)
    add_ray_args(p)

    p = sub.add_parser("exec", help="run one program in the sandbox and print its result as JSON")
    p.add_argument("program", type=Path, help="a Python file: the program body (it sets final_answer)")
    p.add_argument("--image", type=Path, help="the image the program sees (default: a blank 640x480 image)")
    p.add_argument("--tools", default="oracle", help="tool backend: oracle (default), real, dummy, or none")
    p.add_argument("--scene", type=Path, help="scene ground truth (JSON) for the oracle tools")
    p.add_argument("--tool-options", metavar="K=V,...", help="settings of the tool backend, e.g. noise=0.2")
    p.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "unshare", "process"])
    p.add_argument("--allow-unsafe-isolation", action="store_true",
                   help="run even where the sandbox cannot keep the program from your files (UNSAFE; see "
                        "docs/sandbox.md)")
    p.add_argument("--timeout", type=float, default=60.0, help="wall-clock limit in seconds")
    p.add_argument("--protocol", choices=PROTOCOLS, default=HARNESS,
                   help="the tool API the program is written for: harness (`image`, det['box']) or paper "
                        "(the original's: `img_pth`, det['bbox'])")
    p.add_argument("--label-filter", choices=LABEL_FILTERS, default="fixed",
                   help="paper protocol: keep only boxes whose phrase was asked (fixed) or the original's "
                        "every-box-once-one-matches behaviour (original)")
    p.add_argument("--data-dir", metavar="DIR", help="offline copies of the upstream files (paper protocol)")

    p = sub.add_parser("grounding-eval", help="measure the detector and depth tools against exact ground truth")
    p.add_argument("--tasks", default="synthetic", help="tasks whose samples carry scene ground truth")
    p.add_argument("--tools", default="real", help="tool backend to measure (default: real)")
    p.add_argument("--tool-options", metavar="K=V,...", help="settings of the tool backend, e.g. noise=0.2")
    p.add_argument("--device", help="device for the models (backends that load any)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N scenes")
    p.add_argument("--output-path", type=Path, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.add_argument("--data-dir", metavar="DIR")

    p = sub.add_parser("score", help="score a run's saved predictions again (no model is run)")
    p.add_argument("run_dir", type=Path)
    add_judge_args(p)

    p = sub.add_parser("show", help="show one sample of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("sample_id")
    p.add_argument("--task", help="which task, when several have this id")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")

    p = sub.add_parser("convert-detector", help="convert an original GroundingDINO .pth into a transformers folder")
    p.add_argument("checkpoint", type=Path, help="original checkpoint (IDEA-Research or Open-GroundingDino .pth)")
    p.add_argument("out_dir", type=Path, help="folder to write config, weights and processor files into")
    p.add_argument("--config", default="IDEA-Research/grounding-dino-tiny", metavar="MODEL_DIR_OR_HUB_ID",
                   help="transformers config and processor of the same architecture (default: %(default)s)")
    p.add_argument("--allow-unexpected", action="store_true", help="drop (and list) keys no conversion rule knows")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")

    make_config_aware(run_parser)  # last: every option of `run` becomes a key of the experiment file


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """The run's table: scores over the model's outcomes, the model's own failures, and the
    infrastructure's failures apart (never scored), then whether the run is complete."""
    from tabulate import tabulate

    rows = []
    for task, r in results["results"].items():
        metric = next(iter(results["higher_is_better"][task]))
        ci = r.get(f"{metric}_ci95,strict")
        infra = r.get("n_infrastructure_failures", 0)
        model_failed = r.get("n_model_failures", sum(n for status, n in r["status_counts"].items() if status != "ok"))
        rows.append([
            task, r["n"], _fmt(r.get(f"{metric},strict")),
            "-" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
            _fmt(r.get(f"{metric},compat")), model_failed, r["parse_counts"].get("unparsable", 0),
            infra if not infra else f"{infra} ({', '.join(f'{k} {n}' for k, n in r['infrastructure_counts'].items())})",
        ])
    headers = ["task", "n", "strict", "95% CI", "paper-compat", "model failures", "unparsable",
               "infrastructure failures"]
    protocol = results.get("protocol", HARNESS)
    headline = "paper-compat" if results.get("headline") == "compat" else "strict"
    table = f"protocol: {protocol} (headline score: {headline})\n" + tabulate(
        rows, headers=headers, tablefmt="github", disable_numparse=True)
    notes = [f"{task}: open answers scored by normalised exact match (no --judge given)"
             for task, r in results["results"].items() if "exact_match" in r.get("judges", {})]
    if results.get("complete", True):
        notes.append("complete: every sample has a model outcome")
    else:
        notes.append("INCOMPLETE (not ranked by the leaderboard, refused by check; --resume redoes the "
                     "infrastructure failures):")
        notes += [f"  {reason}" for reason in results.get("incomplete", [])]
    return "\n".join([table, *notes])


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.systems import SystemRegistry
    from harness.tasks import TaskRegistry

    if args.what == "tasks":
        registry = TaskRegistry(args.include_path)
        rows = []
        for name in registry.names():
            c = registry.config(name)
            parts = ", ".join(p.label for p in c.dataset.parts)
            subset = f" rows {c.rows[0]}-{c.rows[1] - 1}" if c.rows else ""
            rows.append([name, ",".join(c.tags), f"{c.dataset.path} [{parts}]{subset}",
                         c.size if c.size is not None else "?",
                         "per row" if c.fields.answer_type else c.answer_type, c.metric, c.compat or "-"])
        print(tabulate(rows, headers=["task", "tags", "source", "size", "answers", "metric", "paper-compat"],
                       tablefmt="github"))
    else:
        registry = SystemRegistry(args.include_path)
        rows = []
        for name in registry.names():
            c = registry.config(name)
            model = c.params.get("llm") or c.params.get("vlm") or {}
            tools = c.params.get("tools", "-")
            detector = ((c.params.get("tool_options") or {}).get("real") or {}).get("detector", {}).get("checkpoint")
            if tools == "real" and detector:
                tools = f"real (detector {detector})"
            rows.append([name, c.kind, model.get("model") or model.get("checkpoint") or "-",
                         model.get("backend", "-"), tools, ", ".join(c.tables) or "-"])
        print(tabulate(rows, headers=["system", "kind", "model", "backend", "tools", "paper tables"],
                       tablefmt="github"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.overrides import parse_key_values
    from harness.runner import RunOptions, evaluate
    from harness.systems import SystemRegistry
    from harness.tasks import TaskRegistry

    args, experiment = resolve_experiment(args)  # the --config file under the command line
    tasks = TaskRegistry(args.include_path)
    systems = SystemRegistry(args.include_path)
    args.tasks = ",".join(tasks.expand(args.tasks))  # saved expanded, so a rerun reads the same tasks
    args.data_dir = args.data_dir or os.environ.get("HARNESS_DATA_DIR")
    system_args = parse_key_values(args.system_args)
    for key, value in (("path", args.predictions), ("format", args.predictions_format), ("tools", args.tools),
                       ("device", args.device)):
        if value is not None:
            system_args[key] = value
    output = args.output_path or Path("results") / "runs" / f"{args.system}-{datetime.now():%Y%m%d-%H%M%S}"
    options = RunOptions(
        system=args.system, tasks=args.tasks.split(","), output_path=output, system_args=system_args,
        limit=args.limit, seed=args.seed, data_dir=args.data_dir, resume=args.resume,
        log_samples=args.log_samples, judge=judge_spec(args) or JudgeSpec(), include_paths=args.include_path,
        label=args.label, protocol=args.protocol, max_consecutive_failures=args.max_consecutive_failures,
        preflight=not args.skip_preflight, ray=ray_settings(args),
        extra_files={EXPERIMENT_FILE: experiment_yaml(experiment, {k: getattr(args, k) for k in experiment.values},
                                                      output)},
    )
    systems.config(options.system)  # fail on an unknown system before any data is read
    results = evaluate(options, tasks, systems)
    print(results_table(results))
    print(f"\nrun directory: {output}")
    return run_exit_code(results, output)


def cmd_exec(args: argparse.Namespace) -> int:
    import harness.synthetic  # noqa: F401  (registers the oracle tool backend)
    from harness.overrides import nested, parse_key_values
    from harness.sandbox.executor import Sandbox, SandboxPolicy
    from harness.tasks.sources import data_dir_from_env
    from harness.tools import ToolBackend, ToolContext, make_backend
    from harness.tools.paper_api import paper_program_inputs
    from harness.types import BytesImage, FileImage, Sample
    from harness.upstream import AssetStore, PaperTexts

    code = args.program.read_text(encoding="utf-8")
    image = FileImage(str(args.image)) if args.image else BytesImage(_blank_png(), "<blank 640x480 image>")
    sample = Sample(id=args.program.stem, task="exec", question="", answer=None, answer_type="none", image=image,
                    meta={"scene": str(args.scene)} if args.scene else {})
    context = ToolContext(image, image.size(), sample, key=args.program.stem)
    backend = None if args.tools == "none" else make_backend(args.tools, **nested(parse_key_values(args.tool_options)))
    with Sandbox(SandboxPolicy(wall_seconds=args.timeout), args.isolation, spares=1,
                 allow_unsafe=args.allow_unsafe_isolation, warm_up=False) as sandbox:
        if args.protocol == PAPER:
            texts = PaperTexts(AssetStore(data_dir=data_dir_from_env(args.data_dir)))
            tools, files = paper_program_inputs(backend or ToolBackend(), context, texts, args.label_filter)
            result = sandbox.run(code, tools if backend else None, context.image_size, dialect="paper", files=files)
        else:
            result = sandbox.run(code, backend.session(context) if backend else None, context.image_size)
    if backend is not None:
        backend.close()
    print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str))
    return 0 if result.status == "ok" else 1


def _blank_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buffer, "PNG")
    return buffer.getvalue()


def cmd_grounding_eval(args: argparse.Namespace) -> int:
    from harness.overrides import nested, parse_key_values
    from harness.synthetic.grounding_eval import format_report, grounding_eval, report_json
    from harness.tasks import TaskRegistry
    from harness.tools import make_backend

    options = nested(parse_key_values(args.tool_options))
    if args.device:
        options["device"] = args.device
    registry = TaskRegistry(args.include_path)
    backend = make_backend(args.tools, **options)
    try:
        for name in registry.expand(args.tasks):
            report = grounding_eval(backend, registry.task(name, args.data_dir).samples(), args.limit)
            print(format_report(f"{name}, tools {args.tools}", report))
            if args.output_path:
                args.output_path.write_text(report_json(report, backend.describe()) + "\n")
    finally:
        backend.close()
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from harness.rescore import recorded_judge, rescore

    results = rescore(args.run_dir, judge_spec(args, recorded_judge(args.run_dir)))
    print(results_table(results))
    return run_exit_code(results, args.run_dir)


def cmd_show(args: argparse.Namespace) -> int:
    # Only the standard library's modules: one sample of a large run is shown at once.
    from harness.records import find_records
    from harness.rundir import load_run, samples_file

    run = load_run(args.run_dir)
    records = [record for task in ([args.task] if args.task else run["tasks"])
               if samples_file(args.run_dir, task).is_file()
               for record in find_records(samples_file(args.run_dir, task), args.sample_id)]
    if not records:
        print(f"no sample {args.sample_id!r} in {args.run_dir}", file=sys.stderr)
        return 1
    if len(records) > 1 and not args.json:
        tasks = ", ".join(r["task"] for r in records)
        print(f"sample {args.sample_id!r} exists in tasks {tasks}; pass --task", file=sys.stderr)
        return 1
    protocol = run.get("protocol", HARNESS)
    for record in records:
        if args.json:
            print(json.dumps(record, indent=2, ensure_ascii=False))
            continue
        scores = record.get("scores") or {}
        lines = [
            f"protocol:    {protocol}",
            f"task:        {record['task']}" + (f" ({record['subset']})" if record.get("subset") else ""),
            f"sample:      {record['id']}",
            f"question:    {record['question']}",
        ]
        if record.get("choices"):
            lines.append(f"choices:     {record['choices']}")
        lines += [
            f"gold:        {record.get('gold')!r}   ({record['answer_type']})",
            f"prediction:  {record.get('prediction')!r}" + (f"   -> read as {record['extracted']!r}"
                                                             if record.get("extracted") is not None else ""),
            f"status:      {record['status']}" + (f"   parse: {record['parse']}" if record.get("parse") else ""),
            f"score:       strict {scores.get('strict')}   paper-compat {scores.get('compat')}"
            + (f"   (paper judge: {record['paper_judge'].get('error') or 'ok'})" if record.get("paper_judge") else ""),
        ]
        if record.get("isolation"):
            lines.append(f"isolation:   {', '.join(map(str, record['isolation']))}")
        for key in ("plan", "program", "raw", "detail"):
            if record.get(key):
                lines += [f"{key}:", *("    " + line for line in str(record[key]).splitlines())]
        if record.get("tool_calls"):
            lines.append(f"tool calls:  {len(record['tool_calls'])}")
            lines += [f"    {json.dumps(call, ensure_ascii=False)[:300]}" for call in record["tool_calls"]]
        print("\n".join(lines))
    return 0


def cmd_convert_detector(args: argparse.Namespace) -> int:
    # Imported here: torch and transformers would slow every other command's start-up.
    from harness.tools.convert import ConversionError, convert_detector

    try:
        report = convert_detector(args.checkpoint, args.out_dir, args.config,
                                  allow_unexpected=args.allow_unexpected, overwrite=args.overwrite)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "exec": cmd_exec, "grounding-eval": cmd_grounding_eval,
            "score": cmd_score, "show": cmd_show, "convert-detector": cmd_convert_detector}
