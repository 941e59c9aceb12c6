"""Visual Genome region descriptions for region captioning.

Files (VG 1.2 release, plus GRiT's evaluation split):

* ``region_descriptions.json``: a list of ``{"id": image_id, "regions": [...]}``
  (the image-level key ``image_id`` is accepted too); each region is
  ``{"region_id", "image_id", "phrase", "x", "y", "width", "height"}`` with an
  ``[x, y, width, height]`` box in image pixels. VG has boxes only, no masks.
* ``image_data.json`` (optional): a list of ``{"image_id" or "id", "width",
  "height", ...}`` giving image sizes. Without it the size is read from each
  image file's header (``PIL.Image.open(path).size`` decodes no pixels), so the
  images must then be present; region boxes cannot be validated without a size.
* a split file (optional): a JSON list of image ids, or GRiT's COCO-style
  ``test.json`` (an object whose ``"images"`` list holds ``{"id", ...}``); only
  the image ids are taken from it, the regions always come from
  ``region_descriptions.json``. Without one every image is evaluated (the task
  warns).

Image files are ``{image_id}.jpg`` (the VG_100K releases) or ``{image_id}.png``
when that exists, directly under the image root or in its ``VG_100K`` /
``VG_100K_2`` sub-folders (the two official zips), always resolved inside the
image root.

What is kept, what is skipped, what is an error:

* every region is its own item with its own phrase, even when another region of
  the same image has the identical box (GRiT evaluates each VG region with its
  own phrase; merging would give those boxes several references and change CIDEr);
* a box with zero (or negative) width or height is skipped and counted: real VG
  holds a few such degenerate annotations and they describe no pixels;
* an empty phrase is skipped and counted as well (nothing to score against);
* a box partly outside the image is clipped (``Region.validated``); a box with no
  area inside the image is a :class:`DataError`, since it means the image sizes
  or the annotation are wrong;
* missing or malformed fields, duplicate image or region ids, and split ids
  absent from the region file are :class:`DataError` naming the file and the
  image / region id.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.files import require_file, resolve_inside
from bench.errors import DataError, RegionError
from bench.regions import Region
from bench.types import ImageRef

# Where an image may live under the image root, in order of preference.
IMAGE_NAME_PATTERNS = ("{id}.jpg", "{id}.png", "VG_100K/{id}.jpg", "VG_100K_2/{id}.jpg")
SKIP_ZERO_AREA = "zero-area box"
SKIP_EMPTY_PHRASE = "empty phrase"


@dataclass(frozen=True)
class VGRegion:
    """One region description: a validated (clipped) box and its phrase."""

    region_id: int
    image_id: int
    phrase: str
    region: Region


@dataclass
class VGRegions:
    """The regions of the selected images, images in region-file order, regions in file order."""

    regions_path: Path
    split_path: Path | None
    images: dict[int, ImageRef]
    regions: list[VGRegion]
    skipped: Counter[str] = field(default_factory=Counter)


def load_vg_regions(
    regions_path: Path,
    image_root: Path,
    *,
    split_path: Path | None = None,
    image_data_path: Path | None = None,
) -> VGRegions:
    """Load the region descriptions of the split's images (all images when ``split_path`` is None).

    ``image_data_path`` may be None or a missing file: sizes then come from the
    image headers. Errors name the file and the image or region id.
    """
    require_file(regions_path, "Visual Genome region descriptions file", key="vg_regions")
    entries = _image_entries(_read_json(regions_path), regions_path)
    wanted = read_split_ids(split_path) if split_path is not None else None
    if wanted is not None:
        missing = [i for i in wanted if i not in entries]
        if missing:
            raise DataError(f"{split_path}: image {missing[0]} is not in {regions_path} "
                            f"({len(missing)} split image(s) missing); is this split from another VG release?")
    chosen = [i for i in entries if wanted is None or i in wanted]
    images = {i: _image_ref(image_root, i, regions_path) for i in chosen}
    sizes = _sizes(chosen, images, image_data_path, regions_path)
    result = VGRegions(regions_path=regions_path, split_path=split_path, images=images, regions=[])
    seen: set[int] = set()
    for image_id in chosen:
        for region in _regions_of(entries[image_id], image_id, sizes[image_id], regions_path, result.skipped):
            if region.region_id in seen:
                raise DataError(f"{regions_path}, image {image_id}, region {region.region_id}: region id appears twice")
            seen.add(region.region_id)
            result.regions.append(region)
    if not result.regions:
        raise DataError(f"{regions_path}: no usable regions in the selected images"
                        + (f" of {split_path}" if split_path else ""))
    return result


def read_split_ids(path: Path) -> list[int]:
    """Image ids from a split file: a JSON list of ids, or a COCO-style object with ``"images": [{"id"}]``."""
    raw = _read_json(path)
    if isinstance(raw, dict) and isinstance(raw.get("images"), list):
        ids = [_int_field(item, "id", path, f"images[{k}]") for k, item in enumerate(raw["images"])]
    elif isinstance(raw, list):
        ids = [_int_value(item, path, f"item {k}", "image id") for k, item in enumerate(raw)]
    else:
        raise DataError(f"{path}: a split file is a JSON list of image ids or an object with an 'images' list "
                        "of {'id': ...} (GRiT's test.json)")
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    if duplicated:
        raise DataError(f"{path}: image {duplicated[0]} is listed twice")
    if not ids:
        raise DataError(f"{path}: the split file lists no images")
    return ids


def _read_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None


def _image_entries(raw: Any, path: Path) -> dict[int, list[Any]]:
    """Image id -> its raw region list, in file order; duplicate image entries are an error."""
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of {{'id', 'regions'}} image entries, got {type(raw).__name__}")
    entries: dict[int, list[Any]] = {}
    for index, item in enumerate(raw):
        where = f"entry {index}"
        if not isinstance(item, dict):
            raise DataError(f"{path}, {where}: expected an object with 'id' and 'regions'")
        if "id" not in item and "image_id" not in item:
            raise DataError(f"{path}, {where}: missing field 'id' (or 'image_id')")
        image_id = _int_field(item, "id" if "id" in item else "image_id", path, where)
        regions = item.get("regions")
        if not isinstance(regions, list):
            raise DataError(f"{path}, image {image_id}: 'regions' must be a list")
        if image_id in entries:
            raise DataError(f"{path}, image {image_id}: the image appears twice")
        entries[image_id] = regions
    return entries


def _regions_of(
    raw_regions: list[Any], image_id: int, size: tuple[int, int], path: Path, skipped: Counter[str]
) -> Iterable[VGRegion]:
    for index, item in enumerate(raw_regions):
        if not isinstance(item, dict):
            raise DataError(f"{path}, image {image_id}, regions[{index}]: expected an object")
        region_id = _int_field(item, "region_id", path, f"image {image_id}, regions[{index}]")
        where = f"image {image_id}, region {region_id}"
        if "image_id" in item and _int_field(item, "image_id", path, where) != image_id:
            raise DataError(f"{path}, {where}: the region says image_id {item['image_id']}")
        x, y, w, h = (_number(item, name, path, where) for name in ("x", "y", "width", "height"))
        phrase = item.get("phrase")
        if not isinstance(phrase, str):
            raise DataError(f"{path}, {where}: 'phrase' must be a string, got {phrase!r}")
        phrase = " ".join(phrase.split())
        if w <= 0 or h <= 0:
            skipped[SKIP_ZERO_AREA] += 1
            continue
        if not phrase:
            skipped[SKIP_EMPTY_PHRASE] += 1
            continue
        try:
            region = Region(box=(x, y, x + w, y + h)).validated(*size)
        except RegionError as error:
            raise DataError(f"{path}, {where}: {error}") from None
        yield VGRegion(region_id=region_id, image_id=image_id, phrase=phrase, region=region)


def _image_ref(image_root: Path, image_id: int, source: Path) -> ImageRef:
    """The first existing candidate file name; ``{id}.jpg`` when none exists (reported when opened)."""
    names = [pattern.format(id=image_id) for pattern in IMAGE_NAME_PATTERNS]
    name = next((n for n in names if (image_root / n).is_file()), names[0])
    return ImageRef(key=name, path=resolve_inside(image_root, name, source, f"image {image_id}"))


def _sizes(
    image_ids: list[int], images: dict[int, ImageRef], image_data_path: Path | None, regions_path: Path
) -> dict[int, tuple[int, int]]:
    if image_data_path is not None and image_data_path.is_file():
        return _sizes_from_image_data(image_ids, image_data_path)
    return {i: _size_from_header(images[i], i, regions_path) for i in image_ids}


def _sizes_from_image_data(image_ids: list[int], path: Path) -> dict[int, tuple[int, int]]:
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of {{'image_id', 'width', 'height'}} records")
    wanted = set(image_ids)
    sizes: dict[int, tuple[int, int]] = {}
    seen: set[int] = set()
    for index, item in enumerate(raw):
        where = f"entry {index}"
        key = "image_id" if isinstance(item, dict) and "image_id" in item else "id"
        image_id = _int_field(item, key, path, where)
        if image_id in seen:
            raise DataError(f"{path}, image {image_id}: the image appears twice")
        seen.add(image_id)
        if image_id in wanted:
            width, height = (_int_field(item, k, path, f"image {image_id}") for k in ("width", "height"))
            if width <= 0 or height <= 0:
                raise DataError(f"{path}, image {image_id}: width and height must be positive")
            sizes[image_id] = (width, height)
    missing = [i for i in image_ids if i not in sizes]
    if missing:
        raise DataError(f"{path}: image {missing[0]} has no size record ({len(missing)} image(s) missing)")
    return sizes


def _size_from_header(image: ImageRef, image_id: int, regions_path: Path) -> tuple[int, int]:
    """Width and height from the file header; opening a PIL image reads no pixel data."""
    from PIL import Image, UnidentifiedImageError

    assert image.path is not None
    try:
        with Image.open(image.path) as opened:
            return opened.size
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"{regions_path}, image {image_id}: no image_data.json to give its size and the image file "
            f"{image.path} cannot be read ({type(error).__name__}); add vg/image_data.json or the images"
        ) from None


def _int_field(item: Any, name: str, path: Path, where: str) -> int:
    if not isinstance(item, dict) or name not in item:
        raise DataError(f"{path}, {where}: missing field '{name}'")
    return _int_value(item[name], path, where, f"'{name}'")


def _int_value(value: Any, path: Path, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{path}, {where}: {what} must be an integer, got {value!r}")
    return value


def _number(item: dict[str, Any], name: str, path: Path, where: str) -> float:
    value = item.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}, {where}: '{name}' must be a finite number, got {value!r}")
    return float(value)
