"""A deterministic synthetic region suite written in the real dataset file formats.

The suite lets every task run end to end (and lets a small model be trained
and checked) without downloading COCO, RefCOCOg or Visual Genome: scenes of
coloured shapes on muted backgrounds, annotated with visible-mask
segmentations, referring expressions, region captions, POPE questions and
simulated detector proposals. Same :class:`SuiteParams` -> byte-identical
files.

Layout under the suite root (``paths.json`` points every
:mod:`bench.data.layout` key here)::

    suite.json                                name, version, params, split sizes, sha256 of every file
    paths.json                                layout overrides (below)
    images/{image_id}.png                     every image of every split, once, flat
    coco/annotations/instances_train2017.json COCO instances, train split
    coco/annotations/instances_val2017.json   COCO instances, val split
    refcocog/refs(umd).p                      RefCOCOg umd refs (pickle protocol 2), splits train/val/test
    refcocog/instances.json                   COCO-style images + annotations of all three splits
    proposals/refcocog_umd_{val,test}.json    simulated detections, COCO results format
    vg/region_descriptions.json               VG region phrases for all images
    vg/image_data.json                        VG image records (url null)
    vg/{train,val,test}.json                  VG split files: lists of image ids
    pope/coco_pope_{random,popular,adversarial}.json  POPE questions (JSON Lines), val images
    meta/objects_{train,val,test}.json        per-object colour/size/position (not a real format;
                                              for tests and training code)

``paths.json`` maps ``coco_images``, ``pope_images``, ``refcocog_images`` and
``vg_images`` all to ``images``: image ids are unique across splits (train
100001.., val 200001.., test 300001..) and every file names images
``{image_id}.png``, so one flat directory serves every loader: COCO and
RefCOCOg ``images[].file_name``, POPE ``image``, and VG's ``{image_id}`` naming
(PNG rather than VG's JPEG). RefCOCOg ``refs[].file_name`` follows the release
(``{image_id}_{ann_id}.png``, the image name with the ann id appended); resolve
images through ``instances.json``. The other keys keep their default paths
(with ``{split}`` = train/val for COCO, val/test for proposals,
train/val/test for VG, random/popular/adversarial for POPE).

Splits: ``train`` (COCO train2017, RefCOCOg train, VG train) is for training
code only and shares no image with ``val`` (COCO val2017, RefCOCOg val, VG val,
POPE) or ``test`` (RefCOCOg test, VG test).
"""

from bench.synthetic.params import SUITE_VERSION, SuiteParams
from bench.synthetic.suite import cache_root, default_suite_dir, generate_suite

__all__ = ["SUITE_VERSION", "SuiteParams", "cache_root", "default_suite_dir", "generate_suite"]
