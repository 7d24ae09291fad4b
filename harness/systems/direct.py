"""Direct-answer systems: a VLM sees the image and the question and answers in text.

The answer is read from the reply with the same extraction the scorers use, so
a record holds both the reply (``raw``) and the answer it was read as.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Iterable, Iterator

from harness.backends import BackendError
from harness.requirements import Requirement
from harness.scoring.extract import parse_choice, parse_number, parse_yes_no
from harness.systems.base import System
from harness.systems.chat import ChatSystemMixin
from harness.systems.params import chat_options, sampling, typed
from harness.types import AnswerType, Prediction, Sample, Status

FORMAT_RULES = {
    AnswerType.YESNO: "Answer with yes or no.",
    AnswerType.INTEGER: "Answer with a single whole number.",
    AnswerType.FLOAT: "Answer with a single number in the unit the question asks for, without rounding.",
    AnswerType.MULTIPLE_CHOICE: "Answer with one of the options, written exactly as it appears.",
    AnswerType.WORD: "Answer with a single word or a short phrase.",
    AnswerType.OPEN: "Answer with a single word or a short phrase.",
}
FINAL_LINE = "Put the final answer on the last line, after \"Answer:\"."
GROUNDING = ("Before answering, list every object the question refers to, one per line, each with its bounding "
             "box as [x1, y1, x2, y2] in pixel coordinates of this {width}x{height} image.")

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_LINE = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:：]\s*(.+?)\s*$", re.I | re.M)


def final_text(reply: str) -> str:
    """The part of a reply that holds the answer: the last ``<answer>`` block, else
    the last "Answer: ..." line, else the whole reply."""
    tagged = _TAGGED.findall(reply)
    if tagged and tagged[-1].strip():
        return tagged[-1].strip()
    lines = _ANSWER_LINE.findall(reply)
    if lines:
        return lines[-1].strip().strip("*").strip()
    return reply.strip()


def extract_answer(reply: str, answer_type: str, choices: list[str] | None) -> str | int | float:
    """The answer a reply gives, in the form the scorers compare; the final text
    itself when nothing of the expected type can be read (scored as unparsable)."""
    text = final_text(reply)
    if answer_type == AnswerType.YESNO:
        value = parse_yes_no(text)
        return text if value is None else ("yes" if value else "no")
    if answer_type in (AnswerType.INTEGER, AnswerType.FLOAT):
        number = parse_number(text)
        if number is None:
            return text
        return int(number) if number.is_integer() else number
    if answer_type == AnswerType.MULTIPLE_CHOICE and choices:
        index = parse_choice(text, choices)
        return text if index is None else choices[index]
    return text


class DirectVLMSystem(ChatSystemMixin, System):
    """Parameters: ``vlm`` (``backend`` and its options), ``sampling``,
    ``grounded`` (ask for boxes of the relevant objects before the answer, as the
    paper's GPT-5-mini (grounded) variant), ``generation_batch``."""

    kind = "direct_vlm"
    backend_key = "vlm"
    parameters = {"vlm": chat_options(), "sampling": sampling(),
                  "cache": typed(bool | str), "grounded": typed(bool), "generation_batch": typed(int)}

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, params, seed)
        if "vlm" not in params or "backend" not in (params["vlm"] or {}):
            raise ValueError(f"system {name}: params.vlm.backend is required")
        self.grounded = bool(params.get("grounded", False))
        self.generation_batch = int(params.get("generation_batch", 32))

    def instructions(self, sample: Sample, size: tuple[int, int]) -> str:
        parts = [sample.question.strip()]
        if self.grounded:
            parts.append(GROUNDING.format(width=size[0], height=size[1]))
        parts += [FORMAT_RULES.get(sample.answer_type, FORMAT_RULES[AnswerType.WORD]), FINAL_LINE]
        return "\n".join(parts)

    def messages_for(self, sample: Sample) -> list[dict[str, Any]]:
        image = sample.image.load()
        return [{"role": "user", "content": [{"type": "image", "image": image},
                                              {"type": "text", "text": self.instructions(sample, image.size)}]}]

    def predict(self, samples: Iterable[Sample]) -> Iterator[Prediction]:
        source = iter(samples)
        while True:
            batch = list(itertools.islice(source, self.generation_batch))
            if not batch:
                return
            requests, asked = [], []
            for sample in batch:
                try:
                    requests.append(self.messages_for(sample))
                    asked.append(sample)
                except Exception as exc:
                    yield self.failure(sample, exc)
            replies = self.chat.complete_many(requests, **self.sampling) if requests else []
            for sample, reply in zip(asked, replies):
                if isinstance(reply, BackendError):
                    yield Prediction(sample.id, status=Status.API_ERROR, detail=str(reply))
                else:
                    yield Prediction(sample.id, answer=extract_answer(reply, sample.answer_type, sample.choices),
                                     raw=reply)

    def requirements(self) -> list[Requirement]:
        return self.chat_requirements()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["chat"] = self.chat.fingerprint
        return info

    def close(self) -> None:
        self.close_chat()
