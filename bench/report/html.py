"""The report page: one self-contained HTML file (no external CSS, JS, fonts or images).

Each sample is a card: the image with its regions drawn as SVG rects in the
image's own pixel coordinates (the SVG's viewBox is the image size), numbered
as ``<region1>``, ``<region2>`` ... in the prompt, then the prompt, the raw
answer, the parsed answer, the target and the verdict. Every text that comes
from a record is escaped: answers are untrusted model output, and dataset text
can hold ``<`` too. A few lines of inline JS filter cards by their ``data-``
attributes (task, category, wrong only); without JS every card is shown. The
filters can be preset in the address, ``report.html#task=coco-cls&wrong=1``
(also ``category=NAME``), to share a link to the mistakes.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.report.images import EmbeddedImage
from bench.report.judge import NO_CATEGORY, Confusion, Judged

# Region k is drawn in PALETTE[(k - 1) % len(PALETTE)]; no colour is close to the page's own.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#000075")
# Displayed width of a card's image in CSS pixels; labels and strokes are sized against it.
VIEW_WIDTH = 360
PLACEHOLDER = re.compile(r"&lt;region(\d+)&gt;")


@dataclass
class Card:
    """One sample as shown: ``image`` is None when its file could not be found (``image_problem`` says why)."""

    run_name: str
    record: Mapping[str, Any]
    judged: Judged
    image_id: str | None
    image: EmbeddedImage | None
    image_problem: str = ""


@dataclass
class TaskSection:
    run_name: str
    cards: list[Card]
    total: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    confusion: Confusion | None = None


def region_color(k: int) -> str:
    """The colour of region ``k`` (1-based), the same in the drawing and in the prompt."""
    return PALETTE[(k - 1) % len(PALETTE)]


def render_page(title: str, facts: Sequence[tuple[str, str]], warnings: Sequence[str],
                sections: Sequence[TaskSection], images: Mapping[str, EmbeddedImage], max_per_task: int) -> str:
    """The whole page. ``images`` maps an id used by cards to the image embedded once in ``<defs>``."""
    e = html.escape
    categories: dict[str, set[str]] = {}
    for section in sections:
        for card in section.cards:
            if card.judged.category != NO_CATEGORY:
                categories.setdefault(card.judged.category, set()).add(section.run_name)
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<dl class=\"facts\">" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>",
    ]
    if warnings:
        parts.append("<div class=\"warnings\"><h2>Warnings</h2><ul>"
                     + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul></div>")
    parts.append(_controls(sections, categories))
    parts.append(_defs(images))
    for section in sections:
        parts.append(_section(section, max_per_task))
    parts.append(f"<script>{JS}</script></body></html>\n")
    return "".join(parts)


def _controls(sections: Sequence[TaskSection], categories: Mapping[str, set[str]]) -> str:
    e = html.escape
    tasks = "".join(f"<option value=\"{e(s.run_name)}\">{e(s.run_name)}</option>" for s in sections)
    cats = "".join(f"<option value=\"{e(c)}\" data-tasks=\"{e(' '.join(sorted(t)))}\">{e(c)}</option>"
                   for c, t in sorted(categories.items()))
    return ("<div class=\"controls\">"
            f"<label>Task <select id=\"task-filter\"><option value=\"\">all tasks</option>{tasks}</select></label>"
            f"<label>Category <select id=\"category-filter\"><option value=\"\">all categories</option>{cats}"
            "</select></label>"
            "<label><input type=\"checkbox\" id=\"wrong-only\"> wrong answers only</label>"
            "<span id=\"shown-count\"></span></div>")


def _defs(images: Mapping[str, EmbeddedImage]) -> str:
    """Every image once, referenced by the cards' ``<use>`` (a run has many samples per image)."""
    body = "".join(
        f"<image id=\"{html.escape(key)}\" href=\"{image.uri}\" width=\"{image.width}\" height=\"{image.height}\" "
        "preserveAspectRatio=\"none\"/>" for key, image in images.items())
    return f"<svg class=\"defs\" width=\"0\" height=\"0\" aria-hidden=\"true\"><defs>{body}</defs></svg>"


def _section(section: TaskSection, max_per_task: int) -> str:
    e = html.escape
    name = section.run_name
    shown = len(section.cards)
    left_out = section.total - shown
    counts = f"{section.total} sample(s)"
    if left_out:
        covers = "metrics and the confusion matrix cover" if section.confusion is not None else "metrics cover"
        counts += (f"; the first {shown} are shown, {left_out} left out (--max-per-task {max_per_task}; "
                   f"{covers} all)")
    judged = [c.judged.correct for c in section.cards if c.judged.correct is not None]
    if judged:
        counts += f"; shown: {sum(judged)} right, {len(judged) - sum(judged)} wrong"
    parts = [f"<section class=\"task\" data-task=\"{e(name)}\"><h2>{e(name)}</h2><p class=\"counts\">{e(counts)}</p>"]
    if section.metrics:
        head = "".join(f"<th>{e(m)}</th>" for m in section.metrics)
        values = "".join(f"<td>{100 * float(v):.2f}</td>" for v in section.metrics.values())
        parts.append(f"<table class=\"metrics\"><tr><th>metric</th>{head}</tr><tr><th>value (%)</th>{values}</tr>"
                     "</table>")
    if section.confusion is not None:
        parts.append(confusion_table(section.confusion))
    parts.append("<div class=\"cards\">" + "".join(_card(c) for c in section.cards) + "</div></section>")
    return "".join(parts)


def confusion_table(confusion: Confusion) -> str:
    """The confusion matrix as a table: one row per target category, one column per answer."""
    e = html.escape
    head = "".join(f"<th class=\"col\">{e(c)}</th>" for c in confusion.columns)
    rows = []
    for label, counts in zip(confusion.labels, confusion.counts, strict=True):
        cells = "".join(
            f"<td class=\"{'diag' if column == label else 'off' if n else 'zero'}\">{n if n else ''}</td>"
            for column, n in zip(confusion.columns, counts, strict=True))
        rows.append(f"<tr><th class=\"row\">{e(label)}</th>{cells}</tr>")
    return ("<details class=\"confusion\" open><summary>Confusion matrix (rows: target category, columns: "
            "the category answered)</summary><table class=\"confusion\"><tr><th>target \\ answer</th>"
            f"{head}</tr>{''.join(rows)}</table></details>")


def _card(card: Card) -> str:
    e = html.escape
    record, judged = card.record, card.judged
    verdict = {True: ("1", "right"), False: ("0", "wrong"), None: ("na", "N/A")}[judged.correct]
    regions = _boxes(record)
    attrs = (f"data-task=\"{e(card.run_name)}\" data-category=\"{e(judged.category)}\" "
             f"data-correct=\"{verdict[0]}\" data-id=\"{e(str(record.get('id')))}\"")
    parts = [f"<article class=\"card\" {attrs}>",
             f"<header><span class=\"sid\">{e(str(record.get('id')))}</span> "
             f"<span class=\"verdict v{verdict[0]}\">{verdict[1]}</span></header>"]
    if card.image is not None and card.image_id is not None:
        parts.append(_drawing(card.image_id, card.image, regions, judged))
    else:
        parts.append(f"<div class=\"no-image\">image not shown: {e(card.image_problem or 'not found')}</div>")
    outputs = record.get("outputs") or []
    raw = outputs[0] if outputs and isinstance(outputs[0], str) else json.dumps(outputs[:1])
    extra = f" (+ {len(outputs) - 1} more output(s): likelihood scores)" if len(outputs) > 1 else ""
    fields = [
        ("image", e(str(record.get("image", "")))),
        ("prompt", _prompt(str(record.get("prompt", "")))),
        ("raw answer", f"<pre>{e(raw)}</pre>{e(extra)}"),
        ("parsed", f"<pre>{e(judged.parsed)}</pre>"),
        (e(judged.target_label), f"<pre>{e(judged.target)}</pre>"),
    ]
    if judged.category != NO_CATEGORY:
        fields.append(("category", e(judged.category)))
    if judged.note:
        fields.append(("note", e(judged.note)))
    if regions:
        fields.append(("regions", "<br>".join(
            f"<span class=\"swatch\" style=\"background:{region_color(k)}\"></span>{k}: "
            + (e(", ".join(_n(v) for v in box)) if box else "no usable box") for k, box, _ in regions)))
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields) + "</dl></article>")
    return "".join(parts)


def _boxes(record: Mapping[str, Any]) -> list[tuple[int, tuple[float, ...] | None, list[list[float]]]]:
    """(number, xyxy box or None, polygons) of each region; a mask-only polygon region gets its polygons' box.

    A box or polygon that is not plain numbers (a hand-edited or foreign samples file) is left undrawn
    rather than failing the whole page; the region keeps its number, so the others still match the prompt.
    """
    out = []
    for k, region in enumerate(record.get("regions") or [], start=1):
        region = region if isinstance(region, dict) else {}
        box, mask = region.get("box"), region.get("mask")
        polygons = [p for p in mask if isinstance(p, list) and len(p) >= 6 and all(map(_number, p))] \
            if isinstance(mask, list) else []
        if box is None and polygons:
            xs = [float(v) for p in polygons for v in p[0::2]]
            ys = [float(v) for p in polygons for v in p[1::2]]
            box = [min(xs), min(ys), max(xs), max(ys)]
        valid = isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_number, box))
        out.append((k, tuple(float(v) for v in box) if valid else None, polygons))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _drawing(image_id: str, image: EmbeddedImage, regions: Sequence[tuple[int, tuple[float, ...] | None, list]],
             judged: Judged) -> str:
    """The image and its regions in one SVG whose user units are the image's pixels."""
    w, h = image.width, image.height
    unit = w / VIEW_WIDTH  # image pixels per CSS pixel as displayed
    parts = [f"<svg class=\"view\" viewBox=\"0 0 {w} {h}\" width=\"{VIEW_WIDTH}\" height=\"{VIEW_WIDTH * h / w:.1f}\">"
             f"<use href=\"#{html.escape(image_id)}\"/>"]
    labels = []
    for k, box, polygons in regions:
        color = region_color(k)
        for polygon in polygons:
            points = " ".join(f"{_n(x)},{_n(y)}" for x, y in zip(polygon[0::2], polygon[1::2], strict=False))
            parts.append(f"<polygon class=\"mask\" points=\"{points}\" fill=\"{color}\" fill-opacity=\"0.25\" "
                         "stroke=\"none\"/>")
        if box is None:
            continue
        x1, y1, x2, y2 = box
        classes = "region" + (" chosen" if k in judged.chosen else "") + (" right" if k in judged.right_regions else "")
        width = 4 if k in judged.chosen else 2
        dash = " stroke-dasharray=\"6 3\"" if judged.chosen and k not in judged.chosen else ""
        parts.append(f"<rect class=\"{classes}\" data-region=\"{k}\" x=\"{_n(x1)}\" y=\"{_n(y1)}\" "
                     f"width=\"{_n(x2 - x1)}\" height=\"{_n(y2 - y1)}\" fill=\"none\" stroke=\"{color}\" "
                     f"stroke-width=\"{width}\"{dash} vector-effect=\"non-scaling-stroke\"/>")
        size = 13 * unit
        label_w = size * (0.35 + 0.62 * len(str(k)))
        labels.append(f"<g class=\"label\"><rect class=\"label-bg\" x=\"{_n(x1)}\" y=\"{_n(y1)}\" "
                      f"width=\"{label_w:.2f}\" height=\"{size * 1.15:.2f}\" fill=\"{color}\"/>"
                      f"<text x=\"{x1 + size * 0.18:.2f}\" y=\"{y1 + size * 0.95:.2f}\" "
                      f"font-size=\"{size:.2f}\" fill=\"#fff\">{k}</text></g>")
    parts.extend(labels)  # numbers above every box, so a later box never hides an earlier number
    parts.append("</svg>")
    return "".join(parts)


def _n(value: float) -> str:
    """A coordinate to 1/1000 pixel, without trailing zeros (``60.849999999999994`` -> ``60.85``)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _prompt(prompt: str) -> str:
    """The escaped prompt with each ``<regionK>`` in its region's colour (matched on escaped text: digits only)."""
    return PLACEHOLDER.sub(
        lambda m: f"<span class=\"ph\" style=\"border-color:{region_color(int(m.group(1)))}\">"
                  f"&lt;region{m.group(1)}&gt;</span>", html.escape(prompt))


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
[hidden]{display:none!important}
h1{font-size:20px;margin:0 0 8px}h2{font-size:17px;margin:18px 0 6px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 8px}
dl.facts dt{color:#666}dl.facts dd{margin:0}
.warnings{background:#fff4d6;border:1px solid #e0c060;padding:4px 12px;margin:8px 0}
.warnings h2{font-size:15px;margin:4px 0}
.controls{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:1;
display:flex;gap:16px;align-items:center;flex-wrap:wrap}
svg.defs{position:absolute;width:0;height:0;overflow:hidden}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th.row{text-align:left}th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}
td.diag{background:#cdeccd}td.off{background:#f6d6c8}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;padding:8px;width:376px;box-sizing:border-box}
.card[data-correct="0"]{border-color:#c2703d}
.card header{display:flex;justify-content:space-between;margin-bottom:4px}
.sid{font-family:monospace;color:#555}
.verdict{font-weight:bold;padding:0 6px;border-radius:3px}
.v1{background:#cdeccd;color:#145214}.v0{background:#f6d6c8;color:#6b2a00}.vna{background:#e4e4e4;color:#444}
svg.view{display:block;background:#eee}
.no-image{background:#eee;color:#6b2a00;padding:24px 8px;text-align:center}
.card dl{margin:6px 0 0;display:grid;grid-template-columns:max-content 1fr;gap:2px 8px}
.card dt{color:#666}.card dd{margin:0;overflow-wrap:anywhere}
pre{margin:0;white-space:pre-wrap;font:12px monospace}
.ph{border-bottom:3px solid;font-family:monospace}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
"""

JS = """
(function(){
var task=document.getElementById('task-filter'),cat=document.getElementById('category-filter'),
wrong=document.getElementById('wrong-only'),count=document.getElementById('shown-count');
function apply(){
var t=task.value,c=cat.value,w=wrong.checked,n=0;
document.querySelectorAll('section.task').forEach(function(s){s.hidden=!!t&&s.dataset.task!==t;});
Array.prototype.forEach.call(cat.options,function(o){
if(o.value){o.hidden=!!t&&o.dataset.tasks.split(' ').indexOf(t)<0;}});
document.querySelectorAll('.card').forEach(function(card){
var show=(!t||card.dataset.task===t)&&(!c||card.dataset.category===c)&&(!w||card.dataset.correct==='0');
card.hidden=!show;if(show){n++;}});
count.textContent=n+' sample(s) shown';}
var preset=new URLSearchParams(location.hash.slice(1));
if(preset.get('task')){task.value=preset.get('task');}
if(preset.get('category')){cat.value=preset.get('category');}
wrong.checked=preset.get('wrong')==='1';
[task,cat,wrong].forEach(function(el){el.addEventListener('change',apply);});apply();})();
"""
