"""Regions: what a region-level model is asked about.

A region is an absolute ``xyxy`` box in image pixels, a mask (COCO RLE or
polygons), or both. Tasks build regions from annotation files and never format
them as text: every adapter renders regions in its model's native way (GPT4RoI
as RoI features of a box, RegionGPT by mask pooling, a text-only model as
coordinates in its own convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from bench.errors import RegionError

Box = tuple[float, float, float, float]
# COCO segmentation: {"size": [h, w], "counts": str | list[int]} or [[x1, y1, x2, y2, ...], ...].
Mask = Union[dict[str, Any], list[list[float]]]


@dataclass(frozen=True)
class Region:
    """A box and/or a mask on one image. Build with :meth:`from_coco` or the constructor,
    then call :meth:`validated` with the image size before handing it to a model."""

    box: Box | None = None
    mask: Mask | None = None

    @classmethod
    def from_coco(cls, bbox_xywh: list[float] | None, segmentation: Mask | None = None) -> Region:
        """A region from COCO's ``[x, y, w, h]`` box and optional segmentation."""
        box = None
        if bbox_xywh is not None:
            if len(bbox_xywh) != 4:
                raise RegionError(f"a COCO bbox has 4 numbers [x, y, w, h], got {bbox_xywh!r}")
            x, y, w, h = (float(v) for v in bbox_xywh)
            box = (x, y, x + w, y + h)
        return cls(box=box, mask=segmentation or None)

    def validated(self, width: int, height: int) -> Region:
        """Return the region with its box clipped to the image, or raise :class:`RegionError`.

        A box must be four finite numbers with ``x1 <= x2`` and ``y1 <= y2`` and keep a
        positive area once clipped to ``[0, width] x [0, height]``. A region with only a
        mask gets its box from the mask, so every validated region has a box.
        """
        if self.box is None and self.mask is None:
            raise RegionError("a region needs a box or a mask")
        box = self.box if self.box is not None else _mask_box(self.decode_mask(width, height))
        if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
            raise RegionError(f"box {box!r} must be four finite numbers x1, y1, x2, y2")
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 < x1 or y2 < y1:
            raise RegionError(f"box {box!r} has x2 < x1 or y2 < y1 (expected absolute x1, y1, x2, y2)")
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                   min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
            raise RegionError(
                f"box {box!r} has no area inside the {width}x{height} image "
                "(is it outside the image, or [x, y, w, h] where x1, y1, x2, y2 was expected?)"
            )
        if self.mask is not None and not self.decode_mask(width, height).any():
            raise RegionError(f"the mask of region {box!r} is empty on the {width}x{height} image")
        return Region(box=clipped, mask=self.mask)

    def decode_mask(self, width: int, height: int) -> np.ndarray:
        """The region as a ``(height, width)`` boolean mask; a box-only region fills its box."""
        if self.mask is None:
            mask = np.zeros((height, width), dtype=bool)
            assert self.box is not None
            x1, y1, x2, y2 = self.box
            mask[int(math.floor(y1)):int(math.ceil(y2)), int(math.floor(x1)):int(math.ceil(x2))] = True
            return mask
        return decode_segmentation(self.mask, width, height)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for samples files (round-trips through :meth:`from_json`)."""
        return {"box": list(self.box) if self.box is not None else None, "mask": self.mask}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Region:
        box = data.get("box")
        return cls(box=tuple(box) if box is not None else None, mask=data.get("mask"))


def decode_segmentation(segmentation: Mask, width: int, height: int) -> np.ndarray:
    """Decode a COCO polygon list or RLE (compressed or not) to a boolean mask."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):
            if not segmentation or not all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
                raise RegionError("a polygon mask is a list of [x1, y1, x2, y2, x3, y3, ...] lists")
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            if list(segmentation["size"]) != [height, width]:
                raise RegionError(
                    f"RLE size {segmentation['size']} does not match the image (height {height}, width {width})"
                )
            rle = segmentation
            if isinstance(rle["counts"], list):
                rle = mask_utils.frPyObjects(rle, height, width)
            elif isinstance(rle["counts"], str):
                rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        else:
            raise RegionError("a mask is a COCO RLE {'size', 'counts'} or a list of polygons")
    except (TypeError, ValueError) as error:
        raise RegionError(f"mask could not be decoded: {error}") from None
    return mask_utils.decode(rle).astype(bool)


def _mask_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise RegionError("the mask is empty")
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two absolute ``xyxy`` boxes (continuous coordinates)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
