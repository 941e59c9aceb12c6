"""RefCOCOg referring expression comprehension with detector proposals (RegionGPT Table 5).

For every referring expression of the split (one sample per sentence, id
``"{ref_id}-{sent_id}"``) the model sees candidate boxes as ``<region1>`` ..
``<regionK>`` and names the one the expression refers to::

    Which region does the description "{expression}" refer to? Candidates:
    Region [1] <region1>, Region [2] <region2>, ..., Region [K] <regionK>.
    Answer the question using the template Region [x].

(one line; the last sentence is RegionGPT's task-guided format instruction).
Each candidate is labelled with the name the answer must use: a model that
writes a region as a bare feature token (RegionGPT's ``<region>``) has no other
way to know which number a region has than counting tokens (version 1 of this
task listed bare placeholders).

Candidates, deterministic and recorded in each sample's ``metadata``:

1. the image's proposals with ``score >= min_score``, best score first, ties
   by box, the top ``max_candidates`` (default 10; ``--task-args max_candidates=20``);
2. if none has IoU >= 0.5 with the ground-truth box, the ground-truth box is
   added, replacing the lowest-scored proposal when the cap is reached (so the
   count never exceeds ``max_candidates``; RegionGPT's protocol);
3. the list is shuffled by a permutation derived from SHA-256 of the sample id,
   so the added box is not always last and the order is the same on every
   machine and Python version.

Scoring: the answer's first ``Region [k]`` (any case, spaces allowed inside
the brackets) picks candidate ``k``; correct when that candidate has IoU >= 0.5
with the ground truth (``target`` lists those 1-based indices). An answer that
names no candidate (no ``Region [k]``, "No corresponding options found.", or
``k`` outside ``1..K``) is *unparseable* and wrong. Metrics: ``accuracy``,
``unparseable`` and ``gt_added`` (share of queries whose ground-truth box had to
be added: a measure of the proposals, not of the model).

A model that takes fewer regions than there are candidates fails those
samples with a message to lower ``max_candidates``: truncating the list would
silently change the task (and could drop the right answer).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.adapter import Capabilities
from bench.data.layout import dataset_path
from bench.data.proposals import Proposal, ProposalSet, load_proposals, ranked
from bench.data.refcocog import Expression, Ref, load_refcocog
from bench.errors import ConfigError, DataError
from bench.regions import Box, Region, box_iou
from bench.registry import register_task
from bench.task import Processed, Task
from bench.types import GenerationRequest, ImageRef, Output, Request, Sample

IOU_THRESHOLD = 0.5
GT_SOURCE = "gt"
PROMPT = (
    'Which region does the description "{expression}" refer to? Candidates: {regions}. '
    "Answer the question using the template Region [x]."
)
ANSWER_PATTERN = re.compile(r"\bregion\s*\[\s*(\d+)\s*\]", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    box: Box
    source: int | str  # the proposal's 0-based entry index in the proposal file, or "gt"
    score: float | None  # the detector's score; None for the added ground-truth box


def choice_label(k: int) -> str:
    """The answer that names candidate ``k`` (1-based)."""
    return f"Region [{k}]"


def parse_choice(text: str, n_candidates: int) -> int | None:
    """The 1-based candidate the answer names, or None when it names none.

    Only the first ``Region [k]`` counts (a model that lists several has not
    chosen); ``k`` outside ``1..n_candidates`` names no candidate either.
    """
    match = ANSWER_PATTERN.search(text)
    if match is None:
        return None
    k = int(match.group(1))
    return k if 1 <= k <= n_candidates else None


def build_candidates(
    proposals: Sequence[Proposal], gt_box: Box, max_candidates: int, min_score: float, seed: str
) -> tuple[list[Candidate], bool]:
    """The shuffled candidate list for one query and whether the ground-truth box was added."""
    chosen = [Candidate(p.box, p.index, p.score) for p in ranked(proposals, max_candidates, min_score)]
    gt_added = not any(box_iou(c.box, gt_box) >= IOU_THRESHOLD for c in chosen)
    if gt_added:
        # The dropped proposal (lowest score) misses the target like every other one.
        chosen = chosen[: max_candidates - 1] + [Candidate(gt_box, GT_SOURCE, None)]
    return stable_shuffle(chosen, seed), gt_added


def stable_shuffle(items: Sequence[Any], seed: str) -> list[Any]:
    """A permutation that depends only on ``seed`` and ``len(items)``.

    Sorting positions by SHA-256 keys (not ``random.shuffle``, not ``hash``) keeps
    the order identical across runs, machines, processes and Python versions.
    """
    keys = [hashlib.sha256(f"{seed}\0{i}".encode()).digest() for i in range(len(items))]
    return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]


def build_prompt(expression: str, n_candidates: int) -> str:
    regions = ", ".join(f"{choice_label(k)} <region{k}>" for k in range(1, n_candidates + 1))
    return PROMPT.format(expression=expression, regions=regions)


@register_task
class RefCOCOgREC(Task):
    name = "refcocog-rec"
    description = "RefCOCOg REC with detector proposals: answer 'Region [k]' (accuracy at IoU 0.5)"
    version = "2"  # 2: candidates labelled "Region [k]" in the prompt
    metrics = ("accuracy", "unparseable", "gt_added")
    annotation_keys = ("refcocog_refs", "refcocog_instances", "refcocog_proposals")
    splits = ("val", "test")
    default_split = "val"
    max_new_tokens = 32

    def __init__(self, data_root: Path, split: str | None = None, *, max_candidates: int = 10,
                 min_score: float = 0.0) -> None:
        super().__init__(data_root, split)
        if max_candidates < 1:
            raise ConfigError(f"--task-args max_candidates={max_candidates}: must be at least 1")
        if not math.isfinite(min_score):
            raise ConfigError(f"--task-args min_score={min_score}: must be a finite number")
        self.max_candidates = max_candidates
        self.min_score = min_score

    def load_samples(self) -> list[Sample]:
        data = load_refcocog(dataset_path(self.data_root, "refcocog_refs"),
                             dataset_path(self.data_root, "refcocog_instances"))
        refs = data.split(str(self.split))
        instances = data.instances
        sizes = {image.id: (image.width, image.height) for image in instances.images.values()}
        proposals = load_proposals(dataset_path(self.data_root, "refcocog_proposals", split=str(self.split)),
                                   sizes, key="refcocog_proposals")
        if not any(proposals.for_image(ref.image_id) for ref in refs):
            raise DataError(
                f"{proposals.path}: no proposal for any image of the {self.split} split; "
                "is it the proposal file of this split?"
            )
        image_root = dataset_path(self.data_root, "refcocog_images")
        samples = []
        for ref in refs:
            gt_box = instances.region(instances.annotation(ref.ann_id), with_mask=False).box
            assert gt_box is not None
            image = instances.image_ref(ref.image_id, image_root)
            samples.extend(self._sample(ref, e, gt_box, image, proposals) for e in ref.expressions)
        return samples

    def _sample(self, ref: Ref, expression: Expression, gt_box: Box, image: ImageRef,
                proposals: ProposalSet) -> Sample:
        sample_id = f"{ref.ref_id}-{expression.sent_id}"
        own = proposals.for_image(ref.image_id)
        candidates, gt_added = build_candidates(own, gt_box, self.max_candidates, self.min_score,
                                                seed=f"{self.name}\0{sample_id}")
        ious = [box_iou(c.box, gt_box) for c in candidates]
        best = max(range(len(candidates)), key=lambda i: (ious[i], -i))
        metadata = {
            "ref_id": ref.ref_id, "sent_id": expression.sent_id, "ann_id": ref.ann_id, "image_id": ref.image_id,
            "expression": expression.text,
            "gt_box": list(gt_box),
            "candidates": [list(c.box) for c in candidates],
            "sources": [c.source for c in candidates],
            "candidate_scores": [c.score for c in candidates],
            "ious": ious,
            "gt_added": gt_added,
            "n_proposals": len(own),
            "dropped_proposals": proposals.dropped(ref.image_id),
            "max_candidates": self.max_candidates,
            "min_score": self.min_score,
        }
        return Sample(
            id=sample_id, image=image, prompt=build_prompt(expression.text, len(candidates)),
            target=[i + 1 for i, iou in enumerate(ious) if iou >= IOU_THRESHOLD],
            regions=tuple(Region(box=c.box) for c in candidates),
            gold_answer=choice_label(best + 1), metadata=metadata,
        )

    def build_requests(self, sample: Sample, capabilities: Capabilities) -> list[Request]:
        n = len(sample.regions)
        if capabilities.max_regions is not None and n > capabilities.max_regions:
            raise ConfigError(
                f"sample {sample.id} has {n} candidate regions but the model takes at most "
                f"{capabilities.max_regions}; rerun with --task-args max_candidates={capabilities.max_regions} "
                "(candidates are never truncated silently: that would change the task)"
            )
        return [GenerationRequest(
            sample=sample, prompt=sample.prompt, regions=capabilities.adapt(sample.regions),
            max_new_tokens=self.max_new_tokens, choices=tuple(choice_label(k) for k in range(1, n + 1)),
        )]

    def process(self, sample: Sample, outputs: Sequence[Output]) -> Processed:
        k = parse_choice(str(outputs[0]), len(sample.regions))
        correct = k is not None and k in sample.target
        return Processed(parsed=k, scores={"correct": float(correct), "unparseable": float(k is None)})

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        n = len(records)
        if n == 0:
            return {metric: 0.0 for metric in self.metrics}
        return {
            "accuracy": sum(r["parsed"] is not None and r["parsed"] in r["target"] for r in records) / n,
            "unparseable": sum(r["parsed"] is None for r in records) / n,
            "gt_added": sum(bool(r["metadata"]["gt_added"]) for r in records) / n,
        }
