"""Stand-ins for the original code's pinned files, in the exact formats the paper protocol reads.

The real files are fetched at run time and never stored here; these hold our own
text in the same shapes: a one-line prompt whose line breaks are the two
characters backslash and n; a Python file whose ``check_synonyms`` assigns a
prompt with three ``{}`` slots; a Python file whose ``vqa`` assigns
``base_prompt`` under ``if use_full_image:`` and ``else:``; verifier prompts with
three ``{}`` slots each; the tool API text; and a JSONL of training queries in
the original's schema. :func:`install` writes them as the offline copy every
store finds and pins their hashes; :func:`write_upstream` returns texts reading
them through a pin of their own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import upstream
from harness.upstream import AssetStore, PaperTexts, UpstreamAsset, UpstreamPin

SYSTEM_PROMPT = (
    r"FIXTURE SYSTEM PROMPT.\nWrite a <plan> and then a program in <answer> using gd_detect(img_pth, prompt), "
    r"depth(img_pth, bbox) and vqa(img_pth, bbox, prompt).\nSet final_answer.\n"
    r"Braces stay as they are: {not a slot} {}.\n"
)
assert "\n" not in SYSTEM_PROMPT  # one line, as the real file is

API_TEXT = ("FIXTURE API: gd_detect(img_pth, prompt) -> [{'bbox': [x1, y1, x2, y2], 'label': str}]; "
            "depth(img_pth, bbox); vqa(img_pth, bbox, prompt).")

METRICS = '''import re


def parse_answer(ans):
    return ans


def check_synonyms(question, model_pred, gt):
    prompt = """
Grade the answer. Reply <answer>1</answer> when they agree, else <answer>0</answer>.
Q: {}
Reference: {}
Candidate: {}
"""
    return prompt.format(question, gt, model_pred)
'''

SPECIALISTS_API = '''def vqa(img_pth, box=None, prompt="", fmt="xyxy", pad=0.25):
    use_full_image = box is None
    if use_full_image:
        base_prompt = (
            "Look at the whole picture. "
            "Reply with one word."
        )
    else:
        base_prompt = (
            "Look at the object in the middle of this crop. "
            "Reply with one word."
        )
    return base_prompt


def gd_detect(img_pth, prompt):
    return []
'''


def _template(name: str, first: str, second: str) -> str:
    return (f"FIXTURE {name} CHECK.\n{first}: {{}}\n{second}: {{}}\nTools: {{}}\n"
            "Reply with 1 or 0 inside <answer></answer>.")


VERIFIER = {
    upstream.LOGIC_REWARD: _template("LOGIC", "Question", "Plan"),
    upstream.ATTRIBUTE_REWARD: _template("ATTRIBUTE", "Question", "Plan"),
    upstream.SPATIAL_REWARD: _template("SPATIAL", "Question", "Plan"),
    upstream.CODE_REWARD: _template("ADHERENCE", "Plan", "Program"),
}
FILES = {upstream.SYSTEM_PROMPT: SYSTEM_PROMPT, upstream.API_PROMPT: API_TEXT, **VERIFIER}

QUERIES = ["How many red cubes are there?", "Is the mug left of the chair?",
           "If the table is 0.8 m tall, how tall is the chair?", "How many red cubes are there?"]


def training_rows() -> list[dict]:
    """Rows in the original training file's schema (the last one repeats the first, as the original has repeats)."""
    rows = []
    for index, question in enumerate(QUERIES):
        row = {"problem": question, "answer": "", "extra_info": {"problem": question, "idx": index},
               "ability": "math", "reward_model": {"style": "rule", "ground_truth": question}}
        if index < 2:
            row["data_source"] = "omni3d-bench"
        rows.append(row)
    return rows


TRAINING_ROWS = training_rows()


def files() -> dict[str, bytes]:
    texts = {**FILES, upstream.METRICS: METRICS, upstream.SPECIALISTS_API: SPECIALISTS_API,
             upstream.TRAINING_QUERIES: "".join(json.dumps(row) + "\n" for row in TRAINING_ROWS)}
    return {path: text.encode("utf-8") for path, text in texts.items()}


def fixture_pin() -> UpstreamPin:
    assets = tuple(UpstreamAsset(path, hashlib.sha256(data).hexdigest(), len(data), upstream.VALOR.asset(path).purpose)
                   for path, data in files().items())
    return UpstreamPin(upstream.VALOR.repo, upstream.VALOR.commit, assets)


def write_offline_copy(data_dir: Path) -> Path:
    """The fixture files as ``DATA_DIR/damianomarsili/VALOR/<path>``; returns DATA_DIR."""
    for path, data in files().items():
        target = data_dir / upstream.VALOR.repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return data_dir


def install(monkeypatch, data_dir: Path) -> Path:
    """Pin the fixture files and make them the offline copy every store finds."""
    monkeypatch.setattr(upstream, "VALOR", fixture_pin())
    monkeypatch.setenv("HARNESS_DATA_DIR", str(write_offline_copy(data_dir)))
    return data_dir


def write_upstream(data_dir: Path) -> PaperTexts:
    """The fixture files under ``data_dir`` (an offline copy) and texts reading them through a pin of their hashes."""
    write_offline_copy(data_dir)
    return PaperTexts(AssetStore(pin=fixture_pin(), data_dir=data_dir, cache_dir=data_dir / "cache"))
