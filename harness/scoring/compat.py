"""Paper-compatible scoring: the original VALOR evaluation's rules, leniencies included.

These rules exist so our numbers can stand beside the paper's. Each one is
written from the behaviour of the original evaluation script and keeps its
quirks on purpose; strict scoring (:mod:`harness.scoring.strict`) is the
default. The quirks, per benchmark:

- any exception while scoring counts 0;
- a failed program (crash, timeout, ...) is scored as the prediction ``None``;
- Omni3D-Bench: a bool becomes "yes"/"no"; ``int`` answers need ``int(pred)``
  to equal the gold (``int("3.0")`` fails, ``int(3.9)`` is 3); yes/no and word
  answers pass when either string contains the other, so an **empty prediction
  is correct**; N/S/E/W answers compare the first character; ``float`` answers
  use MRA with ``|gold - pred| / gold`` (no zero guard: gold 0 scores 0);
- TallyQA: ``int(pred or 0)``, so a **crash counts as the answer 0**;
- CountBenchQA: ``int(pred) == number``;
- VSR: a bool maps to 1/0, a string to 1 iff it contains "yes" or "true",
  anything else is compared to the 0/1 label as is;
- RoboSpatial: "yes" iff the prediction is a Python ``True`` or a string
  containing "yes"/"true"; anything else, numpy booleans included, is "no";
- BLINK: ``str(int(pred))`` when that works, else ``str(pred).lower()``, must
  equal the option text exactly (so a bool can match the option "1");
- RealWorldQA: after stripping trailing ".,", ``pred.lower()`` must be a
  substring of the gold, so an **empty prediction is correct**;
- GQA: the LLM judge's 0/1 verdict (exact match when no judge is configured).
"""

from __future__ import annotations

from typing import Any, Callable

from harness.registry import Registry

CompatRule = Callable[[Any, Any, dict], float]
COMPAT_RULES: Registry[CompatRule] = Registry("paper-compatible scoring rule")

_OMNI3D_THRESHOLDS = [0.5, 0.45, 0.40, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05]


def _is_numpy_bool(meta: dict) -> bool:
    return str(meta.get("answer_pytype") or "").startswith("numpy.bool")


def _is_bool(pred: Any, meta: dict) -> bool:
    return isinstance(pred, bool) or _is_numpy_bool(meta)


def compat_score(rule: str, prediction: Any, gold: Any, meta: dict) -> float:
    """Score with a named rule; any exception scores 0, as in the original.

    An unknown rule name is a configuration error and raises, never a silent 0.
    """
    scorer = COMPAT_RULES.get(rule)
    try:
        return float(scorer(prediction, gold, meta))
    except Exception:  # the original wrapped every rule in a catch-all
        return 0.0


@COMPAT_RULES.register("omni3d")
def omni3d(pred: Any, gold: Any, meta: dict) -> float:
    if _is_bool(pred, meta):
        pred = "yes" if pred else "no"
    kind = meta.get("raw_answer_type")
    if kind == "int":
        return float(int(pred) == int(gold))
    if kind == "str":
        if gold in ("S", "E", "N", "W"):
            return float(gold == pred[0])
        return float(gold in pred.lower() or pred.lower() in gold)
    if kind == "float":
        hits = 0
        for threshold in _OMNI3D_THRESHOLDS:
            try:
                p, g = float(pred), float(gold)
            except (TypeError, ValueError):
                continue
            if abs(g - p) / g < threshold:
                hits += 1
        return hits / len(_OMNI3D_THRESHOLDS)
    return 0.0


@COMPAT_RULES.register("tallyqa")
def tallyqa(pred: Any, gold: Any, meta: dict) -> float:
    return float(int(pred or 0) == int(gold))


@COMPAT_RULES.register("countbench")
def countbench(pred: Any, gold: Any, meta: dict) -> float:
    return float(int(pred) == gold)


@COMPAT_RULES.register("vsr")
def vsr(pred: Any, gold: Any, meta: dict) -> float:
    if _is_bool(pred, meta):
        value: Any = 1 if pred else 0
    elif isinstance(pred, str):
        value = 1 if ("yes" in pred.lower() or "true" in pred.lower()) else 0
    else:
        value = pred
    return float(value == gold)


@COMPAT_RULES.register("robospatial")
def robospatial(pred: Any, gold: Any, meta: dict) -> float:
    value = "yes" if (isinstance(pred, bool) and not _is_numpy_bool(meta) and pred) else "no"
    if isinstance(pred, str):
        value = "yes" if ("yes" in pred.lower() or "true" in pred.lower()) else "no"
    return float(value == gold)


@COMPAT_RULES.register("blink")
def blink(pred: Any, gold: Any, meta: dict) -> float:
    try:
        text = str(int(pred)).lower()
    except Exception:
        text = str(pred).lower()
    return float(text == gold)


@COMPAT_RULES.register("realworldqa")
def realworldqa(pred: Any, gold: Any, meta: dict) -> float:
    got = str(pred).rstrip(".,")
    want = str(gold).rstrip(".,")
    return float(got.lower() in want.lower())


@COMPAT_RULES.register("judge")
def judge(pred: Any, gold: Any, meta: dict) -> float:
    verdict = meta.get("judge_verdict")
    if verdict is None:
        raise ValueError("no judge verdict")
    return float(int(verdict) == 1)
