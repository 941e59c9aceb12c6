"""COCO instances loader: the three mask encodings load and decode; every malformed record is named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bench.data.coco import load_coco_instances
from bench.errors import DataError

W, H = 40, 30


def _square_mask(x0: int, y0: int, size: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y0 + size, x0:x0 + size] = 1
    return mask


def _compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's crowd encoding: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def instances() -> dict[str, Any]:
    return {
        "images": [{"id": 7, "file_name": "a.png", "width": W, "height": H},
                   {"id": 8, "file_name": "sub/b.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "circle", "supercategory": "round"}, {"id": 3, "name": "square"}],
        "annotations": [
            # polygon: the square (2, 3)-(12, 13), area 100
            {"id": 11, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 13, 2, 13]]},
            {"id": 12, "image_id": 7, "category_id": 3, "bbox": [20, 5, 6, 6], "area": 36, "iscrowd": 0,
             "segmentation": _compressed_rle(_square_mask(20, 5, 6))},
            {"id": 13, "image_id": 8, "category_id": 1, "bbox": [5, 10, 8, 8], "area": 64, "iscrowd": 1,
             "segmentation": _uncompressed_rle(_square_mask(5, 10, 8))},
        ],
    }


def write(tmp_path: Path, data: Any, name: str = "instances.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_three_mask_encodings_load_and_decode(tmp_path: Path) -> None:
    path = write(tmp_path, instances())
    coco = load_coco_instances(path)
    assert [a.id for a in coco.annotations] == [11, 12, 13]
    assert [a.iscrowd for a in coco.annotations] == [False, False, True]
    assert coco.categories[1].name == "circle" and coco.categories[1].supercategory == "round"
    assert coco.images[8].file_name == "sub/b.png"
    polygon, compressed, crowd = (coco.region(a) for a in coco.annotations)
    assert polygon.box == (2.0, 3.0, 12.0, 13.0)
    assert int(polygon.decode_mask(W, H).sum()) == 100
    decoded = compressed.decode_mask(W, H)
    assert int(decoded.sum()) == 36 and decoded[5:11, 20:26].all()
    crowd_mask = crowd.decode_mask(W, H)
    assert int(crowd_mask.sum()) == 64 and crowd_mask[10:18, 5:13].all()
    # Box-only regions never touch the segmentation.
    assert coco.region(coco.annotations[0], with_mask=False).mask is None
    ref = coco.image_ref(8, tmp_path / "images")
    assert ref.key == "sub/b.png" and ref.size == (W, H) and ref.path == (tmp_path / "images" / "sub" / "b.png")


def test_missing_area_defaults_to_box_area(tmp_path: Path) -> None:
    data = instances()
    del data["annotations"][0]["area"]
    assert load_coco_instances(write(tmp_path, data)).annotations[0].area == 100.0


def _set(field: str, value: Any) -> Any:
    def change(annotation: dict[str, Any]) -> None:
        annotation[field] = value
    return change


def _drop(field: str) -> Any:
    def change(annotation: dict[str, Any]) -> None:
        del annotation[field]
    return change


@pytest.mark.parametrize(("change", "message"), [
    (_drop("bbox"), "'bbox' must be four finite numbers"),
    (_set("bbox", [2, 3, float("nan"), 10]), "'bbox' must be four finite numbers"),
    (_set("bbox", [2, 3, float("inf"), 10]), "'bbox' must be four finite numbers"),
    (_set("bbox", [2, 3, 10]), "'bbox' must be four finite numbers"),
    (_set("bbox", [2, 3, 0, 10]), "has no area"),
    (_set("image_id", 99), "image_id 99 is not in 'images'"),
    (_drop("image_id"), "'image_id' must be an integer"),
    (_set("category_id", 5), "category_id 5 is not in 'categories'"),
    (_set("area", float("nan")), "'area' must be a finite"),
    (_set("iscrowd", "0"), "'iscrowd' must be 0 or 1"),
    (_set("segmentation", "polygon"), "'segmentation' must be"),
    (_set("segmentation", {"counts": "abc"}), "'segmentation' must be"),
])
def test_malformed_annotation_names_file_and_annotation(tmp_path: Path, change: Any, message: str) -> None:
    data = instances()
    change(data["annotations"][1])
    # NaN/Infinity are what json.dumps writes for non-finite floats, and json.loads accepts them.
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=message) as error:
        load_coco_instances(path)
    assert str(path) in str(error.value) and "annotation 12" in str(error.value)


def test_duplicate_ids(tmp_path: Path) -> None:
    data = instances()
    data["annotations"][2]["id"] = 11
    path = write(tmp_path, data)
    with pytest.raises(DataError, match="annotation 11: annotation id appears twice") as error:
        load_coco_instances(path)
    assert str(path) in str(error.value)

    data = instances()
    data["images"][1]["id"] = 7
    with pytest.raises(DataError, match=r"images\[1\]: image id 7 appears twice"):
        load_coco_instances(write(tmp_path, data))

    data = instances()
    data["categories"][1]["id"] = 1
    with pytest.raises(DataError, match=r"categories\[1\]: category id 1 appears twice"):
        load_coco_instances(write(tmp_path, data))


def test_invalid_json_and_wrong_shape(tmp_path: Path) -> None:
    text = json.dumps(instances(), indent=1)
    path = write(tmp_path, text.replace('"area": 36', '"area": 36,,', 1))
    with pytest.raises(DataError, match=r"line \d+: not valid JSON") as error:
        load_coco_instances(path)
    assert str(path) in str(error.value)
    with pytest.raises(DataError, match="'images', 'annotations' and 'categories' lists"):
        load_coco_instances(write(tmp_path, {"images": [], "annotations": []}))
    with pytest.raises(DataError, match="COCO instances file not found"):
        load_coco_instances(tmp_path / "missing.json", key="coco_instances")


def test_annotation_without_id_is_named_by_position(tmp_path: Path) -> None:
    data = instances()
    del data["annotations"][2]["id"]
    with pytest.raises(DataError, match=r"annotations\[2\]: 'id' must be an integer"):
        load_coco_instances(write(tmp_path, data))


def test_bad_image_record(tmp_path: Path) -> None:
    data = copy.deepcopy(instances())
    data["images"][0]["width"] = 0
    with pytest.raises(DataError, match=r"images\[0\] \(image 7\): width and height must be positive"):
        load_coco_instances(write(tmp_path, data))


def test_undecodable_mask_is_reported_when_used(tmp_path: Path) -> None:
    # A two-point polygon (real COCO train files hold a few) loads; decoding it names the annotation.
    data = instances()
    data["annotations"][0]["segmentation"] = [[2, 3, 12, 13]]
    path = write(tmp_path, data)
    coco = load_coco_instances(path)
    assert coco.region(coco.annotations[0], with_mask=False).box == (2.0, 3.0, 12.0, 13.0)
    with pytest.raises(DataError, match="annotation 11 \\(image 7\\): .*polygon") as error:
        coco.region(coco.annotations[0])
    assert str(path) in str(error.value)
