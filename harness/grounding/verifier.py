"""The VLM verifier of detector over-predictions: three stages, each a chat request with images.

1. **coarse**: the clean photograph and the same photograph with every
   candidate box numbered and tagged with its phrase, plus the numbered list
   (phrase, pixel box, score); the VLM names the boxes to keep, favouring
   precision over recall;
2. **crop**: each surviving box, cropped with a margin (10% of the box on
   every side) and resized (bicubic) to a 640-pixel long side, is shown alone
   with its phrase; the VLM answers a strict yes or no: is the crop dominated by
   one instance of what the phrase describes. All boxes of a batch of images go
   out concurrently;
3. **dedup**: the photograph and the survivors drawn and listed again; the VLM
   removes duplicates (nested, overlapping or coincident boxes on one object)
   and wrong labels.

Replies are JSON, read leniently (:func:`harness.replies.extract_json`) but
checked strictly: a reply that names a box that does not exist, keeps and
removes the same box, or is not a yes or no is a :class:`ReplyError`, and a
failed request a :class:`BackendError`. Either fails that image at that stage
(:class:`StageOutcome` with ``error``); nothing is ever kept or dropped by
default. The prompts are our own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from harness.backends import BackendError, ChatBackend
from harness.grounding.drawing import numbered, padded_crop
from harness.replies import ReplyError, extract_json

STAGES = ("coarse", "crop", "dedup")
REPLY_START = 500  # characters of an unreadable reply kept in the record

COARSE_PROMPT = """You are checking the output of an open-vocabulary object detector. It was run with a very low confidence threshold, so many of its boxes are wrong.

The first picture is a photograph ({width} x {height} pixels). The second is the same photograph with every detected box drawn in its own colour, numbered, and tagged with the phrase it was detected for. The boxes (pixel coordinates x1, y1, x2, y2; x grows to the right, y downwards):

{boxes}

Keep a box only if it closely encloses one whole object that its phrase describes: the right kind of object, with every attribute the phrase states (colour, material, state, ...). Remove a box if its object is not what the phrase says, if it covers only a part of the object or several objects at once, if it is much larger than the object, or if you cannot tell. Wrong boxes do more harm than missed ones: when in doubt, remove.

Reply with one JSON object and nothing else:
{{"keep": [numbers of the boxes to keep], "removed": {{"<number>": "<short reason>", ...}}}}"""

CROP_PROMPT = """This picture was cut out of a larger photograph around a box that an object detector drew for the phrase "{label}", with a small margin around the box, and enlarged.

Answer "yes" only if the picture is dominated by exactly one object that the phrase describes: the right kind of object, with the attributes the phrase states, filling most of the picture and not mostly cut off, with other objects covering no more than about a fifth of it. Answer "no" if the main object is something else or lacks a stated attribute, if several such objects share the picture, if the object is mostly cut off or small in the picture, or if you cannot tell.

Reply with one JSON object and nothing else:
{{"answer": "yes" or "no", "reason": "<one sentence>"}}"""

DEDUP_PROMPT = """These boxes from an object detector have each been checked for what they contain. Now make sure that every object is boxed only once, under the right phrase.

The first picture is a photograph ({width} x {height} pixels). The second is the same photograph with the remaining boxes drawn, numbered and tagged with their phrase:

{boxes}

Remove:
- duplicates: two or more boxes on the same object, one inside the other, overlapping most of each other, or almost the same box. Keep the one box that fits the whole object best and remove the others;
- boxes whose object is not what their phrase says.
Keep every other box. Different objects that touch or overlap, or stand one in front of another, each keep their own box.

Reply with one JSON object and nothing else:
{{"keep": [numbers of the boxes to keep], "removed": {{"<number>": "<duplicate of N, or wrong label>", ...}}}}"""


@dataclass
class Candidate:
    """One detector box: its index among the image's candidates, phrase, pixel box and score."""

    index: int
    label: str
    box: list[float]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "box": self.box, "score": self.score}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        return cls(int(data["index"]), str(data["label"]), [float(v) for v in data["box"]], float(data["score"]))


@dataclass
class StageOutcome:
    """What one stage decided for one image, in candidate indices, or why it failed."""

    kept: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # candidate index -> the VLM's reason
    error: str | None = None
    reply: str | None = None  # the start of a reply that could not be read

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        if self.failed:
            data: dict[str, Any] = {"error": self.error}
            if self.reply is not None:
                data["reply"] = self.reply
            return data
        return {"kept": self.kept, "removed": self.removed,
                "reasons": {str(index): reason for index, reason in sorted(self.reasons.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageOutcome":
        return cls(list(data.get("kept", [])), list(data.get("removed", [])),
                   {int(k): v for k, v in (data.get("reasons") or {}).items()}, data.get("error"), data.get("reply"))


@dataclass
class StageJob:
    """One image's boxes for a stage: the picture, every candidate, and the indices still in play."""

    image: Image.Image
    candidates: list[Candidate]
    indices: list[int]

    def boxes(self) -> list[Candidate]:
        return [self.candidates[i] for i in self.indices]


# ----------------------------------------------------------------------------- requests


def box_list(boxes: Sequence[Candidate]) -> str:
    """The numbered list the VLM reads beside the drawing (numbers from 1)."""
    return "\n".join(f'{number}. "{c.label}" [{", ".join(f"{v:.0f}" for v in c.box)}] score {c.score:.2f}'
                     for number, c in enumerate(boxes, start=1))


def _two_pictures(image: Image.Image, boxes: Sequence[Candidate], prompt: str) -> list[dict[str, Any]]:
    drawn = numbered(image, [(c.box, c.label) for c in boxes])
    text = prompt.format(width=image.width, height=image.height, boxes=box_list(boxes))
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "image", "image": drawn},
                                         {"type": "text", "text": text}]}]


def coarse_request(image: Image.Image, boxes: Sequence[Candidate]) -> list[dict[str, Any]]:
    return _two_pictures(image, boxes, COARSE_PROMPT)


def dedup_request(image: Image.Image, boxes: Sequence[Candidate]) -> list[dict[str, Any]]:
    return _two_pictures(image, boxes, DEDUP_PROMPT)


def crop_request(image: Image.Image, box: Candidate, padding: float = 0.1, long_side: int = 640) -> list[dict[str, Any]]:
    crop = padded_crop(image, box.box, padding, long_side)
    return [{"role": "user", "content": [{"type": "image", "image": crop},
                                         {"type": "text", "text": CROP_PROMPT.format(label=box.label)}]}]


# ----------------------------------------------------------------------------- replies


def _box_number(value: Any, count: int) -> int:
    if isinstance(value, dict):
        value = next((value[k] for k in ("number", "box", "id", "index") if k in value), None)
    if isinstance(value, str) and value.strip().lstrip("#").isdigit():
        value = int(value.strip().lstrip("#"))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplyError(f"{value!r} is not a box number")
    if not 1 <= value <= count:
        raise ReplyError(f"box {value} does not exist (the boxes are numbered 1 to {count})")
    return value


def read_selection(reply: str, count: int) -> tuple[list[int], dict[int, str]]:
    """The box numbers a coarse or dedup reply keeps, and the reasons it gives for
    those it removes. Boxes it does not keep are removed."""
    value = extract_json(reply)
    removed_value: Any = None
    if isinstance(value, dict):
        keep_key = next((k for k in ("keep", "kept", "keep_boxes") if k in value), None)
        if keep_key is None:
            raise ReplyError(f"no 'keep' list in the reply: {reply[:200]!r}")
        removed_value = next((value[k] for k in ("removed", "remove", "reasons") if k in value), None)
        value = value[keep_key]
    if not isinstance(value, list):
        raise ReplyError(f"'keep' must be a list of box numbers, got {str(value)[:200]!r}")
    kept = sorted({_box_number(item, count) for item in value})
    reasons: dict[int, str] = {}
    if isinstance(removed_value, dict):
        entries = list(removed_value.items())
    elif isinstance(removed_value, list):
        entries = [(item, item.get("reason", "")) if isinstance(item, dict) else (item, "") for item in removed_value]
    elif removed_value is None:
        entries = []
    else:
        raise ReplyError(f"'removed' must be an object or a list, got {str(removed_value)[:200]!r}")
    for number, reason in entries:
        number = _box_number(number, count)
        if number in kept:
            raise ReplyError(f"box {number} is both kept and removed")
        reasons[number] = str(reason)
    return kept, reasons


_YES_NO = re.compile(r"^\W*(yes|no)\W*$", re.I)


def read_yes_no(reply: str) -> tuple[bool, str]:
    """A crop verdict: ``{"answer": "yes"|"no", "reason": ...}`` (a boolean also
    counts), or a reply that is only the word yes or no."""
    bare = _YES_NO.match(reply.strip())
    if bare:
        return bare.group(1).lower() == "yes", ""
    value = extract_json(reply)
    if not isinstance(value, dict):
        raise ReplyError(f"expected an object with 'answer', got {reply[:200]!r}")
    answer = next((value[k] for k in ("answer", "verdict", "keep") if k in value), None)
    if isinstance(answer, str) and answer.strip().lower() in ("yes", "no"):
        answer = answer.strip().lower() == "yes"
    if not isinstance(answer, bool):
        raise ReplyError(f"'answer' must be yes or no, got {answer!r}")
    return answer, str(value.get("reason") or "")


# ----------------------------------------------------------------------------- the stages


def _failure(reply: str | BackendError, exc: Exception | None = None) -> StageOutcome:
    if isinstance(reply, BackendError):
        return StageOutcome(error=f"request failed: {reply}")
    return StageOutcome(error=f"unreadable reply: {exc}", reply=reply[:REPLY_START])


class BoxVerifier:
    """Runs the three stages over a batch of images through one chat backend.

    ``sampling`` goes with every request (the backend's retries and cache apply
    as configured there).
    """

    def __init__(self, backend: ChatBackend, sampling: dict[str, Any] | None = None, crop_padding: float = 0.1,
                 crop_side: int = 640) -> None:
        self.backend = backend
        self.sampling = dict(sampling or {})
        self.crop_padding = crop_padding
        self.crop_side = crop_side

    def _select(self, jobs: Sequence[StageJob], build) -> list[StageOutcome]:
        requests = [build(job.image, job.boxes()) for job in jobs]
        replies = self.backend.complete_many(requests, **self.sampling) if requests else []
        outcomes = []
        for job, reply in zip(jobs, replies):
            if isinstance(reply, BackendError):
                outcomes.append(_failure(reply))
                continue
            try:
                kept_numbers, reasons = read_selection(reply, len(job.indices))
            except ReplyError as exc:
                outcomes.append(_failure(reply, exc))
                continue
            kept = [job.indices[n - 1] for n in kept_numbers]
            outcomes.append(StageOutcome(kept, [i for i in job.indices if i not in kept],
                                         {job.indices[n - 1]: r for n, r in reasons.items() if r}))
        return outcomes

    def coarse(self, jobs: Sequence[StageJob]) -> list[StageOutcome]:
        return self._select(jobs, coarse_request)

    def dedup(self, jobs: Sequence[StageJob]) -> list[StageOutcome]:
        return self._select(jobs, dedup_request)

    def crop(self, jobs: Sequence[StageJob]) -> list[StageOutcome]:
        """One yes/no request per box; every box of every job goes out in one concurrent call."""
        owners: list[tuple[int, int]] = []  # (job, candidate index) of each request
        requests = []
        for number, job in enumerate(jobs):
            for index in job.indices:
                owners.append((number, index))
                requests.append(crop_request(job.image, job.candidates[index], self.crop_padding, self.crop_side))
        replies = self.backend.complete_many(requests, **self.sampling) if requests else []
        outcomes = [StageOutcome() for _ in jobs]
        for (number, index), reply in zip(owners, replies):
            outcome = outcomes[number]
            if outcome.failed:
                continue  # one box's failure fails its image; the first error is the one recorded
            if isinstance(reply, BackendError):
                outcomes[number] = _failure(reply)
                continue
            try:
                keep, reason = read_yes_no(reply)
            except ReplyError as exc:
                outcomes[number] = _failure(reply, exc)
                continue
            (outcome.kept if keep else outcome.removed).append(index)
            if reason and not keep:
                outcome.reasons[index] = reason
        return outcomes
