"""Review pages: one self-contained HTML file per image, and an index.

A page shows the query, the program and the phrases read from it, then one
panel per step (the detector's candidates, then each verifier stage) with the
boxes the step kept in green and those it removed in red, numbered by their
candidate index (the numbers ``records.jsonl`` and a label-precision file use),
and the VLM's reasons. Pictures are embedded as base64 JPEG thumbnails, so the
folder can be moved or sent as it is. A page is rewritten only when its record
changed (the record's hash is kept in the page's first line).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from harness.grounding.drawing import KEPT_COLOUR, REMOVED_COLOUR, Mark, draw_marks, palette_colour
from harness.grounding.pipeline import FAILED, safe_name, short_hash
from harness.grounding.verifier import STAGES
from harness.report.images import make_thumbnail

PAGES_DIR = "pages"
THUMBNAIL_SIDE = 560
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
pre{background:#f4f4f4;padding:.8em;overflow-x:auto}
.panels{display:flex;flex-wrap:wrap;gap:1em}.panel{max-width:580px}
.panel img{max-width:100%;border:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
.kept{color:#1a8c2e}.removed{color:#c62020}.failed{color:#c62020;font-weight:bold}"""


def _page(title: str, body: str, signature: str = "") -> str:
    return (f"<!-- {signature} -->\n<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _signature(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def _panel(image: Image.Image, record: dict[str, Any], title: str, alive: list[int], removed: list[int],
           reasons: dict[str, str], note: str = "") -> str:
    candidates = record["candidates"]
    if title == "detector":
        marks = [Mark(candidates[i]["box"], f"{i} {candidates[i]['label']}", palette_colour(i)) for i in alive]
    else:
        marks = [Mark(candidates[i]["box"], f"{i} {candidates[i]['label']}", REMOVED_COLOUR) for i in removed]
        marks += [Mark(candidates[i]["box"], f"{i} {candidates[i]['label']}", KEPT_COLOUR) for i in alive]
    picture = make_thumbnail(draw_marks(image, marks), THUMBNAIL_SIDE, quality=85).data_uri
    lines = [f"<li class='removed'>{i} {html.escape(candidates[i]['label'])}"
             + (f": {html.escape(reasons[str(i)])}" if reasons.get(str(i)) else "") + "</li>" for i in removed]
    summary = (f"{len(alive)} candidates" if title == "detector"
               else f"<span class='kept'>{len(alive)} kept</span>, <span class='removed'>{len(removed)} removed</span>")
    return (f"<div class='panel'><h3>{html.escape(title)}</h3><p>{summary}{note}</p><img src='{picture}' alt=''>"
            f"<ul>{''.join(lines)}</ul></div>")


def record_page(out: Path, record: dict[str, Any]) -> str:
    """The HTML page of one record that has candidates."""
    parts = [f"<p><a href='index.html'>all images</a></p><h1>{html.escape(record['id'])}</h1>",
             f"<p>source <b>{html.escape(record['source'])}</b>, status <b>{html.escape(_status(record))}</b></p>"]
    if record.get("error"):
        parts.append(f"<p class='failed'>{html.escape(record['error'])}</p>")
    parts.append(f"<h2>Query</h2><p>{html.escape(record['query'])}</p>")
    if record.get("program"):
        parts.append(f"<h2>Program</h2><pre>{html.escape(record['program'])}</pre>")
    parts.append(f"<p>phrases: {html.escape(', '.join(record.get('phrases', [])))}</p>")
    if record.get("unresolved"):
        items = "".join(f"<li><code>{html.escape(u['expression'])}</code> (line {u['line']}): "
                        f"{html.escape(u['reason'])}</li>" for u in record["unresolved"])
        parts.append(f"<p>phrases that could not be read:</p><ul>{items}</ul>")
    path = out / record["image"]
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except OSError as exc:
        parts.append(f"<p class='failed'>cannot read {html.escape(str(path))}: {html.escape(str(exc))}</p>")
        return "\n".join(parts)
    indices = [c["index"] for c in record["candidates"]]
    panels = [_panel(image, record, "detector", indices, [], {})]
    stages = record.get("stages") or {}
    for stage in STAGES:
        if stage in stages:
            outcome = stages[stage]
            note = "" if outcome["kept"] or outcome["removed"] else " (no boxes left to check)"
            panels.append(_panel(image, record, stage, outcome["kept"], outcome["removed"],
                                 outcome.get("reasons") or {}, note))
        elif record.get("stage") == stage:
            panels.append(f"<div class='panel'><h3>{stage}</h3><p class='failed'>failed: "
                          f"{html.escape(record.get('error', ''))}</p>"
                          + (f"<pre>{html.escape(record['reply'])}</pre>" if record.get("reply") else "") + "</div>")
    parts.append(f"<h2>Boxes</h2><div class='panels'>{''.join(panels)}</div>")
    return "\n".join(parts)


def _status(record: dict[str, Any]) -> str:
    return f"{FAILED} at {record.get('stage')}" if record["status"] == FAILED else record["status"]


def page_names(records: list[dict[str, Any]]) -> dict[str, str]:
    """Record id -> its page's file name (``<id>.html``, made safe; a hash is added if two collide)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for record in records:
        if not record.get("candidates") or not record.get("image"):
            continue
        name = f"{safe_name(record['id'])}.html"
        if name in taken:
            name = f"{safe_name(record['id'])}-{short_hash(record['id'])}.html"
        taken.add(name)
        names[record["id"]] = name
    return names


def write_pages(out: Path, records: list[dict[str, Any]]) -> Path:
    """Write (or keep, when up to date) every record's page and the index; return the index."""
    folder = out / PAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = page_names(records)
    for record in records:
        name = names.get(record["id"])
        if name is None:
            continue
        path, signature = folder / name, _signature(record)
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                if handle.readline().strip() == f"<!-- {signature} -->":
                    continue
        path.write_text(_page(record["id"], record_page(out, record), signature), encoding="utf-8")
    index = folder / "index.html"
    index.write_text(_page("pseudo-labels", _index(records, names)), encoding="utf-8")
    return index


def _count(record: dict[str, Any], stage: str) -> str:
    outcome = (record.get("stages") or {}).get(stage)
    return str(len(outcome["kept"])) if outcome is not None else "-"


def _index(records: list[dict[str, Any]], names: dict[str, str]) -> str:
    statuses = Counter(_status(r) for r in records)
    labelled = [r for r in records if r["status"] == "ok" and r.get("kept")]
    head = (f"<h1>Pseudo-labels</h1><p>{len(records)} images; {len(labelled)} labelled with "
            f"{sum(len(r['kept']) for r in labelled)} boxes</p><p>"
            + ", ".join(f"{html.escape(s)}: {n}" for s, n in sorted(statuses.items())) + "</p>")
    rows = []
    for record in records:
        name = names.get(record["id"])
        label = html.escape(record["id"])
        link = f"<a href='{html.escape(name)}'>{label}</a>" if name else label
        rows.append(f"<tr><td>{link}</td><td>{html.escape(record['source'])}</td>"
                    f"<td>{html.escape(_status(record))}</td><td>{len(record.get('candidates') or [])}</td>"
                    + "".join(f"<td>{_count(record, stage)}</td>" for stage in STAGES) + "</tr>")
    header = "<tr><th>image</th><th>source</th><th>status</th><th>candidates</th>" + "".join(
        f"<th>{stage} kept</th>" for stage in STAGES) + "</tr>"
    return f"{head}<table>{header}{''.join(rows)}</table>"
