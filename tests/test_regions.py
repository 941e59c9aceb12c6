"""Region validation: clipping, and clear errors for unusable boxes and masks."""

import math

import numpy as np
import pytest

from bench.errors import RegionError
from bench.regions import Region, box_iou, decode_segmentation


def test_from_coco_converts_xywh_to_xyxy() -> None:
    assert Region.from_coco([10, 20, 30, 40]).box == (10.0, 20.0, 40.0, 60.0)


def test_validated_clips_to_image() -> None:
    region = Region(box=(-5.0, 10.0, 120.0, 50.0)).validated(width=100, height=80)
    assert region.box == (0.0, 10.0, 100.0, 50.0)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((0, 0, math.nan, 10), "finite"),
        ((0, 0, math.inf, 10), "finite"),
        ((50, 10, 40, 20), "x2 < x1"),
        ((200, 200, 300, 300), "no area inside"),
        ((10, 10, 10, 30), "no area inside"),
    ],
)
def test_bad_boxes_raise(box: tuple, message: str) -> None:
    with pytest.raises(RegionError, match=message):
        Region(box=box).validated(width=100, height=80)


def test_region_needs_box_or_mask() -> None:
    with pytest.raises(RegionError, match="needs a box or a mask"):
        Region().validated(10, 10)


def test_polygon_mask_gives_box_and_decodes() -> None:
    polygon = [[2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]]
    region = Region(mask=polygon).validated(width=10, height=10)
    mask = region.decode_mask(10, 10)
    assert mask.shape == (10, 10)
    assert region.box is not None and region.box[0] >= 2 and region.box[2] <= 9
    assert mask[4, 5] and not mask[0, 0]


def test_rle_round_trip_and_size_check() -> None:
    from pycocotools import mask as mask_utils

    raster = np.zeros((12, 16), dtype=np.uint8)
    raster[3:7, 5:11] = 1
    rle = mask_utils.encode(np.asfortranarray(raster))
    rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    decoded = decode_segmentation(rle, width=16, height=12)
    assert decoded.sum() == 24
    assert Region(mask=rle).validated(16, 12).box == (5.0, 3.0, 11.0, 7.0)
    with pytest.raises(RegionError, match="does not match the image"):
        decode_segmentation(rle, width=12, height=16)


def test_empty_mask_raises() -> None:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.zeros((5, 5), dtype=np.uint8)))
    with pytest.raises(RegionError, match="empty"):
        Region(mask=rle).validated(5, 5)


def test_box_iou_hand_computed() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
