"""Paper-compatible scoring: the original VALOR evaluation's rules, leniencies included.

These rules exist so our numbers can stand beside the paper's: each gives the
original's score for every answer a program can return, because it runs on the
answer rebuilt as the Python value it was (:mod:`harness.scoring.values`: a
numpy bool stays a numpy bool, a float32 a float32). The quirks, per benchmark:

- any exception while scoring counts 0;
- a failed program (crash, timeout, ...) is scored as the prediction ``None``;
- Omni3D-Bench: a bool (Python or numpy) becomes "yes"/"no"; ``int`` answers
  need ``int(pred) == int(gold)`` (``int("3.0")`` fails, ``int(3.9)`` is 3);
  yes/no and word answers pass when either string contains the other, so an
  **empty prediction is correct**; N/S/E/W answers compare the first
  character; ``float`` answers use MRA with ``|gold - pred| / gold`` (no zero
  guard: gold 0 scores 0, a negative gold scores 1);
- TallyQA: ``int(pred or 0)``, so a **crash counts as the answer 0**;
- CountBenchQA: ``int(pred) == number``;
- VSR: a Python bool maps to 1/0, a string to 1 iff it contains "yes" or
  "true", anything else (a numpy bool among them) is compared to the 0/1 label
  as is;
- RoboSpatial: "yes" iff the prediction is a Python ``True`` or a string
  containing "yes"/"true"; anything else, numpy booleans included, is "no";
- BLINK: ``str(int(pred))`` when that works, else ``str(pred)``, lowercased,
  must equal the option text exactly (so ``True`` matches the option "1" and
  ``2.0`` the option "2");
- RealWorldQA: after stripping trailing ".,", ``str(pred).lower()`` must be a
  substring of the gold, so an **empty prediction is correct**;
- GQA: the judge's 0/1 verdict; under the paper protocol every prediction,
  a failed program's ``None`` included, goes to the original's judge prompt.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from harness.registry import Registry

CompatRule = Callable[[Any, Any, dict], float]
COMPAT_RULES: Registry[CompatRule] = Registry("paper-compatible scoring rule")

_OMNI3D_THRESHOLDS = [0.5, 0.45, 0.40, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05]


def compat_score(rule: str, prediction: Any, gold: Any, meta: dict) -> float:
    """Score with a named rule; any exception scores 0, as in the original.

    An unknown rule name is a configuration error and raises, never a silent 0.
    """
    scorer = COMPAT_RULES.get(rule)
    try:
        return float(scorer(prediction, gold, meta))
    except Exception:  # the original wrapped every rule in a catch-all
        return 0.0


def _hit(condition: Any) -> float:
    """The original's ``if condition:`` (truthiness, so an array of two raises)."""
    return 1.0 if condition else 0.0


def _contains_either(gold: Any, pred: Any) -> float:
    return _hit(gold in pred.lower() or pred.lower() in gold)


@COMPAT_RULES.register("omni3d")
def omni3d(pred: Any, gold: Any, meta: dict) -> float:
    if isinstance(pred, (bool, np.bool_)):
        pred = "yes" if pred else "no"
    kind = meta.get("raw_answer_type")
    if kind == "int":
        return _hit(int(pred) == int(gold))
    if kind == "str":
        if gold in ("yes", "no"):
            return _contains_either(gold, pred)
        if gold in ("S", "E", "N", "W"):
            return _hit(gold == pred[0])
        return _contains_either(gold, pred)
    if kind == "float":
        hits = 0
        for threshold in _OMNI3D_THRESHOLDS:
            try:
                p, g = float(pred), float(gold)
            except Exception:
                continue
            if abs(g - p) / g < threshold:
                hits += 1
        return hits / len(_OMNI3D_THRESHOLDS)
    return 0.0


@COMPAT_RULES.register("tallyqa")
def tallyqa(pred: Any, gold: Any, meta: dict) -> float:
    return _hit(int(pred or 0) == int(gold))


@COMPAT_RULES.register("countbench")
def countbench(pred: Any, gold: Any, meta: dict) -> float:
    return _hit(int(pred) == gold)


def _says_yes(text: str) -> bool:
    return "yes" in text.lower() or "true" in text.lower()


@COMPAT_RULES.register("vsr")
def vsr(pred: Any, gold: Any, meta: dict) -> float:
    if isinstance(pred, bool):
        value: Any = 1 if pred else 0
    elif isinstance(pred, str):
        value = 1 if _says_yes(pred) else 0
    else:
        value = pred
    return _hit(value == gold)


@COMPAT_RULES.register("robospatial")
def robospatial(pred: Any, gold: Any, meta: dict) -> float:
    value = "yes" if (isinstance(pred, bool) and pred) else "no"
    if isinstance(pred, str):
        value = "yes" if _says_yes(pred) else "no"
    return _hit(value == gold)


@COMPAT_RULES.register("blink")
def blink(pred: Any, gold: Any, meta: dict) -> float:
    try:
        text = str(int(pred)).lower()
    except Exception:
        text = str(pred).lower()
    return _hit(text == gold)


@COMPAT_RULES.register("realworldqa")
def realworldqa(pred: Any, gold: Any, meta: dict) -> float:
    return _hit(str(pred).rstrip(".,").lower() in str(gold).rstrip(".,").lower())


@COMPAT_RULES.register("judge")
def judge(pred: Any, gold: Any, meta: dict) -> float:
    verdict = meta.get("judge_verdict")
    if verdict is None:
        raise ValueError("no judge verdict")
    return _hit(int(verdict) == 1)
