"""Region captioning: RefCOCOg (umd) and Visual Genome, scored with METEOR and CIDEr (RegionGPT Table 4).

One query per region: the model sees the image and one region (``<region1>``)
and is asked for a short description. Metrics are those of COCO captioning
(:func:`bench.metrics.captions.caption_metrics`: pycocoevalcap's PTB tokenizer,
METEOR 1.5, CIDEr-D, plus the cheap BLEU-4 and ROUGE-L). SPICE is left out: it
needs Stanford CoreNLP models downloaded at run time.

CIDEr's document frequencies come from the references of the whole evaluated
set, so :meth:`CaptionTask.aggregate` scores all records in one call and never
averages per batch; a ``--limit`` run therefore has a CIDEr that is not
comparable with a full-split one.

Each task's prompt follows the RegionGPT / GPT4RoI style of a plain instruction
naming the region placeholder, and says which kind of description is asked:
RefCOCOg's references are referring expressions (they single the object out:
"the heart that is red"), Visual Genome's are region descriptions ("a medium red
heart"). One shared prompt (task version 1) left a model that reads boxes only
no way to tell the two apart on data where the same box is in both datasets, as
on the synthetic suite, where every RefCOCOg box is also a VG region.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.adapter import Capabilities
from bench.data.layout import dataset_path
from bench.data.refcocog import Ref, load_refcocog
from bench.data.vg import VGRegion, VGRegions, load_vg_regions
from bench.errors import ConfigError, DataError
from bench.metrics.captions import METRIC_KEYS, caption_metrics
from bench.regions import Region
from bench.registry import register_task
from bench.task import Processed, Task
from bench.types import GenerationRequest, ImageRef, Output, Request, Sample

#: Visual Genome's instruction: a region description. Short on purpose: the
#: references are short phrases (~5 words), and METEOR/CIDEr punish long answers.
VG_PROMPT = "Give a short description of <region1>."
#: RefCOCOg's instruction: a referring expression (~8 words), a description that
#: fits this object and no other of the image. Its words are those of the other
#: prompts, so a word-level tokenizer trained on the suite holds them all.
REFCOCOG_PROMPT = "Give a short description to refer to <region1> only."
MAX_NEW_TOKENS = 32


def caption_from_output(output: str) -> str:
    """The caption: the output stripped of surrounding whitespace, first line only.

    Models that go on after the caption (a second sentence on a new line, a
    follow-up turn) would otherwise be scored on text that is not the caption.
    """
    lines = output.strip().splitlines()
    return lines[0].strip() if lines else ""


class CaptionTask(Task):
    """Shared request building, parsing and corpus-level scoring of the captioning tasks."""

    version = "1"
    metrics = METRIC_KEYS  # ("meteor", "cider", "bleu4", "rouge_l"); meteor is the headline

    def build_requests(self, sample: Sample, capabilities: Capabilities) -> list[Request]:
        return [GenerationRequest(sample=sample, prompt=sample.prompt,
                                  regions=capabilities.adapt(sample.regions), max_new_tokens=MAX_NEW_TOKENS)]

    def process(self, sample: Sample, outputs: Sequence[Output]) -> Processed:
        # Caption metrics are corpus-level (CIDEr's idf), so there is no per-sample score.
        return Processed(parsed=caption_from_output(str(outputs[0])))

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """METEOR, CIDEr, BLEU-4, ROUGE-L over ALL records at once (CIDEr needs the whole reference set)."""
        candidates = {str(r["id"]): str(r["parsed"]) for r in records}
        references = {str(r["id"]): [str(t) for t in r["target"]] for r in records}
        return caption_metrics(candidates, references)


@register_task
class RefCocogCaptioning(CaptionTask):
    """RefCOCOg (umd) region captioning: every expression of a region is one of its references."""

    name = "refcocog-cap"
    description = "RefCOCOg (umd) region captioning, all expressions as references (METEOR, CIDEr, BLEU-4, ROUGE-L)"
    version = "2"  # 2: its own prompt (REFCOCOG_PROMPT), asking for a referring expression
    annotation_keys = ("refcocog_refs", "refcocog_instances")
    splits = ("val", "test")
    default_split = "val"

    def load_samples(self) -> list[Sample]:
        data = load_refcocog(dataset_path(self.data_root, "refcocog_refs"),
                             dataset_path(self.data_root, "refcocog_instances"))
        image_root = dataset_path(self.data_root, "refcocog_images")
        images: dict[int, ImageRef] = {}
        samples = []
        for ref in data.split(str(self.split)):
            annotation = data.instances.annotation(ref.ann_id)
            if annotation.image_id != ref.image_id:
                raise DataError(f"{data.refs_path}, ref {ref.ref_id}: image_id {ref.image_id} but its annotation "
                                f"{ref.ann_id} is on image {annotation.image_id}")
            if ref.image_id not in images:
                images[ref.image_id] = data.instances.image_ref(ref.image_id, image_root)
            region = data.instances.region(annotation, with_mask=True)
            samples.append(self._sample(ref, images[ref.image_id], region))
        return samples

    @staticmethod
    def _sample(ref: Ref, image: ImageRef, region: Region) -> Sample:
        expressions = [e.text for e in ref.expressions]
        return Sample(
            id=str(ref.ref_id), image=image, prompt=REFCOCOG_PROMPT, target=expressions, regions=(region,),
            gold_answer=expressions[0],
            metadata={"ref_id": ref.ref_id, "ann_id": ref.ann_id, "image_id": ref.image_id,
                      "sent_ids": [e.sent_id for e in ref.expressions]},
        )


@register_task
class VisualGenomeCaptioning(CaptionTask):
    """Visual Genome region captioning on GRiT's test split: one query per region, its phrase the reference."""

    name = "vg-cap"
    description = "Visual Genome region captioning (GRiT test split), one phrase per region (METEOR, CIDEr, ...)"
    splits = ("test", "val", "train")
    default_split = "test"
    annotation_keys = ("vg_regions", "vg_split", "vg_image_data")

    def __init__(self, data_root: Path, split: str | None = None, *,
                 max_regions_per_image: int | None = None) -> None:
        """``max_regions_per_image``: keep at most this many regions per image, chosen by a hash of the
        region id (deterministic, independent of file order); real VG has ~50 regions per image."""
        super().__init__(data_root, split)
        if max_regions_per_image is not None and max_regions_per_image <= 0:
            raise ConfigError("--task-args max_regions_per_image must be a positive number")
        self.max_regions_per_image = max_regions_per_image

    def load_samples(self) -> list[Sample]:
        data = self._load()
        regions = subsample(data.regions, self.max_regions_per_image)
        return [
            Sample(id=str(r.region_id), image=data.images[r.image_id], prompt=VG_PROMPT, target=[r.phrase],
                   regions=(r.region,), gold_answer=r.phrase,
                   metadata={"region_id": r.region_id, "image_id": r.image_id})
            for r in regions
        ]

    def _load(self) -> VGRegions:
        split_path: Path | None = dataset_path(self.data_root, "vg_split", split=str(self.split))
        if not split_path.is_file():
            _warn(f"vg-cap: no split file {split_path}; evaluating EVERY image of region_descriptions.json")
            split_path = None
        data = load_vg_regions(
            dataset_path(self.data_root, "vg_regions"), dataset_path(self.data_root, "vg_images"),
            split_path=split_path, image_data_path=dataset_path(self.data_root, "vg_image_data"),
        )
        if data.skipped:
            counts = ", ".join(f"{n} with {why}" for why, n in sorted(data.skipped.items()))
            _warn(f"vg-cap: skipped {sum(data.skipped.values())} region(s) ({counts}) of {data.regions_path}")
        return data


def subsample(regions: Sequence[VGRegion], per_image: int | None) -> list[VGRegion]:
    """At most ``per_image`` regions of each image, the ones with the smallest hash of their id, in file order.

    Hashing (not "the first N") avoids favouring the regions annotators drew first.
    """
    if per_image is None:
        return list(regions)
    by_image: dict[int, list[VGRegion]] = {}
    for region in regions:
        by_image.setdefault(region.image_id, []).append(region)
    kept: set[int] = set()
    for image_regions in by_image.values():
        ranked = sorted(image_regions, key=lambda r: hashlib.sha256(str(r.region_id).encode()).digest())
        kept.update(r.region_id for r in ranked[:per_image])
    return [r for r in regions if r.region_id in kept]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
