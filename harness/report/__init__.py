"""The visual report of a run: self-contained HTML pages (``python -m harness report RUN_DIR``).

Each page holds the run's summary and a filterable card per sample (image with the detector's
boxes, question, plan, program, tool calls, answer, scores), ``page_size`` cards a page, linked
to the others: a large run's report is many pages of a few MB, written one at a time. A page
needs no network: styles and script are inline and images are embedded as JPEG thumbnails,
read through the tasks the run used.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.report.errors import ReportError

__all__ = ["DEFAULT_MAX_SAMPLES", "DEFAULT_PAGE_SIZE", "REPORT_FILE", "ReportError", "ReportSummary", "write_report"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
DEFAULT_MAX_SAMPLES = 200
DEFAULT_PAGE_SIZE = 1000  # cards a page: a page of a large run stays a few MB


@dataclass
class ReportSummary:
    path: Path  # the first page
    cards: int
    images: int
    pages: int = 1
    unavailable: dict[str, str] = field(default_factory=dict)  # task -> why none of its images is shown


def page_file(first: Path, number: int) -> Path:
    """The file of page ``number`` (1-based): the first page is ``first``, the others sit beside it."""
    return first if number == 1 else first.with_name(f"{first.stem}-{number}{first.suffix}")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a page


def write_report(run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None,
                 max_samples: int = DEFAULT_MAX_SAMPLES, page_size: int = DEFAULT_PAGE_SIZE) -> ReportSummary:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``); images for ``max_samples`` per
    task; ``page_size`` cards a page (the pages after the first are ``report-2.html``, ...)."""
    # Imported here: the command line reads this package's defaults without loading the report's modules.
    from harness.report.images import load_task_images
    from harness.report.load import load_run
    from harness.report.render import PageInput, PageSpan, card, page_notices, render_page, status_of
    from harness.tasks.sources import data_dir_from_env

    if max_samples < 0:
        raise ReportError(f"--max-samples must not be negative, got {max_samples}")
    if page_size < 1:
        raise ReportError(f"--page-size must be at least 1, got {page_size}")
    run_dir = Path(run_dir)
    data = load_run(run_dir, max_samples)  # a first pass over the records: counts, images to show, a summary
    local = data_dir_from_env(data_dir or data.run.get("data_dir"))  # explicit, as the run read them, else the env
    images = {task: load_task_images(task, data.run["task_configs"][task], data.lines[task].image_ids, local,
                                     data.run.get("limit"))
              for task in data.run["tasks"]}
    page = PageInput(data, images, max_samples)
    notices = page_notices(page)
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(lines.entries for lines in data.lines.values())
    count = max(1, math.ceil(total / page_size))
    spans = [PageSpan(page_file(path, i + 1).name, i * page_size + 1, min((i + 1) * page_size, total))
             for i in range(count)]
    # The second pass: cards rendered and written a page at a time. Records appended since the first
    # pass (a run still going) go on the last page.
    cards: list[str] = []
    statuses: set[str] = set()
    written = 0
    for task in data.run["tasks"]:
        for entry in data.entries(task):
            cards.append(card(entry, page))
            statuses.add(status_of(entry))
            if len(cards) == page_size and written + 1 < count:
                _write_atomically(page_file(path, written + 1), render_page(page, notices, cards, statuses, spans,
                                                                             written))
                written, cards, statuses = written + 1, [], set()
    _write_atomically(page_file(path, written + 1), render_page(page, notices, cards, statuses, spans, written))
    summary = ReportSummary(path, total, sum(len(v.thumbnails) for v in images.values()), count,
                            {t: v.unavailable for t, v in images.items() if v.unavailable})
    log.info("wrote %s: %d samples on %d pages, %d with images", path, summary.cards, count, summary.images)
    return summary
