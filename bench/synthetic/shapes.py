"""Rasterise the shape categories into exact pixel masks.

Polygonal shapes are rasterised with pycocotools' own polygon rasteriser, so an
unoccluded polygonal object stored as a COCO polygon decodes (``annToMask``) to
exactly the pixels that were painted. Curved shapes (circle, ring, heart,
crescent) are implicit functions sampled at pixel centres and are always stored
as RLE. A mask is a boolean ``(height, width)`` array; a pixel belongs to the
shape when the shape covers the pixel's centre.

``extent`` is the shape's size class measure: roughly its width and height in
pixels before rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pycocotools import mask as mask_utils

from bench.synthetic.vocab import CATEGORY_BY_NAME

# Rotation (degrees, either way) each shape may get. Squares stay near axis
# aligned and crosses never reach 45 degrees so they are not mistaken for
# diamonds and X marks.
MAX_ROTATION: dict[str, float] = {
    "circle": 0.0,
    "square": 10.0,
    "triangle": 12.0,
    "star": 36.0,
    "hexagon": 30.0,
    "diamond": 8.0,
    "cross": 10.0,
    "ring": 0.0,
    "heart": 12.0,
    "crescent": 180.0,
}


# How far (in extents) a shape reaches from its centre along x or y, over its
# allowed rotations; placement keeps this much room to the image border.
REACH: dict[str, float] = {
    "circle": 0.5,
    "square": 0.5,
    "triangle": 0.65,
    "star": 0.61,
    "hexagon": 0.5,
    "diamond": 0.5,
    "cross": 0.53,
    "ring": 0.5,
    "heart": 0.56,
    "crescent": 0.5,
}


@dataclass(frozen=True)
class ShapeRaster:
    """A shape's full (unoccluded) mask and, for polygonal shapes, its polygon."""

    mask: np.ndarray  # bool (height, width)
    polygon: list[float] | None  # flat [x1, y1, x2, y2, ...] in image pixels
    window: tuple[slice, slice]  # (rows, cols) holding every pixel of the mask

    @cached_property
    def pixels(self) -> int:
        """Number of pixels in the mask."""
        return int(np.count_nonzero(self.mask[self.window]))


def rasterize(
    kind: str,
    cx: float,
    cy: float,
    extent: float,
    rotation: float,
    height: int,
    width: int,
) -> ShapeRaster:
    """Full mask of one shape centred at ``(cx, cy)`` on a ``height x width`` image."""
    if CATEGORY_BY_NAME[kind].polygonal:
        polygon = _polygon(kind, cx, cy, extent, rotation)
        rle = mask_utils.frPyObjects([polygon], height, width)
        mask = mask_utils.decode(rle)[:, :, 0].astype(bool)
        xs, ys = polygon[0::2], polygon[1::2]
        window = _window(min(xs), max(xs), min(ys), max(ys), height, width)
        return ShapeRaster(mask, polygon, window)
    half = extent * 0.75  # generous: every curved shape fits in +-0.6 extent
    window = _window(cx - half, cx + half, cy - half, cy + half, height, width)
    return ShapeRaster(_implicit(kind, cx, cy, extent, rotation, window, height, width), None, window)


def _window(x0: float, x1: float, y0: float, y1: float, height: int, width: int) -> tuple[slice, slice]:
    rows = slice(max(0, math.floor(y0) - 1), min(height, math.ceil(y1) + 2))
    cols = slice(max(0, math.floor(x0) - 1), min(width, math.ceil(x1) + 2))
    return rows, cols


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a mask by ``radius`` pixels (square neighbourhood).

    Used to keep objects of the same colour from touching: two touching red
    shapes would merge into one red blob and no longer look like two objects.
    """
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _unit_polygon(kind: str) -> list[tuple[float, float]]:
    """Vertices for a shape of extent 1 centred at the origin (y grows downwards)."""
    if kind == "square":
        a = 0.43
        return [(-a, -a), (a, -a), (a, a), (-a, a)]
    if kind == "diamond":
        return [(0.0, -0.5), (0.36, 0.0), (0.0, 0.5), (-0.36, 0.0)]
    if kind == "triangle":
        r = 0.56  # circumradius; the centroid sits below the box centre, shift it up
        shift = 0.25 * r
        return [(r * math.cos(math.radians(a)), r * math.sin(math.radians(a)) + shift) for a in (-90.0, 30.0, 150.0)]
    if kind == "hexagon":
        return [(0.5 * math.cos(math.radians(a)), 0.5 * math.sin(math.radians(a))) for a in range(0, 360, 60)]
    if kind == "star":
        points = []
        for i in range(10):
            radius = 0.55 if i % 2 == 0 else 0.23
            angle = math.radians(-90.0 + 36.0 * i)
            points.append((radius * math.cos(angle), radius * math.sin(angle) + 0.05))
        return points
    if kind == "cross":
        a, b = 0.5, 0.17  # arm half-length, arm half-width
        return [
            (-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
            (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b),
        ]  # fmt: skip
    raise ValueError(f"{kind!r} is not a polygonal shape")


def _polygon(kind: str, cx: float, cy: float, extent: float, rotation: float) -> list[float]:
    cos_r, sin_r = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    flat: list[float] = []
    for ux, uy in _unit_polygon(kind):
        x = cx + extent * (ux * cos_r - uy * sin_r)
        y = cy + extent * (ux * sin_r + uy * cos_r)
        # Round first and rasterise the rounded polygon, so the stored
        # coordinates decode to exactly the painted pixels.
        flat.extend((round(x, 2), round(y, 2)))
    return flat


def _implicit(
    kind: str,
    cx: float,
    cy: float,
    extent: float,
    rotation: float,
    window: tuple[slice, slice],
    height: int,
    width: int,
) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    y0, y1, x0, x1 = window[0].start, window[0].stop, window[1].start, window[1].stop
    if x0 >= x1 or y0 >= y1:
        return mask
    # Unit coordinates: pixel centres relative to the centre, rotated back, and
    # divided by the extent (so the shape spans about -0.5..0.5).
    dx = ((np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx)) / np.float32(extent))[None, :]
    dy = ((np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy)) / np.float32(extent))[:, None]
    if rotation:
        cos_r = np.float32(math.cos(math.radians(rotation)))
        sin_r = np.float32(math.sin(math.radians(rotation)))
        u, v = dx * cos_r + dy * sin_r, -dx * sin_r + dy * cos_r
    else:
        u, v = dx, dy  # broadcasting below expands them to the window
    if kind == "circle":
        inside = u * u + v * v <= 0.25
    elif kind == "ring":
        r2 = u * u + v * v
        inside = (r2 <= 0.25) & (r2 >= 0.25 * 0.5**2)
    elif kind == "crescent":
        inside = (u * u + v * v <= 0.25) & ((u - 0.22) ** 2 + v * v > 0.42**2)
    elif kind == "heart":
        # Classic heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y pointing up,
        # spanning about x in [-1.14, 1.14], y in [-1, 1.25]; scaled to extent 1.
        hx, hy = u * 2.3, -(v * 2.3) + 0.12
        lobe = hx * hx + hy * hy - 1.0
        inside = lobe * lobe * lobe - hx * hx * hy * hy * hy <= 0.0
    else:
        raise ValueError(f"{kind!r} is not a curved shape")
    mask[y0:y1, x0:x1] = inside
    return mask
