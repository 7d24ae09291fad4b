"""Commands that read finished runs: leaderboard, plot-rewards, report, check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    _add_leaderboard_parser(sub)
    _add_report_parser(sub)
    _add_check_parser(sub)


def _add_leaderboard_parser(sub: Any) -> None:
    p = sub.add_parser("leaderboard", help="the paper's tables from run records, beside the paper's numbers")
    p.add_argument("--results", type=Path, action="append", metavar="DIR",
                   help="folder searched recursively for results.json files (repeatable; default: results)")
    p.add_argument("--out", type=Path, default=Path("leaderboard"), metavar="DIR",
                   help="folder for the tables (Markdown, LaTeX, CSV), plots and index (default: %(default)s)")
    p.add_argument("--scoring", choices=["strict", "compat"], default="strict",
                   help="which of our scores the tables show (default: %(default)s)")
    p.add_argument("--training-log", type=Path, action="append", default=[], metavar="FILE",
                   help="a GRPO training log to plot (trainer_state.json, training_log.json or JSONL; repeatable)")
    p.add_argument("--paper-dir", type=Path, metavar="DIR", help="the paper's numbers (default: results/paper)")
    p.add_argument("--include-incomplete", action="store_true",
                   help="also use runs with infrastructure failures or an early stop (flagged, after complete runs)")

    p = sub.add_parser("plot-rewards", help="plot the reward parts over the steps of one training log")
    p.add_argument("log", type=Path, help="trainer_state.json, training_log.json, or a JSONL of logged dicts")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")


def _add_report_parser(sub: Any) -> None:
    from harness.report import DEFAULT_MAX_SAMPLES, DEFAULT_PAGE_SIZE

    p = sub.add_parser("report", help="write a run's visual report: self-contained HTML pages")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where to write the first page (default: RUN_DIR/report.html; page 2 is report-2.html, ...)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="local copies of the datasets, for the images (default: $HARNESS_DATA_DIR)")
    p.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES, metavar="N",
                   help="samples per task shown with their image (default: %(default)s; the rest without)")
    p.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, metavar="N",
                   help="samples a page; the pages link to each other (default: %(default)s)")


def _add_check_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="exit 1 when a candidate run scores significantly lower than a baseline run")
    p.add_argument("--baseline", type=Path, required=True, metavar="RUN", help="run directory of the reference")
    p.add_argument("--candidate", type=Path, required=True, metavar="RUN", help="run directory of the new checkpoint")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="PTS",
                   help="tolerated drop in percentage points (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="one-sided significance level (default: %(default)s)")
    p.add_argument("--correction", choices=["holm", "none"], default="holm",
                   help="multiple-testing correction across tasks (default: %(default)s)")
    p.add_argument("--scoring", choices=["strict", "compat"], default="strict",
                   help="which score to compare (default: %(default)s)")
    p.add_argument("--tasks", help="comma-separated tasks to compare (default: every task of both runs)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=10_000, metavar="N",
                   help="bootstrap resamples for partial-credit scores (default: %(default)s)")
    p.add_argument("--output-path", type=Path, metavar="FILE", help="also write the comparison as JSON")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="compare runs with infrastructure failures too (their unscored samples are left out)")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.leaderboard import LeaderboardError, write_leaderboard
    from harness.paper import PAPER_DIR, PaperDataError

    try:
        written = write_leaderboard(args.results or [Path("results")], args.out, scoring=args.scoring,
                                    training_logs=args.training_log, paper_dir=args.paper_dir or PAPER_DIR,
                                    include_incomplete=args.include_incomplete)
    except (LeaderboardError, PaperDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written.summary())
    return 0


def cmd_plot_rewards(args: argparse.Namespace) -> int:
    from harness.leaderboard import LeaderboardError, plot_reward_log

    try:
        plot_reward_log(args.log, args.out)
    except LeaderboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import ReportError, write_report

    try:
        summary = write_report(args.run_dir, args.out, args.data_dir, args.max_samples, args.page_size)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for task, reason in summary.unavailable.items():
        print(f"images of {task} not shown: {reason}", file=sys.stderr)
    pages = f", on {summary.pages} pages" if summary.pages > 1 else ""
    print(f"wrote {summary.path} ({summary.cards} samples{pages}, {summary.images} with images)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from harness.compare import CheckOptions, CheckRefused, check_runs, format_report

    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        options = CheckOptions(scoring=args.scoring, max_drop=args.max_drop, alpha=args.alpha,
                               correction=args.correction, tasks=tasks, seed=args.seed, bootstrap=args.bootstrap,
                               allow_incomplete=args.allow_incomplete)
        report = check_runs(args.baseline, args.candidate, options)
        outcome = report.to_dict()
    except CheckRefused as exc:
        print(f"error: cannot compare: {exc}", file=sys.stderr)
        report, outcome = None, {"baseline": str(args.baseline), "candidate": str(args.candidate),
                                 "passed": False, "refused": str(exc)}
    if args.output_path:  # written on refusal too, so a CI job can keep it as an artifact
        args.output_path.parent.mkdir(parents=True, exist_ok=True)
        args.output_path.write_text(json.dumps(outcome, indent=2, ensure_ascii=False) + "\n")
    if report is None:
        return 2
    print(format_report(report))
    return 1 if report.failed else 0


COMMANDS = {"leaderboard": cmd_leaderboard, "plot-rewards": cmd_plot_rewards, "report": cmd_report, "check": cmd_check}
