"""Instruction conversations for training a region-level VLM on a data root's ``train`` split.

Every conversation holds ONE task, in the exact shape the evaluation asks it,
so a small model trained on these sees at test time the prompts it was
trained on. The user text of every evaluated kind is built with the task
modules' own constants and functions, never a copy of their strings:

===============  ==========================================================  ===============================
kind             user text (``<regionK>`` numbered over ``regions``)          assistant text
===============  ==========================================================  ===============================
classification   ``tasks.coco_cls.PHRASINGS[i] + " " + answer_suffix(names)``  the category name
caption          ``tasks.captioning.VG_PROMPT`` / ``REFCOCOG_PROMPT``         a VG phrase / RefCOCOg sentence
rec              ``tasks.rec.build_prompt(expression, K)``                    ``tasks.rec.choice_label(k)``
pope             ``bench.synthetic.pope_sampling.question_text(name)``        ``"Yes"`` / ``"No"``
relation         ``"Is <region1> to the left of <region2>?"`` (4 relations)   ``"Yes"`` / ``"No"``
                 ``"What is the relation between <region1> and <region2>?"``  ``"The red circle is above the
                                                                              blue square."``
uniqueness       ``"Is <region1> the only ring in the image?"``               ``"Yes"`` / ``"No"``
                 (also ``"... the only red ring ..."``, ``"... small ring"``)
===============  ==========================================================  ===============================

Sources (the same loaders as evaluation, so the same regions):

* classification: every non-crowd annotation of the COCO ``instances_{split}2017.json``;
  region = box + segmentation, exactly as ``coco-cls`` builds it;
  ``classification_phrasings`` conversations per annotation (default 2), each
  with another of the four phrasings, drawn per annotation;
* caption: every Visual Genome region of the split's images (box only, as
  ``vg-cap``) and every sentence of the RefCOCOg refs of the split (box + mask,
  as ``refcocog-cap``);
* rec: every sentence of the split's RefCOCOg refs, ``rec_draws`` times. The
  candidates follow the evaluation protocol of ``refcocog-rec``
  (:func:`tasks.rec.build_candidates`: the top 10 proposals, the ground-truth
  box added when none has IoU >= 0.5, a stable shuffle) over *simulated*
  detections of the image's ground-truth objects
  (:func:`bench.synthetic.proposals.detect`: jittered boxes, duplicates,
  misses, false positives), one detector draw per image and draw index; the
  answer names the candidate with the highest IoU (>= 0.5 by construction);
* pope: per image of the COCO file, one question per category present
  (crowds count, as in the suite's POPE files) answered "Yes", and as many
  absent categories answered "No": first the absent categories that co-occur
  most often (over the split) with the image's categories (POPE's adversarial
  rule), then the most frequent absent one (popular), then random ones; the
  questions of an image are shuffled;
* relation: pairs of non-crowd objects of an image whose boxes are decidedly
  left/right/above/below each other (:func:`bench.synthetic.relations.holds`,
  the strict reading the suite's expressions use); up to
  ``relations_per_image`` per image, half yes/no questions, half "what is the
  relation" questions answered with a sentence naming both objects (colour
  words when the suite's ``meta/objects_{split}.json`` is present).
* uniqueness: per non-crowd annotation of the COCO file, "Is <region1> the only
  <category> in the image?", answered "Yes" when no other object of the image
  (crowds included) has its category; when one has and the suite's object
  metadata is present, the same question with its colour ("the only red
  ring") and with its size class ("the only small ring"), by the suite's own
  rule (:meth:`bench.synthetic.expressions.Description.matches`: a crowd
  matches any size). Why: which of these holds is what a RefCOCOg expression's
  choice of words follows ("the ring", "the red ring", "the small ring"), and
  the tiny RGPT's captions got that choice wrong more than anything else
  (README, the polish stage). No evaluation task asks it; only a recipe's mix
  that names it trains on it.

Everything is deterministic given ``(data_root, split, seed)``: random choices
come from ``numpy`` generators seeded by ``(seed, purpose, id)``.

Counts on the default synthetic suite (300 train images, ``seed=0``, default
options) are pinned by ``tests/test_training_data.py``; see
:data:`DEFAULT_SUITE_COUNTS`.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.coco import CocoInstances, load_coco_instances
from bench.data.layout import dataset_path
from bench.data.proposals import Proposal
from bench.data.refcocog import load_refcocog
from bench.data.vg import load_vg_regions
from bench.errors import DataError
from bench.regions import Box, Region, box_iou
from bench.synthetic.params import SuiteParams
from bench.synthetic.pope_sampling import question_text
from bench.synthetic.proposals import detect
from bench.synthetic.relations import Box as XYWH
from bench.synthetic.relations import holds
from bench.types import ImageRef
from tasks.captioning import REFCOCOG_PROMPT, VG_PROMPT
from tasks.coco_cls import PHRASINGS, answer_suffix
from tasks.rec import IOU_THRESHOLD, build_candidates, build_prompt, choice_label

KINDS: tuple[str, ...] = ("classification", "caption", "relation", "rec", "pope", "uniqueness")
YES, NO = "Yes", "No"
# Kinds no evaluation task asks: they train a skill the tasks need, and add no word order to the tokenizer.
TRAINING_ONLY_KINDS: tuple[str, ...] = ("uniqueness",)
UNIQUENESS_QUESTION = "Is <region1> the only {words} in the image?"

# Yes/no relation questions: relation -> the words after "Is <region1> ".
RELATION_QUESTION = "Is <region1> {phrase} <region2>?"
RELATION_WORDS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
RELATION_WHAT = "What is the relation between <region1> and <region2>?"
RELATION_ANSWER = "The {first} is {phrase} the {second}."

MAX_CANDIDATES = 10  # tasks.rec's default
# Tags that separate the random streams of each purpose.
_STREAMS = {"phrasing": 1, "detector": 2, "pope": 3, "relation": 4, "mix": 5}

# Conversation counts on the default synthetic suite (seed 0, default options); the tests check them.
DEFAULT_SUITE_COUNTS: dict[str, int] = {
    "classification": 2968,  # 1484 non-crowd annotations x 2 phrasings
    "caption": 3836,  # VG regions + RefCOCOg train sentences
    "relation": 1199,  # up to 4 per image
    "rec": 3428,  # 1714 RefCOCOg train sentences x 2 detector draws
    "pope": 2168,  # 1094 "Yes" + 1074 "No"
    "uniqueness": 2944,  # 1484 category questions + 730 colour + 730 size (when the category is not unique)
}


@dataclass(frozen=True)
class Conversation:
    """One training conversation about one image.

    ``turns`` are ``(user, assistant)`` pairs; user texts use ``<region1>`` ...
    placeholders numbered over ``regions`` (validated, box always set, mask
    where the evaluation gives one). ``source`` says where it came from
    (``"coco:{ann_id}"``, ``"vg:{region_id}"``, ...), for debugging and tests.
    """

    image: ImageRef
    regions: tuple[Region, ...]
    turns: tuple[tuple[str, str], ...]
    kind: str
    source: str = ""


def build_conversations(
    data_root: Path,
    split: str = "train",
    seed: int = 0,
    *,
    classification_phrasings: int = 2,
    rec_draws: int = 2,
    relations_per_image: int = 4,
    detector: SuiteParams | None = None,
) -> list[Conversation]:
    """All conversations of ``split`` under ``data_root``, grouped by kind in :data:`KINDS` order.

    ``classification_phrasings``: conversations per annotation, each with another of the four
    phrasings (1-4). ``rec_draws``: REC conversations per sentence, each over another simulated
    detector draw (different candidates and order). ``detector``: the
    simulated detector's parameters (recall, duplicates, false positives;
    default: the synthetic suite's defaults, the ones its eval proposals use).
    """
    data_root = Path(data_root)
    detector = detector or SuiteParams()
    coco = _Cached(load_coco_instances(dataset_path(data_root, "coco_instances", split=split), key="coco_instances"),
                   dataset_path(data_root, "coco_images", split=split))
    refcocog = _load_refcocog(data_root)
    refs = _refs(refcocog, split) if refcocog is not None else []
    ref_instances = _Cached(refcocog.instances, dataset_path(data_root, "refcocog_images")) if refcocog else None
    meta = load_object_meta(data_root, split)
    conversations: list[Conversation] = []
    conversations += _classification(coco, seed, classification_phrasings)
    conversations += _captions(data_root, split, refs, ref_instances)
    conversations += _relations(coco, meta, seed, relations_per_image)
    if ref_instances is not None:
        conversations += _rec(refs, ref_instances, seed, rec_draws, detector)
    conversations += _pope(coco, seed)
    conversations += _uniqueness(coco, meta)
    return conversations


def all_texts(conversations: Iterable[Conversation]) -> list[str]:
    """Every user and assistant text, in order (for building a word-level tokenizer)."""
    return [text for c in conversations for turn in c.turns for text in turn]


def vocabulary_texts(conversations: Sequence[Conversation]) -> tuple[list[str], list[str]]:
    """(texts of the kinds evaluation asks, texts of :data:`TRAINING_ONLY_KINDS`): what a run's
    tokenizer numbers its words by, and what only adds words it lacks
    (:func:`bench.training.runs.run_tokenizer`)."""
    return ([t for t in all_texts(c for c in conversations if c.kind not in TRAINING_ONLY_KINDS)],
            [t for t in all_texts(c for c in conversations if c.kind in TRAINING_ONLY_KINDS)])


def kind_counts(conversations: Iterable[Conversation]) -> dict[str, int]:
    """Conversations per kind, in :data:`KINDS` order."""
    counts = Counter(c.kind for c in conversations)
    return {kind: counts[kind] for kind in KINDS}


def mix(conversations: Sequence[Conversation], counts: Mapping[str, int], seed: int = 0) -> list[Conversation]:
    """A re-weighted training set: exactly ``counts[kind]`` conversations of each kind named (kinds not
    named are dropped). A kind is repeated in whole seeded permutations, then a partial one, so every
    conversation appears ``n // len`` or ``n // len + 1`` times; the order of the result is kind by kind
    (the trainer shuffles). Deterministic given ``seed``. A key ``kind:dataset`` takes that kind from
    one dataset only (``caption:refcocog``, ``caption:vg``: the prefix of ``Conversation.source``)."""
    out: list[Conversation] = []
    for key, count in counts.items():
        kind, _, source = key.partition(":")
        pool = [c for c in conversations if c.kind == kind and (not source or c.source.startswith(source + ":"))]
        if count < 0:
            raise ValueError(f"cannot take {count} {key!r} conversations")
        if count and not pool:
            raise DataError(f"the training data has no {key} conversations, and the recipe's mix asks for "
                            f"{count}; train on a data root that has them, or give {key} no share of the mix")
        stream = [seed, _STREAMS["mix"], KINDS.index(kind) if kind in KINDS else len(KINDS)]
        if source:  # a kind from one dataset only ("caption:refcocog"): a stream of its own
            stream.append(zlib.crc32(source.encode()))
        rng = np.random.default_rng(np.random.SeedSequence(stream))
        while count > 0:
            order = rng.permutation(len(pool))[:count]
            out.extend(pool[int(i)] for i in order)
            count -= len(order)
    return out


def longest_phrasings(conversations: Sequence[Conversation]) -> list[Conversation]:
    """``conversations`` with each RefCOCOg ref's caption conversations cut to its longest sentence
    (most words; the first of equals), everything else kept, in order.

    Why: a ref's sentences are paraphrases of one description, and the long forms ("the only
    ring", "the ring that is red") say in words which choice the description made, where the
    short ones ("the ring", "the red ring") leave it to a missing word. CIDEr, which weighs
    n-grams up to 4, rewards a caption in the long form twice over: a two-word caption has no 3-
    or 4-grams to match. Trained on every sentence (stage 2), the tiny RGPT answered "the only
    ring" for 1 of the 56 evaluation regions whose category is unique; polished on the longest,
    for 19, and refcocog-cap's CIDEr rose from 317.8 to 369.5 (docs/rgpt-training-log.md, run PA)."""
    longest: dict[str, Conversation] = {}
    for conversation in conversations:
        ref = _refcocog_caption_ref(conversation)
        if ref is not None:
            best = longest.get(ref)
            if best is None or _answer_words(conversation) > _answer_words(best):
                longest[ref] = conversation
    kept = {id(c) for c in longest.values()}
    return [c for c in conversations if _refcocog_caption_ref(c) is None or id(c) in kept]


def _refcocog_caption_ref(conversation: Conversation) -> str | None:
    """The ref id of a RefCOCOg caption conversation (``source`` ``"refcocog:{ref_id}-{sent_id}"``)."""
    if conversation.kind != "caption" or not conversation.source.startswith("refcocog:"):
        return None
    return conversation.source.removeprefix("refcocog:").rpartition("-")[0]


def _answer_words(conversation: Conversation) -> int:
    return len(conversation.turns[-1][1].split())


# --------------------------------------------------------------------- kinds


def _classification(coco: _Cached, seed: int, phrasings: int) -> list[Conversation]:
    names = [c.name for c in sorted(coco.instances.categories.values(), key=lambda c: c.id)]
    suffix = answer_suffix(names)
    out = []
    for annotation in coco.instances.annotations:
        if annotation.iscrowd:
            continue
        rng = _rng(seed, "phrasing", annotation.id)
        region = coco.region(annotation.id)
        image = coco.image(annotation.image_id)
        name = coco.instances.categories[annotation.category_id].name
        for index in rng.permutation(len(PHRASINGS))[:phrasings]:
            prompt = f"{PHRASINGS[int(index)]} {suffix}"
            out.append(Conversation(image=image, regions=(region,), turns=((prompt, name),), kind="classification",
                                    source=f"coco:{annotation.id}:phrasing{int(index)}"))
    return out


def _captions(data_root: Path, split: str, refs: list, ref_instances: _Cached | None) -> list[Conversation]:
    out = []
    vg_split = dataset_path(data_root, "vg_split", split=split)
    vg_regions = dataset_path(data_root, "vg_regions")
    if vg_split.is_file() and vg_regions.is_file():
        vg = load_vg_regions(vg_regions, dataset_path(data_root, "vg_images"), split_path=vg_split,
                             image_data_path=dataset_path(data_root, "vg_image_data"))
        sizes = _vg_sizes(dataset_path(data_root, "vg_image_data"))
        images = {i: ImageRef(key=ref.key, path=ref.path, size=sizes.get(i)) for i, ref in vg.images.items()}
        for r in vg.regions:
            out.append(Conversation(image=images[r.image_id], regions=(r.region,),
                                    turns=((VG_PROMPT, r.phrase),), kind="caption", source=f"vg:{r.region_id}"))
    if ref_instances is not None:
        for ref in refs:
            region = ref_instances.region(ref.ann_id)
            image = ref_instances.image(ref.image_id)
            for e in ref.expressions:
                out.append(Conversation(image=image, regions=(region,), turns=((REFCOCOG_PROMPT, e.text),),
                                        kind="caption", source=f"refcocog:{ref.ref_id}-{e.sent_id}"))
    return out


def _rec(refs: list, source: _Cached, seed: int, draws: int, detector: SuiteParams) -> list[Conversation]:
    instances = source.instances
    proposals: dict[tuple[int, int], list[Proposal]] = {}
    out = []
    for draw in range(draws):
        for ref in refs:
            image = instances.images[ref.image_id]
            key = (ref.image_id, draw)
            if key not in proposals:
                proposals[key] = _simulated_proposals(instances, ref.image_id, seed, draw, detector)
            gt_box = source.region(ref.ann_id).box
            assert gt_box is not None
            for e in ref.expressions:
                sample_id = f"{ref.ref_id}-{e.sent_id}"
                candidates, _ = build_candidates(proposals[key], gt_box, MAX_CANDIDATES, 0.0,
                                                 seed=f"train\0{seed}\0{draw}\0{sample_id}")
                ious = [box_iou(c.box, gt_box) for c in candidates]
                best = max(range(len(candidates)), key=lambda i: (ious[i], -i))
                assert ious[best] >= IOU_THRESHOLD
                regions = tuple(Region(box=c.box).validated(image.width, image.height) for c in candidates)
                out.append(Conversation(
                    image=source.image(ref.image_id), regions=regions,
                    turns=((build_prompt(e.text, len(candidates)), choice_label(best + 1)),),
                    kind="rec", source=f"refcocog:{sample_id}:draw{draw}",
                ))
    return out


def _simulated_proposals(instances: CocoInstances, image_id: int, seed: int, draw: int,
                         detector: SuiteParams) -> list[Proposal]:
    """A simulated detector's boxes for one image (as the suite makes its val/test proposal files)."""
    image = instances.images[image_id]
    truth = [(a.category_id, XYWH(*a.bbox)) for a in _annotations_of(instances, image_id) if not a.iscrowd]
    rng = _rng(seed, "detector", image_id, draw)
    out = []
    for index, d in enumerate(detect(rng, image_id, truth, image.width, image.height, detector)):
        x, y, w, h = d["bbox"]  # type: ignore[misc]
        box: Box = (max(x, 0.0), max(y, 0.0), min(x + w, image.width), min(y + h, image.height))
        if box[2] > box[0] and box[3] > box[1]:
            out.append(Proposal(index, image_id, box, float(d["score"]), None))  # type: ignore[arg-type]
    return out


def _pope(coco: _Cached, seed: int) -> list[Conversation]:
    categories = coco.instances.categories
    order = {c.name: c.id for c in categories.values()}
    present: dict[int, list[str]] = {}
    for annotation in coco.instances.annotations:
        names = present.setdefault(annotation.image_id, [])
        name = categories[annotation.category_id].name
        if name not in names:
            names.append(name)
    frequency = Counter(n for names in present.values() for n in names)
    popular = sorted(frequency, key=lambda n: (-frequency[n], order[n]))
    pairs: dict[str, Counter[str]] = {}
    for names in present.values():
        for name in names:
            pairs.setdefault(name, Counter()).update(o for o in names if o != name)
    vocabulary = sorted(order, key=order.__getitem__)
    out = []
    for image_id in sorted(present):
        names = present[image_id]
        rng = _rng(seed, "pope", image_id)
        positives = [names[int(i)] for i in rng.permutation(len(names))]
        absent = [n for n in vocabulary if n not in names]
        negatives: list[str] = []
        for positive in positives:  # adversarial: the absent partner seen most often with each positive
            partners = pairs.get(positive, Counter())
            ranked = sorted((n for n in partners if n in absent and n not in negatives),
                            key=lambda n: (-partners[n], order[n]))
            if ranked:
                negatives.append(ranked[0])
        negatives += [n for n in popular if n in absent and n not in negatives][:1]  # one popular
        rest = [n for n in absent if n not in negatives]
        negatives += [rest[int(i)] for i in rng.permutation(len(rest))]  # then random
        negatives = negatives[: len(positives)]
        image = coco.image(image_id)
        questions = [(n, YES) for n in positives] + [(n, NO) for n in negatives]
        for k in rng.permutation(len(questions)):
            name, answer = questions[int(k)]
            out.append(Conversation(image=image, regions=(), turns=((question_text(name), answer),),
                                    kind="pope", source=f"pope:{image_id}:{name}"))
    return out


def _uniqueness(coco: _Cached, meta: dict[int, dict[str, str]]) -> list[Conversation]:
    from bench.synthetic.expressions import Description

    by_image: dict[int, list] = {}
    for annotation in coco.instances.annotations:
        by_image.setdefault(annotation.image_id, []).append(annotation)

    def described(annotation) -> tuple[str, str | None, str | None]:
        words = meta.get(annotation.id, {})
        size = None if annotation.iscrowd else words.get("size")  # a cluster has no single size
        return coco.instances.categories[annotation.category_id].name, words.get("colour"), size

    out = []
    for image_id in sorted(by_image):
        annotations = by_image[image_id]
        image = coco.image(image_id)
        for annotation in annotations:
            if annotation.iscrowd:
                continue
            category, colour, size = described(annotation)
            others = []
            for other in annotations:
                if other.id != annotation.id:
                    name, other_colour, other_size = described(other)
                    others.append(_Item(name, other_colour, other_size))
            asked = [("category", Description(category))]
            if any(o.category == category for o in others):  # only then do colour or size tell it apart
                if colour is not None:
                    asked.append(("colour", Description(category, colour=colour)))
                if size is not None:
                    asked.append(("size", Description(category, size=size)))
            for variant, description in asked:
                words = " ".join(w for w in (description.size, description.colour, category) if w)
                unique = not any(description.matches(o) for o in others)
                out.append(Conversation(image=image, regions=(coco.region(annotation.id),),
                                        turns=((UNIQUENESS_QUESTION.format(words=words), YES if unique else NO),),
                                        kind="uniqueness", source=f"uniqueness:{annotation.id}:{variant}"))
    return out


@dataclass(frozen=True)
class _Item:
    """What :meth:`bench.synthetic.expressions.Description.matches` reads of an object."""

    category: str
    colour: str | None
    size: str | None


def _relations(coco: _Cached, meta: dict[int, dict[str, str]], seed: int, per_image: int) -> list[Conversation]:
    by_image: dict[int, list] = {}
    for annotation in coco.instances.annotations:
        if not annotation.iscrowd:
            by_image.setdefault(annotation.image_id, []).append(annotation)
    out = []
    for image_id in sorted(by_image):
        annotations = by_image[image_id]
        pairs = []
        for a in annotations:
            for b in annotations:
                if a.id == b.id:
                    continue
                for relation in RELATION_WORDS:
                    if holds(relation, XYWH(*a.bbox), XYWH(*b.bbox)):
                        pairs.append((a, b, relation))
        if not pairs:
            continue
        rng = _rng(seed, "relation", image_id)
        chosen = rng.permutation(len(pairs))[:per_image]
        image = coco.image(image_id)
        for k, index in enumerate(chosen):
            a, b, relation = pairs[int(index)]
            regions = (coco.region(a.id), coco.region(b.id))
            if k % 2 == 0:
                asked = relation if rng.random() < 0.5 else OPPOSITE[relation]
                turn = (RELATION_QUESTION.format(phrase=RELATION_WORDS[asked]), YES if asked == relation else NO)
            else:
                turn = (RELATION_WHAT, _relation_answer(_name(coco.instances, meta, a), relation,
                                                        _name(coco.instances, meta, b)))
            out.append(Conversation(image=image, regions=regions, turns=(turn,), kind="relation",
                                    source=f"relation:{a.id}:{b.id}"))
    return out


# ------------------------------------------------------------------- helpers


class _Cached:
    """An instances file with memoised image refs and validated regions (box + mask)."""

    def __init__(self, instances: CocoInstances, image_root: Path) -> None:
        self.instances, self.image_root = instances, image_root
        self._images: dict[int, ImageRef] = {}
        self._regions: dict[int, Region] = {}

    def image(self, image_id: int) -> ImageRef:
        if image_id not in self._images:
            self._images[image_id] = self.instances.image_ref(image_id, self.image_root)
        return self._images[image_id]

    def region(self, annotation_id: int) -> Region:
        if annotation_id not in self._regions:
            annotation = self.instances.annotation(annotation_id)
            self._regions[annotation_id] = self.instances.region(annotation, with_mask=True)
        return self._regions[annotation_id]


def _rng(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[purpose], *ids]))


def _annotations_of(instances: CocoInstances, image_id: int) -> list:
    index = getattr(instances, "_training_by_image", None)
    if index is None:
        index = {}
        for a in instances.annotations:
            index.setdefault(a.image_id, []).append(a)
        instances._training_by_image = index  # type: ignore[attr-defined]
    return index.get(image_id, [])


def _load_refcocog(data_root: Path):
    refs, instances = dataset_path(data_root, "refcocog_refs"), dataset_path(data_root, "refcocog_instances")
    if not (refs.is_file() and instances.is_file()):
        return None
    return load_refcocog(refs, instances)


def _refs(refcocog, split: str) -> list:
    try:
        return refcocog.split(split)
    except DataError:
        return []


def load_object_meta(data_root: Path, split: str) -> dict[int, dict[str, str]]:
    """Object id -> its ``colour`` and ``size`` class (a crowd has no size), from the synthetic
    suite's ``meta/objects_{split}.json`` (empty elsewhere)."""
    path = Path(data_root) / "meta" / f"objects_{split}.json"
    if not path.is_file():
        return {}
    return {int(o["id"]): {key: str(o[key]) for key in ("size", "colour") if o.get(key) is not None}
            for image in json.loads(path.read_text(encoding="utf-8")) for o in image["objects"]}


def _name(coco: CocoInstances, meta: dict[int, dict[str, str]], annotation) -> str:
    category = coco.categories[annotation.category_id].name
    colour = meta.get(annotation.id, {}).get("colour")
    return f"{colour} {category}" if colour else category


def _relation_answer(first: str, relation: str, second: str) -> str:
    """"The red circle is above the blue square."; "The first red circle ... the second red circle." for twins."""
    if first == second:
        first, second = f"first {first}", f"second {second}"
    return RELATION_ANSWER.format(first=first, phrase=RELATION_WORDS[relation], second=second)


def _vg_sizes(path: Path) -> dict[int, tuple[int, int]]:
    """Image id -> (width, height) from VG's ``image_data.json`` (empty when absent)."""
    if not path.is_file():
        return {}
    sizes = {}
    for item in json.loads(path.read_text(encoding="utf-8")):
        image_id = item.get("image_id", item.get("id"))
        if isinstance(image_id, int) and isinstance(item.get("width"), int) and isinstance(item.get("height"), int):
            sizes[image_id] = (item["width"], item["height"])
    return sizes


def fingerprint(conversations: Sequence[Conversation]) -> str:
    """SHA-256 over every conversation's image, regions, turns and kind (for determinism checks)."""
    digest = hashlib.sha256()
    for c in conversations:
        digest.update(json.dumps([c.image.key, [r.to_json() for r in c.regions], c.turns, c.kind, c.source],
                                 sort_keys=True).encode())
    return digest.hexdigest()
