"""Command line: ``python -m harness COMMAND ...``, one module per group of commands.

Each group module has ``add_parsers(sub)`` and ``COMMANDS`` (name -> function
returning the exit code); modules import their heavy dependencies inside the
command functions, so ``--help`` and light commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from harness.cli import evaluation, grounding, interop, reports, setup, training

GROUPS = (evaluation, setup, training, grounding, reports, interop)
DESCRIPTION = ("Evaluate visual reasoners that write programs over vision tools, train them without labels, "
               "and compare the results with the paper's.")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix from the message alone: shown without a traceback. Imported when a
    command runs, not when the parser is built (``--help`` loads none of the harness)."""
    from harness.cache import CacheError
    from harness.cli.experiment import ExperimentError
    from harness.distributed.settings import DistributedError
    from harness.download import DownloadError
    from harness.export.tasks import ExportError
    from harness.overrides import OverrideError
    from harness.preflight import PreflightError
    from harness.records import RecordsError
    from harness.registry import UnknownNameError
    from harness.rundir import RunError
    from harness.runlock import RunLockedError
    from harness.sandbox.executor import SandboxError
    from harness.sandbox.isolation import IsolationError
    from harness.systems import SystemConfigError
    from harness.systems.predictions import PredictionsFileError
    from harness.tasks import TaskConfigError
    from harness.tasks.sources import DatasetUnavailableError
    from harness.types import ImageError
    from harness.upstream import UpstreamAssetError

    return (UnknownNameError, TaskConfigError, SystemConfigError, RunError, PredictionsFileError, OverrideError,
            DatasetUnavailableError, IsolationError, SandboxError, ImageError, FileNotFoundError, FileExistsError,
            PreflightError, RunLockedError, UpstreamAssetError, CacheError, DownloadError, RecordsError,
            ExportError, ExperimentError, DistributedError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def _os_error(exc: OSError) -> str:
    """One line for a failed file operation: the path and what the system said."""
    where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    return f"{where}: {exc.strerror or exc}" if where else str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    command = next(group.COMMANDS[args.command] for group in GROUPS if args.command in group.COMMANDS)
    try:
        return command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`show ... | head`): not an error. Point stdout at nothing so
        # that Python's own flush at exit does not complain a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        from harness.runner import RunInterrupted

        if isinstance(exc, user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, RunInterrupted):
            print(exc, file=sys.stderr)
            return 130
        if isinstance(exc, OSError):  # a read-only or full output folder, a file that cannot be read
            print(f"error: {_os_error(exc)}", file=sys.stderr)
            return 2
        raise
