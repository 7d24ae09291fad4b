"""How often an LLM verifier agrees with human-labelled rewards.

The verifier provides the whole learning signal, so it has to be checked. The
paper labelled the rewards of 100 model outputs by hand and found that
Gemini-2.5-Flash agreed with them 87% of the time (mostly under-rewarding,
i.e. giving 0 where a person gave 1), and small open models far less.

Input: JSON lines ``{"query", "plan", "code", "labels": {"logic": 0|1,
"attribute": ..., "spatial": ..., "adherence": ...}}``; a part that is missing
(or null) was not labelled and is not asked. Each labelled part is judged by
exactly the request the reward sends and read by the same reader, those of the
reward's protocol (:mod:`harness.training.protocol`), with the reward's
sampling settings. A judgement that fails (an API error, or under the harness
protocol an unreadable reply) is a verifier failure: counted and reported,
never counted as agreement or disagreement.

Per part and pooled over the parts: labelled judgements, agreement among
those judged, Cohen's kappa (agreement beyond what the label and verdict
rates give by chance), failures, and the confusion counts (label/verdict).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tabulate import tabulate

from harness.backends import BackendError, ChatBackend
from harness.jsonl import json_objects
from harness.training.protocol import HarnessProtocol, RewardProtocol
from harness.training.verifier import VERIFIED_PARTS, Judgement

log = logging.getLogger(__name__)

# Parts a labeller may also have marked that no verifier judges: accepted and left out.
_UNJUDGED_PARTS = ("format", "syntax")


class LabelsError(ValueError):
    """A malformed labels file; the message names the line."""


@dataclass
class LabelledOutput:
    line: int
    query: str
    plan: str
    code: str
    labels: dict[str, int]  # part -> 0 or 1, labelled parts only


def read_labels(path: str | Path) -> list[LabelledOutput]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    outputs: list[LabelledOutput] = []
    for number, entry in json_objects(path, LabelsError):
        where = f"{path}:{number}"
        for key in ("query", "plan", "code"):
            if not isinstance(entry.get(key), str):
                raise LabelsError(f"{where}: needs a string {key!r}")
        labels = entry.get("labels")
        if not isinstance(labels, dict):
            raise LabelsError(f"{where}: needs 'labels', an object of parts ({', '.join(VERIFIED_PARTS)}) to 0 or 1")
        kept: dict[str, int] = {}
        for part, value in labels.items():
            if part in _UNJUDGED_PARTS or value is None:
                continue
            if part not in VERIFIED_PARTS:
                raise LabelsError(f"{where}: unknown part {part!r}; parts: {', '.join(VERIFIED_PARTS)}")
            if value not in (0, 1) or isinstance(value, float):  # True and False are 1 and 0
                raise LabelsError(f"{where}: label {part!r} must be 0 or 1, got {value!r}")
            kept[part] = int(value)
        if not kept:
            log.warning("%s: no verifier part is labelled; the line is left out", where)
            continue
        outputs.append(LabelledOutput(number, entry["query"], entry["plan"], entry["code"], kept))
    if not outputs:
        raise LabelsError(f"{path}: no labelled outputs")
    return outputs


@dataclass
class Tally:
    """Labels against verdicts for one part (or pooled)."""

    n: int = 0  # labelled judgements
    failures: int = 0  # the verifier gave no verdict
    both_1: int = 0
    both_0: int = 0
    label_0_verdict_1: int = 0  # the verifier over-rewards
    label_1_verdict_0: int = 0  # the verifier under-rewards

    def add(self, label: int, verdict: float | None) -> None:
        self.n += 1
        if verdict is None:
            self.failures += 1
        elif label == 1:
            if verdict >= 0.5:
                self.both_1 += 1
            else:
                self.label_1_verdict_0 += 1
        elif verdict >= 0.5:
            self.label_0_verdict_1 += 1
        else:
            self.both_0 += 1

    @property
    def judged(self) -> int:
        return self.n - self.failures

    @property
    def agree(self) -> int:
        return self.both_1 + self.both_0

    @property
    def agreement(self) -> float | None:
        return self.agree / self.judged if self.judged else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa; None when chance agreement is already total (one class only)."""
        total = self.judged
        if not total:
            return None
        label_1 = self.both_1 + self.label_1_verdict_0
        verdict_1 = self.both_1 + self.label_0_verdict_1
        chance = (label_1 * verdict_1 + (total - label_1) * (total - verdict_1)) / total ** 2
        if chance >= 1.0:
            return None
        return (self.agree / total - chance) / (1.0 - chance)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "judged": self.judged, "agreement": self.agreement, "kappa": self.kappa,
                "failures": self.failures, "confusion": {
                    "label_1_verdict_1": self.both_1, "label_1_verdict_0": self.label_1_verdict_0,
                    "label_0_verdict_1": self.label_0_verdict_1, "label_0_verdict_0": self.both_0}}


@dataclass
class AgreementReport:
    verifier: str  # the backend's fingerprint
    parts: dict[str, Tally]
    overall: Tally  # every labelled judgement, pooled
    fully_agreeing: int = 0  # outputs whose every labelled part was judged as labelled
    items: list[dict[str, Any]] = field(default_factory=list)  # per output: labels, verdicts, reasons, errors

    def to_dict(self) -> dict[str, Any]:
        return {"verifier": self.verifier, "outputs": len(self.items), "fully_agreeing": self.fully_agreeing,
                "overall": self.overall.to_dict(), "parts": {p: t.to_dict() for p, t in self.parts.items()},
                "items": self.items}


def measure_agreement(outputs: Sequence[LabelledOutput], verifier: ChatBackend,
                      sampling: Mapping[str, Any] | None = None,
                      protocol: RewardProtocol | None = None) -> AgreementReport:
    """Ask the verifier every labelled part (all requests at once, as ``protocol`` asks them:
    default the harness protocol's) and compare."""
    protocol = protocol or HarnessProtocol()
    asked = [(index, part) for index, output in enumerate(outputs) for part in VERIFIED_PARTS
             if part in output.labels]
    requests = [protocol.request(part, outputs[i].query, outputs[i].plan, outputs[i].code) for i, part in asked]
    replies = verifier.complete_many(requests, **dict(sampling or {})) if requests else []
    judgements: dict[tuple[int, str], Judgement] = {}
    for key, reply in zip(asked, replies):
        judgements[key] = (Judgement(None, error=str(reply)) if isinstance(reply, BackendError)
                           else protocol.read(reply))

    parts = {part: Tally() for part in VERIFIED_PARTS}
    overall = Tally()
    report = AgreementReport(verifier.fingerprint, parts, overall)
    for index, output in enumerate(outputs):
        item: dict[str, Any] = {"line": output.line, "labels": output.labels, "verdicts": {}, "reasons": {},
                                "errors": {}}
        agreed_all = True
        for part, label in output.labels.items():
            judgement = judgements[(index, part)]
            parts[part].add(label, judgement.score)
            overall.add(label, judgement.score)
            item["verdicts"][part] = judgement.score
            if judgement.reason:
                item["reasons"][part] = judgement.reason
            if judgement.error:
                item["errors"][part] = judgement.error
            agreed_all &= judgement.score is not None and int(judgement.score >= 0.5) == label
        report.fully_agreeing += agreed_all
        report.items.append(item)
    if overall.failures:
        log.warning("verifier agreement: %d of %d judgements failed; they are left out of the agreement",
                    overall.failures, overall.n)
    return report


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_report(report: AgreementReport) -> str:
    rows = []
    for name, tally in [*report.parts.items(), ("overall", report.overall)]:
        if not tally.n and name != "overall":
            continue
        rows.append([name, tally.n, tally.judged, _percent(tally.agreement),
                     "-" if tally.kappa is None else f"{tally.kappa:.2f}", tally.failures,
                     tally.both_1, tally.label_1_verdict_0, tally.label_0_verdict_1, tally.both_0])
    headers = ["part", "n", "judged", "agreement %", "kappa", "verifier failures",
               "1/1", "1/0 (under)", "0/1 (over)", "0/0"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    outputs = len(report.items)
    return "\n".join([
        f"verifier: {report.verifier}",
        table,
        "confusion columns: human label / verifier verdict",
        f"outputs with every labelled part agreeing: {report.fully_agreeing} of {outputs}",
    ])
