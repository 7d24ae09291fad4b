"""``key=value`` settings from the command line, shared by every command that takes them.

Values are read as YAML scalars (``0.2`` a float, ``null`` None, ``[1, 2]`` a
list), except that exponent numbers such as ``1e-6``, which YAML 1.1 leaves as
strings, are floats. Dotted keys (``detector.checkpoint``) reach nested settings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class OverrideError(ValueError):
    """A ``key=value`` setting that cannot be read; the message names it."""


def floats(value: Any) -> Any:
    """Exponent floats left as strings by the YAML loader, turned into floats (recursively)."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [floats(v) for v in value]
    return value


def read_scalar(text: str) -> Any:
    return floats(yaml.safe_load(text))


def parse_key_values(items: str | list[str] | None) -> dict[str, Any]:
    """``"a=1,b=x"`` or ``["a=1", "b=x"]`` -> {"a": 1, "b": "x"} (keys kept dotted)."""
    if items is None:
        return {}
    pieces = items.split(",") if isinstance(items, str) else items
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in pieces)):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OverrideError(f"expected key=value, got {item!r}")
        out[key.strip()] = read_scalar(value)
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for key ``a.b``, creating the mappings on the way."""
    *parents, leaf = key.split(".")
    target = data
    for part in parents:
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        elif not isinstance(child, dict):
            raise OverrideError(f"setting {key}: {part!r} holds {child!r}, not a mapping")
        target = child
    target[leaf] = value


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"detector.checkpoint": x} -> {"detector": {"checkpoint": x}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(out, key, value)
    return out
