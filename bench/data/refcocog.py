"""RefCOCOg (umd split): ``refs(umd).p`` plus ``instances.json``.

The refs file is a pickle, loaded with :func:`bench.data.safe_pickle.load_pickle`
so that a tampered file cannot run code. Each ref points at one COCO
annotation (its region) and carries one or more referring expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.data.coco import CocoInstances, load_coco_instances
from bench.data.files import require_file
from bench.data.safe_pickle import load_pickle
from bench.errors import DataError


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
    annotation_ids = {a.id for a in instances.annotations}
    refs = []
    for index, item in enumerate(raw):
        where = f"refs[{index}]"
        if not isinstance(item, dict):
            raise DataError(f"{refs_path}, {where}: expected a dict")
        try:
            ref_id, ann_id = int(item["ref_id"]), int(item["ann_id"])
            image_id, category_id = int(item["image_id"]), int(item["category_id"])
            split = str(item["split"])
            sentences = item["sentences"]
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{refs_path}, {where}: missing or malformed field {error}") from None
        where = f"ref {ref_id}"
        if ann_id not in annotation_ids:
            raise DataError(f"{refs_path}, {where}: ann_id {ann_id} is not in {instances_path}")
        expressions = []
        for sentence in sentences if isinstance(sentences, list) else []:
            if not isinstance(sentence, dict):
                continue
            text = sentence.get("raw") or sentence.get("sent")
            if isinstance(text, bytes):
                text = text.decode("latin-1")
            if isinstance(text, str) and text.strip():
                expressions.append(Expression(sent_id=int(sentence.get("sent_id", len(expressions))),
                                              text=" ".join(text.split())))
        if not expressions:
            raise DataError(f"{refs_path}, {where}: has no sentences")
        refs.append(Ref(ref_id, ann_id, image_id, category_id, split, tuple(expressions)))
    return RefCOCOg(refs_path=refs_path, instances=instances, refs=refs)
