"""The ``vqa`` tool: a chat model answers a short question about a crop or the whole image.

Every backend gets the same crop, the same prompt and the same normalisation of
its reply, so swapping GPT-5-mini for a local Qwen2.5-VL changes the model and
nothing else.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

from PIL import Image

from harness.backends import BackendError, ChatBackend, make_chat_backend

log = logging.getLogger(__name__)

# Bump when the prompt, crop or normalisation changes: it is part of the
# fingerprint, so cached answers from an older version are not reused.
VQA_VERSION = 1
DEFAULT_PAD = 0.25

# The paper's evaluation asks GPT-5-mini through the Responses API with medium
# reasoning effort. It is a reasoning model, which rejects any temperature but
# its default, so none is sent.
DEFAULT_BACKEND_OPTIONS: dict[str, dict[str, Any]] = {
    "openai": {"model": "gpt-5-mini", "temperature": None, "api": "responses",
               "extra": {"reasoning": {"effort": "medium"}}},
    "transformers": {"max_new_tokens": 32},
}


class ToolFailure(RuntimeError):
    """A tool could not produce an answer (the model endpoint failed); the tool
    server turns it into a ToolError inside the program."""


def crop_for_vqa(image: Image.Image, box: Sequence[float] | None, pad: float = DEFAULT_PAD) -> Image.Image:
    """The region the model sees: the box grown by ``pad`` times its width (left
    and right) and height (top and bottom), clamped to the image. No box, or a
    box with no area left after clamping (outside the image, or a point), gives
    the whole image."""
    if box is None:
        return image
    x1, x2 = sorted((float(box[0]), float(box[2])))
    y1, y2 = sorted((float(box[1]), float(box[3])))
    dx, dy = pad * (x2 - x1), pad * (y2 - y1)
    # Outward rounding keeps every pixel the box touches.
    left = max(0, math.floor(x1 - dx))
    top = max(0, math.floor(y1 - dy))
    right = min(image.width, math.ceil(x2 + dx))
    bottom = min(image.height, math.ceil(y2 + dy))
    if right - left < 1 or bottom - top < 1:
        return image
    return image.crop((left, top, right, bottom))


_RULES = (
    "Answer the question below about this image.\n"
    "{focus}\n"
    "How to answer:\n"
    "- Give only the answer: one word or a short phrase, never a sentence, an explanation or units.\n"
    "- Write numbers with digits (4, not four). Give a decimal number exactly as you estimate it; do not round it.\n"
    "- If the question lists options to choose from, reply with one of those options, written exactly as given.\n"
    "\n"
    "Question: {question}"
)
_FOCUS_BOX = ("The image was cut out around one object, which sits in its middle; the question is about that "
              "object. The surroundings are included only to help you recognise it.")
_FOCUS_WHOLE = "The question is about the whole image."


def vqa_prompt(question: str, boxed: bool) -> str:
    """The instruction every backend receives with the image."""
    return _RULES.format(focus=_FOCUS_BOX if boxed else _FOCUS_WHOLE, question=question.strip())


def vqa_messages(image: Image.Image, question: str, boxed: bool) -> list[dict[str, Any]]:
    # One user turn, image first: some chat templates (LLaVA's among them) have
    # no system role, and the rules must read the same for every model.
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": vqa_prompt(question, boxed)}]}]


_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "*": "*", "_": "_"}
_TRAILING = ".,;:!?\u3002"


def normalize_answer(text: str) -> str:
    """Lowercase, one line of single spaces, without wrapping quotes (or markdown
    emphasis) and trailing punctuation: '"Red."' -> 'red', '**3.5**' -> '3.5'."""
    answer = " ".join(str(text).split()).lower()
    while True:
        before = answer
        answer = answer.rstrip(_TRAILING).strip()
        if len(answer) >= 2 and _QUOTE_PAIRS.get(answer[0]) == answer[-1]:
            answer = answer[1:-1].strip()
        if answer == before:
            return answer


_SPACE = re.compile(r"\s+")


class VqaTool:
    """``vqa(image, box, question)`` answered by a chat backend.

    ``backend`` is a kind for :func:`make_chat_backend` ("openai" by default:
    GPT-5-mini, as in the paper's evaluation; "transformers" with
    ``checkpoint=...``), or a ready :class:`ChatBackend`. ``backend_options``
    go to the backend over the defaults above, e.g. ``model``, ``base_url``,
    ``max_concurrency``.
    """

    def __init__(self, backend: str | ChatBackend = "openai", pad: float = DEFAULT_PAD, **backend_options: Any) -> None:
        if isinstance(backend, ChatBackend):
            if backend_options:
                raise TypeError("options are for a backend built here, not for a ready ChatBackend")
            self.backend = backend
        else:
            options = {**DEFAULT_BACKEND_OPTIONS.get(backend, {}), **backend_options}
            self.backend = make_chat_backend(backend, **options)
        if not 0 <= pad <= 4:
            raise ValueError(f"pad must be in [0, 4], got {pad}")
        self.pad = float(pad)

    @property
    def fingerprint(self) -> str:
        return f"vqa-v{VQA_VERSION}|pad={self.pad:g}|{self.backend.fingerprint}"

    def ask(self, image: Image.Image, text: str) -> str:
        """The model's raw reply to ``text`` about ``image``, sent as they are (text first,
        as the paper protocol's VQA did): no crop, instruction or normalisation of ours."""
        messages = [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image", "image": image}]}]
        try:
            return self.backend.complete(messages)
        except BackendError as exc:
            raise ToolFailure(f"vqa: the model failed: {exc}") from exc
        except Exception as exc:
            log.exception("vqa backend %s raised", self.backend.fingerprint)
            raise ToolFailure(f"vqa: the model failed: {type(exc).__name__}: {exc}") from exc

    def answer(self, image: Image.Image, box: list[float] | None, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("vqa(): question must be a non-empty string")
        question = _SPACE.sub(" ", question).strip()
        crop = crop_for_vqa(image, box, self.pad)
        try:
            reply = self.backend.complete(vqa_messages(crop, question, boxed=box is not None))
        except BackendError as exc:
            raise ToolFailure(f"vqa: the model failed: {exc}") from exc
        except Exception as exc:
            # A backend bug must not take the tool server down; the program sees
            # a ToolError and the traceback goes to the log.
            log.exception("vqa backend %s raised", self.backend.fingerprint)
            raise ToolFailure(f"vqa: the model failed: {type(exc).__name__}: {exc}") from exc
        answer = normalize_answer(reply)
        if not answer:
            raise ToolFailure(f"vqa: the model's reply holds no answer: {reply[:100]!r}")
        return answer

    def close(self) -> None:
        self.backend.close()
