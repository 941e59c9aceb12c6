"""COCO instances files (``instances_*.json``, RefCOCOg's ``instances.json``).

Loaded with the standard library rather than ``pycocotools.coco.COCO`` because
every bad record must be reported by file and annotation id with the fix, and
because tasks need typed records and validated :class:`~bench.regions.Region`
objects, not the raw dicts. Masks stay in COCO form (polygons, compressed or
uncompressed RLE) and are decoded by pycocotools only when an adapter asks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.data.files import require_file, resolve_inside
from bench.errors import DataError, RegionError
from bench.regions import Mask, Region
from bench.types import ImageRef


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # COCO x, y, width, height
    area: float
    iscrowd: bool
    segmentation: Mask | None


@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    supercategory: str = ""


@dataclass
class CocoInstances:
    """One instances file: images and categories by id, annotations in file order."""

    path: Path
    images: dict[int, CocoImage]
    annotations: list[CocoAnnotation]
    categories: dict[int, CocoCategory]

    def annotation(self, annotation_id: int) -> CocoAnnotation:
        found = self._by_id.get(annotation_id)
        if found is None:
            raise DataError(f"{self.path}: no annotation with id {annotation_id}")
        return found

    @cached_property
    def _by_id(self) -> dict[int, CocoAnnotation]:
        return {a.id: a for a in self.annotations}

    def region(self, annotation: CocoAnnotation, with_mask: bool = True) -> Region:
        """The annotation's validated region (box, plus its segmentation when ``with_mask``)."""
        image = self.images[annotation.image_id]
        try:
            return Region.from_coco(
                list(annotation.bbox), annotation.segmentation if with_mask else None
            ).validated(image.width, image.height)
        except RegionError as error:
            raise DataError(f"{self.path}, annotation {annotation.id} (image {image.id}): {error}") from None

    def image_ref(self, image_id: int, image_root: Path) -> ImageRef:
        """An :class:`ImageRef` for ``image_id`` under ``image_root`` (not opened)."""
        image = self.images[image_id]
        path = resolve_inside(image_root, image.file_name, self.path, f"image {image_id}")
        return ImageRef(key=image.file_name, path=path, size=(image.width, image.height))


def load_coco_instances(path: Path, key: str | None = None) -> CocoInstances:
    """Read and check an instances file; ``key`` names its ``paths.json`` key in errors."""
    require_file(path, "COCO instances file", key=key)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        raise DataError(f"{path}: a COCO instances file is an object with 'images', 'annotations' and "
                        "'categories' lists")
    images: dict[int, CocoImage] = {}
    for index, item in enumerate(raw["images"]):
        where = f"images[{index}]"
        image = CocoImage(
            id=_int(item, "id", path, where), file_name=_str(item, "file_name", path, where),
            width=_int(item, "width", path, where), height=_int(item, "height", path, where),
        )
        if image.width <= 0 or image.height <= 0:
            raise DataError(f"{path}, {where} (image {image.id}): width and height must be positive")
        if image.id in images:
            raise DataError(f"{path}, {where}: image id {image.id} appears twice")
        images[image.id] = image
    categories: dict[int, CocoCategory] = {}
    for index, item in enumerate(raw["categories"]):
        where = f"categories[{index}]"
        category = CocoCategory(id=_int(item, "id", path, where), name=_str(item, "name", path, where),
                                supercategory=str(item.get("supercategory", "")))
        if category.id in categories:
            raise DataError(f"{path}, {where}: category id {category.id} appears twice")
        categories[category.id] = category
    annotations: list[CocoAnnotation] = []
    seen: set[int] = set()
    for index, item in enumerate(raw["annotations"]):
        annotation = _annotation(item, path, f"annotations[{index}]")
        where = f"annotation {annotation.id}"
        if annotation.id in seen:
            raise DataError(f"{path}, {where}: annotation id appears twice")
        if annotation.image_id not in images:
            raise DataError(f"{path}, {where}: image_id {annotation.image_id} is not in 'images'")
        if annotation.category_id not in categories:
            raise DataError(f"{path}, {where}: category_id {annotation.category_id} is not in 'categories'")
        seen.add(annotation.id)
        annotations.append(annotation)
    return CocoInstances(path=path, images=images, annotations=annotations, categories=categories)


def _annotation(item: Any, path: Path, where: str) -> CocoAnnotation:
    if not isinstance(item, dict):
        raise DataError(f"{path}, {where}: expected an object")
    annotation_id = _int(item, "id", path, where)
    where = f"annotation {annotation_id}"
    bbox = item.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
        raise DataError(f"{path}, {where}: 'bbox' must be four finite numbers [x, y, width, height]")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise DataError(f"{path}, {where}: bbox {bbox} has no area (width and height must be positive)")
    segmentation = item.get("segmentation") or None
    if segmentation is not None and not _mask_shaped(segmentation):
        raise DataError(f"{path}, {where}: 'segmentation' must be a list of polygons (lists of numbers) or an "
                        "RLE object with 'size' and 'counts'")
    area = item.get("area", bbox[2] * bbox[3])
    if not _finite(area) or area < 0:
        raise DataError(f"{path}, {where}: 'area' must be a finite, non-negative number")
    iscrowd = item.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        raise DataError(f"{path}, {where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    return CocoAnnotation(
        id=annotation_id, image_id=_int(item, "image_id", path, where),
        category_id=_int(item, "category_id", path, where),
        bbox=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
        area=float(area), iscrowd=bool(iscrowd), segmentation=segmentation,
    )


def _mask_shaped(segmentation: Any) -> bool:
    """The COCO segmentation shapes; whether a mask decodes on its image is checked when it is used
    (real files hold a few degenerate polygons that only mask-taking models would ever see)."""
    if isinstance(segmentation, list):
        return all(isinstance(p, list) and all(_finite(v) for v in p) for p in segmentation)
    if isinstance(segmentation, dict):
        return isinstance(segmentation.get("counts"), (str, list)) and isinstance(segmentation.get("size"), list)
    return False


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(item: Any, field: str, path: Path, where: str) -> int:
    value = item.get(field) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{path}, {where}: '{field}' must be an integer, got {value!r}")
    return value


def _str(item: Any, field: str, path: Path, where: str) -> str:
    value = item.get(field) if isinstance(item, dict) else None
    if not isinstance(value, str) or not value:
        raise DataError(f"{path}, {where}: '{field}' must be a non-empty string, got {value!r}")
    return value
