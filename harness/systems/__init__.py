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
from harness.systems.params import check_params

__all__ = ["BASELINES_DIR", "SYSTEM_KINDS", "System", "SystemConfig", "SystemConfigError", "SystemRegistry"]

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"

SYSTEM_KINDS: Registry[type[System]] = Registry("system kind")
SYSTEM_KINDS.register("predictions", "harness.systems.predictions:PredictionsSystem")
SYSTEM_KINDS.register("reference", "harness.systems.program:ReferenceSystem")
SYSTEM_KINDS.register("llm_program", "harness.systems.llm_program:LLMProgramSystem")
SYSTEM_KINDS.register("direct_vlm", "harness.systems.direct:DirectVLMSystem")
SYSTEM_KINDS.register("visprog", "harness.systems.visprog:VisProgSystem")
SYSTEM_KINDS.register("vipergpt", "harness.systems.vipergpt:ViperGPTSystem")
SYSTEM_KINDS.register("replay", "harness.systems.replay:ReplaySystem")


class SystemConfigError(ValueError):
    """A malformed system file; the message names the file and the key."""


@dataclass(frozen=True)
class SystemConfig:
    system: str
    kind: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    tables: tuple[str, ...] = ()  # the paper's tables this system has a row in
    source_file: str | None = None


_KEYS = ("system", "kind", "description", "params", "extends", "tables")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, mapping by mapping. A null value stays null:
    backends read it as "leave this setting unset" (e.g. a temperature that
    reasoning models refuse)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_system_file(data: dict[str, Any], path: Path) -> None:
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SystemConfigError(f"{path}: unknown key {key!r}{hint}; allowed: {', '.join(_KEYS)}")
    if not isinstance(data.get("system"), str):
        raise SystemConfigError(f"{path}: missing required key 'system'")
    if not isinstance(data.get("kind"), str) and not isinstance(data.get("extends"), str):
        raise SystemConfigError(f"{path}: missing required key 'kind' (or 'extends', to take another system's)")
    if not isinstance(data.get("params") or {}, dict):
        raise SystemConfigError(f"{path}: key 'params' must be a mapping")


class SystemRegistry:
    """System files; ``extends: other`` takes another system's kind and params and
    changes only what it names (e.g. the detector checkpoint of a tuned-GD variant)."""

    def __init__(self, include_paths: Iterable[str | Path] = ()) -> None:
        raw: dict[str, tuple[Path, dict[str, Any]]] = {}
        for path, data in read_yaml_files((BASELINES_DIR, *map(Path, include_paths)), "system", SystemConfigError):
            _check_system_file(data, path)
            if data["system"] in raw:
                raise SystemConfigError(f"{path}: system {data['system']!r} is already defined in {raw[data['system']][0]}")
            raw[data["system"]] = (path, data)
        self._configs: dict[str, SystemConfig] = {}
        for name in raw:
            self._resolve(name, raw, ())

    def _resolve(self, name: str, raw: dict[str, tuple[Path, dict[str, Any]]], chain: tuple[str, ...]) -> SystemConfig:
        if name in self._configs:
            return self._configs[name]
        path, data = raw[name]
        kind, params = data.get("kind"), data.get("params") or {}
        if data.get("extends"):
            parent = data["extends"]
            if parent in chain + (name,):
                raise SystemConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(chain + (name, parent))}")
            if parent not in raw:
                raise SystemConfigError(f"{path}: key 'extends': {unknown_name_message('system', parent, raw)}")
            base = self._resolve(parent, raw, chain + (name,))
            kind, params = kind or base.kind, deep_merge(base.params, params)
        if ":" not in kind and kind not in SYSTEM_KINDS:
            raise SystemConfigError(f"{path}: key 'kind': {unknown_name_message('system kind', kind, SYSTEM_KINDS.names())}")
        tables = tuple(str(t) for t in (data.get("tables") or ()))
        config = SystemConfig(name, kind, data.get("description", ""), params, tables, str(path))
        self._configs[name] = config
        return config

    def names(self) -> list[str]:
        return sorted(self._configs)

    def config(self, name: str) -> SystemConfig:
        if name not in self._configs:
            raise UnknownNameError(unknown_name_message("system", name, self._configs))
        return self._configs[name]

    def resolved_params(self, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The system file's parameters with overrides; ``a.b`` reaches into a nested mapping (created
        when the file has none there; :meth:`validate` then says whether the kind reads it)."""
        params = copy.deepcopy(self.config(name).params)
        for key, value in (overrides or {}).items():
            *parents, leaf = key.split(".")
            target = params
            for depth, part in enumerate(parents):
                if target.get(part) is None:
                    target[part] = {}
                target = target[part]
                if not isinstance(target, dict):
                    raise SystemConfigError(f"system {name!r}: cannot set {key!r}: "
                                            f"{'.'.join(parents[:depth + 1])} is {target!r}, not a mapping")
            target[leaf] = value
        return params

    def validate(self, name: str, params: dict[str, Any], overrides: bool = False) -> None:
        """Every parameter checked against what the system's kind reads: SystemConfigError naming the
        file and each wrong key (with the nearest known key for a typo)."""
        config = self.config(name)
        problems = check_params(system_class(config.kind), params)
        if problems:
            where = config.source_file or f"system {name}"
            extra = " (after --system-args)" if overrides else ""
            raise SystemConfigError(f"{where}{extra}: " + "; ".join(problems))

    def build(self, name: str, overrides: dict[str, Any] | None = None, seed: int = 0,
              protocol: str | None = None) -> System:
        """The system, following ``protocol`` (default: the one its file names, else ``harness``)."""
        config = self.config(name)
        params = self.resolved_params(name, overrides)
        if protocol is not None:
            params["protocol"] = protocol
        self.validate(name, params, bool(overrides))
        try:
            system = system_class(config.kind)(name, params, seed)
        except ValueError as exc:
            raise SystemConfigError(f"{config.source_file}: {exc}") from exc
        system.source_dir = Path(config.source_file).parent if config.source_file else None
        return system


def system_class(kind: str) -> type[System]:
    """A registered kind, or ``package.module:Class`` for a system defined outside the harness."""
    if ":" not in kind:
        return SYSTEM_KINDS.get(kind)
    module_name, _, attribute = kind.partition(":")
    cls = getattr(importlib.import_module(module_name), attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise SystemConfigError(f"kind {kind!r} does not name a subclass of harness.systems.System")
    return cls
