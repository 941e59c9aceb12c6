"""The closed vocabulary of the synthetic suite: categories, colours, sizes, relations.

Everything that ends up in a file or a sentence is named here once, so the
scene sampler, the renderer, the expression writer and the tests agree on the
same words. Changing anything here changes the generated data: bump
``SUITE_VERSION`` in :mod:`bench.synthetic.params`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One shape category, COCO style (ids start at 1 like COCO's)."""

    id: int
    name: str
    supercategory: str
    polygonal: bool  # drawn from a polygon, so an unoccluded instance is stored as one


CATEGORIES: tuple[Category, ...] = (
    Category(1, "circle", "round", False),
    Category(2, "square", "polygon", True),
    Category(3, "triangle", "polygon", True),
    Category(4, "star", "symbol", True),
    Category(5, "hexagon", "polygon", True),
    Category(6, "diamond", "polygon", True),
    Category(7, "cross", "symbol", True),
    Category(8, "ring", "round", False),
    Category(9, "heart", "symbol", False),
    Category(10, "crescent", "round", False),
)
CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}
CATEGORY_BY_ID: dict[int, Category] = {c.id: c for c in CATEGORIES}

# Saturated, well separated colours; backgrounds are muted (see scene.py) so
# every colour stays recognisable on every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (140, 55, 190),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Size classes by the object's extent in pixels. The ranges leave gaps so a
# "small" and a "medium" object never look alike, which keeps size words in
# referring expressions visually checkable. Small objects fall under COCO's
# "small" area range (< 32**2 px), medium mostly under "medium", large squares
# and hexagons reach COCO "large" (>= 96**2 px).
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "small": (16, 26),
    "medium": (36, 64),
    "large": (100, 140),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZE_RANGES)

# Words a sentence may use for each size class (first one is the canonical word).
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big"),
}

# Spatial relations between a target and an anchor, with their phrasings.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
RELATIONS: tuple[str, ...] = tuple(RELATION_PHRASES)
