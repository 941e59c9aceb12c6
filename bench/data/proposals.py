"""Detector proposals in COCO results format, for referring expression comprehension.

A proposal file is what a detector run writes for ``COCOeval``: one JSON array
of ``{"image_id": int, "bbox": [x, y, w, h], "score": float, ...}`` (extra keys
such as ``category_id`` are kept or ignored). REC scores the box a model picks,
so a malformed box must never slip through quietly: every entry is checked and
a bad one is reported by file and 0-based entry index.

What is dropped rather than refused, and why:

* entries for images the annotation file does not know: a detector is often
  run over a whole image set (all of COCO train2014) while RefCOCOg uses part
  of it; they are counted in :attr:`ProposalSet.n_unknown_image`. A file in
  which *no* entry matches a known image is refused: it belongs to another dataset.
* boxes with no area left once clipped to their image (wholly outside it):
  they cannot be shown to a model, and dropping one only makes the ground-truth
  box more likely to be added; counted per image in :meth:`ProposalSet.dropped`.

Boxes partly outside the image are clipped to it, as every region is
(:meth:`bench.regions.Region.validated`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.files import require_file
from bench.errors import DataError
from bench.regions import Box


@dataclass(frozen=True)
class Proposal:
    """One detection: ``index`` is its 0-based position in the file (recorded as its source)."""

    index: int
    image_id: int
    box: Box  # absolute x1, y1, x2, y2, clipped to the image
    score: float
    category_id: int | None = None


@dataclass
class ProposalSet:
    """A proposal file's usable boxes, grouped by image in file order."""

    path: Path
    by_image: dict[int, tuple[Proposal, ...]]
    n_entries: int
    n_unknown_image: int = 0
    dropped_outside: dict[int, int] = field(default_factory=dict)

    def for_image(self, image_id: int) -> tuple[Proposal, ...]:
        """The image's proposals (empty when the detector found nothing there)."""
        return self.by_image.get(image_id, ())

    def dropped(self, image_id: int) -> int:
        """How many of the image's boxes were dropped for lying wholly outside it."""
        return self.dropped_outside.get(image_id, 0)


def load_proposals(path: Path, image_sizes: Mapping[int, tuple[int, int]], key: str | None = None) -> ProposalSet:
    """Read, check and group a COCO results file; ``image_sizes`` maps image id to ``(width, height)``.

    ``key`` names the ``paths.json`` key in the not-found error.
    """
    require_file(path, "proposal file (COCO results format)", key=key)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(raw, list):
        raise DataError(
            f"{path}: a COCO results file is a JSON array of {{image_id, bbox, score}} objects, "
            f"got {type(raw).__name__}"
        )
    grouped: dict[int, list[Proposal]] = {}
    dropped: Counter[int] = Counter()
    unknown = 0
    for index, entry in enumerate(raw):
        image_id, xywh, score, category_id = _entry(entry, path, index)
        size = image_sizes.get(image_id)
        if size is None:
            unknown += 1
            continue
        box = _clipped_xyxy(xywh, *size)
        if box is None:
            dropped[image_id] += 1
            continue
        grouped.setdefault(image_id, []).append(Proposal(index, image_id, box, score, category_id))
    if raw and unknown == len(raw):
        raise DataError(
            f"{path}: none of its {len(raw)} entries has an image_id of the annotation file; "
            "is it the proposal file for this dataset?"
        )
    return ProposalSet(path=path, by_image={k: tuple(v) for k, v in grouped.items()}, n_entries=len(raw),
                       n_unknown_image=unknown, dropped_outside=dict(dropped))


def ranked(proposals: Sequence[Proposal], limit: int, min_score: float = 0.0) -> list[Proposal]:
    """The ``limit`` best proposals with ``score >= min_score``: by score (high first), ties by box.

    Ties are broken by the box (then category) and not by file position, so the
    choice and order do not depend on how the detector happened to write its file.
    """
    kept = [p for p in proposals if p.score >= min_score]
    kept.sort(key=lambda p: (-p.score, p.box, -1 if p.category_id is None else p.category_id, p.index))
    return kept[:limit]


def _entry(entry: Any, path: Path, index: int) -> tuple[int, list[float], float, int | None]:
    where = f"{path}, entry {index}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object {{image_id, bbox, score}}, got {type(entry).__name__}")
    missing = [f for f in ("image_id", "bbox", "score") if f not in entry]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    image_id = entry["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise DataError(f"{where}: 'image_id' must be an integer, got {image_id!r}")
    bbox = entry["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
        raise DataError(f"{where} (image {image_id}): 'bbox' must be four finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise DataError(
            f"{where} (image {image_id}): bbox {bbox} has no area; width and height must be positive "
            "(COCO results boxes are [x, y, w, h], not x1, y1, x2, y2)"
        )
    score = entry["score"]
    if not _finite(score):
        raise DataError(f"{where} (image {image_id}): 'score' must be a finite number, got {score!r}")
    category_id = entry.get("category_id")
    if category_id is not None and (isinstance(category_id, bool) or not isinstance(category_id, int)):
        raise DataError(f"{where} (image {image_id}): 'category_id' must be an integer, got {category_id!r}")
    return image_id, [float(v) for v in bbox], float(score), category_id


def _clipped_xyxy(xywh: list[float], width: int, height: int) -> Box | None:
    """``[x, y, w, h]`` as absolute xyxy clipped to the image; None when nothing is left."""
    x, y, w, h = xywh
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
