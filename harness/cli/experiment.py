"""One experiment file per run: ``run --config FILE`` and the ``experiment.yaml`` every run writes.

The file's keys are the ``run`` command's own options, read off its parser
(``--system-args`` is ``system_args``; ``system-args`` is accepted too), so an
option added to ``run`` works in the file with no code here. A value is what
the flag takes: the file's values are handed to the same parser, which checks
types and choices; ``true`` sets a switch, a list repeats a repeatable option,
``null`` leaves the default. Options given on the command line win over the
file, and the run directory's ``experiment.yaml`` records which ones did.

Mechanism: after the ``run`` options are added, every option's default is set
aside and replaced by ``SUPPRESS``, so the parsed namespace holds exactly the
options the command line gave; ``resolve`` then lays them over the file over
the defaults. Options that were required become required of the result.
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__

EXPERIMENT_FILE = "experiment.yaml"
RECORDED = "recorded"  # what the written file adds about the run; ignored when read back
# Where and how this invocation runs rather than what it runs: kept out of the saved file,
# so that `run --config RUN_DIR/experiment.yaml` starts a new run instead of clashing with the old one.
NOT_SAVED = ("config", "output_path", "resume")
_SPEC = "_experiment_spec"


class ExperimentError(ValueError):
    """An experiment file or option that cannot be used; the message names the file and key."""


@dataclass
class ExperimentSpec:
    parser: argparse.ArgumentParser
    actions: dict[str, argparse.Action]  # dest -> option, in the parser's order
    defaults: dict[str, Any]
    required: list[str]


@dataclass
class Experiment:
    values: dict[str, Any]  # every option, resolved
    source: Path | None = None  # the --config file
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # options the command line changed


def make_config_aware(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--config FILE`` option; call after all its other options are added."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"experiment file (YAML) holding any of these options; flags given here override it. "
                             f"Every run writes its complete one as RUN_DIR/{EXPERIMENT_FILE}")
    actions, defaults, required = {}, {}, []
    for action in parser._actions:  # argparse offers no public list of a parser's options
        if not action.option_strings or action.dest == "help":
            continue
        actions[action.dest] = action
        defaults[action.dest] = action.default
        if action.required:
            required.append(action.dest)
            action.required = False
        if action.help and "%(default)" in action.help:  # the help would no longer find the default
            action.help = action.help.replace("%(default)s", str(action.default).replace("%", "%%"))
        action.default = argparse.SUPPRESS
    parser.set_defaults(**{_SPEC: ExperimentSpec(parser, actions, defaults, required)})


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def _tokens(key: str, value: Any, action: argparse.Action, where: str) -> list[str]:
    """The command-line tokens that give ``action`` this value."""
    flag = _flag(action)
    if value is None:
        return []
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ExperimentError(f"{where}: key {key!r} is a switch; write true or false, not {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            negative = next(s for s in action.option_strings if s.startswith("--no-"))
            return [action.option_strings[0] if value else negative]
        return [flag] if value == action.const else []
    items = value if isinstance(value, list) else [value]
    if len(items) > 1 and not isinstance(action, argparse._AppendAction) and action.nargs in (None, "?"):
        raise ExperimentError(f"{where}: key {key!r} takes one value, got a list")
    for item in items:
        if isinstance(item, (dict, list)):
            raise ExperimentError(f"{where}: key {key!r} takes text or a number, got {item!r}")
    if action.nargs in (None, "?"):
        return [f"{flag}={'true' if item is True else 'false' if item is False else item}" for item in items]
    return [flag, *(str(item) for item in items)]


def read_experiment(path: Path, spec: ExperimentSpec) -> dict[str, Any]:
    """The options an experiment file sets, parsed and checked like command-line flags."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: an experiment file is a mapping of option: value, got {type(data).__name__}")
    known = [dest for dest in spec.actions if dest != "config"]
    tokens: list[str] = []
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == RECORDED:
            continue
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ExperimentError(f"{path}: unknown key {raw_key!r}{hint}; the keys are the options of `run`: "
                                  f"{', '.join(known)}")
        tokens += _tokens(str(raw_key), value, spec.actions[key], str(path))

    flags = {flag: dest for dest, action in spec.actions.items() for flag in action.option_strings}

    def refuse(message: str) -> None:
        # argparse names the flag ("argument --limit: ..."); the file's reader knows the key.
        named = re.sub(r"argument (-[\w-]+)(?:/-[\w-]+)*", lambda m: f"key {flags.get(m.group(1), m.group(1))!r}",
                       message)
        raise ExperimentError(f"{path}: {named}")

    parser = spec.parser
    original = parser.error
    parser.error = refuse  # type: ignore[method-assign]  # argparse would print usage and exit
    try:
        parsed = parser.parse_args(tokens)
    finally:
        parser.error = original  # type: ignore[method-assign]
    return {k: v for k, v in vars(parsed).items() if k in spec.actions}


def resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, Experiment]:
    """The command line over the ``--config`` file over the defaults: every option has a value."""
    spec: ExperimentSpec = getattr(args, _SPEC)
    given = {k: v for k, v in vars(args).items() if k in spec.actions}
    source = given.get("config")
    from_file = read_experiment(source, spec) if source is not None else {}
    values = {**spec.defaults, **from_file, **given}
    for dest in spec.required:
        if values.get(dest) is None:
            where = f" or in {source}" if source else " or in an experiment file (--config)"
            raise ExperimentError(f"run needs {_flag(spec.actions[dest])} (on the command line{where})")
    overrides = {}
    if source is not None:
        overrides = {k: {"file": from_file.get(k), "command_line": _plain(v)} for k, v in given.items()
                     if (k not in NOT_SAVED or k in from_file) and (k not in from_file or from_file[k] != v)}
    resolved = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != _SPEC})
    for key, value in values.items():
        setattr(resolved, key, value)
    return resolved, Experiment(values, source, {k: {**o, "file": _plain(o["file"])} for k, o in overrides.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def experiment_yaml(experiment: Experiment, values: dict[str, Any], output_path: Path) -> str:
    """The complete settings of a run, as an experiment file."""
    import yaml

    saved = {k: _plain(v) for k, v in values.items() if k not in NOT_SAVED}
    recorded = {
        "harness_version": __version__,
        "config": str(experiment.source) if experiment.source else None,
        "overrides": experiment.overrides,
        "output_path": str(output_path),
    }
    head = ("# Every setting of this run. `python -m harness run --config THIS_FILE` runs it again\n"
            "# (into a new run directory; add --output-path DIR to choose it). 'recorded' is information only.\n")
    return head + yaml.safe_dump({**saved, RECORDED: recorded}, sort_keys=False, allow_unicode=True)


