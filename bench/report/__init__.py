"""``bench report``: an HTML gallery of a run's samples, to see what a model got wrong and why.

:mod:`bench.report.load` reads the run directory and finds each sample's image
through the tasks' own loaders, :mod:`bench.report.judge` decides right/wrong
per task from the saved records, :mod:`bench.report.images` embeds the images
and :mod:`bench.report.html` writes the page. This module ties them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.report.html import Card, TaskSection, render_page
from bench.report.images import EmbeddedImage, embed_image
from bench.report.judge import coco_confusion, judge
from bench.report.load import load_run

REPORT_FILE = "report.html"
DEFAULT_MAX_PER_TASK = 200


@dataclass
class ReportSummary:
    """What was written: ``cards`` samples shown, ``left_out`` over ``--max-per-task``."""

    path: Path
    cards: int
    left_out: int
    warnings: list[str] = field(default_factory=list)


def write_report(output_dir: Path, out: Path | None = None, max_per_task: int = DEFAULT_MAX_PER_TASK,
                 data_root: Path | None = None, max_image_side: int = 640) -> ReportSummary:
    """Render the run in ``output_dir`` to ``out`` (default ``output_dir/report.html``).

    ``data_root`` overrides the data root recorded in ``results.json``, to find
    the images of a run made elsewhere.
    """
    if max_per_task < 1:
        raise BenchError("--max-per-task must be at least 1")
    run = load_run(output_dir, data_root)
    warnings = list(run.warnings)
    images: dict[str, EmbeddedImage] = {}
    image_ids: dict[Path, str | None] = {}
    sections = []
    left_out = 0
    for entry in run.tasks:
        cards = []
        for record in entry.records[:max_per_task]:
            path = run.images.get((entry.run_name, str(record["id"])))
            image_id, problem = None, "the image file could not be found (see the warnings at the top)"
            if path is not None:
                if path not in image_ids:
                    key = f"img{len(images)}"
                    try:
                        images[key] = embed_image(path, max_image_side)
                        image_ids[path] = key
                    except OSError as error:
                        image_ids[path] = None
                        warnings.append(f"image file {path} could not be read ({error}); replace the file or pass "
                                        "--data-root DIR with readable images")
                image_id = image_ids[path]
                problem = "" if image_id else f"image file {path} could not be read"
            cards.append(Card(run_name=entry.run_name, record=record, judged=judge(entry.task, record),
                              image_id=image_id, image=images.get(image_id) if image_id else None,
                              image_problem=problem))
        left_out += len(entry.records) - len(cards)
        sections.append(TaskSection(
            run_name=entry.run_name, cards=cards, total=len(entry.records),
            metrics=(run.results.get("results") or {}).get(entry.run_name) or {},
            confusion=coco_confusion(entry.records) if entry.task == "coco-cls" and entry.records else None,
        ))
    config = run.results.get("config") or {}
    facts = [("run directory", str(output_dir)), ("model", str(config.get("model", "?"))),
             ("model args", str(config.get("model_args") or {})), ("data root", str(data_root or config.get(
                 "data_root", "?"))), ("limit", str(config.get("limit")))]
    title = f"region-bench report: {config.get('model', 'unknown model')} on {output_dir.name or output_dir}"
    page = render_page(title, facts, warnings, sections, images, max_per_task)
    target = out if out is not None else output_dir / REPORT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return ReportSummary(path=target, cards=sum(len(s.cards) for s in sections), left_out=left_out,
                         warnings=warnings)
