"""Generation parameters of the synthetic suite and the suite's version.

Every knob lives in :class:`SuiteParams` and is written into ``suite.json`` and
the COCO ``info`` block, so a suite on disk always says how it was made, and
the cache directory name hashes the parameters so two parameter sets never
share a cache entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from bench.errors import ConfigError

# Bump whenever the bytes written for the same parameters change (new fields,
# different drawing, different sampling); cached suites are keyed on it.
SUITE_VERSION = "1"

# Split order fixes the per-image seeds: changing one split's size never
# changes another split's images.
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Image ids are ``offset + index + 1`` per split, so ids are unique across
# splits and stable when another split grows.
SPLIT_ID_OFFSET: dict[str, int] = {"train": 100_000, "val": 200_000, "test": 300_000}
MAX_IMAGES_PER_SPLIT = 99_999


@dataclass(frozen=True)
class SuiteParams:
    """Every generation parameter; recorded in the data."""

    seed: int = 0
    n_train: int = 300  # training images (for later training code); disjoint from eval
    n_val: int = 60  # evaluation images
    n_test: int = 40  # second evaluation split (RefCOCOg test / REC test)
    min_size: int = 160  # image width and height are sampled independently
    max_size: int = 256
    min_objects: int = 3
    max_objects: int = 7
    small_share: float = 0.4  # share of objects in the "small" size class
    large_share: float = 0.2  # share in the "large" class (medium is the rest)
    max_large: int = 1  # large objects per image; more would crowd out the rest
    overlap_share: float = 0.4  # placements deliberately touching/overlapping another object
    repeat_category_share: float = 0.7  # extra objects reusing a category already present
    repeat_colour_share: float = 0.6  # a repeated category also reuses the colour
    # Targets whose category alone identifies them become refs only this often:
    # RefCOCOg picked targets that share their category with other objects, so
    # most refs should need colour, size or a relation.
    category_only_ref_share: float = 0.4
    crowd_share: float = 0.15  # images with an iscrowd cluster of small dots
    min_visible_fraction: float = 0.4  # occluded objects keep at least this share visible
    min_visible_pixels: int = 30
    noisy_background_share: float = 0.5
    detector_recall: float = 0.85  # simulated proposals: share of objects found
    detector_duplicate_share: float = 0.2  # found objects that get a second box
    detector_false_positives: float = 1.0  # mean spurious boxes per image

    def validate(self) -> None:
        """Reject parameter sets that cannot produce a well-formed suite."""
        problems = []
        for name in ("n_train", "n_val", "n_test"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_IMAGES_PER_SPLIT:
                problems.append(f"{name}={value} must be in 0..{MAX_IMAGES_PER_SPLIT}")
        if not 160 <= self.min_size <= self.max_size <= 2048:
            problems.append("image sizes need 160 <= min_size <= max_size <= 2048")
        # POPE needs 3 distinct categories per image plus 3 absent ones (10 in all).
        if not 3 <= self.min_objects <= self.max_objects <= 7:
            problems.append("objects per image need 3 <= min_objects <= max_objects <= 7")
        for name in (
            "small_share",
            "large_share",
            "overlap_share",
            "repeat_category_share",
            "repeat_colour_share",
            "category_only_ref_share",
            "crowd_share",
            "min_visible_fraction",
            "noisy_background_share",
            "detector_recall",
            "detector_duplicate_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if self.small_share + self.large_share > 1.0:
            problems.append("small_share + large_share must not exceed 1")
        if self.detector_false_positives < 0 or self.min_visible_pixels < 1 or self.max_large < 0:
            problems.append("counts must be non-negative (min_visible_pixels >= 1)")
        if problems:
            raise ConfigError("invalid synthetic suite parameters: " + "; ".join(problems))

    def split_sizes(self) -> dict[str, int]:
        """Number of images per split, in split order."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


def params_hash(params: SuiteParams) -> str:
    """Short stable hash of the parameters (names the cache directory)."""
    text = json.dumps(asdict(params), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
