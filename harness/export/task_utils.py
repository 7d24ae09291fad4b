"""The ``utils.py`` written beside exported task YAMLs (``harness export``).

lm-evaluation-harness and lmms-eval load this file through ``!function
utils.NAME`` in the exported YAMLs; the harness itself never imports it. It
therefore depends on nothing but the standard library (and on PIL images
handed in by ``datasets``), so the exported folder works in any environment
where those harnesses run.

Every exported row already holds the prompt exactly as this project asks it
(``prompt``), the gold answer as text (``answer``), its type and options, and
the image; the functions here only hand those over. ``answer_match`` is a plain
check (the final answer, normalised, equals the gold); the strict and
paper-compatible scores come from importing the samples file back
(``harness run --system predictions --predictions-format lm-eval|lmms-eval``).
"""

from __future__ import annotations

import re
import string

IMAGE_PLACEHOLDER = "<image>"  # where lm-eval's multimodal models put the image

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_LINE = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:：]\s*(.+?)\s*$", re.I | re.M)
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])[-+]?\d+(?:\.\d+)?")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_ARTICLES = {"a", "an", "the"}


# --------------------------------------------------------------------------- lm-evaluation-harness

def doc_to_text(doc: dict) -> str:
    """The image placeholder, then the prompt: with a chat template lm-eval turns this
    into one image entry followed by the prompt text, the order this project sends."""
    return IMAGE_PLACEHOLDER + doc["prompt"]


def doc_to_image(doc: dict) -> list:
    return [doc["image"]]


# --------------------------------------------------------------------------- lmms-eval

def lmms_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['prompt']}{kwargs.get('post_prompt', '')}"


def lmms_doc_to_visual(doc: dict) -> list:
    image = doc["image"]
    return [image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image]


# --------------------------------------------------------------------------- both

def final_text(reply: str) -> str:
    """The last ``<answer>`` block, else the last "Answer: ..." line, else the whole reply."""
    tagged = [t for t in _TAGGED.findall(reply) if t.strip()]
    if tagged:
        return tagged[-1].strip()
    lines = _ANSWER_LINE.findall(reply)
    return lines[-1].strip().strip("*").strip() if lines else reply.strip()


def normalise(text: str) -> str:
    words = str(text).lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def answer_match(reply: str, doc: dict) -> float:
    """1.0 when the reply's final answer is the gold answer, read by the answer's type."""
    text = final_text(reply or "")
    gold = doc["answer"]
    kind = doc["answer_type"]
    if kind in ("integer", "float"):
        found = _NUMBER.search(text.replace(",", ""))
        return float(found is not None and float(found.group()) == float(gold))
    if kind == "yesno":
        words = normalise(text).split()
        return float(bool(words) and words[0] == gold)
    if kind == "multiple_choice" and doc.get("choices"):
        choices = list(doc["choices"])
        letter = re.fullmatch(r"\(?([A-Za-z])\)?\.?", text.strip())
        if letter:
            index = ord(letter.group(1).upper()) - ord("A")
            return float(0 <= index < len(choices) and choices[index] == gold)
    return float(normalise(text) == normalise(gold))


def process_results(doc: dict, results: list) -> dict:
    reply = results[0] if results else ""
    if isinstance(reply, list):  # repeats: the first response
        reply = reply[0] if reply else ""
    return {"answer_match": answer_match(str(reply), doc)}
