"""Where each dataset file lives under a data root.

A data root is one directory holding every dataset the tasks read. Each file a
task needs has a *key* (``"pope_questions"``) with a default path relative to the
root that mirrors the official release layouts. A ``paths.json`` file at the
root may override any key with a path relative to the root or an absolute path,
so real datasets can stay where they already are on disk::

    {"pope_images": "/datasets/coco/val2014", "vg_images": "vg/VG_100K"}

The synthetic suite writes its own ``paths.json`` because it stores every
evaluation image once, in ``images/val``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.errors import DataError

DEFAULT_PATHS: dict[str, str] = {
    # POPE: the authors' question files (JSON Lines) and the COCO val2014 images.
    "pope_questions": "pope/coco_pope_{split}.json",
    "pope_images": "coco/val2014",
    # COCO 2017 instances for region classification.
    "coco_instances": "coco/annotations/instances_{split}2017.json",
    "coco_images": "coco/{split}2017",
    # RefCOCOg (umd): refs pickle + instances json; images are COCO train2014.
    "refcocog_refs": "refcocog/refs(umd).p",
    "refcocog_instances": "refcocog/instances.json",
    "refcocog_images": "coco/train2014",
    # Proposal boxes for REC, COCO results format.
    "refcocog_proposals": "proposals/refcocog_umd_{split}.json",
    # Visual Genome region captions; split file of image ids (GRiT's test split).
    "vg_regions": "vg/region_descriptions.json",
    "vg_image_data": "vg/image_data.json",
    "vg_split": "vg/{split}.json",
    "vg_images": "vg/images",
}

PATHS_FILE = "paths.json"


def dataset_path(data_root: Path, key: str, **fields: str) -> Path:
    """Resolve the path for ``key`` under ``data_root``, honouring ``paths.json``.

    ``fields`` fill placeholders such as ``{split}``.
    """
    if key not in DEFAULT_PATHS:
        raise KeyError(f"unknown dataset path key {key!r}")
    template = _overrides(data_root).get(key, DEFAULT_PATHS[key])
    try:
        relative = template.format(**fields)
    except KeyError as missing:
        raise DataError(
            f"{data_root / PATHS_FILE}: the path for {key!r} ({template!r}) uses the "
            f"placeholder {missing}, which this task does not provide"
        ) from None
    return (data_root / relative).resolve()


def _overrides(data_root: Path) -> dict[str, str]:
    path = data_root / PATHS_FILE
    if not path.is_file():
        return {}
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); fix or delete the file") from None
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
    ):
        raise DataError(f"{path}: expected an object mapping path keys to path strings")
    unknown = sorted(set(overrides) - set(DEFAULT_PATHS))
    if unknown:
        raise DataError(
            f"{path}: unknown path keys {unknown}; known keys are {sorted(DEFAULT_PATHS)}"
        )
    return overrides
