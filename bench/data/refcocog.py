"""RefCOCOg (umd split): ``refs(umd).p`` plus ``instances.json``.

The refs file is a pickle, loaded with :func:`bench.data.safe_pickle.load_pickle`
so that a tampered file cannot run code. Each ref points at one COCO
annotation (its region) and carries one or more referring expressions.

The release was written by Python 2, so text may arrive as ``str`` (decoded
by the unpickler as ASCII or Latin-1) or, from files re-pickled by Python 3
code, as ``bytes``; both are accepted and decoded as Latin-1, the encoding
that maps every byte to one character.

Checks are strict because tasks build sample ids and targets from these
records: a ref whose annotation is missing or on another image, a sentence
without an id, or a repeated ``ref_id``/``sent_id`` would otherwise surface
later as a wrong score or a confusing duplicate-sample error. Every error
names the file and the ref (``refs[i]`` until its ``ref_id`` is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.coco import CocoInstances, load_coco_instances
from bench.data.files import require_file
from bench.data.safe_pickle import load_pickle
from bench.errors import DataError

REF_FIELDS = ("ref_id", "ann_id", "image_id", "category_id", "split", "sentences")


@dataclass(frozen=True)
class Expression:
    sent_id: int
    text: str  # the raw sentence as written by the annotator (falls back to the lower-cased `sent`)


@dataclass(frozen=True)
class Ref:
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    expressions: tuple[Expression, ...]


@dataclass
class RefCOCOg:
    refs_path: Path
    instances: CocoInstances
    refs: list[Ref]

    def split(self, name: str) -> list[Ref]:
        """The refs of one split (``train``, ``val``, ``test``) in file order."""
        chosen = [ref for ref in self.refs if ref.split == name]
        if not chosen:
            present = sorted({ref.split for ref in self.refs})
            raise DataError(f"{self.refs_path}: no refs in split {name!r} (splits present: {present})")
        return chosen


def load_refcocog(refs_path: Path, instances_path: Path) -> RefCOCOg:
    """Load and cross-check refs and instances; errors name the file and the ref."""
    require_file(refs_path, "RefCOCOg refs file", key="refcocog_refs")
    instances = load_coco_instances(instances_path, key="refcocog_instances")
    raw = load_pickle(refs_path)
    if not isinstance(raw, list):
        raise DataError(f"{refs_path}: expected a list of refs, got {type(raw).__name__}")
    refs: list[Ref] = []
    ref_ids: set[int] = set()
    sent_ids: dict[int, int] = {}
    for index, item in enumerate(raw):
        ref = _ref(item, refs_path, f"refs[{index}]")
        where = f"{refs_path}, ref {ref.ref_id}"
        if ref.ref_id in ref_ids:
            raise DataError(f"{where}: ref_id appears twice")
        ref_ids.add(ref.ref_id)
        _check_annotation(ref, instances, where)
        for expression in ref.expressions:
            if expression.sent_id in sent_ids:
                raise DataError(
                    f"{where}: sent_id {expression.sent_id} is already used by ref {sent_ids[expression.sent_id]}"
                )
            sent_ids[expression.sent_id] = ref.ref_id
        refs.append(ref)
    return RefCOCOg(refs_path=refs_path, instances=instances, refs=refs)


def _ref(item: Any, path: Path, where: str) -> Ref:
    """One validated ref; ``where`` becomes ``ref <ref_id>`` as soon as the id is read."""
    if not isinstance(item, dict):
        raise DataError(f"{path}, {where}: expected a dict, got {type(item).__name__}")
    missing = [f for f in REF_FIELDS if f not in item]
    if "ref_id" in item and isinstance(item["ref_id"], int):
        where = f"ref {item['ref_id']}"
    if missing:
        raise DataError(f"{path}, {where}: missing field(s) {', '.join(missing)}")
    ref_id = _int(item["ref_id"], "ref_id", path, where)
    split = _text(item["split"])
    if not split:
        raise DataError(f"{path}, {where}: 'split' must be a non-empty string, got {item['split']!r}")
    return Ref(
        ref_id=ref_id,
        ann_id=_int(item["ann_id"], "ann_id", path, where),
        image_id=_int(item["image_id"], "image_id", path, where),
        category_id=_int(item["category_id"], "category_id", path, where),
        split=split,
        expressions=_expressions(item["sentences"], path, where),
    )


def _expressions(sentences: Any, path: Path, where: str) -> tuple[Expression, ...]:
    if not isinstance(sentences, (list, tuple)) or not sentences:
        raise DataError(f"{path}, {where}: has no sentences ('sentences' must be a non-empty list)")
    expressions = []
    for k, sentence in enumerate(sentences):
        at = f"{path}, {where}, sentences[{k}]"
        if not isinstance(sentence, dict):
            raise DataError(f"{at}: expected a dict, got {type(sentence).__name__}")
        if "sent_id" not in sentence:
            raise DataError(f"{at}: missing field sent_id")
        sent_id = _int(sentence["sent_id"], "sent_id", path, f"{where}, sentences[{k}]")
        # `raw` keeps the annotator's casing and punctuation; `sent` is the lower-cased, tokenised form.
        text = " ".join(_text(sentence.get("raw")).split()) or " ".join(_text(sentence.get("sent")).split())
        if not text:
            raise DataError(f"{at} (sent_id {sent_id}): no text in 'raw' or 'sent'")
        expressions.append(Expression(sent_id=sent_id, text=text))
    return tuple(expressions)


def _check_annotation(ref: Ref, instances: CocoInstances, where: str) -> None:
    try:
        annotation = instances.annotation(ref.ann_id)
    except DataError:
        raise DataError(f"{where}: ann_id {ref.ann_id} is not in {instances.path}") from None
    if annotation.image_id != ref.image_id:
        raise DataError(
            f"{where}: image_id {ref.image_id} differs from image {annotation.image_id} of annotation "
            f"{ref.ann_id} in {instances.path} (refs and instances from different releases?)"
        )


def _int(value: Any, field: str, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{path}, {where}: '{field}' must be an integer, got {value!r}")
    return value


def _text(value: Any) -> str:
    """A string field as ``str``; Python 2 byte strings are Latin-1. Anything else is empty."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else ""
