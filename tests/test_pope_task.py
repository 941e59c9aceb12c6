"""The POPE tasks on real and hand-made question files: loading, pairing, errors, scores."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bench.errors import DataError
from bench.evaluate import RunConfig, run_evaluation
from tasks.pope import PopeAdversarial, PopeRandom
from tests.conftest import write_pope_root


def run(root: Path, out: Path, model: str, task: str = "pope-random", **kwargs) -> dict:
    config = RunConfig(model=model, tasks=task, data_root=root, output=out, progress=False, **kwargs)
    return run_evaluation(config).results


def test_real_files_load_and_pair_by_question_id(shared_pope_root: Path) -> None:
    samples = PopeAdversarial(shared_pope_root).load_samples()
    assert len(samples) == 3000
    assert samples[0].id == "1" and samples[0].prompt == "Is there a snowboard in the image?"
    assert sum(s.target == "yes" for s in samples) == 1500
    assert samples[0].image.key == "COCO_val2014_000000310196.jpg"


def test_real_files_oracle_and_always_yes(shared_pope_root: Path, tmp_path: Path) -> None:
    # No image exists in this data root: the baseline adapters never open one.
    results = run(shared_pope_root, tmp_path / "oracle", "oracle", task="pope")["results"]
    for split in ("pope-random", "pope-popular", "pope-adversarial"):
        assert results[split] == pytest.approx(
            {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5})
    assert results["pope"]["mean_f1"] == 1.0
    yes = run(shared_pope_root, tmp_path / "yes", "always-yes")["results"]["pope-random"]
    assert yes == pytest.approx({"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0})


def test_replay_pairs_by_question_id_not_position(shared_pope_root: Path, tmp_path: Path) -> None:
    labels = {}
    with (shared_pope_root / "pope" / "coco_pope_random.json").open() as handle:
        for line in handle:
            record = json.loads(line)
            labels[record["question_id"]] = record["label"]
    # Answers: right for question ids divisible by 3, wrong otherwise; written in shuffled order,
    # in the LLaVA answer-file shape ({"question_id", "prompt", "text"}).
    answers = [
        {"question_id": qid, "prompt": "...",
         "text": ("Yes, there is." if (label == "yes") == (qid % 3 == 0) else "No, there is not.")}
        for qid, label in labels.items()
    ]
    random.Random(0).shuffle(answers)
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    results = run(shared_pope_root, tmp_path / "out", "replay", model_args={"path": str(path)})["results"]

    tp = sum(1 for q, lab in labels.items() if lab == "yes" and q % 3 == 0)
    fn = sum(1 for q, lab in labels.items() if lab == "yes" and q % 3 != 0)
    tn = sum(1 for q, lab in labels.items() if lab == "no" and q % 3 == 0)
    fp = sum(1 for q, lab in labels.items() if lab == "no" and q % 3 != 0)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert results["pope-random"] == pytest.approx({
        "accuracy": (tp + tn) / 3000, "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall), "yes_ratio": (tp + fp) / 3000,
    })


def test_legacy_variant_with_image_id_and_zero_based_ids(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "legacy", n_images=2, start_id=0, legacy=True)
    samples = PopeRandom(root).load_samples()
    assert [s.id for s in samples[:3]] == ["0", "1", "2"]
    assert samples[0].metadata["image_id"] == 0
    results = run(root, tmp_path / "out", "oracle")["results"]
    assert results["pope-random"]["accuracy"] == 1.0


def test_json_array_variant_loads(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=1)
    path = root / "pope" / "coco_pope_random.json"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text(json.dumps(records))
    assert len(PopeRandom(root).load_samples()) == 6


def test_malformed_line_is_named(pope_root: Path) -> None:
    path = pope_root / "pope" / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    lines[4] = lines[4][:-3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"coco_pope_random\.json, line 5: not valid JSON"):
        PopeRandom(pope_root).load_samples()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("label"), r"line 3: missing field\(s\) label"),
        (lambda r: r.update(label="maybe"), "line 3: label must be 'yes' or 'no'"),
        (lambda r: r.update(question_id=1), "line 3: question_id 1 already used on line 1"),
        (lambda r: r.update(image="../../etc/passwd"), "line 3: image path '../../etc/passwd' leaves"),
    ],
)
def test_bad_records_are_named(pope_root: Path, change, message: str) -> None:
    path = pope_root / "pope" / "coco_pope_random.json"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    change(records[2])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match=message):
        PopeRandom(pope_root).load_samples()


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"POPE random question file not found: .*coco_pope_random\.json.*--data-root"):
        PopeRandom(tmp_path).load_samples()


def test_paths_json_overrides_location(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=1)
    (root / "pope" / "coco_pope_random.json").rename(root / "mine.jsonl")
    (root / "paths.json").write_text(json.dumps({"pope_questions": "mine.jsonl"}))
    assert len(PopeRandom(root).load_samples()) == 6
