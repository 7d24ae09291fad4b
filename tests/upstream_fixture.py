"""Stand-ins for the original project's pinned files, written here with our own text.

The paper protocol reads the original prompts and training queries through
:mod:`harness.upstream`; tests must never hold that text, so they pin these
fixtures instead (same paths and layout, our words, their own hashes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import upstream
from harness.upstream import AssetStore, PaperTexts, UpstreamAsset, UpstreamPin

# One line whose line breaks are backslash-n, as the original file is.
SYSTEM_PROMPT = r"FIXTURE SYSTEM PROMPT.\nWrite a <plan> and then a program in <answer> using gd_detect(img_pth, prompt).\nSet final_answer."
API_TEXT = "FIXTURE API: gd_detect(img_pth, prompt) -> [{'bbox': [x1, y1, x2, y2], 'label': str}]; depth(img_pth, bbox); vqa(img_pth, bbox, prompt)."


def _template(name: str, first: str, second: str) -> str:
    return (f"FIXTURE {name} CHECK.\n{first}: {{}}\n{second}: {{}}\nTools: {{}}\n"
            "Reply with 1 or 0 inside <answer></answer>.")


FILES = {
    upstream.SYSTEM_PROMPT: SYSTEM_PROMPT,
    upstream.API_PROMPT: API_TEXT,
    upstream.LOGIC_REWARD: _template("LOGIC", "Question", "Plan"),
    upstream.ATTRIBUTE_REWARD: _template("ATTRIBUTE", "Question", "Plan"),
    upstream.SPATIAL_REWARD: _template("SPATIAL", "Question", "Plan"),
    upstream.CODE_REWARD: _template("ADHERENCE", "Plan", "Program"),
}

QUERIES = ["How many red cubes are there?", "Is the mug left of the chair?",
           "If the table is 0.8 m tall, how tall is the chair?", "How many red cubes are there?"]


def training_rows() -> str:
    """Rows in the original training file's schema (the last one repeats the first, as the original has repeats)."""
    rows = []
    for index, question in enumerate(QUERIES):
        row = {"problem": question, "answer": "", "extra_info": {"problem": question, "idx": index},
               "ability": "math", "reward_model": {"style": "rule", "ground_truth": question}}
        if index < 2:
            row["data_source"] = "omni3d-bench"
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def write_upstream(data_dir: Path) -> PaperTexts:
    """The fixture files under ``data_dir`` (as an offline copy) and texts reading them through a pin of their hashes."""
    files = {**FILES, upstream.TRAINING_QUERIES: training_rows()}
    assets = []
    for path, text in files.items():
        target = data_dir / upstream.VALOR.repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        data = text.encode("utf-8")
        assets.append(UpstreamAsset(path, hashlib.sha256(data).hexdigest(), len(data), "fixture"))
    pin = UpstreamPin(upstream.VALOR.repo, upstream.VALOR.commit, tuple(assets))
    return PaperTexts(AssetStore(pin=pin, data_dir=data_dir, cache_dir=data_dir / "cache"))
