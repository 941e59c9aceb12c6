"""Build everything one image contributes to the suite.

One call per image: sample the scene, paint and save the PNG, and return the
image's COCO annotations, RefCOCOg refs (without their global ids), Visual
Genome regions, simulated detections and a metadata record. Each image uses
its own seed sequence ``(seed, split index, image index)`` with a separate
child stream per purpose, so adding images to one split, or changing how
captions are drawn, never changes another image's scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.synthetic.expressions import (
    Description,
    Item,
    phrasings,
    referring_expression,
    region_captions,
)
from bench.synthetic.masks import compressed_rle, tight_bbox, uncompressed_rle
from bench.synthetic.params import SPLIT_ID_OFFSET, SPLITS, SuiteParams
from bench.synthetic.proposals import detect
from bench.synthetic.relations import Box
from bench.synthetic.render import render
from bench.synthetic.scene import Scene, sample_scene
from bench.synthetic.vocab import CATEGORY_BY_NAME
from bench.synthetic.writers import write_png

IMAGE_DIR = "images"
EVAL_SPLITS = ("val", "test")  # splits that get detector proposals
ANNS_PER_IMAGE = 100  # annotation ids are image_id * 100 + k


@dataclass
class ImageRecord:
    """What one image contributes to each output file."""

    split: str
    image_id: int
    file_name: str  # relative to the images directory
    width: int
    height: int
    annotations: list[dict[str, object]]  # COCO, ann id order
    refs: list[dict[str, object]]  # {"ann_id", "category_id", "sentences": [str]}
    regions: list[dict[str, object]]  # VG regions
    detections: list[dict[str, object]]  # COCO results; empty for train
    meta: dict[str, object]


def image_id_for(split: str, index: int) -> int:
    """Globally unique, stable image id (see ``SPLIT_ID_OFFSET``)."""
    return SPLIT_ID_OFFSET[split] + index + 1


def build_image(root: Path, params: SuiteParams, split: str, index: int) -> ImageRecord:
    """Sample, paint and save image ``index`` of ``split``; return its records."""
    sequence = np.random.SeedSequence([params.seed, SPLITS.index(split), index])
    scene_rng, ref_rng, caption_rng, detector_rng = (np.random.default_rng(s) for s in sequence.spawn(4))
    scene = sample_scene(scene_rng, params)
    image_id = image_id_for(split, index)
    file_name = f"{image_id}.png"
    write_png(root / IMAGE_DIR / file_name, render(scene))

    annotations, items = _annotations(scene, image_id)
    refs = []
    for item in items:
        expression = referring_expression(item, items, ref_rng)
        if expression is None:
            continue
        bare = expression.relation is None and expression.target == Description(item.category)
        if bare and ref_rng.random() >= params.category_only_ref_share:
            continue
        refs.append(
            {
                "ann_id": item.key,
                "category_id": CATEGORY_BY_NAME[item.category].id,
                "sentences": phrasings(expression, ref_rng),
            }
        )
    regions = [
        {
            "region_id": image_id * ANNS_PER_IMAGE + k + 1,
            "width": int(box.w),
            "height": int(box.h),
            "image_id": image_id,
            "phrase": phrase,
            "y": int(box.y),
            "x": int(box.x),
        }
        for k, (phrase, box) in enumerate(region_captions(items, _occlusions(scene, items), caption_rng))
    ]
    detections = []
    if split in EVAL_SPLITS:
        truth = [(CATEGORY_BY_NAME[i.category].id, i.box) for i in items if not i.crowd]
        detections = detect(detector_rng, image_id, truth, scene.width, scene.height, params)
    return ImageRecord(
        split=split,
        image_id=image_id,
        file_name=file_name,
        width=scene.width,
        height=scene.height,
        annotations=annotations,
        refs=refs,
        regions=regions,
        detections=detections,
        meta=_meta(scene, split, image_id, file_name, items),
    )


def _annotation(
    ann_id: int, image_id: int, category: str, mask: np.ndarray, segmentation: object, crowd: bool
) -> tuple[dict[str, object], Box]:
    x, y, w, h = tight_bbox(mask)
    record = {
        "segmentation": segmentation,
        "area": int(np.count_nonzero(mask)),
        "iscrowd": 1 if crowd else 0,
        "image_id": image_id,
        "bbox": [float(x), float(y), float(w), float(h)],
        "category_id": CATEGORY_BY_NAME[category].id,
        "id": ann_id,
    }
    return record, Box(x, y, w, h)


def _annotations(scene: Scene, image_id: int) -> tuple[list[dict[str, object]], list[Item]]:
    """COCO annotations (visible masks) and describer items, in ann id order.

    Objects are numbered in draw order; a crowd, if any, comes last.
    """
    annotations: list[dict[str, object]] = []
    items: list[Item] = []
    for k, obj in enumerate(scene.objects):
        ann_id = image_id * ANNS_PER_IMAGE + k + 1
        if obj.raster.polygon is not None and not obj.occluded:
            segmentation: object = [obj.raster.polygon]
        else:
            segmentation = compressed_rle(obj.visible)
        record, box = _annotation(ann_id, image_id, obj.category, obj.visible, segmentation, False)
        annotations.append(record)
        items.append(Item(ann_id, obj.category, obj.colour, obj.size, box))
    if scene.crowd is not None:
        crowd = scene.crowd
        ann_id = image_id * ANNS_PER_IMAGE + len(scene.objects) + 1
        segmentation = uncompressed_rle(crowd.visible)
        record, box = _annotation(ann_id, image_id, crowd.category, crowd.visible, segmentation, True)
        annotations.append(record)
        items.append(Item(ann_id, crowd.category, crowd.colour, None, box, crowd=True))
    return annotations, items


def _occlusions(scene: Scene, items: list[Item]) -> set[tuple[int, int]]:
    """``(front ann id, back ann id)`` for each object partly hiding another."""
    pairs = set()
    for back_index, back in enumerate(scene.objects):
        for front_index in range(back_index + 1, len(scene.objects)):
            front = scene.objects[front_index]
            window = front.raster.window
            if (front.full[window] & back.full[window]).any():
                pairs.add((items[front_index].key, items[back_index].key))
    return pairs


def _meta(scene: Scene, split: str, image_id: int, file_name: str, items: list[Item]) -> dict[str, object]:
    """Per-object attributes the dataset files do not carry (for tests and training)."""
    objects: list[dict[str, object]] = [
        {
            "id": item.key,
            "category": obj.category,
            "colour": obj.colour,
            "size": obj.size,
            "extent": obj.extent,
            "center": [obj.cx, obj.cy],
            "rotation": obj.rotation,
            "rgb": list(obj.rgb),
            "draw_order": k,
            "occluded": obj.occluded,
            "iscrowd": 0,
        }
        for k, (obj, item) in enumerate(zip(scene.objects, items[: len(scene.objects)], strict=True))
    ]
    if scene.crowd is not None:
        objects.append(
            {
                "id": items[-1].key,
                "category": scene.crowd.category,
                "colour": scene.crowd.colour,
                "size": None,
                "rgb": list(scene.crowd.rgb),
                "draw_order": -1,  # painted before every object
                "iscrowd": 1,
            }
        )
    return {
        "image_id": image_id,
        "file_name": file_name,
        "split": split,
        "width": scene.width,
        "height": scene.height,
        "objects": objects,
    }
