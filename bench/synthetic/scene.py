"""Sample one synthetic scene: which objects, what they look like, where they go.

A scene is a background plus objects painted in *draw order*; later objects
occlude earlier ones, so each object's annotation is its **visible** mask. The
sampler deliberately makes the cases region models get wrong on real data:

* repeated categories (and repeated category + colour), so a referring
  expression needs colour, size or a spatial relation to pick one object;
* touching and overlapping placements (``overlap_share``), so boxes overlap
  and masks are partly hidden;
* all three COCO area ranges (small < 32**2, medium < 96**2, large);
* now and then an ``iscrowd`` cluster of small dots, which loaders must skip.

Occlusion never hides more than ``1 - min_visible_fraction`` of an object and
never leaves fewer than ``min_visible_pixels`` pixels, and objects of the same
colour never touch (they would merge into one blob), so every annotated object
stays recognisable.

Everything is drawn from the ``numpy.random.Generator`` handed in, which the
suite seeds per image, so a scene depends only on (seed, split, image index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from bench.synthetic.params import SuiteParams
from bench.synthetic.shapes import MAX_ROTATION, REACH, ShapeRaster, dilate, rasterize
from bench.synthetic.vocab import CATEGORIES, COLOUR_NAMES, COLOURS, SIZE_RANGES

PLACEMENT_TRIES = 40  # positions tried per object before it is dropped
SCENE_TRIES = 30  # whole-scene resamples before giving up (never reached in practice)
SAME_COLOUR_GAP = 3  # pixels kept between objects of the same colour
CROWD_CATEGORY = "circle"  # a crowd is a cluster of small dots, i.e. circles
CROWD_MIN_VISIBLE = 0.6
MAX_DISTINCT = len(CATEGORIES) - 3  # POPE needs 3 categories absent from every image


@dataclass
class SceneObject:
    """One annotated object (never a crowd)."""

    category: str
    colour: str
    size: str  # "small" | "medium" | "large"
    extent: float  # pixels; the size class measure
    cx: float
    cy: float
    rotation: float  # degrees
    rgb: tuple[int, int, int]  # painted colour (named colour with a little jitter)
    raster: ShapeRaster
    visible: np.ndarray = field(repr=False)  # bool (height, width)

    @property
    def full(self) -> np.ndarray:
        """The unoccluded mask."""
        return self.raster.mask

    @property
    def occluded(self) -> bool:
        """True when a later object hides part of this one."""
        window = self.raster.window
        return bool((self.full[window] & ~self.visible[window]).any())


@dataclass
class CrowdCluster:
    """A cluster of small dots annotated as one ``iscrowd`` region."""

    category: str
    colour: str
    rgb: tuple[int, int, int]
    full: np.ndarray = field(repr=False)
    visible: np.ndarray = field(repr=False)


@dataclass
class Scene:
    """A sampled scene; ``objects`` are in draw order (bottom first)."""

    width: int
    height: int
    background: np.ndarray = field(repr=False)  # uint8 (height, width, 3)
    objects: list[SceneObject]
    crowd: CrowdCluster | None


def sample_scene(rng: np.random.Generator, params: SuiteParams) -> Scene:
    """Sample a scene that satisfies the object-count and distinct-category rules."""
    width = int(rng.integers(params.min_size, params.max_size + 1))
    height = int(rng.integers(params.min_size, params.max_size + 1))
    background = sample_background(rng, width, height, params)
    for _ in range(SCENE_TRIES):
        crowd = _sample_crowd(rng, width, height) if rng.random() < params.crowd_share else None
        reserved = {crowd.category} if crowd is not None else set()
        specs = _sample_specs(rng, params, reserved)
        objects = _place(rng, specs, width, height, crowd, params)
        distinct = {o.category for o in objects}
        if len(objects) >= params.min_objects and len(distinct) >= 3:
            return Scene(width, height, background, objects, crowd)
    raise RuntimeError("could not place enough objects; relax the scene parameters")


def sample_background(rng: np.random.Generator, width: int, height: int, params: SuiteParams) -> np.ndarray:
    """A muted, plain or gently noisy background far from every object colour."""
    for _ in range(100):
        hue = rng.random()
        sat = rng.uniform(0.05, 0.3)
        val = rng.uniform(0.2, 0.55)
        base = np.array(_hsv_to_rgb(hue, sat, val))
        if min(np.linalg.norm(base - np.array(c)) for c in COLOURS.values()) >= 95.0:
            break
    image = np.empty((height, width, 3), dtype=np.uint8)
    for channel, value in enumerate(np.rint(base).astype(np.uint8)):
        image[:, :, channel] = value  # per channel: 5x faster than broadcasting a pixel
    if rng.random() >= params.noisy_background_share:
        return image
    # A faint gradient plus blotchy low-frequency noise: enough texture that a
    # model can't segment by "exact background colour", far too little to hide
    # a shape. (Per-pixel noise would triple PNG size and write time.)
    angle = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(6, 16)
    xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(angle) * strength / width)
    ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(angle) * strength / height)
    shade = np.rint(ys[:, None] + xs[None, :] + _smooth_noise(rng, height, width)).astype(np.int16)
    return np.clip(image.astype(np.int16) + shade[:, :, None], 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Spec:
    category: str
    colour: str
    size: str
    extent: float
    rotation: float


def _sample_specs(rng: np.random.Generator, params: SuiteParams, reserved: set[str]) -> list[_Spec]:
    """Attributes of the objects to place, in draw order (big ones first, mostly).

    ``reserved`` holds categories already in the image (a crowd's); together
    with the objects' categories they never exceed ``MAX_DISTINCT``, so POPE
    always finds three absent categories to ask about.
    """
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    names = [c.name for c in CATEGORIES]
    first = rng.choice(len(names), size=3, replace=False)
    categories = [names[i] for i in first]
    colours = [COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))] for _ in categories]
    while len(categories) < n:
        full = len(set(categories) | reserved) >= MAX_DISTINCT
        if rng.random() < params.repeat_category_share or full:
            pick = int(rng.integers(len(categories)))
            category = categories[pick]
            same = [colours[i] for i, c in enumerate(categories) if c == category]
            others = [c for c in COLOUR_NAMES if c not in same]
            if rng.random() < params.repeat_colour_share or not others:
                colour = same[int(rng.integers(len(same)))]
            else:
                colour = others[int(rng.integers(len(others)))]
        else:
            unused = [c for c in names if c not in categories]
            category = unused[int(rng.integers(len(unused)))]
            colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        categories.append(category)
        colours.append(colour)
    specs = []
    n_large = 0
    for category, colour in zip(categories, colours, strict=True):
        draw = rng.random()
        if draw < params.small_share:
            size = "small"
        elif draw < params.small_share + params.large_share and n_large < params.max_large:
            size = "large"
            n_large += 1
        else:
            size = "medium"
        low, high = SIZE_RANGES[size]
        extent = float(rng.uniform(low, high))
        max_rot = MAX_ROTATION[category]
        rotation = float(rng.uniform(-max_rot, max_rot)) if max_rot else 0.0
        specs.append(_Spec(category, colour, size, round(extent, 2), round(rotation, 2)))
    # Mostly paint big objects first so small ones sit on top, but jitter the
    # order so small objects are sometimes partly covered too.
    keys = [s.extent * rng.uniform(0.6, 1.4) for s in specs]
    order = sorted(range(len(specs)), key=lambda i: -keys[i])
    return [specs[i] for i in order]


def _jitter_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    shift = rng.integers(-8, 9, size=3)
    r, g, b = (min(255, max(0, c + int(d))) for c, d in zip(COLOURS[colour], shift, strict=True))
    return (r, g, b)


def _place(
    rng: np.random.Generator,
    specs: list[_Spec],
    width: int,
    height: int,
    crowd: CrowdCluster | None,
    params: SuiteParams,
) -> list[SceneObject]:
    placed: list[SceneObject] = []
    if crowd is not None:
        crowd.visible = crowd.full.copy()
    for spec in specs:
        margin = spec.extent * REACH[spec.category] + 1.0
        if 2 * margin >= min(width, height):
            continue
        for _ in range(PLACEMENT_TRIES):
            if placed and rng.random() < params.overlap_share:
                # Next to (touching or overlapping) an object already placed.
                other = placed[int(rng.integers(len(placed)))]
                angle = rng.uniform(0.0, 2.0 * math.pi)
                dist = (other.extent + spec.extent) / 2.0 * rng.uniform(0.55, 1.0)
                cx, cy = other.cx + dist * math.cos(angle), other.cy + dist * math.sin(angle)
                if not (margin <= cx <= width - margin and margin <= cy <= height - margin):
                    continue
            else:
                cx = rng.uniform(margin, width - margin)
                cy = rng.uniform(margin, height - margin)
            cx, cy = round(float(cx), 2), round(float(cy), 2)
            raster = rasterize(spec.category, cx, cy, spec.extent, spec.rotation, height, width)
            if _acceptable(raster, spec.colour, placed, crowd, params):
                window, covered = raster.window, raster.mask[raster.window]
                for other in placed:
                    other.visible[window] &= ~covered
                if crowd is not None:
                    crowd.visible[window] &= ~covered
                placed.append(
                    SceneObject(
                        category=spec.category,
                        colour=spec.colour,
                        size=spec.size,
                        extent=spec.extent,
                        cx=cx,
                        cy=cy,
                        rotation=spec.rotation,
                        rgb=_jitter_rgb(rng, spec.colour),
                        raster=raster,
                        visible=raster.mask.copy(),
                    )
                )
                break
    return placed


def _acceptable(
    raster: ShapeRaster,
    colour: str,
    placed: list[SceneObject],
    crowd: CrowdCluster | None,
    params: SuiteParams,
) -> bool:
    """Would painting ``raster`` on top keep every earlier object recognisable?

    Only the candidate's window can change, so every test looks there alone.
    """
    window = raster.window
    mask = raster.mask[window]
    if np.count_nonzero(mask) < params.min_visible_pixels:
        return False
    rows, cols = window
    # The candidate window grown by the gap, for the same-colour test.
    grown = (
        slice(max(0, rows.start - SAME_COLOUR_GAP), rows.stop + SAME_COLOUR_GAP),
        slice(max(0, cols.start - SAME_COLOUR_GAP), cols.stop + SAME_COLOUR_GAP),
    )
    halo: np.ndarray | None = None
    others: list[tuple[np.ndarray, str, float]] = [
        (
            o.visible,
            o.colour,
            max(params.min_visible_fraction * o.raster.pixels, params.min_visible_pixels),
        )
        for o in placed
    ]
    if crowd is not None:
        others.append((crowd.visible, crowd.colour, CROWD_MIN_VISIBLE * np.count_nonzero(crowd.full)))
    for visible, other_colour, needed in others:
        hidden = np.count_nonzero(visible[window] & mask)
        if hidden and np.count_nonzero(visible) - hidden < needed:
            return False
        if other_colour == colour:
            if halo is None:
                halo = dilate(raster.mask[grown], SAME_COLOUR_GAP)
            if (halo & visible[grown]).any():
                return False
    return True


def _sample_crowd(rng: np.random.Generator, width: int, height: int) -> CrowdCluster:
    """6-12 small dots in a patch, like COCO's crowd regions (a flock, a crowd)."""
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    spread = rng.uniform(12.0, 22.0)
    ccx = rng.uniform(spread + 6, width - spread - 6)
    ccy = rng.uniform(spread + 6, height - spread - 6)
    full = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(6, 13))):
        r = rng.uniform(0.0, spread)
        a = rng.uniform(0.0, 2.0 * math.pi)
        dot = rasterize(
            CROWD_CATEGORY,
            round(float(ccx + r * math.cos(a)), 2),
            round(float(ccy + r * math.sin(a)), 2),
            round(float(rng.uniform(5.0, 8.0)), 2),
            0.0,
            height,
            width,
        )
        full |= dot.mask
    return CrowdCluster(CROWD_CATEGORY, colour, _jitter_rgb(rng, colour), full, full.copy())


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Brightness noise with ~8 px blotches: a coarse random grid, bilinearly upsampled."""
    cell = 8
    rows, cols = height // cell + 2, width // cell + 2
    grid = rng.normal(0.0, 6.0, size=(rows, cols)).astype(np.float32)
    upsampled = Image.fromarray(grid, mode="F").resize((cols * cell, rows * cell), Image.BILINEAR)
    return np.asarray(upsampled)[:height, :width]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (r * 255.0, g * 255.0, b * 255.0)
