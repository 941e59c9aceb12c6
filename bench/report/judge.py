"""Right or wrong, category and display text of one saved record, per task.

The verdict is derived from the record the way the task's metric uses it, so
the report never disagrees with ``results.json``:

* ``coco-cls``: ``scores["correct"]``, which ``accuracy`` averages (the answer,
  normalised, names the target's category); likelihood runs also show the
  argmax category (``ll_correct``), which does not decide the verdict;
* ``pope-*``: ``parsed == target`` (the answer mapped to yes/no by the authors'
  rule against the label), the pairs the confusion-based metrics count;
* ``refcocog-rec``: ``parsed is not None and parsed in target`` (the chosen
  candidate has IoU >= 0.5 with the ground truth), as ``accuracy`` counts it;
* ``refcocog-cap``, ``vg-cap``: no verdict (N/A). Caption metrics are
  corpus-level (CIDEr's idf spans the whole set) and records hold no per-sample
  score, so the references are shown instead;
* any other task: ``scores["correct"]`` when the record has it, else N/A.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NO_CATEGORY = "(no category)"
POPE_OBJECT = re.compile(r"\bis there an?\s+(.+?)\s+in the image\b", re.IGNORECASE)


@dataclass(frozen=True)
class Judged:
    """What a card shows besides the image: ``correct`` is None when the task has no right/wrong."""

    correct: bool | None
    category: str
    parsed: str
    target: str
    note: str = ""
    target_label: str = "target"
    # 1-based regions to outline as chosen (REC's answer) and as right (REC's target).
    chosen: tuple[int, ...] = ()
    right_regions: tuple[int, ...] = ()


def judge(task: str, record: Mapping[str, Any]) -> Judged:
    """The verdict, category and display strings of ``record`` of ``task`` (see the module doc)."""
    parsed, target, scores = record.get("parsed"), record.get("target"), record.get("scores") or {}
    if task == "coco-cls":
        return _coco(parsed, target, scores)
    if task.startswith("pope-"):
        match = POPE_OBJECT.search(str(record.get("prompt", "")))
        return Judged(correct=parsed == target, category=match.group(1).lower() if match else NO_CATEGORY,
                      parsed=_text(parsed), target=_text(target))
    if task == "refcocog-rec":
        chosen = parsed if isinstance(parsed, int) else None
        right = tuple(int(k) for k in target or [])
        note = "the ground-truth box was added to the candidates" if (record.get("metadata") or {}).get(
            "gt_added") else ""
        return Judged(correct=chosen is not None and chosen in right, category=NO_CATEGORY,
                      parsed=f"Region [{chosen}]" if chosen is not None else "(names no candidate)",
                      target=", ".join(f"Region [{k}]" for k in right) or "(no candidate has IoU >= 0.5)",
                      note=note, chosen=(chosen,) if chosen is not None else (), right_regions=right)
    if task in ("refcocog-cap", "vg-cap"):
        references = target if isinstance(target, list) else [target]
        return Judged(correct=None, category=NO_CATEGORY, parsed=_text(parsed),
                      target="\n".join(_text(t) for t in references),
                      note="captions have no per-sample right/wrong (METEOR and CIDEr are corpus-level)",
                      target_label="references")
    correct = scores.get("correct")
    return Judged(correct=None if correct is None else bool(correct), category=NO_CATEGORY,
                  parsed=_text(parsed), target=_text(target))


def _coco(parsed: Any, target: Any, scores: Mapping[str, Any]) -> Judged:
    parsed = parsed if isinstance(parsed, dict) else {}
    target = target if isinstance(target, dict) else {}
    category = str(target.get("category", NO_CATEGORY))
    answer = parsed.get("answer")
    shown = str(answer) if answer is not None else f"(names no category: {parsed.get('normalised', '')!r})"
    note = ""
    if "ll_answer" in parsed:
        note = f"likelihood argmax: {parsed['ll_answer']} ({'right' if scores.get('ll_correct') else 'wrong'})"
    correct = scores.get("correct")
    return Judged(correct=bool(correct) if correct is not None else answer == category, category=category,
                  parsed=shown, target=category, note=note)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Confusion:
    """Counts of (target, predicted) pairs: ``counts[i][j]`` has target ``labels[i]``, prediction ``columns[j]``."""

    labels: list[str]
    columns: list[str]
    counts: list[list[int]]


def coco_confusion(records: Sequence[Mapping[str, Any]]) -> Confusion:
    """Confusion matrix of coco-cls generation answers: rows the target category, columns the answer.

    Rows and columns are the categories that occur as a target or an answer, in
    the category file's order; an answer naming no category counts in a last
    :data:`NO_CATEGORY` column (the metric counts it wrong).
    """
    order: dict[str, int] = {}
    for record in records:
        for position, (_, name) in enumerate((record.get("metadata") or {}).get("categories", [])):
            order.setdefault(str(name), position)
    pairs = []
    for record in records:
        target = str((record.get("target") or {}).get("category"))
        answer = (record.get("parsed") or {}).get("answer")
        pairs.append((target, NO_CATEGORY if answer is None else str(answer)))
    seen = {name for pair in pairs for name in pair} - {NO_CATEGORY}
    labels = sorted(seen, key=lambda name: (order.get(name, len(order)), name))
    columns = labels + ([NO_CATEGORY] if any(p == NO_CATEGORY for _, p in pairs) else [])
    row, column = {n: i for i, n in enumerate(labels)}, {n: j for j, n in enumerate(columns)}
    counts = [[0] * len(columns) for _ in labels]
    for target, predicted in pairs:
        counts[row[target]][column[predicted]] += 1
    return Confusion(labels=labels, columns=columns, counts=counts)
