"""Encode masks the way real COCO files do.

COCO mixes three segmentation encodings and loaders must handle all of them,
so the suite uses all three: polygons (unoccluded polygonal objects), compressed
RLE (curved or occluded objects, pycocotools' string ``counts``) and
uncompressed RLE (crowd regions, integer ``counts`` list, column-major runs
starting with background).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def compressed_rle(mask: np.ndarray) -> dict[str, object]:
    """``{"size": [h, w], "counts": str}`` as pycocotools encodes it."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict[str, object]:
    """``{"counts": [int, ...], "size": [h, w]}`` like COCO's crowd annotations.

    Runs are taken over the mask in column-major (Fortran) order and alternate
    background/foreground, starting with a (possibly empty) background run.
    """
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def tight_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the smallest pixel box holding the mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1
