"""The RefCOCOg loader: safe unpickling, Python 2 files, and bad refs named by file and ref."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

from bench.data.refcocog import load_refcocog
from bench.errors import DataError

# Two images; three annotations (COCO xywh boxes).
IMAGES = [
    {"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
    {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100},
    {"id": 3, "file_name": "c.jpg", "width": 100, "height": 100},
]
ANNOTATIONS = [
    {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0},
    {"id": 12, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "iscrowd": 0},
    {"id": 21, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 0},
    {"id": 31, "image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
]


def ref(ref_id: int, ann_id: int, image_id: int, split: str, *sentences: tuple[int, str]) -> dict[str, Any]:
    """A ref in the release's schema (``sent`` lower-cased, ``raw`` as typed)."""
    return {
        "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
        "file_name": f"{image_id}_{ann_id}.jpg", "sent_ids": [s for s, _ in sentences],
        "sentences": [{"sent_id": s, "raw": text, "sent": text.lower(), "tokens": text.lower().split()}
                      for s, text in sentences],
    }


REFS = [
    ref(1, 11, 1, "val", (101, "The  small box on the left"), (102, "top left one")),
    ref(2, 12, 1, "val", (201, "the box at the bottom right")),
    ref(3, 21, 2, "val", (301, "the big box"), (302, "box in the corner")),
    ref(4, 31, 3, "val", (401, "the only box")),
    ref(5, 12, 1, "test", (501, "lower right box")),
    ref(6, 21, 2, "train", (601, "a training sentence")),
]


def write_refcocog(root: Path, refs: list[dict[str, Any]] | None = None, refs_bytes: bytes | None = None) -> Path:
    """``refcocog/refs(umd).p`` (pickle protocol 2, as released) and ``refcocog/instances.json`` under ``root``."""
    folder = root / "refcocog"
    folder.mkdir(parents=True, exist_ok=True)
    instances = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": [{"id": 1, "name": "box"}]}
    (folder / "instances.json").write_text(json.dumps(instances))
    data = refs_bytes if refs_bytes is not None else pickle.dumps(REFS if refs is None else refs, protocol=2)
    (folder / "refs(umd).p").write_bytes(data)
    return root


def load(root: Path):
    return load_refcocog(root / "refcocog" / "refs(umd).p", root / "refcocog" / "instances.json")


def python2_pickle(obj: Any) -> bytes:
    """Protocol 2 as Python 2 wrote ``refs(umd).p``: every ``str`` a Latin-1 byte string (``U``/``T`` opcodes)."""
    out = bytearray(b"\x80\x02")

    def save(value: Any) -> None:
        if isinstance(value, dict):
            out.extend(b"}(")  # EMPTY_DICT, MARK
            for key, item in value.items():
                save(key)
                save(item)
            out.extend(b"u")  # SETITEMS
        elif isinstance(value, list):
            out.extend(b"](")  # EMPTY_LIST, MARK
            for item in value:
                save(item)
            out.extend(b"e")  # APPENDS
        elif isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))  # BININT
        elif isinstance(value, str):
            data = value.encode("latin-1")
            size = bytes([len(data)]) if len(data) < 256 else struct.pack("<i", len(data))
            out.extend((b"U" if len(data) < 256 else b"T") + size + data)  # SHORT_BINSTRING / BINSTRING
        else:
            raise TypeError(type(value))

    save(obj)
    out.extend(b".")
    return bytes(out)


def test_refs_load_with_splits_and_normalised_text(tmp_path: Path) -> None:
    data = load(write_refcocog(tmp_path))
    assert [r.ref_id for r in data.split("val")] == [1, 2, 3, 4]
    first = data.split("val")[0]
    assert (first.ann_id, first.image_id, first.category_id) == (11, 1, 1)
    # `raw` is kept (casing) with runs of spaces collapsed.
    assert [(e.sent_id, e.text) for e in first.expressions] == [(101, "The small box on the left"),
                                                                (102, "top left one")]
    assert [r.ref_id for r in data.split("test")] == [5]
    assert data.instances.annotation(21).bbox == (0.0, 0.0, 50.0, 50.0)
    with pytest.raises(DataError, match=r"no refs in split 'testB' \(splits present: \['test', 'train', 'val'\]\)"):
        data.split("testB")


def test_sent_is_used_when_raw_is_empty(tmp_path: Path) -> None:
    refs = [ref(1, 11, 1, "val", (101, "x"))]
    refs[0]["sentences"][0].update(raw="", sent="the left box")
    assert load(write_refcocog(tmp_path, refs)).refs[0].expressions[0].text == "the left box"


def test_refs_go_through_the_safe_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    root = write_refcocog(tmp_path / "d", refs_bytes=evil)
    with pytest.raises(DataError, match=r"refs\(umd\)\.p: refuses to build 'os\.system'"):
        load(root)
    assert not marker.exists()


def test_python2_pickle_with_latin1_byte_strings_loads(tmp_path: Path) -> None:
    refs = [ref(1, 11, 1, "val", (101, "the café table"), (102, "plain ascii"))]
    payload = python2_pickle(refs)
    assert b"U\x0ethe caf\xe9 table" in payload  # a Latin-1 byte string, not UTF-8 text
    data = load(write_refcocog(tmp_path, refs_bytes=payload))
    assert [e.text for e in data.split("val")[0].expressions] == ["the café table", "plain ascii"]


def test_python3_bytes_fields_are_decoded(tmp_path: Path) -> None:
    refs = [ref(1, 11, 1, "val", (101, "x"))]
    refs[0]["split"] = b"val"
    refs[0]["sentences"][0]["raw"] = "caf\xe9 box".encode("latin-1")
    data = load(write_refcocog(tmp_path, refs))
    assert data.split("val")[0].expressions[0].text == "café box"


def _broken(change) -> list[dict[str, Any]]:
    refs = [ref(1, 11, 1, "val", (101, "left box")), ref(7, 12, 1, "val", (701, "right box"))]
    change(refs[1])
    return refs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(ann_id=999), r"ref 7: ann_id 999 is not in .*instances\.json"),
        (lambda r: r.update(image_id=2), r"ref 7: image_id 2 differs from image 1 of annotation 12"),
        (lambda r: r.pop("ann_id"), r"ref 7: missing field\(s\) ann_id"),
        (lambda r: r.pop("ref_id"), r"refs\[1\]: missing field\(s\) ref_id"),
        (lambda r: r.update(ann_id="12"), r"ref 7: 'ann_id' must be an integer, got '12'"),
        (lambda r: r.update(split=None), r"ref 7: 'split' must be a non-empty string"),
        (lambda r: r.update(sentences=[]), r"ref 7: has no sentences"),
        (lambda r: r.update(sentences=None), r"ref 7: has no sentences"),
        (lambda r: r["sentences"][0].pop("sent_id"), r"ref 7, sentences\[0\]: missing field sent_id"),
        (lambda r: r["sentences"][0].update(raw=" ", sent=""), r"ref 7, sentences\[0\] \(sent_id 701\): no text"),
        (lambda r: r["sentences"].__setitem__(0, "text"), r"ref 7, sentences\[0\]: expected a dict"),
        (lambda r: r.update(ref_id=1), r"ref 1: ref_id appears twice"),
        (lambda r: r["sentences"][0].update(sent_id=101), r"ref 7: sent_id 101 is already used by ref 1"),
    ],
)
def test_bad_refs_are_named_by_file_and_ref(tmp_path: Path, change, message: str) -> None:
    root = write_refcocog(tmp_path, _broken(change))
    with pytest.raises(DataError, match=r"refs\(umd\)\.p, " + message):
        load(root)


def test_not_a_list_and_not_a_dict(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"refs\(umd\)\.p: expected a list of refs, got dict"):
        load(write_refcocog(tmp_path / "a", refs_bytes=pickle.dumps({"refs": []}, protocol=2)))
    with pytest.raises(DataError, match=r"refs\(umd\)\.p, refs\[0\]: expected a dict, got str"):
        load(write_refcocog(tmp_path / "b", refs_bytes=pickle.dumps(["ref"], protocol=2)))


def test_missing_refs_file_names_the_key(tmp_path: Path) -> None:
    root = write_refcocog(tmp_path)
    (root / "refcocog" / "refs(umd).p").unlink()
    with pytest.raises(DataError, match=r"RefCOCOg refs file not found: .*refcocog_refs"):
        load(root)
