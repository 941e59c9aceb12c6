"""coco-cls: answer normalisation, COCOeval pinned on a hand-written file, the synthetic suite end to end."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.adapter import Adapter, Capabilities
from bench.errors import DataError
from bench.evaluate import RunConfig, run_evaluation
from bench.metrics.coco import AP_KEYS, COCO_80, coco_box_ap, match_category, normalise_answer, softmax
from bench.rescore import rescore_paths
from bench.runner import evaluate_task
from bench.synthetic import SuiteParams, generate_suite
from bench.types import GenerationRequest, LoglikelihoodRequest
from tasks.coco_cls import COCO_SUFFIX, PHRASINGS, CocoClassification, answer_suffix, phrasing_index
from tests.plugin_utils import run_bench

NAMES = ["circle", "square", "triangle", "star"]  # ids 1..4; "star" has no annotation


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(("answer", "expected"), [
    ("circle", "circle"),
    ("A circle.", "circle"),
    ("The Circle", "circle"),
    ("  an   ASTERISK!  ", None),
    ("circles", "circle"),  # simple plural, documented
    ("Squares.", "square"),
    ("dog", None),  # not a category: wrong
    ("", None),
    ("the", None),
    ("circle square", None),
    ("It is a circle.", None),  # exact match only, no search inside sentences
])
def test_match_category(answer: str, expected: str | None) -> None:
    assert match_category(answer, NAMES) == expected


def test_normalisation_rules_apply_to_names_too() -> None:
    assert normalise_answer("  The  Hair-Drier. ") == "hair drier"
    assert normalise_answer("bow_(weapon)") == "bow weapon"
    names = ["bow_(weapon)", "hot dog", "bus", "wine glass", "skis"]
    assert match_category("Bow (weapon).", names) == "bow_(weapon)"
    assert match_category("hot dogs", names) == "hot dog"
    assert match_category("buses", names) == "bus"
    assert match_category("wine glasses", names) == "wine glass"
    assert match_category("skis", names) == "skis"
    assert match_category("ski", names) is None


def test_softmax() -> None:
    probs = softmax([0.0, math.log(3.0), -math.inf])
    assert probs == pytest.approx([0.25, 0.75, 0.0], abs=1e-15)
    assert softmax([-1000.0, -1000.0]) == [0.5, 0.5]  # max-shifted: no underflow
    with pytest.raises(ValueError):
        softmax([float("nan"), 0.0])
    with pytest.raises(ValueError):
        softmax([-math.inf, -math.inf])


def test_prompt_phrasing_is_a_stable_hash_and_suffix_follows_the_category_set() -> None:
    # sha256 of the decimal id, first 8 bytes big-endian, modulo 4: pinned, never Python's salted hash.
    assert [phrasing_index(i) for i in (1, 2, 3, 4, 101, 20000101)] == [1, 2, 3, 2, 2, 1]
    assert len(COCO_80) == len(set(COCO_80)) == 80
    assert answer_suffix(list(reversed(COCO_80))) == "Answer the question using COCO-80 category names."
    assert answer_suffix(NAMES) == "Answer the question using one of these category names: circle, square, " \
                                   "triangle, star."
    assert answer_suffix(COCO_80[:79]) != COCO_SUFFIX


# --------------------------------------------------------------------------- a hand-written ground truth


def _rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _crowd_rle(x: int, y: int, w: int, h: int, width: int, height: int) -> dict[str, Any]:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


# (id, image, category, bbox, area, iscrowd). Area ranges (COCOeval): small < 32^2, medium < 96^2, large.
GT = [
    (101, 1, 1, [10, 10, 20, 20], 400, 0),
    (102, 1, 2, [50, 50, 60, 60], 3000, 0),
    (103, 1, 1, [200, 100, 150, 120], 15000, 0),
    (104, 1, 1, [400, 300, 80, 80], 5000, 1),  # crowd of circles: ignore region
    (100, 1, 2, [410, 310, 20, 20], 400, 0),  # a square inside the crowd region (first det of image 1)
    (106, 2, 3, [0, 0, 100, 100], 9000, 0),  # box area 10000 is "large"; the file's area says medium
    (107, 2, 1, [120, 40, 30, 30], 900, 0),
    (108, 2, 2, [300, 200, 200, 150], 25000, 0),
    (109, 2, 3, [320, 220, 40, 40], 1500, 0),
    (110, 3, 2, [5, 5, 30, 30], 800, 0),
    (111, 3, 3, [100, 50, 100, 100], 9500, 0),
    (112, 3, 1, [200, 150, 100, 80], 6000, 1),
]
# What the test model says per annotation (gold in the comment).
ANSWERS = {
    101: "A circle.",    # circle: right
    102: "circle",       # square: wrong label
    103: "The Circle",   # circle: right
    100: "circles",      # square: wrong, but inside the circle crowd region (ignored, not a false positive)
    106: "triangle",     # right
    107: "dog",          # circle: not a category -> no detection
    108: "squares",      # right
    109: "square",       # triangle: wrong, overlaps 108
    110: "",             # square: empty -> wrong
    111: "star",         # triangle: wrong, a category without ground truth
}
N_RIGHT = 4


def gt_file(path: Path, rows: Sequence[tuple] = GT, names: Sequence[str] = NAMES) -> Path:
    sizes = {1: (640, 480), 2: (640, 480), 3: (320, 240)}
    images = sorted({row[1] for row in rows})
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": sizes[i][0], "height": sizes[i][1]}
                   for i in images],
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(names)],
        "annotations": [
            {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": area, "iscrowd": crowd,
             "segmentation": _crowd_rle(*b, *sizes[i]) if crowd else _rect(*b)}
            for a, i, c, b, area, crowd in rows
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def data_root(tmp_path: Path, rows: Sequence[tuple] = GT, names: Sequence[str] = NAMES) -> Path:
    root = tmp_path / "data"
    gt_file(root / "coco" / "annotations" / "instances_val2017.json", rows, names)
    return root


def cocoeval_stats(gt_path: Path, detections: list[dict[str, Any]]) -> list[float]:
    """pycocotools used the documented way, straight on the file."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:6]]


def loglik_table(n_categories: int = len(NAMES)) -> dict[int, list[float]]:
    rng = random.Random(7)
    return {row[0]: [rng.gauss(0.0, 3.0) for _ in range(n_categories)] for row in GT if not row[5]}


def direct_detections(answers: dict[int, str] | None = None,
                      logliks: dict[int, list[float]] | None = None) -> list[dict[str, Any]]:
    """Detections built independently of the task: (image, annotation) order; ids of NAMES by hand."""
    by_name = {"circle": 1, "square": 2, "triangle": 3, "star": 4}
    plain = {"A circle.": "circle", "The Circle": "circle", "circles": "circle", "squares": "square"}
    detections = []
    for ann, image, _, bbox, _, crowd in sorted(GT, key=lambda r: (r[1], r[0])):
        if crowd:
            continue
        if answers is not None:
            name = plain.get(answers[ann], answers[ann])
            if name in by_name:
                detections.append({"image_id": image, "category_id": by_name[name], "bbox": bbox, "score": 1.0})
        if logliks is not None:
            values = np.array(logliks[ann], dtype=np.float64)
            probs = np.exp(values - values.max()) / np.exp(values - values.max()).sum()
            detections += [{"image_id": image, "category_id": k + 1, "bbox": bbox, "score": float(p)}
                           for k, p in enumerate(probs)]
    return detections


def assert_stats(metrics: dict[str, float], stats: list[float], prefix: str = "") -> None:
    for key, value in zip(AP_KEYS, stats, strict=True):
        if value == -1:
            assert prefix + key not in metrics
        else:
            assert metrics[prefix + key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_box_ap_matches_cocoeval_on_the_file(tmp_path: Path, chunk: int) -> None:
    path = gt_file(tmp_path / "gt.json")
    detections = direct_detections(ANSWERS) + [
        {"image_id": 1, "category_id": 1, "bbox": [405, 305, 30, 30], "score": 0.9},  # inside the crowd
        {"image_id": 3, "category_id": 4, "bbox": [0, 0, 50, 50], "score": 0.3},  # category without GT
        {"image_id": 2, "category_id": 2, "bbox": [300, 200, 190, 140], "score": 0.7},  # duplicate of 108
    ]
    for det, score in zip(detections, (0.9, 0.1, 0.5, 0.8, 0.2, 0.6, 0.4), strict=False):
        det["score"] = score
    stats = cocoeval_stats(path, detections)
    assert all(v != -1 for v in stats) and len(set(stats)) > 2  # a real, varied result

    raw = json.loads(path.read_text())
    annotations = [{k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
                   for a in raw["annotations"]]
    metrics = coco_box_ap([i["id"] for i in raw["images"]], annotations, [1, 2, 3, 4], detections, chunk=chunk)
    assert list(metrics) == list(AP_KEYS)
    assert_stats(metrics, stats)


def test_box_ap_without_detections_is_zero(tmp_path: Path) -> None:
    raw = json.loads(gt_file(tmp_path / "gt.json").read_text())
    metrics = coco_box_ap([1, 2, 3], raw["annotations"], [1, 2, 3, 4], [])
    assert metrics == dict.fromkeys(AP_KEYS, 0.0)


# --------------------------------------------------------------------------- the task on that file


class TableAdapter(Adapter):
    """Answers from fixed tables (by annotation id); records the requests it saw."""

    name = "table"

    def __init__(self, answers: dict[int, str], logliks: dict[int, list[float]] | None = None,
                 masks: bool = False) -> None:
        self.answers, self.logliks = answers, logliks
        self.capabilities = Capabilities(boxes=True, masks=masks, loglikelihood=logliks is not None,
                                         needs_images=False)
        self.seen: list[GenerationRequest | LoglikelihoodRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        self.seen += requests
        return [self.answers[int(r.sample.id)] for r in requests]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[float]]:
        self.seen += requests
        assert self.logliks is not None
        return [self.logliks[int(r.sample.id)] for r in requests]


def run_task(root: Path, out: Path, adapter: Adapter) -> dict[str, float]:
    task = CocoClassification(root)
    outcome = evaluate_task(task, adapter, task.load_samples(), out, batch_size=3, progress=False)
    assert not outcome.failures, outcome.failures
    assert outcome.metrics is not None
    return outcome.metrics


def test_task_matches_cocoeval_on_the_official_file_with_crowd(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    logliks = loglik_table()
    metrics = run_task(root, tmp_path / "out", TableAdapter(ANSWERS, logliks))
    gt_path = root / "coco" / "annotations" / "instances_val2017.json"

    assert metrics["accuracy"] == N_RIGHT / len(ANSWERS)
    generation = cocoeval_stats(gt_path, direct_detections(ANSWERS))
    assert_stats(metrics, generation)
    ll = cocoeval_stats(gt_path, direct_detections(logliks=logliks))
    assert_stats(metrics, ll, prefix="ll_")
    argmax_right = sum(int(np.argmax(logliks[r[0]])) + 1 == r[2] for r in GT if not r[5])
    assert metrics["ll_accuracy"] == argmax_right / len(ANSWERS)
    assert list(metrics) == ["accuracy", *AP_KEYS, "ll_accuracy", *(f"ll_{k}" for k in AP_KEYS)]

    # The crowd regions matter here: without them the square labelled "circle" inside the crowd
    # would be a false positive, and the number would differ.
    no_crowd = gt_file(tmp_path / "no_crowd.json", [r for r in GT if not r[5]])
    assert cocoeval_stats(no_crowd, direct_detections(ANSWERS))[0] != pytest.approx(generation[0])


def test_records_hold_parsed_answers_and_probabilities(tmp_path: Path) -> None:
    logliks = loglik_table()
    run_task(data_root(tmp_path), tmp_path / "out", TableAdapter(ANSWERS, logliks))
    lines = (tmp_path / "out" / "samples_coco-cls.jsonl").read_text().splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert records["100"]["parsed"]["answer"] == "circle" and records["100"]["scores"]["correct"] == 0.0
    assert records["107"]["parsed"] == {"answer": None, "normalised": "dog", "valid": False,
                                        "ll_answer": records["107"]["parsed"]["ll_answer"],
                                        "ll_probs": records["107"]["parsed"]["ll_probs"]}
    assert records["107"]["parsed"]["ll_probs"] == pytest.approx(softmax(logliks[107]), abs=0)
    assert records["101"]["target"] == {"image_id": 1, "annotation_id": 101, "category_id": 1,
                                        "category": "circle", "bbox": [10.0, 10.0, 20.0, 20.0], "area": 400.0}
    assert records["100"]["metadata"]["crowd"] == [{"id": 104, "category_id": 1, "bbox": [400.0, 300.0, 80.0, 80.0],
                                                   "area": 5000.0}]
    assert records["106"]["metadata"]["crowd"] == []
    # One sample per non-crowd annotation, in file order.
    assert [s.id for s in CocoClassification(data_root(tmp_path)).load_samples()] == [
        str(r[0]) for r in GT if not r[5]]
    assert set(records) == {str(r[0]) for r in GT if not r[5]}
    assert records["101"]["prompt"] == f"{PHRASINGS[phrasing_index(101)]} " + answer_suffix(NAMES)


def test_area_range_without_ground_truth_is_omitted(tmp_path: Path) -> None:
    rows = [r for r in GT if r[4] < 96 ** 2]  # no large box left
    root = data_root(tmp_path, rows)
    stats = cocoeval_stats(root / "coco" / "annotations" / "instances_val2017.json",
                           [d for d in direct_detections(ANSWERS) if d["bbox"] in [r[3] for r in rows]])
    assert stats[5] == -1 and stats[3] != -1
    answers = {r[0]: ANSWERS[r[0]] for r in rows if not r[5]}
    metrics = run_task(root, tmp_path / "out", TableAdapter(answers))
    assert "AP_large" not in metrics and "AP_small" in metrics and "AP_medium" in metrics
    assert not any(key.startswith("ll_") for key in metrics)  # no likelihood: no ll_ metrics
    assert_stats(metrics, stats)


def test_masks_only_for_adapters_that_take_them(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    with_masks = TableAdapter(ANSWERS, masks=True)
    run_task(root, tmp_path / "m", with_masks)
    boxes = TableAdapter(ANSWERS, masks=False)
    run_task(root, tmp_path / "b", boxes)
    assert len(with_masks.seen) == len(boxes.seen) == len(ANSWERS)  # no likelihood requests either
    by_id = {int(r.sample.id): r for r in with_masks.seen}
    assert by_id[101].regions[0].mask == _rect(10, 10, 20, 20)
    assert by_id[101].regions[0].box == (10.0, 10.0, 30.0, 30.0)
    assert all(len(r.regions) == 1 and r.regions[0].mask is not None for r in with_masks.seen)
    assert all(r.regions[0].mask is None for r in boxes.seen)
    assert {int(r.sample.id): r.regions[0].box for r in boxes.seen} == {
        i: r.regions[0].box for i, r in by_id.items()}
    assert all(r.choices == tuple(NAMES) and r.max_new_tokens == 16 for r in boxes.seen)


def test_bad_mask_fails_its_sample_naming_file_and_annotation(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    path = root / "coco" / "annotations" / "instances_val2017.json"
    raw = json.loads(path.read_text())
    raw["annotations"][0]["segmentation"] = [[10, 10, 30, 30]]  # two points: not a polygon
    path.write_text(json.dumps(raw))
    task = CocoClassification(root)
    outcome = evaluate_task(task, TableAdapter(ANSWERS, masks=True), task.load_samples(), tmp_path / "out",
                            progress=False)
    assert [f.sample_id for f in outcome.failures] == ["101"] and outcome.metrics is None
    assert str(path) in outcome.failures[0].reason and "annotation 101 (image 1)" in outcome.failures[0].reason
    # A box-only model never sees the mask: the same file scores.
    assert run_task(root, tmp_path / "boxes", TableAdapter(ANSWERS))["accuracy"] == N_RIGHT / len(ANSWERS)


def test_invalid_box_and_clashing_names_are_data_errors(tmp_path: Path) -> None:
    rows = [*GT[:2], (113, 3, 2, [400, 300, 20, 20], 400, 0)]  # outside the 320x240 image 3
    root = data_root(tmp_path / "a", rows)
    with pytest.raises(DataError, match=r"instances_val2017\.json, annotation 113 \(image 3\): .*no area"):
        CocoClassification(root).load_samples()
    root = data_root(tmp_path / "b", names=["Circle", "square", "the circle", "star"])
    with pytest.raises(DataError, match="'Circle' and 'the circle'"):
        CocoClassification(root).load_samples()


def test_coco_80_names_get_regiongpt_suffix(tmp_path: Path) -> None:
    root = data_root(tmp_path, rows=GT[:3], names=COCO_80)
    samples = CocoClassification(root).load_samples()
    assert [s.gold_answer for s in samples] == ["person", "bicycle", "person"]
    assert all(s.prompt.endswith(" Answer the question using COCO-80 category names.") for s in samples)
    assert {s.prompt.removesuffix(" " + COCO_SUFFIX) for s in samples} <= set(PHRASINGS)


def test_train_split_reads_train2017(tmp_path: Path) -> None:
    root = tmp_path / "data"
    gt_file(root / "coco" / "annotations" / "instances_train2017.json", GT[:2])
    task = CocoClassification(root, split="train")
    assert task.run_name == "coco-cls@train"
    samples = task.load_samples()
    assert [s.id for s in samples] == ["101", "102"]
    assert samples[0].image.path == (root / "coco" / "train2017" / "000000000001.jpg").resolve()
    with pytest.raises(DataError, match="instances_val2017.json"):
        CocoClassification(root).load_samples()


# --------------------------------------------------------------------------- synthetic suite end to end


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Val files do not depend on n_train/n_test: the same numbers as the default suite.
    return generate_suite(tmp_path_factory.mktemp("suite") / "s", SuiteParams(n_train=0, n_test=0))


def run_suite(suite: Path, out: Path, model: str) -> dict[str, Any]:
    report = run_evaluation(RunConfig(model=model, tasks="coco-cls", data_root=suite, output=out, progress=False))
    assert not report.failed
    return report.results


def test_synthetic_suite_baselines(suite: Path, tmp_path: Path) -> None:
    oracle = run_suite(suite, tmp_path / "oracle", "oracle")
    assert oracle["n_samples"]["coco-cls"] == 299  # 308 annotations, 9 of them crowd
    assert oracle["results"]["coco-cls"] == {
        "accuracy": 1.0, **dict.fromkeys(AP_KEYS, 1.0), "ll_accuracy": 1.0, **{f"ll_{k}": 1.0 for k in AP_KEYS}}

    # Measured once and pinned: the random baseline's draws are seeded per sample.
    chance = run_suite(suite, tmp_path / "random", "random")["results"]["coco-cls"]
    assert chance["accuracy"] == 36 / 299
    assert chance["mAP"] == pytest.approx(0.03735386560634085, abs=1e-12)
    assert chance["AP_large"] == pytest.approx(0.25, abs=1e-12)
    assert chance["ll_accuracy"] == 34 / 299
    assert chance["ll_mAP"] == pytest.approx(0.14127195874304305, abs=1e-12)

    always_yes = run_suite(suite, tmp_path / "yes", "always-yes")["results"]["coco-cls"]
    assert always_yes == {"accuracy": 0.0, **dict.fromkeys(AP_KEYS, 0.0)}  # "Yes" names no category


def test_bench_score_rescores_from_records_alone(suite: Path, tmp_path: Path) -> None:
    results = run_suite(suite, tmp_path / "run", "random")["results"]["coco-cls"]
    samples = tmp_path / "run" / "samples_coco-cls.jsonl"
    # Records in another order, in a directory with no data: the same numbers.
    lines = samples.read_text().splitlines()
    random.Random(1).shuffle(lines)
    shuffled = tmp_path / "elsewhere" / "samples_coco-cls.jsonl"
    shuffled.parent.mkdir()
    shuffled.write_text("\n".join(lines) + "\n")
    rescored, n_samples, _, warnings = rescore_paths(shuffled)
    assert rescored["coco-cls"] == results and n_samples["coco-cls"] == 299 and not warnings

    proc = run_bench("score", str(shuffled), "--output", str(tmp_path / "scored.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "scored.json").read_text())["results"]["coco-cls"] == results


def test_every_phrasing_is_used_on_the_suite(suite: Path) -> None:
    samples = CocoClassification(suite).load_samples()
    assert {s.metadata["phrasing"] for s in samples} == set(range(len(PHRASINGS)))
    suffix = ("Answer the question using one of these category names: circle, square, triangle, star, hexagon, "
              "diamond, cross, ring, heart, crescent.")
    assert all(s.prompt == f"{PHRASINGS[phrasing_index(int(s.id))]} {suffix}" for s in samples)
    assert all(s.image.size is not None and s.image.key == f"{s.metadata['image_id']}.png" for s in samples)
