"""Interoperability commands: export (our tasks as lm-evaluation-harness or lmms-eval tasks)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.cli.common import parse_limit

DEFAULT_PROMPT_SYSTEM = "direct-qwen2.5-vl-7b"
_RUN_HINT = {
    "lm-eval": "lm-eval run --model hf-multimodal --model_args pretrained=MODEL --apply_chat_template "
               "--include_path {out} --tasks {tasks} --log_samples --output_path OUT",
    "lmms-eval": "python -m lmms_eval --model MODEL --model_args pretrained=CHECKPOINT --include_path {out} "
                 "--tasks {tasks} --log_samples --output_path OUT",
}


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("export", help="write tasks as lm-evaluation-harness or lmms-eval tasks (YAML, data, utils.py)")
    p.add_argument("format", choices=["lm-eval", "lmms-eval"], help="which harness loads the tasks")
    p.add_argument("--tasks", required=True, help="comma-separated task names, a tag, or 'all' (the paper's eight)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the task files and their data")
    p.add_argument("--system", default=DEFAULT_PROMPT_SYSTEM, metavar="NAME",
                   help="direct-VLM system whose prompts the tasks carry (default: %(default)s)")
    p.add_argument("--system-args", metavar="K=V,...", help="override parameters of that system")
    p.add_argument("--limit", type=parse_limit, metavar="N",
                   help="only the first N samples per task (a fraction when below 1)")
    p.add_argument("--prefix", default="valor_", help="prefix of the exported task names (default: %(default)s)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="local copies of the datasets, as DIR/<hub id>/... (default: $HARNESS_DATA_DIR)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder that holds no export")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="extra folder of task or system YAML files")


def cmd_export(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.export.tasks import GROUP_TAG, export_tasks
    from harness.overrides import parse_key_values
    from harness.systems import SystemRegistry
    from harness.tasks import TaskRegistry

    tasks = TaskRegistry(args.include_path)
    exported = export_tasks(
        args.format, tasks.expand(args.tasks), args.out, tasks, SystemRegistry(args.include_path), args.system,
        parse_key_values(args.system_args), args.data_dir, args.limit, args.prefix, args.overwrite,
    )
    rows = [[e.task, e.name, e.rows, len(e.skipped)] for e in exported]
    print(tabulate(rows, headers=["task", "exported as", "rows", "not exported"], tablefmt="github"))
    names = ",".join(e.name for e in exported) if len(exported) < 4 else GROUP_TAG
    print(f"\nwritten to {args.out}; run them with:\n  " + _RUN_HINT[args.format].format(out=args.out, tasks=names))
    return 0


COMMANDS = {"export": cmd_export}
