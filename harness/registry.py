"""Name -> object registries with lazy entries and "did you mean" errors."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, TypeVar

import yaml

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(known) if len(known) <= 30 else ", ".join(known[:30]) + ", ..."
    return f"unknown {kind} {name!r}.{hint} Known: {listing}"


class Registry(Generic[T]):
    """Maps names to objects, or to "module:attribute" strings imported on first use.

    Lazy entries keep heavy optional dependencies (torch, vllm) out of start-up.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | None:
        if target is not None:
            self._add(name, target)
            return None

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, target: T | str) -> None:
        if name in self._entries and self._entries[name] is not target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = target

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries))
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def read_yaml_files(folders: Iterable[Path], kind_key: str, error: type[Exception]) -> Iterable[tuple[Path, dict[str, Any]]]:
    """(path, mapping) of each YAML file in the folders that declares ``kind_key``.

    Task and system files may share an include folder: each registry takes the
    files whose top-level key names its kind ("task" or "system").
    """
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist")
        for path in sorted(folder.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                raise error(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
            except yaml.YAMLError as exc:
                raise error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
            if not isinstance(data, dict):
                raise error(f"{path}: expected a mapping at the top level")
            if kind_key not in data and ({"task", "system"} & set(data)):
                continue
            yield path, data
