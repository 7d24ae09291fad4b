"""A program's answer rebuilt as the Python value it was, for rules that depend on its type.

The sandbox sends each answer twice: as plain JSON (shown, and read by strict
scoring) and typed (``harness.sandbox.runtime.encode_value``): a numpy bool
stays a numpy bool, a float32 a float32, a tuple a tuple, ``nan`` a float, a
dict keeps its int keys. The original evaluation's rules call ``int()``,
``str()`` and ``isinstance(x, bool)`` on the answer itself, so the paper
protocol scores the rebuilt value. Values the encoding could only describe (an
instance of a program's own class) come back as an object whose ``str()`` is
the original's text and which, like most objects, ``int()`` and ``float()``
refuse.
"""

from __future__ import annotations

import decimal
import fractions
from typing import Any

import numpy as np


class Described:
    """A value known only by its type name and text."""

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name, self.text = type_name, text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def _described_subclass(base: Any, type_name: str, text: str) -> Any:
    """A value of a subclass of a built-in type (a namedtuple, an int subclass): its base
    value, in a class of its own that prints as the original did."""
    if type(base) is bool:  # bool has no subclasses
        return base
    name = type_name.rsplit(".", 1)[-1] or "value"
    return type(name, (type(base),), {"__str__": lambda self: text, "__repr__": lambda self: text})(base)


def decode_value(encoded: Any) -> Any:
    """The Python value an encoding stands for (see ``encode_value``)."""
    if not isinstance(encoded, list):
        return encoded  # None, bool, int, float, str stand for themselves
    if not encoded or not isinstance(encoded[0], str):
        return Described("unknown", str(encoded))
    tag, rest = encoded[0], encoded[1:]
    try:
        if tag == "int":
            return int(rest[0], 16)
        if tag == "float":
            return float(rest[0])
        if tag in ("list", "tuple", "set", "frozenset"):
            items = [decode_value(item) for item in rest[0]]
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        if tag == "dict":
            return {decode_value(key): decode_value(value) for key, value in rest[0]}
        if tag == "np":
            return np.dtype(rest[0]).type(decode_value(rest[1]))
        if tag == "ndarray":
            dtype, shape, flat = rest
            return np.array([decode_value(item) for item in flat], dtype=dtype).reshape(shape)
        if tag == "complex":
            return complex(decode_value(rest[0]), decode_value(rest[1]))
        if tag == "fraction":
            return fractions.Fraction(decode_value(rest[0]), decode_value(rest[1]))
        if tag == "decimal":
            return decimal.Decimal(rest[0])
        if tag == "bytes":
            return rest[0].encode("latin-1")
        if tag == "sub":
            return _described_subclass(decode_value(rest[2]), rest[0], rest[1])
        if tag == "object":
            return Described(rest[0], rest[1])
        if tag == "cut":
            return Described("cut", f"<answer cut: {rest[0]}>")
    except (TypeError, ValueError, IndexError, KeyError, decimal.InvalidOperation, ZeroDivisionError):
        pass
    return Described(tag, str(rest))


# Plain JSON answers (runs without the typed form, e.g. a predictions file) with the Python
# type the run recorded: the scalar types whose behaviour the rules tell apart.
_NUMPY_SCALARS = {"numpy.bool_": np.bool_, "numpy.bool": np.bool_, "numpy.float32": np.float32,
                  "numpy.float64": np.float64, "numpy.int64": np.int64, "numpy.int32": np.int32}


def answer_value(record: dict[str, Any]) -> Any:
    """A record's answer as the original's rules should see it."""
    if record.get("prediction_typed") is not None:
        return decode_value(record["prediction_typed"])
    value = record.get("prediction")
    scalar = _NUMPY_SCALARS.get(str(record.get("answer_pytype") or ""))
    if scalar is not None and isinstance(value, (bool, int, float)):
        return scalar(value)
    if record.get("answer_pytype") == "builtins.tuple" and isinstance(value, list):
        return tuple(value)
    return value
