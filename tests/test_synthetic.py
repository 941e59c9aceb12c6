"""The synthetic region suite: deterministic, in the real formats, and correct by construction.

Most checks run on a small suite generated once per module; the checks that
need the default parameters (area ranges, crowds) use the cached default suite.
Properties are re-derived here independently of the generator: masks from the
pixels, referring expressions by parsing the sentences, POPE negatives by
recomputing frequencies and co-occurrences from the COCO file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import bench.synthetic.suite as suite_module
from bench.data.layout import DEFAULT_PATHS, dataset_path
from bench.data.safe_pickle import load_pickle
from bench.errors import BenchError, ConfigError
from bench.synthetic import SUITE_VERSION, SuiteParams, default_suite_dir, generate_suite
from bench.synthetic.vocab import CATEGORIES, COLOUR_NAMES

SMALL = SuiteParams(n_train=8, n_val=8, n_test=4)
CATEGORY_NAMES = {c.id: c.name for c in CATEGORIES}
KEY_SPLITS = {
    "pope_questions": ("random", "popular", "adversarial"),
    "coco_instances": ("train", "val"),
    "coco_images": ("train", "val"),
    "refcocog_proposals": ("val", "test"),
    "vg_split": ("train", "val", "test"),
}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("small") / "suite", SMALL)


@pytest.fixture(scope="module")
def default_suite() -> Path:
    return default_suite_dir()


def meta_objects(root: Path, split: str) -> dict[int, dict]:
    images = json.loads((root / "meta" / f"objects_{split}.json").read_text())
    return {o["id"]: {**o, "image_id": im["image_id"]} for im in images for o in im["objects"]}


# --- determinism -----------------------------------------------------------------------------


def test_same_params_give_byte_identical_files(small: Path, tmp_path: Path) -> None:
    again = generate_suite(tmp_path / "again", SMALL)
    assert file_hashes(again) == file_hashes(small)


def test_worker_processes_do_not_change_the_output(small: Path, tmp_path: Path) -> None:
    parallel = generate_suite(tmp_path / "parallel", SMALL, workers=2)
    assert file_hashes(parallel) == file_hashes(small)


def test_growing_train_leaves_eval_files_identical(small: Path, tmp_path: Path) -> None:
    bigger = generate_suite(tmp_path / "bigger", dataclasses.replace(SMALL, n_train=11))
    before, after = file_hashes(small), file_hashes(bigger)
    eval_files = [
        "coco/annotations/instances_val2017.json",
        "pope/coco_pope_random.json",
        "pope/coco_pope_popular.json",
        "pope/coco_pope_adversarial.json",
        "proposals/refcocog_umd_val.json",
        "proposals/refcocog_umd_test.json",
        "vg/val.json",
        "vg/test.json",
        "meta/objects_val.json",
        "meta/objects_test.json",
    ]
    eval_files += [p for p in before if p.startswith("images/2") or p.startswith("images/3")]
    assert len(eval_files) > 10 + SMALL.n_val
    for name in eval_files:
        assert before[name] == after[name], name
    # Train images keep their bytes too; only new ones are added.
    assert all(after[p] == h for p, h in before.items() if p.startswith("images/1"))
    assert before["coco/annotations/instances_train2017.json"] != after["coco/annotations/instances_train2017.json"]


def test_generate_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(BenchError, match="non-empty"):
        generate_suite(tmp_path, SMALL)


def test_invalid_params_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_objects"):
        generate_suite(tmp_path / "a", dataclasses.replace(SMALL, min_objects=2))
    with pytest.raises(ConfigError, match="min_size"):
        generate_suite(tmp_path / "b", dataclasses.replace(SMALL, min_size=64))


# --- layout and manifest ---------------------------------------------------------------------


def test_every_layout_key_resolves_to_an_existing_path(small: Path) -> None:
    for key in DEFAULT_PATHS:
        for split in KEY_SPLITS.get(key, ("val",)):
            path = dataset_path(small, key, split=split)
            assert path.exists(), (key, split, path)
            assert path.is_relative_to(small.resolve())


def test_manifest_records_params_splits_and_hashes(small: Path) -> None:
    manifest = json.loads((small / "suite.json").read_text())
    assert manifest["name"] == "region-bench synthetic suite"
    assert manifest["version"] == SUITE_VERSION
    assert manifest["params"] == dataclasses.asdict(SMALL)
    assert manifest["splits"] == {"train": 8, "val": 8, "test": 4}
    hashes = file_hashes(small)
    hashes.pop("suite.json")
    assert manifest["files"] == hashes
    info = json.loads((small / "coco/annotations/instances_val2017.json").read_text())["info"]
    assert info["params"]["seed"] == SMALL.seed and info["version"] == SUITE_VERSION


def test_images_are_rgb_pngs_of_the_recorded_non_square_sizes(small: Path) -> None:
    data = json.loads((small / "refcocog/instances.json").read_text())
    assert len(data["images"]) == 8 + 8 + 4
    shapes = set()
    for image in data["images"]:
        with Image.open(dataset_path(small, "refcocog_images") / image["file_name"]) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.size == (image["width"], image["height"])
            assert SMALL.min_size <= min(im.size) and max(im.size) <= SMALL.max_size
        shapes.add(image["width"] == image["height"])
    assert False in shapes


# --- COCO instances --------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_masks_match_the_painted_pixels(small: Path, split: str) -> None:
    coco = COCO(str(dataset_path(small, "coco_instances", split=split)))
    meta = meta_objects(small, split)
    image_dir = dataset_path(small, "coco_images", split=split)
    assert sorted(c["id"] for c in coco.dataset["categories"]) == list(range(1, len(CATEGORIES) + 1))
    assert len(CATEGORIES) >= 8
    encodings = Counter()
    pixels = {}
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        if image["id"] not in pixels:
            pixels[image["id"]] = np.asarray(Image.open(image_dir / image["file_name"]))
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
        # The visible mask is exactly what this object painted on top.
        assert (pixels[image["id"]][mask] == meta[ann["id"]]["rgb"]).all(), ann["id"]
        if ann["iscrowd"]:
            assert isinstance(ann["segmentation"]["counts"], list)
            encodings["crowd"] += 1
        elif isinstance(ann["segmentation"], list):
            assert not meta[ann["id"]]["occluded"]
            encodings["polygon"] += 1
        else:
            assert isinstance(ann["segmentation"]["counts"], str)
            encodings["rle"] += 1
        if not ann["iscrowd"]:
            assert ann["area"] >= SMALL.min_visible_pixels
    assert encodings["polygon"] and encodings["rle"]


def test_default_suite_covers_coco_area_ranges_crowds_and_size_classes(default_suite: Path) -> None:
    areas, crowds = Counter(), 0
    for split in ("train", "val"):
        data = json.loads(dataset_path(default_suite, "coco_instances", split=split).read_text())
        for ann in data["annotations"]:
            if ann["iscrowd"]:
                crowds += 1
                continue
            areas["small" if ann["area"] < 32**2 else "medium" if ann["area"] < 96**2 else "large"] += 1
    assert all(areas[r] >= 5 for r in ("small", "medium", "large")), areas
    assert crowds >= 3
    sizes = Counter(o["size"] for o in meta_objects(default_suite, "val").values() if not o["iscrowd"])
    assert set(sizes) == {"small", "medium", "large"}


def test_default_suite_dir_is_cached(default_suite: Path) -> None:
    assert default_suite_dir() == default_suite
    assert default_suite.name.startswith(f"synthetic-{SUITE_VERSION}-")
    assert not [p for p in default_suite.parent.iterdir() if ".tmp-" in p.name]


def test_default_suite_dir_removes_only_stale_scratch_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGION_BENCH_CACHE", str(tmp_path))
    params = dataclasses.replace(SMALL, seed=9, n_train=1, n_val=3, n_test=1)
    name = f"synthetic-{SUITE_VERSION}-{suite_module.params_hash(params)}"
    stale, fresh = tmp_path / f".{name}.tmp-killed", tmp_path / f".{name}.tmp-running"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    result = default_suite_dir(params)
    assert (result / "suite.json").is_file()
    assert not stale.exists() and fresh.exists()


def test_default_suite_dir_discards_its_copy_when_another_process_won(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGION_BENCH_CACHE", str(tmp_path))
    params = dataclasses.replace(SMALL, seed=5, n_train=2, n_val=3, n_test=1)
    real_generate = suite_module.generate_suite
    winner: list[Path] = []

    def racing_generate(out_dir: Path, p: SuiteParams) -> Path:
        real_generate(out_dir, p)
        # Another process finishes first and renames its suite into place.
        rival = tmp_path / "rival"
        real_generate(rival, p)
        final = tmp_path / f"synthetic-{SUITE_VERSION}-{suite_module.params_hash(p)}"
        os.rename(rival, final)
        (final / "winner").write_text("rival")
        winner.append(final)
        return out_dir

    monkeypatch.setattr(suite_module, "generate_suite", racing_generate)
    result = default_suite_dir(params)
    assert result == winner[0]
    assert (result / "winner").read_text() == "rival"
    assert sorted(p.name for p in tmp_path.iterdir()) == [result.name]


# --- RefCOCOg --------------------------------------------------------------------------------

SIZE_WORDS = {"small": "small", "little": "small", "medium": "medium", "medium-sized": "medium",
              "large": "large", "big": "large"}  # fmt: skip
RELATION_WORDS = {"left": "left", "right": "right", "above": "above", "over": "above",
                  "below": "below", "under": "below", "beneath": "below"}  # fmt: skip


def parse_phrase(tokens: list[str]) -> dict:
    names = {c.name for c in CATEGORIES}
    category = [t for t in tokens if t in names]
    colour = [t for t in tokens if t in COLOUR_NAMES]
    size = [SIZE_WORDS[t] for t in tokens if t in SIZE_WORDS]
    assert len(category) == 1 and len(colour) <= 1 and len(size) <= 1, tokens
    return {"category": category[0], "colour": colour[0] if colour else None, "size": size[0] if size else None}


def matches(words: dict, obj: dict) -> bool:
    return (
        obj["category"] == words["category"]
        and words["colour"] in (None, obj["colour"])
        and (words["size"] is None or obj["size"] is None or obj["size"] == words["size"])
    )


def centre(box: list[float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def on_side(relation: str, box: list[float], anchor: list[float]) -> bool:
    """The loose reading: at least on that side of the anchor's centre."""
    (x, y), (ax, ay) = centre(box), centre(anchor)
    return {"left": x < ax, "right": x > ax, "above": y < ay, "below": y > ay}[relation]


def beyond(relation: str, box: list[float], anchor: list[float]) -> bool:
    """The target is past the anchor's edge in that direction."""
    x, y = centre(box)
    ax0, ay0, aw, ah = anchor
    return {"left": x < ax0, "right": x > ax0 + aw, "above": y < ay0, "below": y > ay0 + ah}[relation]


def test_refs_follow_the_release_schema(small: Path) -> None:
    refs = load_pickle(dataset_path(small, "refcocog_refs"))
    instances = json.loads(dataset_path(small, "refcocog_instances").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    split_of = {i: s for s in ("train", "val", "test") for i in json.loads((small / f"vg/{s}.json").read_text())}
    assert isinstance(refs, list) and refs
    assert {r["split"] for r in refs} == {"train", "val", "test"}
    ref_ids, sent_ids = set(), set()
    for ref in refs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "file_name",
                            "category_id"}  # fmt: skip
        ann = anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        assert ann["iscrowd"] == 0
        assert split_of[ref["image_id"]] == ref["split"]
        stem = images[ref["image_id"]]["file_name"].rsplit(".", 1)[0]
        assert ref["file_name"] == f"{stem}_{ref['ann_id']}.png"
        assert 1 <= len(ref["sentences"]) <= 3
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for sentence in ref["sentences"]:
            assert set(sentence) == {"tokens", "raw", "sent", "sent_id"}
            assert sentence["tokens"] == sentence["sent"].split()
            assert sentence["raw"].lower() == sentence["sent"]
        assert len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
        ref_ids.add(ref["ref_id"])
        sent_ids.update(ref["sent_ids"])
    assert len(ref_ids) == len(refs)
    assert len(sent_ids) == sum(len(r["sentences"]) for r in refs)


@pytest.mark.parametrize("suite", ["small", "default_suite"])
def test_every_expression_picks_out_exactly_its_target(suite: str, request: pytest.FixtureRequest) -> None:
    root: Path = request.getfixturevalue(suite)
    refs = load_pickle(dataset_path(root, "refcocog_refs"))
    instances = json.loads(dataset_path(root, "refcocog_instances").read_text())
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    objects: dict[int, list[dict]] = {}
    for split in ("train", "val", "test"):
        for obj in meta_objects(root, split).values():
            objects.setdefault(obj["image_id"], []).append({**obj, "box": boxes[obj["id"]]})
    kinds = Counter()
    for ref in refs:
        scene = objects[ref["image_id"]]
        for sentence in ref["sentences"]:
            tokens = sentence["tokens"]
            where = [i for i, t in enumerate(tokens) if t in RELATION_WORDS]
            assert len(where) <= 1, tokens
            if not where:
                words = parse_phrase(tokens)
                assert [o["id"] for o in scene if matches(words, o)] == [ref["ann_id"]], tokens
                kinds["plain"] += 1
                continue
            relation = RELATION_WORDS[tokens[where[0]]]
            target_words, anchor_words = parse_phrase(tokens[: where[0]]), parse_phrase(tokens[where[0] + 1 :])
            anchors = [o for o in scene if matches(anchor_words, o)]
            assert len(anchors) == 1 and not anchors[0]["iscrowd"], tokens
            anchor = anchors[0]
            target = next(o for o in scene if o["id"] == ref["ann_id"])
            assert beyond(relation, target["box"], anchor["box"]), tokens
            candidates = [
                o["id"]
                for o in scene
                if o is not anchor
                and matches(target_words, o)
                and (o["iscrowd"] or on_side(relation, o["box"], anchor["box"]))
            ]
            assert candidates == [ref["ann_id"]], tokens
            kinds["relation"] += 1
    assert kinds["plain"] and kinds["relation"]


def test_default_suite_refs_need_attributes_and_relations(default_suite: Path) -> None:
    refs = load_pickle(dataset_path(default_suite, "refcocog_refs"))
    kinds = Counter()
    for ref in refs:
        tokens = set(ref["sentences"][0]["tokens"])
        if tokens & set(RELATION_WORDS):
            kinds["relation"] += 1
        elif tokens & set(SIZE_WORDS):
            kinds["size"] += 1
        elif tokens & set(COLOUR_NAMES):
            kinds["colour"] += 1
        else:
            kinds["category"] += 1
    total = sum(kinds.values())
    assert kinds["category"] < 0.5 * total
    assert all(kinds[k] >= 0.03 * total for k in ("relation", "size", "colour")), kinds


# --- Visual Genome ---------------------------------------------------------------------------


def test_vg_files(small: Path) -> None:
    regions = json.loads(dataset_path(small, "vg_regions").read_text())
    image_data = json.loads(dataset_path(small, "vg_image_data").read_text())
    sizes = {i["image_id"]: (i["width"], i["height"]) for i in image_data}
    split_ids = {s: json.loads(dataset_path(small, "vg_split", split=s).read_text()) for s in ("train", "val", "test")}
    assert [len(split_ids[s]) for s in ("train", "val", "test")] == [8, 8, 4]
    assert set(sizes) == {i for ids in split_ids.values() for i in ids} == {e["id"] for e in regions}
    multi = 0
    for entry in regions:
        assert entry["regions"]
        for region in entry["regions"]:
            assert set(region) == {"region_id", "image_id", "phrase", "x", "y", "width", "height"}
            assert all(isinstance(region[k], int) for k in ("region_id", "x", "y", "width", "height"))
            width, height = sizes[entry["id"]]
            assert region["image_id"] == entry["id"] and region["phrase"].strip()
            assert not re.search(r"\ba [aeiou]", region["phrase"]), region["phrase"]
            assert region["x"] >= 0 and region["x"] + region["width"] <= width
            assert region["y"] >= 0 and region["y"] + region["height"] <= height
            multi += sum(region["phrase"].count(c.name) for c in CATEGORIES) >= 2
        assert (dataset_path(small, "vg_images") / f"{entry['id']}.png").is_file()
    assert multi > 0


# --- POPE ------------------------------------------------------------------------------------


def pope_ground_truth(root: Path) -> tuple[dict[str, set[str]], Counter, dict[str, Counter]]:
    coco = json.loads(dataset_path(root, "coco_instances", split="val").read_text())
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    present: dict[str, set[str]] = {names[i]: set() for i in names}
    for ann in coco["annotations"]:
        present[names[ann["image_id"]]].add(CATEGORY_NAMES[ann["category_id"]])
    frequency = Counter(n for objs in present.values() for n in objs)
    co_occur: dict[str, Counter] = {}
    for objs in present.values():
        for name in objs:
            co_occur.setdefault(name, Counter()).update(objs - {name})
    return present, frequency, co_occur


def first_absent(ranking: list[str], excluded: set[str]) -> str | None:
    return next((n for n in ranking if n not in excluded), None)


@pytest.mark.parametrize("variant", ["random", "popular", "adversarial"])
def test_pope_questions_follow_the_authors_rules(small: Path, variant: str) -> None:
    path = dataset_path(small, "pope_questions", split=variant)
    questions = read_jsonl(path)
    present, frequency, co_occur = pope_ground_truth(small)
    order = {c.name: c.id for c in CATEGORIES}
    popular = sorted(frequency, key=lambda n: (-frequency[n], order[n]))
    assert [q["question_id"] for q in questions] == list(range(1, len(questions) + 1))
    assert len(questions) == 6 * SMALL.n_val  # every val image has >= 3 categories
    for q in questions:
        assert list(q) == ["question_id", "image", "text", "label"]
        assert (dataset_path(small, "pope_images") / q["image"]).is_file()
    for start in range(0, len(questions), 6):
        block = questions[start : start + 6]
        image = block[0]["image"]
        assert {q["image"] for q in block} == {image}
        assert [q["label"] for q in block] == ["yes", "no"] * 3
        asked: set[str] = set()
        for pos, neg in zip(block[0::2], block[1::2], strict=True):
            positive = pos["text"].removeprefix("Is there a ").removesuffix(" in the image?")
            negative = neg["text"].removeprefix("Is there a ").removesuffix(" in the image?")
            assert positive in present[image] and positive not in asked
            asked.add(positive)
            assert negative not in present[image] and negative not in asked
            if variant == "popular":
                assert negative == first_absent(popular, present[image] | asked)
            if variant == "adversarial":
                partners = sorted(co_occur[positive], key=lambda n: (-co_occur[positive][n], order[n]))
                expected = first_absent(partners, present[image] | asked)
                assert expected is None or negative == expected
            asked.add(negative)


def test_pope_variants_share_positives(small: Path) -> None:
    files = {
        v: read_jsonl(dataset_path(small, "pope_questions", split=v)) for v in ("random", "popular", "adversarial")
    }
    positives = {v: [q["text"] for q in qs if q["label"] == "yes"] for v, qs in files.items()}
    assert positives["random"] == positives["popular"] == positives["adversarial"]


# --- proposals -------------------------------------------------------------------------------


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_proposals_look_like_a_detector(default_suite: Path) -> None:
    instances = json.loads(dataset_path(default_suite, "refcocog_instances").read_text())
    for split in ("val", "test"):
        ids = set(json.loads(dataset_path(default_suite, "vg_split", split=split).read_text()))
        proposals = json.loads(dataset_path(default_suite, "refcocog_proposals", split=split).read_text())
        by_image: dict[int, list[list[float]]] = {}
        for p in proposals:
            assert set(p) == {"image_id", "category_id", "bbox", "score"}
            assert p["image_id"] in ids and 0.0 < p["score"] <= 1.0 and p["category_id"] in CATEGORY_NAMES
            assert len(p["bbox"]) == 4 and p["bbox"][2] > 0 and p["bbox"][3] > 0
            by_image.setdefault(p["image_id"], []).append(p["bbox"])
        gts = [a for a in instances["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
        best = [max((iou(a["bbox"], b) for b in by_image.get(a["image_id"], [])), default=0.0) for a in gts]
        found = sum(b >= 0.5 for b in best)
        assert 0.7 * len(gts) <= found < len(gts), (found, len(gts))


def test_small_suite_proposals_parse_and_miss_some_objects(small: Path) -> None:
    instances = json.loads(dataset_path(small, "refcocog_instances").read_text())
    ids = set(json.loads(dataset_path(small, "vg_split", split="val").read_text()))
    proposals = json.loads(dataset_path(small, "refcocog_proposals", split="val").read_text())
    assert proposals and {p["image_id"] for p in proposals} <= ids
    gts = [a for a in instances["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
    missed = [
        a for a in gts
        if all(iou(a["bbox"], p["bbox"]) < 0.5 for p in proposals if p["image_id"] == a["image_id"])
    ]  # fmt: skip
    assert missed


def test_copy_of_suite_keeps_working(small: Path, tmp_path: Path) -> None:
    """paths.json is relative, so a moved suite still resolves every key."""
    moved = tmp_path / "moved"
    shutil.copytree(small, moved)
    assert dataset_path(moved, "pope_images") == (moved / "images").resolve()
    assert json.loads((moved / "paths.json").read_text())["coco_images"] == "images"
