"""The visual report of a run: one self-contained HTML page (``python -m harness report RUN_DIR``).

The page holds the run's summary and a filterable card per sample (image with
the detector's boxes, question, plan, program, tool calls, answer, scores).
It needs no network: styles and script are inline and images are embedded
as JPEG thumbnails, read through the tasks the run used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path


__all__ = ["DEFAULT_MAX_SAMPLES", "REPORT_FILE", "ReportError", "ReportSummary", "write_report"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
DEFAULT_MAX_SAMPLES = 200


class ReportError(RuntimeError):
    """A run directory the report cannot be made from; the message says why."""


@dataclass
class ReportSummary:
    path: Path
    cards: int
    images: int
    unavailable: dict[str, str] = field(default_factory=dict)  # task -> why none of its images is shown


def first_ids(ids: list[str | None], count: int) -> list[str]:
    """The first ``count`` distinct sample ids, in record order."""
    chosen: dict[str, None] = {}
    for sample_id in ids:
        if len(chosen) >= count:
            break
        if sample_id is not None:
            chosen.setdefault(sample_id)
    return list(chosen)


def write_report(run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None,
                 max_samples: int = DEFAULT_MAX_SAMPLES) -> ReportSummary:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``); images for ``max_samples`` per task."""
    # Imported here: the command line reads this package's defaults without loading the report's modules.
    from harness.report.images import load_task_images
    from harness.report.load import load_run
    from harness.report.render import PageInput, render_page
    from harness.tasks.sources import data_dir_from_env

    if max_samples < 0:
        raise ReportError(f"--max-samples must not be negative, got {max_samples}")
    run_dir = Path(run_dir)
    data = load_run(run_dir)
    local = data_dir_from_env(data_dir or data.run.get("data_dir"))  # explicit, as the run read them, else the env
    images, image_ids = {}, {}
    for task in data.run["tasks"]:
        image_ids[task] = first_ids([e.sample_id for e in data.entries[task]], max_samples)
        images[task] = load_task_images(task, data.run["task_configs"][task], image_ids[task], local,
                                        data.run.get("limit"))
    page = render_page(PageInput(data, images, image_ids, max_samples))
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a page
    summary = ReportSummary(path, sum(len(v) for v in data.entries.values()),
                            sum(len(v.thumbnails) for v in images.values()),
                            {t: v.unavailable for t, v in images.items() if v.unavailable})
    log.info("wrote %s: %d samples, %d with images", path, summary.cards, summary.images)
    return summary
