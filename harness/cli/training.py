"""Commands that prepare label-free reasoning training: training-data, generate-queries, verifier-agreement."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.cli.common import chat_backend_options, failures_exit, key_value


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("training-data", help="write label-free training queries for verl (parquet) and TRL (JSONL)")
    p.add_argument("--sources", required=True,
                   help="comma-separated task names (e.g. omni3d_bench_train), JSONL files of generated queries, and "
                        "valor_queries (the original's 816 training queries, from the pinned upstream file)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for train.parquet, train.jsonl and manifest.json")
    p.add_argument("--size", type=int, metavar="N", help="rows in all (default: every unique question)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unbalanced", action="store_true",
                   help="a uniform sample of all sources (default: an equal share per source)")
    p.add_argument("--keep-duplicates", action="store_true", help="keep identical questions")
    p.add_argument("--protocol", choices=["paper", "harness"], default="paper",
                   help="paper (default): the original's system prompt (pinned upstream file) and the bare question; "
                        "harness: our prompt file and layout (the three options below)")
    p.add_argument("--layout", choices=["system", "user"],
                   help="harness: prompt in the system message (default, as the paper trained) or with the question")
    p.add_argument("--prompt", metavar="FILE",
                   help="harness: program-writing prompt ({api} is replaced by the tool API; "
                        "default: prompts/program_writer.md)")
    p.add_argument("--question-template", help="harness: the user turn (default: {question})")
    p.add_argument("--allow-eval-tasks", action="store_true", help="allow tasks that have answers (evaluation data)")
    p.add_argument("--data-dir", metavar="DIR", help="local copies of the datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")

    p = sub.add_parser("generate-queries", help="generate spatial questions for unlabeled images with a VLM")
    p.add_argument("images", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="JSONL of queries, continued if it exists (status lines go to FILE's .status.jsonl)")
    p.add_argument("--config", type=Path, metavar="YAML", help="settings (recipes/query_generation/config.yaml)")
    p.add_argument("--vlm", metavar="KIND[:MODEL]", help="chat backend, e.g. genai:gemini-2.5-flash")
    p.add_argument("--vlm-option", action="append", default=[], type=key_value, metavar="K=V",
                   help="a setting of the VLM backend (repeatable)")
    p.add_argument("--seed", type=int, help="seed of the choice among candidates")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (sorted by path)")
    p.add_argument("--max-queries", type=int, metavar="N", help="stop once the output holds N queries")
    p.add_argument("--candidates", type=int, metavar="N", help="questions asked per image (default 5)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images whose requests go out together")
    p.add_argument("--no-retry-failed", action="store_true", help="do not retry images that failed before")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("verifier-agreement", help="agreement of an LLM verifier with human-labelled rewards")
    p.add_argument("labels", type=Path, help='JSONL: {"query", "plan", "code", "labels": {"logic": 0|1, ...}}')
    p.add_argument("--verifier", metavar="KIND[:MODEL]",
                   help="chat backend, e.g. genai:gemini-2.5-flash, openai:gpt-5-mini, vllm:Qwen/Qwen3-8B "
                        "(default: the reward's verifier)")
    p.add_argument("--verifier-option", action="append", default=[], type=key_value, metavar="K=V",
                   help="a setting of the verifier backend (repeatable), e.g. base_url=http://localhost:8000/v1")
    p.add_argument("--reward-config", type=Path, metavar="YAML",
                   help="take the verifier and sampling from a reward config")
    p.add_argument("--no-cache", action="store_true", help="always ask the verifier (no response cache)")
    p.add_argument("--output-path", type=Path, metavar="FILE",
                   help="also write the report (with every verdict) as JSON")


def cmd_training_data(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.tasks import TaskRegistry
    from harness.training.data import (
        DataOptions,
        TrainingDataError,
        counts_table,
        split_sources,
        write_training_data,
    )

    from harness.upstream import UpstreamAssetError

    try:
        options = DataOptions(size=args.size, balanced=not args.unbalanced, seed=args.seed,
                              dedup=not args.keep_duplicates, protocol=args.protocol, layout=args.layout,
                              prompt=args.prompt, question_template=args.question_template, data_dir=args.data_dir,
                              allow_eval_tasks=args.allow_eval_tasks)
        info = write_training_data(split_sources(args.sources), args.out, options, TaskRegistry(args.include_path))
    except (TrainingDataError, UpstreamAssetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(tabulate(counts_table(info), headers=["source", "read", "unique", "selected", "unreadable"],
                   tablefmt="github"))
    print(f"\n{info['rows']} rows written to {args.out} (train.parquet for verl, train.jsonl for TRL, manifest.json)")
    return 0


def cmd_generate_queries(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.training.querygen import QueryGenConfig, QueryGenerator, status_path

    try:
        config = QueryGenConfig.from_yaml(args.config) if args.config else QueryGenConfig()
        config.vlm = chat_backend_options(config.vlm, args.vlm, args.vlm_option)
        for name, value in (("seed", args.seed), ("limit", args.limit), ("max_queries", args.max_queries),
                            ("num_candidates", args.candidates), ("batch_size", args.batch_size)):
            if value is not None:
                setattr(config, name, value)
        if args.no_retry_failed:
            config.retry_failed = False
        config.__post_init__()  # check the settings as changed on the command line
        generator = QueryGenerator(config)
    except (ValueError, TypeError) as exc:  # a bad setting, or a backend that cannot start (no API key)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        stats = generator.run(args.images, args.out, progress=not args.no_progress)
    finally:
        generator.close()
    print(tabulate([[stats.images, stats.already_done, stats.processed, stats.ok, stats.unsuitable, stats.failed,
                     stats.queries_in_file]],
                   headers=["images", "already done", "processed", "ok", "unsuitable", "failed", "queries in file"],
                   tablefmt="github"))
    if stats.stopped_early:
        print(f"stopped: the output holds {stats.queries_in_file} queries (--max-queries)")
    return failures_exit(stats.failed, stats.failed_by_stage, status_path(args.out))


def cmd_verifier_agreement(args: argparse.Namespace) -> int:
    from harness.backends import make_chat_backend
    from harness.training.agreement import (
        LabelsError,
        format_report,
        measure_agreement,
        read_labels,
    )
    from harness.training.reward import RewardConfig

    try:
        reward = RewardConfig.from_yaml(args.reward_config) if args.reward_config else RewardConfig()
        options = chat_backend_options(reward.verifier, args.verifier, args.verifier_option)
        outputs = read_labels(args.labels)
        kind = options.pop("backend")
        verifier = make_chat_backend(kind, cache=False if args.no_cache else reward.cache, **options)
    except (LabelsError, ValueError, TypeError) as exc:  # bad labels or settings, or no API key
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from harness.training.protocol import make_protocol, paper_texts
        from harness.upstream import UpstreamAssetError

        try:
            protocol = make_protocol(reward.protocol, paper_texts(reward.data_dir) if reward.protocol == "paper" else None)
        except UpstreamAssetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report = measure_agreement(outputs, verifier, reward.verifier_sampling, protocol)
    finally:
        verifier.close()
    print(format_report(report))
    if args.output_path:
        args.output_path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return 0


COMMANDS = {
    "training-data": cmd_training_data,
    "generate-queries": cmd_generate_queries,
    "verifier-agreement": cmd_verifier_agreement,
}
