"""Reading the reward's parts over GRPO steps from a training log.

Accepted logs:

- TRL: ``trainer_state.json`` (its ``log_history``) or the recipe's ``training_log.json``
  (the list itself). TRL logs each reward function (one per part, named after it by
  ``harness.training.trl_rewards``) as ``rewards/<part>/mean`` and the weighted total
  as ``reward``.
- verl, or anything else: a JSONL file of logged dicts, one per line, either flat or
  ``{"step": N, "data": {...}}``. verl logs the keys ``compute_score`` returns
  (``harness.training.verl_reward``: ``score``, each part, ``verifier_failures``) as
  ``reward_extra_info/<key>`` (some versions add ``/mean``), its total as
  ``critic/score/mean``; plain ``RewardResult.log_fields()`` dicts (``score``, the parts)
  are read too. A ``train/`` prefix (as exported from trackers) is ignored.

Lines without a step are numbered in order; several entries of one step are averaged.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.jsonl import json_objects
from harness.leaderboard.model import LeaderboardError

TOTAL = "reward"
_STEP_KEYS = ("step", "global_step", "training/global_step")
_TOTAL_KEYS = {"reward", "score", "critic/score/mean", "reward_extra_info/score", "reward_extra_info/score/mean"}
_PART_KEY = re.compile(r"(?:rewards/(?P<trl>\w+)/mean|reward_extra_info/(?P<verl>\w+)(?:/mean)?|(?P<flat>\w+))")


def reward_parts() -> tuple[str, ...]:
    from harness.training.reward import PARTS  # imported late: the reward pulls in the sandbox and backends

    return PARTS


@dataclass
class RewardCurve:
    source: Path
    steps: list[float]
    series: dict[str, list[float]]  # part (and "reward", the total) -> mean per step; NaN where not logged


def _entries(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, logged dict) for every entry of the file."""
    if not path.is_file():
        raise LeaderboardError(f"{path}: no such training log")
    if path.suffix != ".json":
        yield from ((f"{path}:{number}", entry) for number, entry in json_objects(path, LeaderboardError))
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaderboardError(f"{path}: not JSON ({exc})") from None
    history = data.get("log_history") if isinstance(data, dict) else data
    if not isinstance(history, list):
        raise LeaderboardError(f"{path}: expected TRL's trainer state (log_history) or a list of logged dicts")
    yield from ((f"{path}: log_history[{i}]", entry) for i, entry in enumerate(history))


def _part(key: str, parts: tuple[str, ...]) -> str | None:
    key = key.removeprefix("train/")
    if key in _TOTAL_KEYS:
        return TOTAL
    match = _PART_KEY.fullmatch(key)
    name = match and (match.group("trl") or match.group("verl") or match.group("flat"))
    return name if name in parts else None


def read_reward_log(path: str | Path) -> RewardCurve:
    path = Path(path)
    parts = reward_parts()
    sums: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for index, (where, entry) in enumerate(_entries(path), 1):
        if not isinstance(entry, dict):
            raise LeaderboardError(f"{where}: expected a JSON object")
        flat = {**entry, **entry["data"]} if isinstance(entry.get("data"), dict) else entry
        values = {}
        for key, value in flat.items():
            name = _part(key, parts)
            if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = float(value)
        if not values:  # e.g. TRL's closing summary, or evaluation lines
            continue
        step = next((flat[k] for k in _STEP_KEYS if isinstance(flat.get(k), (int, float))), index)
        for name, value in values.items():
            sums[float(step)][name].append(value)
    if not sums:
        raise LeaderboardError(f"{path}: no reward values found (looked for rewards/<part>/mean, "
                               f"reward_extra_info/<part>, or the parts {', '.join(parts)} as keys)")
    steps = sorted(sums)
    names = [name for name in (TOTAL, *parts) if any(name in sums[s] for s in steps)]
    series = {name: [sum(sums[s][name]) / len(sums[s][name]) if sums[s].get(name) else math.nan for s in steps]
              for name in names}
    return RewardCurve(path, steps, series)
