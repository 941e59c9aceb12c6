"""The refcocog-rec task: candidates, order, parsing and scores on a hand-made root and the synthetic suite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.adapter import Adapter, Capabilities
from bench.data.proposals import Proposal, load_proposals
from bench.errors import ConfigError, DataError
from bench.evaluate import RunConfig, run_evaluation
from bench.rescore import rescore_paths
from bench.runner import evaluate_task
from bench.synthetic import default_suite_dir
from bench.types import GenerationRequest, Sample
from tasks.rec import RefCOCOgREC, build_candidates, parse_choice, stable_shuffle
from tests.test_refcocog_loader import write_refcocog

REPO = Path(__file__).resolve().parent.parent

# Proposals (COCO results: xywh). Ground truth, as xyxy: ann 11 (10,10,30,30) and 12 (60,60,90,90) on
# image 1 (100x100); ann 21 (0,0,50,50) on image 2 (200x100); ann 31 on image 3, which has no proposals.
VAL_PROPOSALS = [
    {"image_id": 1, "category_id": 1, "bbox": [11, 11, 20, 20], "score": 0.9},  # 0: IoU 361/439 with ann 11
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3},  # 1: lowest score on image 1
    {"image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.5},  # 2
    {"image_id": 1, "category_id": 1, "bbox": [58, 58, 10, 10], "score": 0.8},  # 3: IoU 64/936 with ann 12
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.7},  # 4: IoU 1 with ann 21
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 50], "score": 0.7},  # 5: IoU 0.8, same score as 4
    {"image_id": 2, "category_id": 1, "bbox": [150, 20, 100, 50], "score": 0.6},  # 6: clipped to x2=200
    {"image_id": 2, "category_id": 1, "bbox": [250, 0, 10, 10], "score": 0.95},  # 7: outside: dropped
    {"image_id": 999, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # 8: unknown image: skipped
]
TEST_PROPOSALS = [{"image_id": 1, "category_id": 1, "bbox": [61, 61, 29, 29], "score": 0.4}]


def write_root(root: Path, proposals: list[dict[str, Any]] = VAL_PROPOSALS) -> Path:
    """refs + instances (from the loader tests) and both proposal files; no images."""
    write_refcocog(root)
    (root / "proposals").mkdir(parents=True, exist_ok=True)
    (root / "proposals" / "refcocog_umd_val.json").write_text(json.dumps(proposals))
    (root / "proposals" / "refcocog_umd_test.json").write_text(json.dumps(TEST_PROPOSALS))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_root(tmp_path / "data")


def by_id(samples: Sequence[Sample]) -> dict[str, Sample]:
    return {s.id: s for s in samples}


def position(sample: Sample, source: int | str) -> int:
    """The 1-based candidate index of a proposal (file entry index) or of the added "gt" box."""
    return sample.metadata["sources"].index(source) + 1


def run(root: Path | None, out: Path, model: str, **kwargs: Any) -> dict[str, float]:
    config = RunConfig(model=model, tasks="refcocog-rec", data_root=root, output=out, progress=False, **kwargs)
    report = run_evaluation(config)
    assert not report.failed, report.results["failures"]
    return next(iter(report.results["results"].values()))


# --- candidates --------------------------------------------------------------------------------


def test_samples_one_per_expression_with_stable_ids(root: Path) -> None:
    samples = RefCOCOgREC(root).load_samples()
    assert [s.id for s in samples] == ["1-101", "1-102", "2-201", "3-301", "3-302", "4-401"]
    assert [s.id for s in RefCOCOgREC(root, split="test").load_samples()] == ["5-501"]
    assert samples[0].image.key == "a.jpg" and samples[0].image.size == (100, 100)


def test_candidates_by_hand_default_cap(root: Path) -> None:
    s = by_id(RefCOCOgREC(root).load_samples())
    # Image 1, all four proposals; ann 11 is found by proposal 0, so no ground-truth box is added.
    first = s["1-101"]
    assert sorted(first.metadata["sources"]) == [0, 1, 2, 3] and first.metadata["gt_added"] is False
    assert first.target == [position(first, 0)] and first.gold_answer == f"Region [{position(first, 0)}]"
    assert first.metadata["ious"][position(first, 0) - 1] == pytest.approx(361 / 439)
    assert first.metadata["gt_box"] == [10.0, 10.0, 30.0, 30.0]
    # Ann 12 is missed (best IoU 64/936): its box is added as a fifth candidate.
    second = s["2-201"]
    assert sorted(second.metadata["sources"], key=str) == [0, 1, 2, 3, "gt"] and second.metadata["gt_added"]
    assert second.target == [position(second, "gt")]
    assert second.metadata["candidates"][position(second, "gt") - 1] == [60.0, 60.0, 90.0, 90.0]
    assert second.metadata["candidate_scores"][position(second, "gt") - 1] is None
    # Image 2: proposal 7 lies outside the image and is dropped; 6 is clipped; 4 and 5 both hit ann 21.
    third = s["3-301"]
    assert sorted(third.metadata["sources"]) == [4, 5, 6] and third.metadata["dropped_proposals"] == 1
    assert third.metadata["candidates"][position(third, 6) - 1] == [150.0, 20.0, 200.0, 70.0]
    assert third.target == sorted([position(third, 4), position(third, 5)])
    assert third.gold_answer == f"Region [{position(third, 4)}]"  # the candidate with the highest IoU
    # Every candidate is shown with the label an answer must use.
    assert "Candidates: Region [1] <region1>, Region [2] <region2>, Region [3] <region3>. Answer" in third.prompt
    # Image 3 has no proposal: the ground-truth box is the only candidate.
    fourth = s["4-401"]
    assert fourth.metadata["sources"] == ["gt"] and fourth.target == [1] and fourth.metadata["n_proposals"] == 0
    assert fourth.prompt == ('Which region does the description "the only box" refer to? '
                             "Candidates: Region [1] <region1>. Answer the question using the template Region [x].")
    assert len(fourth.regions) == 1 and fourth.regions[0].box == (5.0, 5.0, 15.0, 15.0)
    assert fourth.regions[0].mask is None


def test_cap_keeps_top_scores_and_gt_replaces_the_lowest(root: Path) -> None:
    s = by_id(RefCOCOgREC(root, max_candidates=3).load_samples())
    # Image 1 by score: 0 (0.9), 3 (0.8), 2 (0.5), 1 (0.3). Cap 3 keeps 0, 3, 2.
    assert sorted(s["1-101"].metadata["sources"]) == [0, 2, 3] and not s["1-101"].metadata["gt_added"]
    # Ann 12 missed: the box replaces proposal 2 (lowest kept score), so there are still 3 candidates.
    assert sorted(s["2-201"].metadata["sources"], key=str) == [0, 3, "gt"]
    # Image 2: 4 and 5 tie at 0.7; the tie is broken by the box, so both stay ahead of 6 either way.
    assert sorted(RefCOCOgREC(root, max_candidates=2).load_samples()[3].metadata["sources"]) == [4, 5]
    for sample in s.values():
        assert len(sample.regions) <= 3
        assert sample.prompt.count("<region") == len(sample.regions) == len(sample.metadata["candidates"])


def test_min_score_filters_before_the_cap(root: Path) -> None:
    s = by_id(RefCOCOgREC(root, min_score=0.6).load_samples())
    assert sorted(s["1-101"].metadata["sources"]) == [0, 3]
    assert sorted(s["2-201"].metadata["sources"], key=str) == [0, 3, "gt"]  # under the cap: nothing replaced


def test_order_is_shuffled_recorded_and_golden(root: Path) -> None:
    samples = RefCOCOgREC(root).load_samples()
    # A fixed permutation from SHA-256 of the sample id: a change here changes every saved result.
    assert samples[0].metadata["sources"] == [2, 1, 0, 3]
    assert samples[2].metadata["sources"] == [0, 3, "gt", 2, 1]
    assert samples[0].metadata["sources"] != samples[1].metadata["sources"]  # same image, other sentence
    assert stable_shuffle(list(range(6)), "x") == stable_shuffle(list(range(6)), "x")


def test_added_gt_lands_in_every_position() -> None:
    gt = (0.0, 0.0, 10.0, 10.0)
    far = [Proposal(i, 1, (50.0 + i, 50.0, 60.0 + i, 60.0), 0.5) for i in range(4)]
    positions = set()
    for k in range(40):
        candidates, added = build_candidates(far, gt, 5, 0.0, seed=str(k))
        assert added and sorted(c.source for c in candidates if c.source != "gt") == [0, 1, 2, 3]
        positions.add([c.source for c in candidates].index("gt"))
    assert positions == {0, 1, 2, 3, 4}


def test_order_does_not_depend_on_proposal_file_order(root: Path, tmp_path: Path) -> None:
    reversed_root = write_root(tmp_path / "reversed", list(reversed(VAL_PROPOSALS)))
    first, second = RefCOCOgREC(root).load_samples(), RefCOCOgREC(reversed_root).load_samples()
    for a, b in zip(first, second, strict=True):
        assert a.metadata["candidates"] == b.metadata["candidates"]
        assert (a.target, a.gold_answer, a.prompt) == (b.target, b.gold_answer, b.prompt)


def test_order_is_the_same_in_other_processes(root: Path) -> None:
    code = (
        "import json, sys; from pathlib import Path; from tasks.rec import RefCOCOgREC; "
        "print(json.dumps([s.metadata['candidates'] for s in RefCOCOgREC(Path(sys.argv[1])).load_samples()]))"
    )
    expected = [s.metadata["candidates"] for s in RefCOCOgREC(root).load_samples()]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, cwd=REPO,
                              env=env, check=True)
        assert json.loads(done.stdout) == expected


# --- parsing and scores --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Region [2]", 2),
        ("region [ 2 ]", 2),
        ("REGION[3].", 3),
        ("The answer is Region [1], not Region [2].", 1),
        ("Region 2", None),
        ("No corresponding options found.", None),
        ("Region [9]", None),
        ("Region [0]", None),
        ("Region [x]", None),
        ("", None),
        ("subregion [2]", None),
    ],
)
def test_parse_choice_with_three_candidates(answer: str, parsed: int | None) -> None:
    assert parse_choice(answer, 3) == parsed


def write_answers(path: Path, answers: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in answers.items()))
    return path


def test_accuracy_and_unparseable_by_hand(root: Path, tmp_path: Path) -> None:
    s = by_id(RefCOCOgREC(root, max_candidates=3).load_samples())
    answers = {
        "1-101": f"Region [{position(s['1-101'], 0)}]",  # correct
        "1-102": "Region [9]",  # K = 3: names no candidate -> unparseable
        "2-201": f"The answer is region [ {position(s['2-201'], 'gt')} ].",  # correct: the added box
        "3-301": "Region 2",  # no brackets -> unparseable
        "3-302": f"Region [{position(s['3-302'], 6)}]",  # parseable, wrong box
        "4-401": "No corresponding options found.",  # unparseable
    }
    path = write_answers(tmp_path / "answers.jsonl", answers)
    out = tmp_path / "out"
    metrics = run(root, out, "replay", model_args={"path": str(path)}, task_args={"max_candidates": "3"})
    assert metrics == {"accuracy": 2 / 6, "unparseable": 3 / 6, "gt_added": 2 / 6}
    records = {r["id"]: r for r in map(json.loads, (out / "samples_refcocog-rec.jsonl").read_text().splitlines())}
    assert records["1-102"]["parsed"] is None and records["3-302"]["parsed"] == position(s["3-302"], 6)
    assert records["1-101"]["scores"] == {"correct": 1.0, "unparseable": 0.0}
    assert records["3-302"]["scores"] == {"correct": 0.0, "unparseable": 0.0}
    assert records["1-101"]["requests"][0]["prompt"].endswith("<region3>. Answer the question using the template "
                                                              "Region [x].")
    # Re-scoring from the saved records alone (no data root) gives the same numbers.
    results, _, _, _ = rescore_paths(out)
    assert results["refcocog-rec"] == metrics


def test_oracle_on_the_hand_made_root_and_test_split(root: Path, tmp_path: Path) -> None:
    assert run(root, tmp_path / "val", "oracle") == {"accuracy": 1.0, "unparseable": 0.0, "gt_added": 2 / 6}
    # Test split: its proposal (IoU 841/900) finds ann 12.
    assert run(root, tmp_path / "test", "oracle", split="test") == {"accuracy": 1.0, "unparseable": 0.0,
                                                                    "gt_added": 0.0}


def test_requests_offer_the_region_choices(root: Path) -> None:
    task = RefCOCOgREC(root)
    sample = task.load_samples()[2]
    (request,) = task.build_requests(sample, Capabilities())
    assert isinstance(request, GenerationRequest)
    assert request.choices == tuple(f"Region [{k}]" for k in range(1, 6))
    assert request.regions == sample.regions and all(r.mask is None for r in request.regions)
    # A mask-only model gets each box as a rectangular polygon.
    (masked,) = task.build_requests(sample, Capabilities(boxes=False, masks=True))
    x1, y1, x2, y2 = sample.regions[0].box
    assert masked.regions[0].mask == [[x1, y1, x2, y1, x2, y2, x1, y2]]


# --- limits and errors ---------------------------------------------------------------------------


class ThreeRegions(Adapter):
    name = "three-regions-test"
    capabilities = Capabilities(max_regions=3, needs_images=False)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [r.sample.gold_answer or "" for r in requests]


def test_too_many_candidates_for_the_model_fail_with_the_fix(root: Path, tmp_path: Path) -> None:
    task = RefCOCOgREC(root)
    samples = task.load_samples()
    with pytest.raises(ConfigError, match=r"sample 1-101 has 4 candidate regions but the model takes at most 3; "
                                          r"rerun with --task-args max_candidates=3"):
        task.build_requests(samples[0], ThreeRegions.capabilities)
    outcome = evaluate_task(task, ThreeRegions(), samples, tmp_path / "out", progress=False)
    assert sorted(f.sample_id for f in outcome.failures) == ["1-101", "1-102", "2-201"]
    assert outcome.metrics is None
    capped = RefCOCOgREC(root, max_candidates=3)
    outcome = evaluate_task(capped, ThreeRegions(), capped.load_samples(), tmp_path / "capped", progress=False)
    assert not outcome.failures and outcome.metrics == {"accuracy": 1.0, "unparseable": 0.0, "gt_added": 2 / 6}


def test_task_args_are_converted_and_checked(root: Path) -> None:
    (task,) = registry.build_tasks(["refcocog-rec"], root, "test", {"max_candidates": "20", "min_score": "0.25"})
    assert (task.max_candidates, task.min_score, task.run_name) == (20, 0.25, "refcocog-rec@test")
    with pytest.raises(ConfigError, match="max_candidates=0: must be at least 1"):
        registry.build_tasks(["refcocog-rec"], root, None, {"max_candidates": "0"})
    with pytest.raises(ConfigError, match="has no split 'train'"):
        RefCOCOgREC(root, split="train")


def test_proposal_file_of_another_split_is_refused(root: Path) -> None:
    # Proposals for image 2 only, while the test split's one ref is on image 1.
    (root / "proposals" / "refcocog_umd_test.json").write_text(json.dumps(VAL_PROPOSALS[4:8]))
    with pytest.raises(DataError, match=r"refcocog_umd_test\.json: no proposal for any image of the test split"):
        RefCOCOgREC(root, split="test").load_samples()


SIZES = {1: (100, 100), 2: (200, 100)}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image_id": "1", "bbox": [0, 0, 5, 5], "score": 0.5}, "'image_id' must be an integer"),
        ({"image_id": 1, "bbox": [0, 0, 5], "score": 0.5}, r"'bbox' must be four finite numbers \[x, y, w, h\]"),
        ({"image_id": 1, "bbox": [0, 0, float("nan"), 5], "score": 0.5}, "'bbox' must be four finite numbers"),
        ({"image_id": 1, "bbox": [10, 10, 5, -1], "score": 0.5}, r"has no area; width and height must be positive"),
        ({"image_id": 1, "bbox": [0, 0, 5, 5], "score": float("inf")}, "'score' must be a finite number"),
        ({"image_id": 1, "bbox": [0, 0, 5, 5]}, r"missing field\(s\) score"),
        ({"image_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5, "category_id": "cat"}, "'category_id' must be"),
        ([1, [0, 0, 5, 5], 0.5], "expected an object"),
    ],
)
def test_bad_proposals_are_named_by_file_and_entry(tmp_path: Path, entry: Any, message: str) -> None:
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps([VAL_PROPOSALS[0], entry]))
    with pytest.raises(DataError, match=r"proposals\.json, entry 1\b.*" + message):
        load_proposals(path, SIZES)


def test_proposal_file_shape_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(VAL_PROPOSALS))
    loaded = load_proposals(path, SIZES)
    assert (loaded.n_entries, loaded.n_unknown_image, loaded.dropped(2), loaded.dropped(1)) == (9, 1, 1, 0)
    assert [p.index for p in loaded.for_image(2)] == [4, 5, 6] and loaded.for_image(3) == ()
    assert loaded.for_image(1)[0].box == (11.0, 11.0, 31.0, 31.0)
    path.write_text(json.dumps({"annotations": VAL_PROPOSALS}))
    with pytest.raises(DataError, match="a COCO results file is a JSON array"):
        load_proposals(path, SIZES)
    path.write_text(json.dumps(VAL_PROPOSALS[8:]))
    with pytest.raises(DataError, match="none of its 1 entries has an image_id of the annotation file"):
        load_proposals(path, SIZES)
    with pytest.raises(DataError, match=r"proposal file \(COCO results format\) not found: .*refcocog_proposals"):
        load_proposals(tmp_path / "absent.json", SIZES, key="refcocog_proposals")


# --- the synthetic suite -------------------------------------------------------------------------

# Measured on the default synthetic suite (val: 319 expressions, test: 236), max_candidates=10.
SUITE = {
    "val": {"n": 319, "gt_added": 39, "random_correct": 49},
    "test": {"n": 236, "gt_added": 38, "random_correct": 39},
}


@pytest.mark.parametrize("split", ["val", "test"])
def test_baselines_on_the_synthetic_suite(split: str, tmp_path: Path) -> None:
    expected = SUITE[split]
    n = expected["n"]
    gt_added = expected["gt_added"] / n
    assert run(None, tmp_path / "oracle", "oracle", split=split) == {"accuracy": 1.0, "unparseable": 0.0,
                                                                      "gt_added": gt_added}
    random_metrics = run(None, tmp_path / "random", "random", split=split)
    assert random_metrics == {"accuracy": expected["random_correct"] / n, "unparseable": 0.0, "gt_added": gt_added}
    # Chance level: the mean over queries of (candidates hitting the target) / K.
    samples = RefCOCOgREC(default_suite_dir(), split=split).load_samples()
    chance = sum(len(s.target) / len(s.regions) for s in samples) / len(samples)
    # ... which a seeded random guesser matches within three standard errors of a binomial proportion.
    assert abs(random_metrics["accuracy"] - chance) < 3 * math.sqrt(chance * (1 - chance) / n)
    assert max(len(s.regions) for s in samples) == 10
    yes = run(None, tmp_path / "yes", "always-yes", split=split)
    assert yes == {"accuracy": 0.0, "unparseable": 1.0, "gt_added": gt_added}
