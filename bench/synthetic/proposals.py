"""Simulated detector output (COCO results format) for the REC task.

REC with proposals scores the proposal a model picks, so the proposals must
behave like a real detector's: most objects found with slightly wrong boxes,
some found twice, a few missed entirely (the task then has to add the
ground-truth box or the target is unreachable), and some spurious boxes.
Everything is drawn from a per-image generator, so output is deterministic.
"""

from __future__ import annotations

import numpy as np

from bench.synthetic.params import SuiteParams
from bench.synthetic.relations import Box
from bench.synthetic.vocab import CATEGORIES

WRONG_CATEGORY_SHARE = 0.05


def _jitter(rng: np.random.Generator, box: Box, scale: float, width: int, height: int) -> list[float]:
    """Move each edge by a normal offset proportional to the box size, clipped to the image."""
    x0 = box.x + rng.normal(0.0, scale * box.w)
    x1 = box.x1 + rng.normal(0.0, scale * box.w)
    y0 = box.y + rng.normal(0.0, scale * box.h)
    y1 = box.y1 + rng.normal(0.0, scale * box.h)
    x0, x1 = sorted((float(np.clip(x0, 0, width - 1)), float(np.clip(x1, 1, width))))
    y0, y1 = sorted((float(np.clip(y0, 0, height - 1)), float(np.clip(y1, 1, height))))
    x1, y1 = max(x1, x0 + 1.0), max(y1, y0 + 1.0)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _score(value: float) -> float:
    return round(float(np.clip(value, 0.0001, 1.0)), 4)


def detect(
    rng: np.random.Generator,
    image_id: int,
    objects: list[tuple[int, Box]],
    width: int,
    height: int,
    params: SuiteParams,
) -> list[dict[str, object]]:
    """Detections for one image from its ``(category_id, box)`` ground truth.

    Crowd regions should not be passed: detectors are not asked to find them.
    """
    detections: list[dict[str, object]] = []
    category_ids = [c.id for c in CATEGORIES]

    def emit(category_id: int, bbox: list[float], score: float) -> None:
        detections.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": _score(score)})

    for category_id, box in objects:
        if rng.random() >= params.detector_recall:
            continue  # missed
        if rng.random() < WRONG_CATEGORY_SHARE:
            others = [c for c in category_ids if c != category_id]
            category_id = others[int(rng.integers(len(others)))]
        score = rng.uniform(0.45, 1.0)
        emit(category_id, _jitter(rng, box, 0.06, width, height), score)
        if rng.random() < params.detector_duplicate_share:
            emit(category_id, _jitter(rng, box, 0.15, width, height), score * rng.uniform(0.3, 0.8))
    for _ in range(int(rng.poisson(params.detector_false_positives))):
        w, h = rng.uniform(10.0, 70.0), rng.uniform(10.0, 70.0)
        x, y = rng.uniform(0.0, max(1.0, width - w)), rng.uniform(0.0, max(1.0, height - h))
        emit(
            category_ids[int(rng.integers(len(category_ids)))],
            [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)],
            rng.uniform(0.02, 0.5),
        )
    detections.sort(key=lambda d: -float(d["score"]))  # type: ignore[arg-type]
    return detections
