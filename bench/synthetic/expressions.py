"""Referring expressions (RefCOCOg) and region captions (Visual Genome).

Referring expressions are the *minimal unambiguous* description of a target
among everything in its image, tried in this order:

1. the category alone, if no other object shares it ("the star");
2. colour + category ("the red circle");
3. size + category, then size + colour + category ("the small red circle");
4. one of those plus a spatial relation to an anchor object that itself has a
   unique plain description ("the red circle left of the blue square").

A target that stays ambiguous gets no expression (and no ref). Relations use
the strict/loose readings of :mod:`bench.synthetic.relations`: the target must
satisfy the strict reading and every other object matching the target's words
must fail even the loose one. A crowd cluster of dots counts as a distractor
for its category and colour at any size and any position, because one of its
dots could be meant.

Each ref gets 1-3 paraphrases that differ in word order, determiner and
relation wording; all of them denote the same description, so all are correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.synthetic.relations import Box, could_hold, holds, touching
from bench.synthetic.vocab import RELATION_PHRASES, RELATIONS, SIZE_WORDS

# Attribute sets tried for a description, cheapest first.
ATTRIBUTE_SETS: tuple[tuple[str, ...], ...] = ((), ("colour",), ("size",), ("size", "colour"))
MAX_PHRASINGS = 3


@dataclass(frozen=True)
class Item:
    """What a describer knows about one annotated object."""

    key: int  # the annotation id
    category: str
    colour: str
    size: str | None  # None for a crowd: a cluster has no single size
    box: Box  # tight box of the visible mask
    crowd: bool = False


@dataclass(frozen=True)
class Description:
    """Category plus optional colour and size words."""

    category: str
    colour: str | None = None
    size: str | None = None

    def matches(self, item: Item) -> bool:
        """Could these words refer to ``item``? (A crowd matches any size.)"""
        if item.category != self.category:
            return False
        if self.colour is not None and item.colour != self.colour:
            return False
        return self.size is None or item.size is None or item.size == self.size


@dataclass(frozen=True)
class Expression:
    """A description of the target, optionally relative to an anchor."""

    target: Description
    relation: str | None = None
    anchor: Description | None = None
    anchor_key: int | None = None


def _description(item: Item, attributes: tuple[str, ...]) -> Description:
    return Description(
        item.category,
        item.colour if "colour" in attributes else None,
        item.size if "size" in attributes else None,
    )


def plain_description(target: Item, items: list[Item]) -> Description | None:
    """Shortest attribute description matching ``target`` and nothing else in ``items``."""
    others = [i for i in items if i.key != target.key]
    for attributes in ATTRIBUTE_SETS:
        description = _description(target, attributes)
        if not any(description.matches(o) for o in others):
            return description
    return None


def referring_expression(target: Item, items: list[Item], rng: np.random.Generator) -> Expression | None:
    """Minimal unambiguous expression for ``target``, or None when none exists.

    ``rng`` only breaks ties between equally short relational expressions, so
    expressions vary instead of always using the nearest anchor to the left.
    """
    if target.crowd:
        return None
    plain = plain_description(target, items)
    if plain is not None:
        return Expression(plain)
    anchors = []
    for anchor in items:
        if anchor.key == target.key or anchor.crowd:
            continue
        anchor_words = plain_description(anchor, items)
        if anchor_words is not None:
            distance = (anchor.box.cx - target.box.cx) ** 2 + (anchor.box.cy - target.box.cy) ** 2
            anchors.append((distance, anchor, anchor_words))
    anchors.sort(key=lambda entry: (entry[0], entry[1].key))
    for attributes in ATTRIBUTE_SETS:
        words = _description(target, attributes)
        distractors = [i for i in items if i.key != target.key and words.matches(i)]
        options = []
        for _, anchor, anchor_words in anchors:
            for relation in RELATIONS:
                if not holds(relation, target.box, anchor.box):
                    continue
                if all(
                    d.key != anchor.key and not d.crowd and not could_hold(relation, d.box, anchor.box)
                    for d in distractors
                ):
                    options.append(Expression(words, relation, anchor_words, anchor.key))
        if options:
            # Prefer the nearest anchors, pick among the first few at random.
            return options[int(rng.integers(min(len(options), 3)))]
    return None


def _noun_phrase(description: Description, size_word: str | None) -> list[str]:
    words = []
    if description.size is not None:
        words.append(size_word or SIZE_WORDS[description.size][0])
    if description.colour is not None:
        words.append(description.colour)
    words.append(description.category)
    return words


def _plain_variants(description: Description) -> list[list[str]]:
    """Word sequences for a plain description (no relation)."""
    size_words = SIZE_WORDS[description.size] if description.size else (None,)
    variants = []
    for size_word in size_words:
        np_words = _noun_phrase(description, size_word)
        variants.append(["the", *np_words])
        if description.colour is None and description.size is None:
            variants.append(["the", "only", description.category])
        elif description.size is None:
            variants.append(["the", description.category, "that", "is", description.colour])
        elif description.colour is None:
            variants.append(["the", description.category, "that", "is", size_word])
        else:
            variants.append(["the", size_word, description.category, "that", "is", description.colour])
    return variants


def _relation_variants(expression: Expression) -> list[list[str]]:
    assert expression.relation is not None and expression.anchor is not None
    size_words = SIZE_WORDS[expression.target.size] if expression.target.size else (None,)
    anchor_words = ["the", *_noun_phrase(expression.anchor, None)]
    variants = []
    for size_word in size_words:
        target_words = ["the", *_noun_phrase(expression.target, size_word)]
        for phrase in RELATION_PHRASES[expression.relation]:
            relation_words = phrase.split()
            variants.append([*target_words, *relation_words, *anchor_words])
            variants.append([*target_words, "that", "is", *relation_words, *anchor_words])
    return variants


def phrasings(expression: Expression, rng: np.random.Generator) -> list[str]:
    """1-3 distinct sentences (lower case, space separated) for ``expression``."""
    plain = expression.relation is None
    variants = _plain_variants(expression.target) if plain else _relation_variants(expression)
    sentences = sorted({" ".join(words) for words in variants})
    count = min(len(sentences), int(rng.integers(1, MAX_PHRASINGS + 1)))
    chosen = rng.choice(len(sentences), size=count, replace=False)
    return [sentences[int(i)] for i in chosen]


def _indefinite(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front ("an orange star")."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def region_captions(
    items: list[Item], occlusions: set[tuple[int, int]], rng: np.random.Generator
) -> list[tuple[str, Box]]:
    """Short Visual Genome style phrases with their boxes.

    One phrase per object ("a small red circle"), one for a crowd ("a group of
    small blue dots"), and up to two relational phrases over pairs ("red circle
    in front of a blue square", "green star next to a yellow ring") whose box
    is the union of both objects, as VG's multi-object regions are.
    ``occlusions`` holds ``(front_key, back_key)`` pairs.
    """
    captions: list[tuple[str, Box]] = []
    for item in items:
        if item.crowd:
            forms = [f"a group of small {item.colour} dots", f"a cluster of {item.colour} dots"]
        else:
            size = item.size or "small"
            forms = [
                f"a {size} {item.colour} {item.category}",
                f"{item.colour} {item.category}",
                f"{size} {item.colour} {item.category}",
                _indefinite(f"{item.colour} {item.category}"),
            ]
        captions.append((forms[int(rng.integers(len(forms)))], item.box))
    solid = [i for i in items if not i.crowd]
    pairs: list[tuple[str, Box]] = []
    for a in solid:
        for b in solid:
            if a.key == b.key:
                continue
            first = f"{a.colour} {a.category}"
            second = _indefinite(f"{b.colour} {b.category}")
            if (a.key, b.key) in occlusions:
                pairs.append((f"{first} in front of {second}", a.box.union(b.box)))
            elif a.key < b.key and touching(a.box, b.box):
                pairs.append((f"{first} next to {second}", a.box.union(b.box)))
            else:
                for relation in RELATIONS:
                    if holds(relation, a.box, b.box) and a.box.gap(b.box) < 40:
                        phrase = RELATION_PHRASES[relation][0]
                        pairs.append((f"{first} {phrase} {second}", a.box.union(b.box)))
    if pairs:
        count = min(len(pairs), 2)
        for index in sorted(rng.choice(len(pairs), size=count, replace=False).tolist()):
            captions.append(pairs[index])
    return captions
