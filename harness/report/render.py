"""The report's pages: the summary and one card per record, filled into the packaged template,
a page of cards at a time (a run of 100,000 samples is many pages, never one huge one).

Every piece of run data passes through :func:`esc` on its way into the page;
nothing from a record reaches a script, so a hostile question or program can
only ever show up as text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from harness.report.boxes import detections, scale_box
from harness.report.images import TaskImages, Thumbnail
from harness.report.load import Entry, RunData

MALFORMED = "malformed"  # the status filter's value for lines that are not usable records
RESULTS = (("correct", "correct (strict score 1)"), ("incorrect", "incorrect (strict score below 1)"),
           ("unscored", "unscored"))
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")
_MARKER = re.compile(r"@@([A-Z_]+)@@")
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def esc(value: Any) -> str:
    """Text for the page: strings as they are, anything else as JSON; always HTML-escaped."""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return html.escape(value, quote=True)


@dataclass
class PageInput:
    data: RunData
    images: dict[str, TaskImages]  # per task
    max_samples: int
    notices: list[str] = field(default_factory=list)  # extra lines for the top of the page, plain text


@dataclass
class PageSpan:
    """One page of the gallery: its file's name (pages sit side by side) and its cards' positions."""

    file: str
    first: int  # 1-based, over every card of the report
    last: int


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _interval(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_percent(value[0])}, {_percent(value[1])}]"
    return "-"


def result_of(record: dict[str, Any] | None) -> str:
    scores = (record or {}).get("scores")
    strict = scores.get("strict") if isinstance(scores, dict) else None
    if not isinstance(strict, (int, float)) or isinstance(strict, bool):
        return "unscored"
    return "correct" if strict >= 1 else "incorrect"


def status_of(entry: Entry) -> str:
    if entry.record is None or not isinstance(entry.record.get("status"), str):
        return MALFORMED
    return entry.record["status"]


# --------------------------------------------------------------------------- summary

def _isolation(run: dict[str, Any]) -> str | None:
    """The sandbox layers the run's programs ran under, and those this machine did not give."""
    config = run.get("system_config") if isinstance(run.get("system_config"), dict) else {}
    layers, missing = config.get("isolation"), config.get("isolation_missing")
    if not isinstance(layers, list):
        return None
    text = ", ".join(map(str, layers))
    if isinstance(missing, dict) and missing:
        text += f" (missing: {', '.join(map(str, missing))})"
    return text


def _summary(data: RunData) -> str:
    run, results = data.run, data.results
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    limit = run.get("limit")
    protocol = run.get("protocol", "harness")
    headline = "paper-compatible" if protocol == "paper" else "strict"
    meta = [
        ("System", run.get("system")),
        ("Protocol", f"{protocol} (headline score: {headline})"),
        ("Tasks", ", ".join(run["tasks"])),
        ("Started", run.get("started")),
        ("Finished", run.get("finished") or "not finished"),
        ("Results written", results.get("date")),
        ("Git commit", run.get("git_hash") or results.get("git_hash") or "unknown"),
        ("Harness version", run.get("harness_version")),
        ("Seed", config.get("seed", run.get("seed"))),
        ("Limit", "none" if limit is None else f"{limit:g}" if isinstance(limit, (int, float)) else limit),
        ("Run directory", data.run_dir.name),
        ("Isolation", _isolation(run)),
    ]
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc('-' if v is None else v)}</dd>" for k, v in meta)
    higher = results.get("higher_is_better") if isinstance(results.get("higher_is_better"), dict) else {}
    table = []
    for task, r in (results.get("results") or {}).items():
        if not isinstance(r, dict):
            continue
        metric = next(iter(higher.get(task) or {"accuracy": True}))
        statuses = r.get("status_counts") if isinstance(r.get("status_counts"), dict) else {}
        counts = ", ".join(f"{s} {n}" for s, n in statuses.items())
        table.append(
            f"<tr><td>{esc(task)}</td><td>{esc(metric)}</td><td class=num>{esc(r.get('n', '-'))}</td>"
            f"<td class=num>{_percent(r.get(f'{metric},strict'))}</td>"
            f"<td class=num>{_interval(r.get(f'{metric}_ci95,strict'))}</td>"
            f"<td class=num>{_percent(r.get(f'{metric},compat'))}</td>"
            f"<td class=num>{_interval(r.get(f'{metric}_ci95,compat'))}</td><td>{esc(counts)}</td></tr>")
    head = ("<tr><th>task</th><th>metric</th><th>n</th><th>strict</th><th>95% CI</th><th>paper-compatible</th>"
            "<th>95% CI</th><th>statuses</th></tr>")
    return f"<dl class=meta>{rows}</dl><table class=results><thead>{head}</thead><tbody>{''.join(table)}</tbody></table>"


# --------------------------------------------------------------------------- cards

def _overlay(thumb: Thumbnail, record: dict[str, Any]) -> str:
    found, _ = detections(record.get("tool_calls") or [])
    colours: dict[str, str] = {}
    shapes = []
    for det in found:
        placed = scale_box(det.box, thumb.original_size, thumb.size)
        if placed is None:
            continue
        colour = colours.setdefault(det.label, PALETTE[len(colours) % len(PALETTE)])
        x, y, w, h = (f"{v:.1f}" for v in placed)
        score = "" if det.score is None else f" {det.score:.2f}"
        title = f"{det.label}{score} [{', '.join(f'{v:g}' for v in det.box)}]"
        # A label of a box in the right half ends at the box's right edge, so it stays on the image.
        right_half = placed[0] + placed[2] / 2 > thumb.size[0] / 2
        anchor = f'x="{placed[0] + placed[2]:.1f}" text-anchor="end"' if right_half else f'x="{x}"'
        shapes.append(
            f'<g><title>{esc(title)}</title><rect class=box x="{x}" y="{y}" width="{w}" height="{h}" '
            f'stroke="{colour}"/><text {anchor} y="{max(float(y) - 3, 10):.1f}" fill="{colour}">'
            f"{esc(det.label)}</text></g>")
    width, height = thumb.size
    return (f'<div class=frame><img src="{thumb.data_uri}" width="{width}" height="{height}" alt="sample image">'
            f'<svg class=boxes viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
            f'data-boxes="{len(shapes)}">{"".join(shapes)}</svg></div>')


def _media(entry: Entry, images: TaskImages | None) -> str:
    """The image with its boxes, or why it is missing; nothing for samples past --max-samples."""
    sample_id = entry.sample_id
    if images is None or sample_id is None:
        return ""
    if sample_id in images.thumbnails:
        return _overlay(images.thumbnails[sample_id], entry.record or {})
    if sample_id in images.errors:
        return f"<p class=noimg>image not shown: {esc(images.errors[sample_id])}</p>"
    return ""


def _call_line(call: Any) -> str:
    if not isinstance(call, dict):
        return f"<li><pre>{esc(call)}</pre></li>"
    args = [a for a in (call.get("args") or []) if a != "<image>"] if isinstance(call.get("args"), list) else []
    kwargs = call.get("kwargs") if isinstance(call.get("kwargs"), dict) else {}
    shown = [json.dumps(a, ensure_ascii=False, default=str) for a in args]
    shown += [f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in kwargs.items()]
    head = f"{call.get('tool')}({', '.join(shown)})"
    if "error" in call:
        outcome = f"<span class=err>error: {esc(call['error'])}</span>"
    else:
        outcome = f"<pre>{esc(call.get('result'))}</pre>"
    return f"<li><code>{esc(head)}</code> &rarr; {outcome}</li>"


def _literal(value: Any, none: str | None = "null") -> str | None:
    return none if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _collapsed(title: str, body: Any) -> str:
    return f"<details><summary>{esc(title)}</summary><pre>{esc(body)}</pre></details>"


def _card(entry: Entry, images: TaskImages | None) -> str:
    record = entry.record
    status, result = status_of(entry), result_of(record)
    attrs = f'data-task="{esc(entry.task)}" data-status="{esc(status)}" data-result="{result}"'
    where = f"{entry.task}, line {entry.line}"
    problems = "".join(f"<li>{esc(p)}</li>" for p in entry.problems)
    warning = f"<ul class=problems>{problems}</ul>" if problems else ""
    if record is None:
        return (f"<article class='card malformed' {attrs}><div class=body><header><span class=task>{esc(where)}"
                f"</span><span class='badge st-{MALFORMED}'>malformed record</span></header>{warning}"
                f"<pre class=rawline>{esc(entry.raw or '')}</pre></div></article>")
    parts = [f"<header><span class=task>{esc(entry.task)}</span>"
             f"<span class=sid title='{esc(where)}'>{esc(record.get('id'))}</span>"
             + (f"<span class=subset>{esc(record['subset'])}</span>" if record.get("subset") else "")
             + f"<span class='badge st-{'ok' if status == 'ok' else 'fail'}'>{esc(status)}</span>"
             f"<span class='badge res-{result}'>{result}</span></header>", warning,
             f"<p class=q>{esc(record.get('question', ''))}</p>"]
    if isinstance(record.get("choices"), list) and record["choices"]:
        parts.append("<ol class=choices type=A>" + "".join(f"<li>{esc(c)}</li>" for c in record["choices"]) + "</ol>")
    scores = record.get("scores") if isinstance(record.get("scores"), dict) else {}
    # Answers as JSON literals, so the string "2" and the number 2 look different.
    facts = [("answer", _literal(record.get("prediction"))), ("read as", _literal(record.get("extracted"), None)),
             ("gold", _literal(record.get("gold"))), ("parse", record.get("parse")),
             ("strict", scores.get("strict")), ("paper-compatible", scores.get("compat"))]
    parts.append("<dl class=facts>" + "".join(f"<dt>{k}</dt><dd>{esc(v)}</dd>" for k, v in facts if v is not None)
                 + "</dl>")
    if record.get("detail"):
        parts.append(f"<pre class=detail>{esc(record['detail'])}</pre>")
    if record.get("plan"):
        parts.append(f"<p class=plan><b>Plan</b> {esc(record['plan'])}</p>")
    if record.get("program"):
        parts.append(f"<pre class=prog><code>{esc(record['program'])}</code></pre>")
    calls = record.get("tool_calls")
    if isinstance(calls, list) and calls:
        parts.append(f"<details class=calls><summary>Tool calls ({len(calls)})</summary><ol>"
                     + "".join(_call_line(c) for c in calls) + "</ol></details>")
    if record.get("stdout"):
        parts.append(_collapsed("Printed output", record["stdout"]))
    if record.get("raw") and record.get("raw") != record.get("program"):
        parts.append(_collapsed("Model output", record["raw"]))
    media = _media(entry, images)
    return (f"<article class=card {attrs}>" + (f"<div class=media>{media}</div>" if media else "")
            + f"<div class=body>{''.join(parts)}</div></article>")


# --------------------------------------------------------------------------- the page

def _options(values: list[tuple[str, str]]) -> str:
    rows = [("", "all")] + values
    return "".join(f'<option value="{esc(v)}" data-label="{esc(label)}">{esc(label)}</option>' for v, label in rows)


def _template() -> str:
    return resources.files("harness.report").joinpath("template.html").read_text(encoding="utf-8")


def script_hash(template: str) -> str:
    """The content-security-policy hash of the template's one script: no other script can run in the page."""
    scripts = _SCRIPT.findall(template)
    if len(scripts) != 1:
        raise ValueError(f"report template must hold exactly one script, found {len(scripts)}")
    return "sha256-" + base64.b64encode(hashlib.sha256(scripts[0].encode("utf-8")).digest()).decode("ascii")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every ``@@NAME@@`` in one pass, so markers inside inserted text stay as they are."""
    missing = sorted(set(values) - set(_MARKER.findall(template)))
    if missing:
        raise ValueError(f"report template lacks the markers {', '.join(missing)}")
    return _MARKER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def page_notices(page: PageInput) -> list[str]:
    """The lines at the top of every page (from the first pass's counts)."""
    data = page.data
    notices = [*page.notices]
    if data.results_note:
        notices.append(data.results_note)
    errors = data.results.get("errors") if isinstance(data.results.get("errors"), dict) else {}
    notices += [f"Task {task} failed in the run: {error}" for task, error in errors.items()]
    for task in data.run["tasks"]:
        lines = data.lines[task]
        if not lines.entries:
            notices.append(f"Task {task} has no records.")
        if lines.with_problems:
            notices.append(f"Task {task}: {lines.with_problems} record(s) could not be read fully; "
                           "each card lists its problems.")
        images = page.images.get(task)
        if images is not None and images.unavailable:
            notices.append(f"Images of task {task} are not shown: {images.unavailable}")
            continue
        asked = len(lines.image_ids)
        if lines.usable > asked:
            notices.append(f"Task {task}: images are loaded for the first {asked} of {lines.usable} samples "
                           f"(--max-samples {page.max_samples}); the other {lines.usable - asked} are listed "
                           "without images.")
    return notices


def card(entry: Entry, page: PageInput) -> str:
    return _card(entry, page.images.get(entry.task))


def _navigation(spans: list[PageSpan], current: int) -> str:
    if len(spans) < 2:
        return ""
    span, total = spans[current], spans[-1].last
    links = []
    for i, other in enumerate(spans):
        links.append(f"<b>{i + 1}</b>" if i == current else f'<a href="{esc(other.file)}">{i + 1}</a>')
    step = [f'<a href="{esc(spans[current - 1].file)}" rel=prev>previous</a>' if current else "",
            f'<a href="{esc(spans[current + 1].file)}" rel=next>next</a>' if current + 1 < len(spans) else ""]
    return (f"<nav class=pages>Page {current + 1} of {len(spans)}: samples {span.first:,}-{span.last:,} of "
            f"{total:,}; the filters apply to this page. {' '.join(s for s in step if s)}"
            f"<span class=pagelist>{' '.join(links)}</span></nav>")


def render_page(page: PageInput, notices: list[str], cards: list[str], statuses: set[str],
                spans: list[PageSpan], current: int) -> str:
    """One page of the report: the summary, the notices, and the gallery's ``current`` page."""
    data = page.data
    title = f"{data.run.get('system')} on {', '.join(data.run['tasks'])}"
    template = _template()
    return fill(template, {
        "SCRIPT_HASH": script_hash(template),
        "TITLE": esc(title),
        "SUMMARY": _summary(data),
        "NOTICES": "".join(f"<li>{esc(n)}</li>" for n in notices),
        "TASK_OPTIONS": _options([(t, t) for t in data.run["tasks"]]),
        "STATUS_OPTIONS": _options([(s, "malformed record" if s == MALFORMED else s) for s in sorted(statuses)]),
        "RESULT_OPTIONS": _options(list(RESULTS)),
        "TOTAL": str(len(cards)),
        "PAGES": _navigation(spans, current),
        "CARDS": "".join(cards),
    })
