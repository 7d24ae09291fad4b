"""Commands that prepare a machine: doctor (what is present, what is missing) and download
(everything a run needs, for a machine without internet)."""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path
from typing import Any

from harness.cli.common import add_judge_args, judge_spec
from harness.protocol import PAPER, PROTOCOLS

_MARKS = {"ok": "[ok]     ", "missing": "[MISSING]", "warning": "[warning]"}


def _add_scope(p: argparse.ArgumentParser, tasks_help: str) -> None:
    p.add_argument("--system", help="a system name (see `list systems`)")
    p.add_argument("--tasks", help=tasks_help)
    p.add_argument("--protocol", choices=PROTOCOLS, help="the protocol of the run (default: the system file's)")
    p.add_argument("--system-args", metavar="K=V,...", help="override parameters of the system file, as for `run`")
    p.add_argument("--tools", metavar="BACKEND", help="tool backend for program systems (oracle, real)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="extra folder of task or system YAML files")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this machine for a run: packages, GPU, keys, endpoints, data, models, "
                                      "the sandbox")
    _add_scope(p, "comma-separated task names, a tag, or 'all'")
    p.add_argument("--data-dir", metavar="DIR", help="local copies of datasets and models (default: $HARNESS_DATA_DIR)")
    add_judge_args(p)

    p = sub.add_parser("download", aliases=["download-data"],
                       help="fetch everything a run needs (datasets, images, models, the paper's files) into a data "
                            "directory, for machines without internet")
    _add_scope(p, "comma-separated task names, a tag, or 'all' (default: all, when no --system is given)")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="folder that --data-dir / HARNESS_DATA_DIR will name")
    p.add_argument("--check", action="store_true", help="after the download, load each task from the copy")
    p.add_argument("--jobs", type=int, default=8, metavar="N", help="images downloaded at once (default: %(default)s)")


def _scope(args: argparse.Namespace, default_tasks: str | None) -> tuple[Any, list[Any], Any]:
    """The system (built, not started), the task configurations and the registry the flags name."""
    from harness.overrides import parse_key_values
    from harness.systems import SystemRegistry
    from harness.tasks import TaskRegistry

    tasks = TaskRegistry(args.include_path)
    names = tasks.expand(args.tasks or default_tasks) if (args.tasks or default_tasks) else []
    system = None
    if args.system:
        overrides = parse_key_values(args.system_args)
        if args.tools:
            overrides["tools"] = args.tools
        system = SystemRegistry(args.include_path).build(args.system, overrides, protocol=args.protocol)
    return system, [tasks.config(name) for name in names], tasks


def _machine_checks(data_dir: Path | None) -> list[Any]:
    from harness.cache import default_cache_dir
    from harness.requirements import OK, MISSING, WARNING, Check, CheckContext, Endpoint, Isolation
    from harness.upstream import offline

    checks = [Check(OK, f"python {platform.python_version()}", "the harness", sys.executable)]
    checks.append(Isolation("auto", "the sandbox that runs generated programs").check(CheckContext()))
    cache = default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
        checks.append(Check(OK, f"cache folder {cache}", "replies, verdicts, tool answers", "writable"))
    except OSError as exc:
        checks.append(Check(MISSING, f"cache folder {cache}", "replies, verdicts, tool answers",
                            f"not writable: {exc.strerror or exc}", "point HARNESS_CACHE_DIR at a writable folder"))
    if data_dir is None:
        checks.append(Check(WARNING, "data dir", "offline copies of datasets and models", "none given",
                            "pass --data-dir DIR (or set HARNESS_DATA_DIR) on a machine without internet"))
    elif not data_dir.is_dir():
        checks.append(Check(MISSING, f"data dir {data_dir}", "offline copies", "does not exist",
                            "create it with `python -m harness download ... --data-dir DIR`"))
    else:
        count = sum(1 for _ in data_dir.iterdir())
        checks.append(Check(OK, f"data dir {data_dir}", "offline copies", f"{count} entries"))
    if offline():
        checks.append(Check(WARNING, "the Hugging Face hub", "datasets and models", "downloads are off "
                            "(HF_HUB_OFFLINE or HARNESS_OFFLINE): everything must be in the data dir or the cache"))
    else:
        from huggingface_hub import constants

        check = Endpoint(constants.ENDPOINT, "datasets and models").check(CheckContext())
        checks.append(check if check.ok else dataclasses.replace(
            check, status=WARNING, fix="set HF_HUB_OFFLINE=1 and use --data-dir, or fix the network"))
    return checks


def _print_checks(title: str, checks: list[Any]) -> None:
    print(title)
    for check in checks:
        line = f"  {_MARKS[check.status]} {check.what}"
        if check.purpose:
            line += f" ({check.purpose})"
        if check.detail:
            line += f": {check.detail}"
        print(line)
        if check.status != "ok" and check.fix:
            print(f"              fix: {check.fix}")


def cmd_doctor(args: argparse.Namespace) -> int:
    from harness.preflight import check_all, download_args, run_requirements
    from harness.requirements import MISSING, CheckContext
    from harness.scoring import JudgeSpec
    from harness.tasks.sources import data_dir_from_env

    data_dir = data_dir_from_env(args.data_dir)
    machine = _machine_checks(data_dir)
    _print_checks("this machine", machine)
    checks = list(machine)
    system, configs, _ = _scope(args, None)
    if system is not None or configs:
        judge = judge_spec(args) or JudgeSpec()
        if system is not None:
            system.data_dir = data_dir
            requirements = run_requirements(system, configs, judge, data_dir)
            title = f"system {system.name} ({system.protocol} protocol)" + (
                f" on {', '.join(c.task for c in configs)}" if configs else "")
        else:
            from harness.preflight import task_requirements
            from harness.requirements import unique

            requirements = unique(r for config in configs for r in task_requirements(config, data_dir))
            title = f"tasks {', '.join(c.task for c in configs)}"
        found = check_all(requirements, CheckContext(data_dir=data_dir, download_args=download_args(system, configs)))
        _print_checks(title, found)
        checks += found
    else:
        print("(name --system and --tasks to check what a run of them needs)")
    missing = sum(check.status == MISSING for check in checks)
    print(f"\n{missing} missing" if missing else "\neverything needed is present")
    return 1 if missing else 0


def cmd_download(args: argparse.Namespace) -> int:
    from harness.download import download
    from harness.preflight import run_requirements, task_requirements
    from harness.requirements import MISSING, unique
    from harness.scoring import JudgeSpec

    data_dir = Path(args.data_dir).expanduser()
    system, configs, registry = _scope(args, None if args.system else "all")
    if system is not None:
        requirements = run_requirements(system, configs, JudgeSpec(), data_dir)
    else:
        requirements = unique(r for config in configs for r in task_requirements(config, data_dir))
    paper = args.protocol == PAPER or (system is not None and system.protocol == PAPER)

    def images(task: str) -> Any:
        return (sample.image for sample in registry.task(task, data_dir).samples())

    outcome = download(requirements, data_dir, images, upstream=paper, jobs=args.jobs)
    for label, items in (("already present", outcome.present), ("fetched", outcome.fetched),
                         ("needs a manual step", outcome.manual), ("FAILED", outcome.failed)):
        for item in items:
            print(f"{label}: {item}")
    if args.check:
        for config in configs:
            task = registry.task(config.task, data_dir)
            print(f"{config.task}: {len(task)} samples, revision {task.revision}")
    # What a run will find with only this folder (downloads off), as `doctor` reports it.
    offline = [c for c in check_all_offline(requirements, data_dir) if c.status == MISSING]
    if offline:
        print(f"\nwith --data-dir {data_dir} and HF_HUB_OFFLINE=1, {len(offline)} still missing:")
        for check in offline:
            print(f"  {check.what} ({check.purpose}): {check.detail}")
    else:
        print(f"\neverything is in {data_dir}: run with --data-dir {data_dir} (HF_HUB_OFFLINE=1 on a machine "
              "without internet)")
    return 0 if outcome.ok and not offline else 1


def check_all_offline(requirements: list[Any], data_dir: Path) -> list[Any]:
    from harness.preflight import check_all
    from harness.requirements import CheckContext, Endpoint, EnvVar, Gpu, Isolation, Package

    # Only what the download provides: not packages, keys, endpoints, a GPU or the sandbox of this machine.
    provided = [r for r in requirements if not isinstance(r, (Package, EnvVar, Endpoint, Gpu, Isolation))]
    return check_all(provided, CheckContext(data_dir=data_dir, offline=True))


COMMANDS = {"doctor": cmd_doctor, "download": cmd_download, "download-data": cmd_download}
