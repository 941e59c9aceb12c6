"""POPE question sampling, following the POPE authors' rules.

POPE (Li et al., "Evaluating Object Hallucination in Large Vision-Language
Models", EMNLP 2023; reference implementation ``utils.py``/``main.py`` in the
authors' repository, github.com/RUCAIBox/POPE, mirrored as AoiDragon/POPE)
builds yes/no questions "Is there a <object> in the image?" as follows:

* Only images whose ground-truth object list holds at least ``sample_num`` (3)
  distinct objects qualify.
* Object frequencies (``generate_ground_truth_objects``) count, per object, the
  qualifying images that contain it; co-occurrence (``compute_co_occurrence``)
  counts, per ordered pair of objects, the images containing both, and keeps
  each object's partners sorted by count, most frequent first.
* Per image, for i in 0..2: ask about the image's i-th object (label "yes"),
  then immediately one negative (label "no"), so labels alternate yes/no. A
  negative is never an object of the image and never an object already asked
  about for this image (positives included). The negative strategy differs:

  - **random**: uniformly among all objects seen in the dataset;
  - **popular**: the most frequent object (by the frequency above);
  - **adversarial**: the object that co-occurs most often with *the positive
    just asked* (not with the whole image); if none is left, a random one.
    The popular strategy falls back to random the same way.

* ``question_id`` counts from 1 through the file; files are JSON Lines.

Ties the authors leave to Python's dict order are broken here by category id,
so the output is deterministic. Text uses "an" before a vowel, as the published
question files do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

SAMPLE_NUM = 3
VARIANTS: tuple[str, ...] = ("random", "popular", "adversarial")
TEMPLATE = "Is there {article} {name} in the image?"


@dataclass(frozen=True)
class PopeImage:
    """One image's ground truth for POPE: distinct object names, in asking order."""

    image: str  # file name relative to the POPE image directory
    objects: tuple[str, ...]


def qualifying(images: list[PopeImage]) -> list[PopeImage]:
    """Images with at least ``SAMPLE_NUM`` distinct objects (the authors' filter)."""
    return [im for im in images if len(set(im.objects)) >= SAMPLE_NUM]


def object_frequencies(images: list[PopeImage], order: dict[str, int]) -> list[str]:
    """Objects sorted by the number of images containing them, most frequent first."""
    counts = Counter(name for im in images for name in set(im.objects))
    return sorted(counts, key=lambda name: (-counts[name], order[name]))


def co_occurrence(images: list[PopeImage], order: dict[str, int]) -> dict[str, list[str]]:
    """For each object, the objects seen with it, most often first."""
    pairs: dict[str, Counter[str]] = {}
    for im in images:
        names = set(im.objects)
        for name in names:
            partners = pairs.setdefault(name, Counter())
            partners.update(other for other in names if other != name)
    return {
        name: sorted(partners, key=lambda other: (-partners[other], order[other])) for name, partners in pairs.items()
    }


def question_text(name: str) -> str:
    """The question for ``name``: "Is there a/an <name> in the image?"."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return TEMPLATE.format(article=article, name=name)


def build_questions(
    images: list[PopeImage],
    variant: str,
    category_order: dict[str, int],
    rng: np.random.Generator,
) -> list[dict[str, object]]:
    """POPE questions for one negative-sampling ``variant`` over ``images``.

    ``category_order`` (name -> category id) breaks frequency ties; ``rng``
    draws random negatives. Non-qualifying images are skipped.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown POPE variant {variant!r}; expected one of {VARIANTS}")
    images = qualifying(images)
    # Random negatives come from the dataset's whole category list (for COCO every one of the 80
    # occurs anyway); a small suite may not show every category, and must still find negatives.
    vocabulary = sorted(category_order, key=lambda n: category_order[n])
    popular = object_frequencies(images, category_order)
    partners = co_occurrence(images, category_order)
    questions: list[dict[str, object]] = []

    def ask(image: str, name: str, label: str) -> None:
        questions.append(
            {
                "question_id": len(questions) + 1,
                "image": image,
                "text": question_text(name),
                "label": label,
            }
        )

    for im in images:
        present = set(im.objects)
        asked: list[str] = []
        positives = list(dict.fromkeys(im.objects))[:SAMPLE_NUM]
        for positive in positives:
            asked.append(positive)
            ask(im.image, positive, "yes")
            if variant == "random":
                ranked: list[str] = []
            elif variant == "popular":
                ranked = popular
            else:
                ranked = partners.get(positive, [])
            negative = next((n for n in ranked if n not in present and n not in asked), None)
            if negative is None:
                pool = [n for n in vocabulary if n not in present and n not in asked]
                if not pool:
                    raise ValueError(f"{im.image}: no absent object left to ask about")
                negative = pool[int(rng.integers(len(pool)))]
            asked.append(negative)
            ask(im.image, negative, "no")
    return questions
