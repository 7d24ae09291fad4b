"""The parameters of system kinds, and the check of a system file's ``params`` against them.

Each kind declares its own parameters (``parameters`` on its class, merged along
the class hierarchy); nested settings are checked against what reads them: a
chat backend's options against its constructor's signature, the tool
backends' against theirs, the detector's and depth model's against their
settings dataclasses, the sandbox's limits against :class:`SandboxPolicy`. An
unknown key gets the nearest known one ("did you mean"), a value of the wrong
type names its key and the type wanted, before anything runs.

A kind defined outside the harness (``package.module:Class``) that declares no
parameters is not checked.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Callable, Iterable

from harness.protocol import PROTOCOLS
from harness.registry import Registry

# A check of one value at a dotted path: the problems found, in words (empty: fine).
Check = Callable[[Any, str], list[str]]

# Sampling settings some backend reads (unknown ones would travel to an API as extra fields and
# fail every request, or be ignored).
SAMPLING_KEYS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_new_tokens", "max_output_tokens", "seed",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "stop", "n", "thinking_budget",
    "response_mime_type", "reasoning_effort", "reasoning", "extra_body", "chat_template_kwargs",
    "max_completion_tokens", "logprobs",
})


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in typing.get_args(hint)))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(hint))
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if hint in names:
        return names[hint]
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return "a mapping"
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return "a list"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type annotation (a whole number fits a float; a bool fits no
    number; what cannot be checked, such as a forward reference, fits)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def typed(hint: Any, choices: Iterable[Any] | None = None) -> Check:
    """A value of type ``hint`` (and, with ``choices``, one of them)."""
    allowed = tuple(choices) if choices is not None else None

    def check(value: Any, where: str) -> list[str]:
        if not matches(value, hint):
            return [f"{where} must be {_describe(hint)}, got {type(value).__name__} {_shown(value)}"]
        if allowed is not None and value is not None and value not in allowed:
            return [f"{where} must be one of {', '.join(map(str, allowed))}, got {_shown(value)}"]
        return []

    return check


def unknown_key(key: Any, known: Iterable[str], where: str) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; known: {', '.join(known) or 'none'}"


def mapping(fields: dict[str, Check] | Callable[[], dict[str, Check]]) -> Check:
    """A mapping whose keys are ``fields`` (a dict, or a function giving one when first checked)."""

    def check(value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, dict):
            return [f"{where} must be a mapping, got {type(value).__name__} {_shown(value)}"]
        known = fields() if callable(fields) else fields
        problems = []
        for key, item in value.items():
            path = f"{where}.{key}"
            if key not in known:
                problems.append(unknown_key(key, known, where))
            else:
                problems += known[key](item, path)
        return problems

    return check


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that cannot be resolved here is not checked
        return {}


def signature_fields(function: Callable[..., Any], skip: Iterable[str] = (),
                     nested: dict[str, Check] | None = None) -> dict[str, Check]:
    """The keyword parameters of ``function`` (a constructor), each checked against its annotation
    unless ``nested`` gives a check of its own."""
    hints = _hints(function)
    fields: dict[str, Check] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in ("self", *skip) or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        fields[name] = (nested or {}).get(name) or typed(hints.get(name, Any))
    return fields


def dataclass_fields(cls: type, skip: Iterable[str] = ()) -> dict[str, Check]:
    hints = _hints(cls)
    return {f.name: typed(hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.name not in skip}


def sampling() -> Check:
    return mapping({key: typed(Any) for key in SAMPLING_KEYS})


def _named_kind(registry: Registry[Any], value: Any, where: str, what: str) -> tuple[type | None, list[str]]:
    if not isinstance(value, str):
        return None, [f"{where} must be text naming a {what}, got {_shown(value)}"]
    if value not in registry:
        return None, [unknown_key(value, registry.names(), where.rpartition(".")[0] or where)
                      .replace("unknown key", f"unknown {what}")]
    return registry.get(value), []


def chat_options(required: bool = True) -> Check:
    """A chat backend: ``backend`` (a registered kind) and that backend's constructor options."""
    from harness.backends import CHAT_BACKENDS
    from harness.tools.checkpoints import CheckpointError, backend_options

    def check(value: Any, where: str) -> list[str]:
        if value is None and not required:
            return []
        if not isinstance(value, dict):
            return [f"{where} must be a mapping with a 'backend' key, got {_shown(value)}"]
        if "backend" not in value:
            return [f"{where}.backend is required (one of {', '.join(CHAT_BACKENDS.names())})"]
        cls, problems = _named_kind(CHAT_BACKENDS, value["backend"], f"{where}.backend", "chat backend")
        if cls is None:
            return problems
        fields = signature_fields(cls.__init__, skip=("client",))
        try:  # what the backend will be given: e.g. `model` names a transformers checkpoint
            options = backend_options(value["backend"], {k: v for k, v in value.items() if k != "backend"}, quiet=True)
        except CheckpointError as exc:
            return [f"{where}: {exc}"]
        return mapping(fields)(options, where)

    return check


def vqa_options() -> Check:
    """The real tools' ``vqa``: a chat backend (``backend``, default openai) with its options, and ``pad``."""
    from harness.backends import CHAT_BACKENDS

    def check(value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, dict):
            return [f"{where} must be a mapping, got {_shown(value)}"]
        cls, problems = _named_kind(CHAT_BACKENDS, value.get("backend", "openai"), f"{where}.backend", "chat backend")
        if cls is None:
            return problems
        fields = {"pad": typed(float), **signature_fields(cls.__init__, skip=("client",))}
        return mapping(fields)({k: v for k, v in value.items() if k != "backend"}, where)

    return check


def _tool_backend_fields(cls: type) -> dict[str, Check]:
    nested: dict[str, Check] = {}
    if cls.__name__ == "ModelBackend":  # the real tools: each model's settings dataclass
        from harness.tools.depth import DepthSettings
        from harness.tools.detector import DetectorSettings

        nested = {"detector": mapping(dataclass_fields(DetectorSettings)),
                  "depth": mapping(dataclass_fields(DepthSettings)), "vqa": vqa_options()}
    return signature_fields(cls.__init__, nested=nested)


def tool_options() -> Check:
    """Settings per tool backend name (``real``, ``oracle``, ...), each against its constructor."""
    from harness.tools import TOOL_BACKENDS

    def check(value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, dict):
            return [f"{where} must be a mapping of tool backend names, got {_shown(value)}"]
        problems = []
        for name, options in value.items():
            cls, found = _named_kind(TOOL_BACKENDS, name, f"{where}.{name}", "tool backend")
            problems += found
            if cls is not None:
                problems += mapping(_tool_backend_fields(cls))(options, f"{where}.{name}")
        return problems

    return check


def tool_backend_name() -> Check:
    from harness.tools import TOOL_BACKENDS

    def check(value: Any, where: str) -> list[str]:
        return [] if value is None else _named_kind(TOOL_BACKENDS, value, where, "tool backend")[1]

    return check


def declared_parameters(cls: type) -> dict[str, Check] | None:
    """A kind's parameters: its own ``parameters`` and its bases', the subclass's winning; None
    when no class of the harness declares any (a kind defined elsewhere)."""
    merged: dict[str, Check] = {}
    declared = False
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("parameters")
        if own is not None:
            declared = True
            merged.update(own)
    return merged if declared else None


# Parameters every kind takes, whatever it declares: the run-level protocol and the resources a
# replica of the system asks of a Ray cluster (docs/scaling.md).
COMMON_PARAMETERS: dict[str, Check] = {"protocol": typed(str, PROTOCOLS), "resources": typed(dict | None)}


def check_params(cls: type, params: dict[str, Any]) -> list[str]:
    """Every problem of ``params`` for a kind, as ``params.a.b: ...`` lines (empty: fine)."""
    fields = declared_parameters(cls)
    if fields is None:
        return []
    fields = {**COMMON_PARAMETERS, **fields}
    if getattr(cls, "nullable_params", False):  # null means "as before" (a replay): nothing to check there
        params = _without_nulls(params)
    return mapping(fields)(params, "params")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    return value
