"""Command line: ``python -m harness COMMAND ...``, one module per group of commands.

Each group module has ``add_parsers(sub)`` and ``COMMANDS`` (name -> function
returning the exit code); modules import their heavy dependencies inside the
command functions, so ``--help`` and light commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from harness.cli import data, evaluation, grounding, reports, training
from harness.distributed.settings import DistributedError
from harness.overrides import OverrideError
from harness.registry import UnknownNameError
from harness.runner import RunError
from harness.sandbox.executor import SandboxError
from harness.sandbox.isolation import IsolationError
from harness.systems import SystemConfigError
from harness.systems.predictions import PredictionsFileError
from harness.tasks import TaskConfigError
from harness.tasks.sources import DatasetUnavailableError
from harness.types import ImageError

GROUPS = (evaluation, data, training, grounding, reports)
DESCRIPTION = ("Evaluate visual reasoners that write programs over vision tools, train them without labels, "
               "and compare the results with the paper's.")

# Errors a user can fix from the message alone: shown without a traceback.
USER_ERRORS = (UnknownNameError, TaskConfigError, SystemConfigError, RunError, PredictionsFileError, OverrideError,
               DatasetUnavailableError, IsolationError, SandboxError, ImageError, FileNotFoundError, FileExistsError,
               DistributedError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    command = next(group.COMMANDS[args.command] for group in GROUPS if args.command in group.COMMANDS)
    try:
        return command(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
