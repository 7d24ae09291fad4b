"""The system registry: system kinds (code) and system files (``baselines/*.yaml``)."""

from __future__ import annotations

import copy
import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.registry import Registry, UnknownNameError, read_yaml_files, unknown_name_message
from harness.systems.base import System

__all__ = ["BASELINES_DIR", "SYSTEM_KINDS", "System", "SystemConfig", "SystemConfigError", "SystemRegistry"]

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"

SYSTEM_KINDS: Registry[type[System]] = Registry("system kind")
SYSTEM_KINDS.register("predictions", "harness.systems.predictions:PredictionsSystem")
SYSTEM_KINDS.register("reference", "harness.systems.program:ReferenceSystem")


class SystemConfigError(ValueError):
    """A malformed system file; the message names the file and the key."""


@dataclass(frozen=True)
class SystemConfig:
    system: str
    kind: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    source_file: str | None = None


_KEYS = ("system", "kind", "description", "params")


def parse_system_config(data: dict[str, Any], path: Path) -> SystemConfig:
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SystemConfigError(f"{path}: unknown key {key!r}{hint}; allowed: {', '.join(_KEYS)}")
    for key in ("system", "kind"):
        if not isinstance(data.get(key), str):
            raise SystemConfigError(f"{path}: missing required key {key!r}")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise SystemConfigError(f"{path}: key 'params' must be a mapping")
    if ":" not in data["kind"] and data["kind"] not in SYSTEM_KINDS:
        raise SystemConfigError(f"{path}: key 'kind': {unknown_name_message('system kind', data['kind'], SYSTEM_KINDS.names())}")
    return SystemConfig(data["system"], data["kind"], data.get("description", ""), params, str(path))


class SystemRegistry:
    def __init__(self, include_paths: Iterable[str | Path] = ()) -> None:
        self._configs: dict[str, SystemConfig] = {}
        for path, data in read_yaml_files((BASELINES_DIR, *map(Path, include_paths)), "system", SystemConfigError):
            config = parse_system_config(data, path)
            if config.system in self._configs:
                raise SystemConfigError(f"{path}: system {config.system!r} is already defined in "
                                        f"{self._configs[config.system].source_file}")
            self._configs[config.system] = config

    def names(self) -> list[str]:
        return sorted(self._configs)

    def config(self, name: str) -> SystemConfig:
        if name not in self._configs:
            raise UnknownNameError(unknown_name_message("system", name, self._configs))
        return self._configs[name]

    def resolved_params(self, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The system file's parameters with overrides; ``a.b`` reaches into a nested mapping."""
        params = copy.deepcopy(self.config(name).params)
        for key, value in (overrides or {}).items():
            *parents, leaf = key.split(".")
            target = params
            for part in parents:
                target = target.get(part) if isinstance(target, dict) else None
            if not isinstance(target, dict) or leaf not in target:
                known = sorted(_dotted_keys(params))
                raise SystemConfigError(
                    f"system {name!r} has no parameter {key!r}; its parameters: {', '.join(known) or 'none'}")
            target[leaf] = value
        return params

    def build(self, name: str, overrides: dict[str, Any] | None = None, seed: int = 0) -> System:
        config = self.config(name)
        return system_class(config.kind)(name, self.resolved_params(name, overrides), seed)


def _dotted_keys(params: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in params.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def system_class(kind: str) -> type[System]:
    """A registered kind, or ``package.module:Class`` for a system defined outside the harness."""
    if ":" not in kind:
        return SYSTEM_KINDS.get(kind)
    module_name, _, attribute = kind.partition(":")
    cls = getattr(importlib.import_module(module_name), attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise SystemConfigError(f"kind {kind!r} does not name a subclass of harness.systems.System")
    return cls
