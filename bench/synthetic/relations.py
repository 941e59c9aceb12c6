"""Spatial relations between objects, with a strict and a loose reading.

A referring expression such as "the red circle left of the blue square" must
be right for the target *and* clearly wrong for every other red circle. One
threshold for both would make borderline cases ambiguous, so each relation has
two readings:

* **strict** (``holds``): the target is decidedly in that direction: its box
  centre lies beyond the anchor's box edge and the offset is mostly along that
  axis ("left of" means more sideways than up or down);
* **loose** (``could_hold``): an object is at least on that side of the
  anchor's centre.

An expression is emitted only when the target satisfies the strict reading and
every distractor fails even the loose one, so a reader with any reasonable
notion of "left of" picks the same object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """A pixel box ``(x, y, w, h)`` (COCO order)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        """Centre x."""
        return self.x + self.w / 2.0

    @property
    def cy(self) -> float:
        """Centre y."""
        return self.y + self.h / 2.0

    @property
    def x1(self) -> float:
        """Right edge (exclusive)."""
        return self.x + self.w

    @property
    def y1(self) -> float:
        """Bottom edge (exclusive)."""
        return self.y + self.h

    def union(self, other: Box) -> Box:
        """Smallest box holding both."""
        x, y = min(self.x, other.x), min(self.y, other.y)
        return Box(x, y, max(self.x1, other.x1) - x, max(self.y1, other.y1) - y)

    def gap(self, other: Box) -> float:
        """Distance between the boxes along the axis that separates them most (0 if they overlap)."""
        dx = max(other.x - self.x1, self.x - other.x1, 0.0)
        dy = max(other.y - self.y1, self.y - other.y1, 0.0)
        return max(dx, dy)


def holds(relation: str, target: Box, anchor: Box) -> bool:
    """Strict reading: ``target`` is decidedly ``relation`` of ``anchor``."""
    dx, dy = target.cx - anchor.cx, target.cy - anchor.cy
    if relation == "left":
        return target.cx < anchor.x and -dx >= abs(dy)
    if relation == "right":
        return target.cx > anchor.x1 and dx >= abs(dy)
    if relation == "above":
        return target.cy < anchor.y and -dy >= abs(dx)
    if relation == "below":
        return target.cy > anchor.y1 and dy >= abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def could_hold(relation: str, other: Box, anchor: Box) -> bool:
    """Loose reading: ``other`` is at least on the ``relation`` side of the anchor's centre."""
    if relation == "left":
        return other.cx < anchor.cx
    if relation == "right":
        return other.cx > anchor.cx
    if relation == "above":
        return other.cy < anchor.cy
    if relation == "below":
        return other.cy > anchor.cy
    raise ValueError(f"unknown relation {relation!r}")


def touching(a: Box, b: Box, max_gap: float = 3.0) -> bool:
    """Boxes overlap or are within ``max_gap`` pixels (for "next to" captions)."""
    return a.gap(b) <= max_gap
