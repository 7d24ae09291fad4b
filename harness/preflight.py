"""Checks before a run: everything the system, its tasks, its tools and its judge need.

The system, its backends and tools declare their requirements themselves
(``System.requirements``, ``ChatBackend.requirements``,
``ToolBackend.requirements``, ``judge_requirements``); this module adds the
tasks' datasets and images, checks them all (concurrently: an endpoint or the
hub may take seconds to answer) and, for a run, refuses to start when anything
is missing, naming every missing thing and its fix in one message.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from harness.protocol import PAPER
from harness.requirements import (
    MISSING, WARNING, Check, CheckContext, HubRepo, ImageFolder, Requirement, unique,
)
from harness.scoring import JudgeSpec
from harness.scoring.judge import judge_requirements
from harness.systems.base import System
from harness.tasks.config import TaskConfig
from harness.tasks.sources import allow_patterns


log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """Something a run needs is missing; the message lists each with its fix."""


def task_requirements(config: TaskConfig, data_dir: Path | None, images: bool = True) -> list[Requirement]:
    """A task's dataset, and (with ``images``) the images it reads from outside its dataset repository."""
    spec = config.dataset
    if spec.kind != "hub":
        return []  # generated (synthetic) or other sources with nothing to fetch
    purpose = f"task {config.task}"
    patterns = allow_patterns(spec)
    needed: list[Requirement] = [HubRepo(spec.path, "dataset", spec.revision, tuple(patterns) if patterns else None,
                                         purpose, download_args=f" --tasks {config.task}")]
    if spec.image_root and images:
        where = f"{data_dir / spec.path / spec.image_root}" if data_dir else f"DATA_DIR/{spec.path}/{spec.image_root}"
        fetchable = config.fields.image_url is not None
        fix = (f"`python -m harness download --tasks {config.task} --data-dir DIR` fetches them" if fetchable
               else f"put them in {where} (see the notes of {config.source_file})")
        needed.append(ImageFolder(where, f"{purpose}: images outside its dataset repository", fix,
                                  optional=fetchable, task=config.task))
    return needed


def run_requirements(system: System, tasks: Sequence[TaskConfig], judge: JudgeSpec,
                     data_dir: Path | None) -> list[Requirement]:
    """Every requirement of a run, each once."""
    paper_judge = system.protocol == PAPER and any(config.compat == "judge" for config in tasks)
    judged = judge.model is not None and any(config.answer_type == "open" for config in tasks)
    needed = [*system.requirements(),
              *(r for config in tasks for r in task_requirements(config, data_dir, system.reads_images)),
              *judge_requirements(judge if judged else dataclasses.replace(judge, model=None), paper_judge)]
    return unique(needed)


def download_args(system: System | None, tasks: Sequence[TaskConfig]) -> str:
    """The arguments of the `download` command that fetches what a run of these needs."""
    args = f" --system {system.name}" if system is not None else ""
    if system is not None and system.protocol == PAPER:
        args += " --protocol paper"
    if system is not None and system.params.get("tools") not in (None, "oracle"):
        args += f" --tools {system.params['tools']}"
    return args + (f" --tasks {','.join(config.task for config in tasks)}" if tasks else "")


def check_all(requirements: Sequence[Requirement], context: CheckContext) -> list[Check]:
    """Each requirement's check, in order, run several at a time."""
    if not requirements:
        return []
    with ThreadPoolExecutor(min(8, len(requirements)), thread_name_prefix="preflight") as pool:
        return list(pool.map(lambda requirement: requirement.check(context), requirements))


def failure_message(checks: Sequence[Check], what: str) -> str:
    missing = [c for c in checks if c.status == MISSING]
    lines = [f"{what} cannot start: {len(missing)} thing{'s' if len(missing) != 1 else ''} missing"]
    for check in missing:
        lines.append(f"  - {check.what} ({check.purpose}): {check.detail}" + (f"; fix: {check.fix}" if check.fix else ""))
    lines.append("`python -m harness doctor --system S --tasks T` shows every check.")
    return "\n".join(lines)


def run_preflight(system: System, tasks: Sequence[TaskConfig], judge: JudgeSpec, data_dir: Path | None,
                  devices_here: bool = True) -> list[Check]:
    """Check a run's requirements; PreflightError listing all that are missing, else the checks.
    ``devices_here=False``: the system's models run on other machines (Ray replicas)."""
    context = CheckContext(data_dir=data_dir, download_args=download_args(system, tasks), devices_here=devices_here)
    checks = check_all(run_requirements(system, tasks, judge, data_dir), context)
    if any(check.status == MISSING for check in checks):
        raise PreflightError(failure_message(checks, f"the run of {system.name}"))
    for check in checks:
        if check.status == WARNING:
            log.warning("%s (%s): %s", check.what, check.purpose, check.detail)
    return checks
