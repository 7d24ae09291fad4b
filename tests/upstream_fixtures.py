"""Stand-ins for the original code's files, in the exact formats the paper protocol reads.

The real files are fetched at run time and never stored here; these hold our
own text in the same shapes: a one-line prompt whose line breaks are the two
characters backslash and n, a Python file whose ``check_synonyms`` assigns a
prompt with three ``{}`` slots, a Python file whose ``vqa`` assigns
``base_prompt`` under ``if use_full_image:`` and ``else:``, plain-text verifier
prompts and a JSONL of training queries. :func:`install` writes them as an
offline copy and pins their hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import upstream
from harness.upstream import UpstreamAsset, UpstreamPin

SYSTEM_PROMPT = (
    "\\nYou write a plan and a program for a question about a picture. \\n\\n"
    "Put the plan in <plan></plan> and the program in <answer></answer>.\\n"
    "Tools: gd_detect(img_pth, prompt), depth(img_pth, bbox), vqa(img_pth, bbox, prompt).\\n"
    "Braces stay as they are: {not a slot} {}.\\n"
)
assert "\n" not in SYSTEM_PROMPT  # one line, as the real file is

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

VERIFIER = {
    upstream.LOGIC_REWARD: "Judge the plan's logic for: {query}\nPlan: {plan}\nAPI: {api}\nScore in <answer></answer>.\n",
    upstream.ATTRIBUTE_REWARD: "Are measurements from tools? {query} {plan} {api} <answer></answer>\n",
    upstream.SPATIAL_REWARD: "Are relations explicit? {query} {plan} {api} <answer></answer>\n",
    upstream.CODE_REWARD: "Does the code follow the plan? {plan} {code} {api} <answer></answer>\n",
    upstream.API_PROMPT: "def gd_detect(img_pth, prompt): ...\n",
}

TRAINING_ROWS = [
    {"problem": "How many chairs are there?", "answer": "", "data_source": "omni3d-bench",
     "extra_info": {"problem": "How many chairs are there?", "idx": 0}, "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "How many chairs are there?"}},
    {"problem": "Is the lamp taller than the table?", "answer": "",
     "extra_info": {"problem": "Is the lamp taller than the table?", "idx": 1}, "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "<image>\nIs the lamp taller than the table?"}},
]


def files() -> dict[str, bytes]:
    texts = {upstream.SYSTEM_PROMPT: SYSTEM_PROMPT, upstream.METRICS: METRICS,
             upstream.SPECIALISTS_API: SPECIALISTS_API, **VERIFIER,
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
