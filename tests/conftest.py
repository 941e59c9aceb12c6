"""Shared fixtures: small POPE data roots written by the tests, and the real files in ../shared."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_POPE = REPO.parent / "shared" / "data" / "pope"
SPLITS = ("random", "popular", "adversarial")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generate the default synthetic suite into a per-session cache (subprocesses inherit it)."""
    cache = tmp_path_factory.mktemp("region-bench-cache")
    previous = os.environ.get("REGION_BENCH_CACHE")
    os.environ["REGION_BENCH_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("REGION_BENCH_CACHE", None)
    else:
        os.environ["REGION_BENCH_CACHE"] = previous


def write_pope_root(root: Path, n_images: int = 10, start_id: int = 1, legacy: bool = False) -> Path:
    """A data root with the three POPE files: per image 3 yes + 3 no questions, alternating."""
    (root / "pope").mkdir(parents=True, exist_ok=True)
    objects = ["cat", "dog", "car", "tree", "cup", "bus", "kite", "sofa"]
    for split_index, split in enumerate(SPLITS):
        lines = []
        question_id = start_id
        for image in range(n_images):
            for k in range(6):
                record = {
                    "question_id": question_id,
                    "image": f"COCO_val2014_{image:012d}.jpg",
                    "text": f"Is there a {objects[(image + k + split_index) % len(objects)]} in the image?",
                    "label": "yes" if k % 2 == 0 else "no",
                }
                if legacy:
                    record = {"question_id": question_id, "image_id": image, **record}
                lines.append(json.dumps(record))
                question_id += 1
        (root / "pope" / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def pope_root(tmp_path: Path) -> Path:
    return write_pope_root(tmp_path / "data")


@pytest.fixture
def shared_pope_root(tmp_path: Path) -> Path:
    """A data root holding the real POPE question files (skips where ../shared is absent)."""
    if not all((SHARED_POPE / f"coco_pope_{s}.json").is_file() for s in SPLITS):
        pytest.skip("../shared/data/pope is not present")
    root = tmp_path / "real"
    (root / "pope").mkdir(parents=True)
    for split in SPLITS:
        (root / "pope" / f"coco_pope_{split}.json").symlink_to(SHARED_POPE / f"coco_pope_{split}.json")
    return root
