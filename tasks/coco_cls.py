"""COCO region classification with ground-truth boxes (RegionGPT Table 3).

One query per non-crowd annotation of a COCO instances file (COCO 2017 val by
default, ``--split train`` for train2017): the region is the annotation's box,
plus its segmentation when the adapter takes masks (``capabilities.masks``).
The prompt is one of :data:`PHRASINGS`, picked per sample by a SHA-256 of the
annotation id (stable across runs, machines and Python's hash salt), followed
by RegionGPT's task-guided suffix :data:`COCO_SUFFIX` when the file's
categories are the 80 COCO names, or a suffix listing the file's own names
otherwise (LVIS-style or custom category sets).

Scoring (:mod:`bench.metrics.coco`), two paths, both reported:

* generation: the answer is normalised and must name a category (else wrong);
  ``accuracy`` is the share right; ``mAP, AP50, AP75, AP_small, AP_medium,
  AP_large`` come from COCOeval (bbox) on the ground-truth boxes relabelled
  with the predicted category, score 1.0 (an answer naming no category gives
  no detection for that box);
* likelihood (adapters with ``capabilities.loglikelihood``): every category
  name is scored as a continuation of the same prompt; a softmax over the
  summed log-likelihoods gives each box every category with its probability.
  The same metrics prefixed ``ll_`` (``ll_accuracy`` is the argmax), reported
  only when every sample has likelihoods.

Aggregation sees only saved records, so each record carries what COCOeval's
ground truth needs: the box, area and category in ``target``, and in
``metadata`` the file's category list and the image's crowd annotations,
which COCOeval treats as ignore regions exactly as with the official file.
Area ranges without any ground-truth box (COCOeval's -1) are left out of the
metrics. Score ties (every generation detection has score 1.0) are broken by
(image id, annotation id), independent of the order samples ran in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.adapter import Capabilities
from bench.data.coco import CocoAnnotation, CocoInstances, load_coco_instances
from bench.data.layout import dataset_path
from bench.errors import DataError, RegionError
from bench.metrics.coco import (
    AP_KEYS,
    COCO_80,
    coco_box_ap,
    match_category,
    normalise_answer,
    normalised_collisions,
    softmax,
)
from bench.regions import Region
from bench.registry import register_task
from bench.task import Processed, Task
from bench.types import GenerationRequest, LoglikelihoodRequest, Output, Request, Sample

# Question phrasings; sample k uses PHRASINGS[phrasing_index(annotation id)].
PHRASINGS: tuple[str, ...] = (
    "What is the category of the object in <region1>?",
    "What kind of object is shown in <region1>?",
    "Classify the object in <region1>.",
    "Which category does the object in <region1> belong to?",
)
# RegionGPT's task-guided suffix, used verbatim when the categories are COCO's 80.
COCO_SUFFIX = "Answer the question using COCO-80 category names."
# For any other category set the suffix lists the file's names, in category-id order.
LIST_SUFFIX = "Answer the question using one of these category names: {names}."
MAX_NEW_TOKENS = 16


def phrasing_index(annotation_id: int) -> int:
    """Which phrasing an annotation gets: a stable hash, so the prompt never depends on the run."""
    digest = hashlib.sha256(str(annotation_id).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % len(PHRASINGS)


def answer_suffix(names: Sequence[str]) -> str:
    """The task-guided format instruction for a category set."""
    if sorted(names) == sorted(COCO_80):
        return COCO_SUFFIX
    return LIST_SUFFIX.format(names=", ".join(names))


@register_task
class CocoClassification(Task):
    name = "coco-cls"
    description = "COCO region classification, ground-truth boxes (accuracy; COCOeval mAP by generation/likelihood)"
    version = "1"
    metrics = (
        "accuracy", *AP_KEYS,
        "ll_accuracy", *(f"ll_{key}" for key in AP_KEYS),
    )
    splits = ("val", "train")
    default_split = "val"
    annotation_keys = ("coco_instances",)

    # ------------------------------------------------------------------ loading

    def load_samples(self) -> list[Sample]:
        instances = load_coco_instances(
            dataset_path(self.data_root, "coco_instances", split=self.split), key="coco_instances"
        )
        self._instances_path = instances.path
        image_root = dataset_path(self.data_root, "coco_images", split=self.split)
        categories = sorted(instances.categories.values(), key=lambda c: c.id)
        names = [c.name for c in categories]
        clashes = normalised_collisions(names)
        if clashes:
            raise DataError(
                f"{instances.path}: category names {clashes[0][0]!r} and {clashes[0][1]!r} are the same answer "
                "once normalised (case, punctuation, articles); rename one"
            )
        category_list = [[c.id, c.name] for c in categories]
        suffix = answer_suffix(names)
        crowd = _crowd_by_image(instances)
        samples = []
        for annotation in instances.annotations:
            if annotation.iscrowd:
                continue
            samples.append(self._sample(instances, annotation, image_root, suffix, category_list,
                                        crowd.get(annotation.image_id, [])))
        if not samples:
            raise DataError(f"{instances.path}: no non-crowd annotation to classify")
        return samples

    def _sample(self, instances: CocoInstances, annotation: CocoAnnotation, image_root: Path, suffix: str,
                category_list: list[list[Any]], crowd: list[dict[str, Any]]) -> Sample:
        box = instances.region(annotation, with_mask=False).box  # DataError naming file and annotation
        phrasing = phrasing_index(annotation.id)
        name = instances.categories[annotation.category_id].name
        return Sample(
            id=str(annotation.id),
            image=instances.image_ref(annotation.image_id, image_root),
            prompt=f"{PHRASINGS[phrasing]} {suffix}",
            target={
                "image_id": annotation.image_id, "annotation_id": annotation.id,
                "category_id": annotation.category_id, "category": name,
                "bbox": list(annotation.bbox), "area": annotation.area,
            },
            regions=(Region(box=box, mask=annotation.segmentation),),
            gold_answer=name,
            metadata={"image_id": annotation.image_id, "annotation_id": annotation.id, "phrasing": phrasing,
                      "categories": category_list, "crowd": crowd},
        )

    # ----------------------------------------------------------------- requests

    def build_requests(self, sample: Sample, capabilities: Capabilities) -> list[Request]:
        region = self._region_for(sample, capabilities)
        names = tuple(name for _, name in sample.metadata["categories"])
        requests: list[Request] = [GenerationRequest(
            sample=sample, prompt=sample.prompt, regions=(region,), max_new_tokens=MAX_NEW_TOKENS, choices=names,
        )]
        if capabilities.loglikelihood:
            requests.append(LoglikelihoodRequest(sample=sample, prompt=sample.prompt, regions=(region,),
                                                 continuations=names))
        return requests

    def _region_for(self, sample: Sample, capabilities: Capabilities) -> Region:
        """The region as the model takes it; a mask it will receive is decoded once here, so a
        degenerate polygon (a few exist in COCO) fails with its file and annotation, not inside the model."""
        (region,) = capabilities.adapt(sample.regions)
        if region.mask is None or sample.image.size is None:
            return region
        try:
            return region.validated(*sample.image.size)
        except RegionError as error:
            where = getattr(self, "_instances_path", "COCO instances file")
            raise DataError(f"{where}, annotation {sample.metadata['annotation_id']} "
                            f"(image {sample.metadata['image_id']}): {error}") from None

    # ------------------------------------------------------------------ scoring

    def process(self, sample: Sample, outputs: Sequence[Output]) -> Processed:
        names = [name for _, name in sample.metadata["categories"]]
        gold = sample.target["category"]
        answer = match_category(str(outputs[0]), names)
        # The normalised text is kept (flagged invalid) when it names no category, to show what was said.
        parsed: dict[str, Any] = {"answer": answer, "normalised": normalise_answer(str(outputs[0])),
                                  "valid": answer is not None}
        scores = {"correct": float(answer == gold)}
        if len(outputs) > 1:
            logliks = outputs[1]
            if not isinstance(logliks, (list, tuple)) or len(logliks) != len(names):
                raise ValueError(f"expected {len(names)} log-likelihoods, one per category")
            probs = softmax(logliks)
            best = max(range(len(probs)), key=probs.__getitem__)  # first of equal maxima
            parsed["ll_answer"] = names[best]
            parsed["ll_probs"] = probs
            scores["ll_correct"] = float(names[best] == gold)
        return Processed(parsed=parsed, scores=scores)

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        if not records:
            return {}
        records = sorted(records, key=lambda r: (r["target"]["image_id"], r["target"]["annotation_id"]))
        categories = _shared_categories(records)
        images = [r["target"]["image_id"] for r in records]
        ground_truth = _ground_truth(records)
        category_ids = [cid for cid, _ in categories]
        id_of = {name: cid for cid, name in categories}

        metrics = {"accuracy": _mean(r["scores"]["correct"] for r in records)}
        generated = [_detection(r, id_of[r["parsed"]["answer"]], 1.0) for r in records
                     if r["parsed"].get("answer") in id_of]
        metrics.update(coco_box_ap(images, ground_truth, category_ids, generated))
        if all("ll_probs" in r["parsed"] for r in records):
            metrics["ll_accuracy"] = _mean(r["scores"]["ll_correct"] for r in records)
            scored = [_detection(r, cid, float(p)) for r in records
                      for cid, p in zip(category_ids, r["parsed"]["ll_probs"], strict=True)]
            metrics.update({f"ll_{k}": v for k, v in coco_box_ap(images, ground_truth, category_ids, scored).items()})
        return {key: metrics[key] for key in self.metrics if key in metrics}


def _crowd_by_image(instances: CocoInstances) -> dict[int, list[dict[str, Any]]]:
    """Each image's crowd annotations, in the compact form COCOeval's bbox evaluation uses."""
    crowd: dict[int, list[dict[str, Any]]] = {}
    for a in instances.annotations:
        if a.iscrowd:
            crowd.setdefault(a.image_id, []).append(
                {"id": a.id, "category_id": a.category_id, "bbox": list(a.bbox), "area": a.area})
    return crowd


def _shared_categories(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    first = records[0]["metadata"]["categories"]
    for record in records:
        if record["metadata"]["categories"] != first:
            raise DataError(f"sample {record.get('id')!r} was made with another category list than the others; "
                            "records from different annotation files cannot be scored together")
    return [(int(cid), str(name)) for cid, name in first]


def _ground_truth(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """COCO ground truth rebuilt from records: each sample's box, plus each image's crowd regions once."""
    annotations = []
    crowd_seen: set[int] = set()
    for record in records:
        target = record["target"]
        annotations.append({"id": target["annotation_id"], "image_id": target["image_id"],
                            "category_id": target["category_id"], "bbox": target["bbox"],
                            "area": target["area"], "iscrowd": 0})
        for crowd in record["metadata"].get("crowd", []):
            if crowd["id"] not in crowd_seen:
                crowd_seen.add(crowd["id"])
                annotations.append({**crowd, "image_id": target["image_id"], "iscrowd": 1})
    return annotations


def _detection(record: Mapping[str, Any], category_id: int, score: float) -> dict[str, Any]:
    target = record["target"]
    return {"image_id": target["image_id"], "category_id": category_id, "bbox": list(target["bbox"]),
            "score": score}


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)
