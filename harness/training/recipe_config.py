"""Recipe settings: one YAML file per recipe, changed from the command line with ``key=value``.

A recipe's YAML file maps onto one dataclass (its fields are the file's
top-level keys; unknown keys are an error naming the file, so a typo never
silently falls back to a default). ``--set a.b=v`` overrides a value, nested
keys with dots, values read as YAML scalars (``1e-6`` is a float, ``null`` is
None, ``[1, 2]`` a list). Relative paths are relative to the current directory:
every command in the recipes' READMEs runs from the repository root.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from harness.overrides import OverrideError, floats, parse_key_values, set_dotted

_T = TypeVar("_T")


class RecipeConfigError(ValueError):
    """A recipe file or an override that cannot be read; the message names the culprit."""


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key=value`` overrides applied in order."""
    out = copy.deepcopy(dict(data))
    try:
        for key, value in parse_key_values(list(overrides)).items():
            set_dotted(out, key, value)
    except OverrideError as exc:
        raise RecipeConfigError(f"override: {exc}") from None
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeConfigError(f"{path}: expected a mapping at the top level")
    return floats(data)


def from_mapping(cls: type[_T], data: Mapping[str, Any], source: str) -> _T:
    """The dataclass ``cls`` from a mapping; unknown or missing keys name ``source``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeConfigError(f"{source}: unknown settings {unknown}; known: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if data.get(name) is None]
    if missing:
        raise RecipeConfigError(f"{source}: missing settings {missing}")
    return cls(**data)


def load_recipe(cls: type[_T], path: str | Path, overrides: Sequence[str] = ()) -> _T:
    """Read a recipe file into ``cls``, after the command line's overrides."""
    return from_mapping(cls, apply_overrides(read_yaml(path), overrides), str(path))


def recipe_arguments(description: str, what: str, example: str,
                     argv: Sequence[str] | None = None) -> tuple[Path, list[str]]:
    """The ``--config FILE [--set key=value ...]`` command line every recipe entry point
    takes (and logging set up for it)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help=f"the {what} YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a setting, e.g. {example} (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.config, args.set
