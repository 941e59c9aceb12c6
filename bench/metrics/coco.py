"""COCO region classification: answer normalisation and COCOeval box AP.

Answers
-------
A free-text answer counts only if it names one of the annotation file's
categories. Both the answer and every category name go through
:func:`normalise_answer` (so the rule is symmetric and works for any category
set, LVIS-style names with ``_`` and ``(...)`` included):

1. Unicode NFKC, lower-case;
2. every punctuation or symbol character (``.``, ``,``, ``-``, ``_``, ``(``,
   quotes...) becomes a space, which also removes a trailing period;
3. one leading article (``a``, ``an``, ``the``) is dropped;
4. runs of whitespace collapse to one space, ends are stripped.

:func:`match_category` then accepts an exact match of the normalised strings
and, only when that fails, a simple English plural of a name: a final ``s``
or ``es`` removed ("circles" -> "circle", "buses" -> "bus", "wine glasses" ->
"wine glass"). Irregular plurals and synonyms ("people", "sofa") are not
accepted: there is no synonym table, as in RegionGPT's accuracy. Anything else
(a sentence, another word, an empty answer) is a misclassification.

Box AP
------
:func:`coco_box_ap` runs pycocotools' ``COCOeval`` (``iouType="bbox"``) on a
ground truth and a detection list given as plain dicts, and returns
``mAP, AP50, AP75, AP_small, AP_medium, AP_large`` (``COCOeval.stats[0:6]``).
COCOeval reports -1 for an area range without any ground-truth box; such a key
is left out of the result rather than reported as a number (no NaN, no -1).

For large detection lists (every box carrying every category, 80 x 36k on COCO
val) COCOeval is run on a few categories at a time and the per-category
precision/recall arrays are joined before ``summarize``. COCOeval evaluates
every category independently, so the joined arrays are identical to one
all-category run (pinned by the tests) while memory stays a fraction of it.
COCOeval breaks score ties by the order of the detection list, so callers
must pass detections in a canonical order. Its prints are silenced.
"""

from __future__ import annotations

import contextlib
import io
import math
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

# The 80 COCO detection category names, as in ``instances_val2017.json`` (id order).
COCO_80: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

ARTICLES = frozenset({"a", "an", "the"})
PLURAL_SUFFIXES = ("s", "es")

# Names of COCOeval.stats[0:6], in that order.
AP_KEYS: tuple[str, ...] = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
# Categories per COCOeval run in coco_box_ap (bounds memory; results do not depend on it).
CATEGORY_CHUNK = 8


def normalise_answer(text: str) -> str:
    """The comparable form of an answer or a category name (rules in the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    words = text.split()
    if words and words[0] in ARTICLES:
        words = words[1:]
    return " ".join(words)


@lru_cache(maxsize=16)
def _lookup(names: tuple[str, ...]) -> dict[str, str]:
    """Normalised name -> name; cached because every sample of a split shares one category list."""
    return {normalise_answer(name): name for name in names}


def normalised_collisions(names: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of distinct category names that normalise alike (answers could not tell them apart)."""
    seen: dict[str, str] = {}
    clashes = []
    for name in names:
        key = normalise_answer(name)
        if key in seen:
            clashes.append((seen[key], name))
        else:
            seen[key] = name
    return clashes


def match_category(text: str, names: Sequence[str]) -> str | None:
    """The category name ``text`` names, or None when it names none (a misclassification)."""
    lookup = _lookup(tuple(names))
    answer = normalise_answer(text)
    if answer in lookup:
        return lookup[answer]
    for suffix in PLURAL_SUFFIXES:
        if answer.endswith(suffix) and answer[: -len(suffix)] in lookup:
            return lookup[answer[: -len(suffix)]]
    return None


def softmax(logliks: Sequence[float]) -> list[float]:
    """Probabilities over candidates from their summed log-likelihoods (float64, max-shifted).

    Raises ValueError for NaN or when no candidate has a finite score: a
    probability vector made up from them would silently corrupt the mAP.
    """
    values = [float(v) for v in logliks]
    if not values or any(math.isnan(v) for v in values):
        raise ValueError("log-likelihoods must be a non-empty list without NaN")
    top = max(values)
    if not math.isfinite(top):
        raise ValueError("no candidate has a finite log-likelihood")
    exps = [math.exp(v - top) for v in values]
    total = math.fsum(exps)
    return [e / total for e in exps]


def coco_box_ap(
    image_ids: Iterable[int],
    annotations: Sequence[Mapping[str, Any]],
    category_ids: Iterable[int],
    detections: Sequence[Mapping[str, Any]],
    chunk: int = CATEGORY_CHUNK,
) -> dict[str, float]:
    """COCOeval bbox AP of ``detections`` against a ground truth given as plain records.

    ``annotations`` are COCO ground-truth dicts (``id, image_id, category_id,
    bbox, area, iscrowd``); crowd ones are COCOeval's ignore regions.
    ``detections`` are COCO results dicts (``image_id, category_id, bbox,
    score``), in a canonical order (ties are broken by it). Keys whose value
    COCOeval reports as -1 (no ground truth in that area range) are omitted.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = sorted({int(c) for c in category_ids})
    dataset = {
        "images": [{"id": int(i)} for i in sorted(set(image_ids))],
        "annotations": [dict(a) for a in annotations],
        "categories": [{"id": c} for c in categories],
    }
    by_category: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for det in detections:
        by_category[int(det["category_id"])].append(det)

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = dataset
        ground_truth.createIndex()
        parts = []
        for start in range(0, len(categories), max(1, chunk)):
            cats = categories[start : start + max(1, chunk)]
            # Copies, one chunk at a time: loadRes adds fields to the dicts it is given.
            results = _results(ground_truth, [dict(d) for c in cats for d in by_category.get(c, [])])
            evaluator = COCOeval(ground_truth, results, "bbox")
            evaluator.params.catIds = cats
            evaluator.evaluate()
            evaluator.accumulate()
            parts.append(evaluator.eval)
        summary = COCOeval(iouType="bbox")
        summary.params.catIds = categories
        summary.eval = {
            "params": summary.params,
            "precision": np.concatenate([p["precision"] for p in parts], axis=2),
            "recall": np.concatenate([p["recall"] for p in parts], axis=1),
        }
        summary.summarize()
    stats = summary.stats[: len(AP_KEYS)]
    return {key: float(value) for key, value in zip(AP_KEYS, stats, strict=True) if value != -1}


def _results(ground_truth: Any, detections: list[dict[str, Any]]) -> Any:
    """``loadRes`` (which fails on an empty list); an empty result set when there is nothing."""
    from pycocotools.coco import COCO

    if detections:
        return ground_truth.loadRes(detections)
    empty = COCO()
    empty.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "annotations": [],
        "categories": list(ground_truth.dataset["categories"]),
    }
    empty.createIndex()
    return empty
