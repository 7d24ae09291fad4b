"""Pieces the command groups share: argument types and the chat-backend options."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from harness.overrides import OverrideError, parse_key_values
from harness.scoring import JudgeSpec


def parse_limit(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", metavar="MODEL", help="LLM judge for open answers (GQA); default: exact match")
    parser.add_argument("--judge-base-url", metavar="URL", help="OpenAI-compatible endpoint of the judge")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                        help="environment variable holding the judge's API key (default: %(default)s)")


def judge_spec(args: argparse.Namespace) -> JudgeSpec | None:
    if args.judge is None:
        return None
    return JudgeSpec(model=args.judge, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env)


def key_value(text: str) -> tuple[str, Any]:
    """``k=v`` (one repeatable option) -> (k, v), the value read as a YAML scalar."""
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
