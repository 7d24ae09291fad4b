"""Pieces the command groups share: argument types and the chat-backend options."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

from harness.judgespec import JudgeSpec


def parse_limit(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def count(minimum: int) -> Any:
    """An argument type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_JUDGE_DEFAULTS = JudgeSpec()


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", metavar="MODEL", help="LLM judge for open answers (GQA); default: exact match")
    parser.add_argument("--judge-base-url", metavar="URL", help="OpenAI-compatible endpoint of the judge")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                        help="environment variable holding the judges' API key (default: %(default)s)")
    parser.add_argument("--judge-timeout", type=positive_float, metavar="S",
                        help=f"seconds each judge request may take in all (default: {_JUDGE_DEFAULTS.timeout_s:g})")
    parser.add_argument("--judge-retries", type=count(0), metavar="N",
                        help=f"retries of a failed judge request (default: {_JUDGE_DEFAULTS.max_retries})")
    parser.add_argument("--judge-concurrency", type=count(1), metavar="N",
                        help=f"records judged at once (default: {_JUDGE_DEFAULTS.max_concurrency})")


def judge_spec(args: argparse.Namespace, base: JudgeSpec | None = None) -> JudgeSpec | None:
    """The judge the flags ask for, over ``base`` (default: the defaults); None when no flag
    changes anything (``score`` then keeps the run's recorded judge)."""
    changes: dict[str, Any] = {}
    if args.judge is not None:
        changes.update(model=args.judge, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env)
    for flag, name in (("judge_timeout", "timeout_s"), ("judge_retries", "max_retries"),
                       ("judge_concurrency", "max_concurrency")):
        if getattr(args, flag, None) is not None:
            changes[name] = getattr(args, flag)
    if not changes:
        return None
    return dataclasses.replace(base or JudgeSpec(), **changes)


def add_run_safety_args(parser: argparse.ArgumentParser) -> None:
    from harness.rundir import DEFAULT_MAX_CONSECUTIVE_FAILURES

    parser.add_argument("--max-consecutive-failures", type=count(0), default=DEFAULT_MAX_CONSECUTIVE_FAILURES,
                        metavar="N", help="stop the run after N infrastructure failures in a row (failed API calls, "
                                          "unreadable images, judge errors); 0: never (default: %(default)s)")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="start without checking packages, GPU, keys, endpoints, data and models first")


# Exit codes of `run` and `score`; 2 is any user error (a bad flag, a missing requirement).
EXIT_OK, EXIT_TASK_ERRORS, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 3, 130


def run_exit_code(results: dict[str, Any], run_dir: Any) -> int:
    """0 for a complete run; 3 when infrastructure failures (or an early stop) left it incomplete,
    1 when a task could not be loaded at all; the reason goes to stderr."""
    if results.get("errors"):
        for task, error in results["errors"].items():
            print(f"error in {task}: {error}", file=sys.stderr)
        return EXIT_TASK_ERRORS
    if not results.get("complete", True):
        print(f"the run is incomplete ({'; '.join(results.get('incomplete', []))}); "
              f"`--resume --output-path {run_dir}` redoes what failed", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def key_value(text: str) -> tuple[str, Any]:
    """``k=v`` (one repeatable option) -> (k, v), the value read as a YAML scalar."""
    from harness.overrides import OverrideError, parse_key_values

    try:
        return next(iter(parse_key_values([text]).items()))
    except OverrideError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# The option that names a backend's model, for backends that do not call it ``model``.
_MODEL_OPTION = {"transformers": "checkpoint", "scripted": "path"}


def chat_backend_options(base: dict[str, Any], spec: str | None, options: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A chat backend's options from ``--X KIND[:MODEL]`` and ``--X-option k=v``.

    ``base`` (the config's backend) is kept unless a spec is given; a spec starts
    from nothing, because one backend's settings rarely apply to another. The
    options go on top of either (e.g. ``base_url=...``, ``thinking_budget=0``).
    """
    result = dict(base)
    if spec:
        kind, _, model = spec.partition(":")
        result = {"backend": kind.strip()}
        if model:
            result[_MODEL_OPTION.get(result["backend"], "model")] = model
    result.update(options)
    return result


def failures_exit(failed: int, by_stage: dict[str, int], where: Any) -> int:
    """1, with a note on stderr, when images failed (a rerun retries them); else 0."""
    if not failed:
        return 0
    stages = ", ".join(f"{stage}: {n}" for stage, n in sorted(by_stage.items()))
    print(f"{failed} images failed ({stages}); see {where}. Run again to retry them.", file=sys.stderr)
    return 1
