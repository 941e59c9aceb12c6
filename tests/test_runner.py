"""The runner: saving as it goes, resuming, isolating failures, order independence."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapters.baselines import Oracle
from bench.adapter import Adapter, Capabilities
from bench.runner import evaluate_task
from bench.store import samples_path
from bench.types import GenerationRequest
from tasks.pope import PopeRandom
from tests.conftest import write_pope_root


class Recording(Adapter):
    """Oracle answers, remembering every batch; fails on chosen sample ids."""

    name = "recording"
    capabilities = Capabilities(needs_images=False)

    def __init__(self, fail_ids: frozenset[str] = frozenset(), wrong_ids: frozenset[str] = frozenset()) -> None:
        self.fail_ids = fail_ids
        self.wrong_ids = wrong_ids
        self.batches: list[list[str]] = []
        self.init_args = {}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        self.batches.append([r.sample.id for r in requests])
        for request in requests:
            if request.sample.id in self.fail_ids:
                raise RuntimeError(f"boom on {request.sample.id}")
        flip = {"yes": "No", "no": "Yes"}
        return [flip[r.sample.gold_answer] if r.sample.id in self.wrong_ids else r.sample.gold_answer
                for r in requests]


@pytest.fixture
def task(tmp_path: Path) -> PopeRandom:
    return PopeRandom(write_pope_root(tmp_path / "data", n_images=5))


def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_every_sample_is_saved_with_raw_parsed_target_and_scores(task: PopeRandom, tmp_path: Path) -> None:
    outcome = evaluate_task(task, Oracle(), task.load_samples(), tmp_path / "out", progress=False)
    assert outcome.metrics is not None and outcome.metrics["accuracy"] == 1.0
    record = json.loads(samples_path(tmp_path / "out", task.name).read_text().splitlines()[0])
    assert record["outputs"] == ["yes"] and record["parsed"] == "yes" and record["target"] == "yes"
    assert record["scores"] == {"correct": 1.0} and len(record["cache_key"]) == 64


def test_batches_are_grouped_by_image(task: PopeRandom, tmp_path: Path) -> None:
    samples = task.load_samples()
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    adapter = Recording()
    evaluate_task(task, adapter, shuffled, tmp_path / "out", batch_size=6, progress=False)
    image_of = {s.id: s.image.key for s in samples}
    # 5 images x 6 questions, batches of 6 requests: each batch is exactly one image.
    assert len(adapter.batches) == 5
    assert all(len({image_of[i] for i in batch}) == 1 for batch in adapter.batches)


def test_order_and_sharding_do_not_change_scores(task: PopeRandom, tmp_path: Path) -> None:
    samples = task.load_samples()
    wrong = frozenset(s.id for s in samples if int(s.id) % 4 == 0)
    reference = evaluate_task(task, Recording(wrong_ids=wrong), samples, tmp_path / "a", progress=False).metrics
    shuffled = samples[:]
    random.Random(7).shuffle(shuffled)
    # Two "shards" written into one output directory, then the full split resumes from them.
    evaluate_task(task, Recording(wrong_ids=wrong), shuffled[::2], tmp_path / "b", batch_size=3, progress=False)
    evaluate_task(task, Recording(wrong_ids=wrong), shuffled[1::2], tmp_path / "c", batch_size=5, progress=False)
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / f"samples_{task.name}.jsonl").write_text(
        (tmp_path / "b" / f"samples_{task.name}.jsonl").read_text()
        + (tmp_path / "c" / f"samples_{task.name}.jsonl").read_text())
    adapter = Recording(wrong_ids=wrong)
    outcome = evaluate_task(task, adapter, shuffled, merged, progress=False)
    assert adapter.batches == []  # everything reused
    assert outcome.metrics == reference
    assert reference is not None and reference["accuracy"] < 1.0


def test_resume_skips_finished_and_tolerates_torn_last_line(task: PopeRandom, tmp_path: Path) -> None:
    samples = task.load_samples()
    out = tmp_path / "out"
    evaluate_task(task, Recording(), samples[:10], out, progress=False)
    path = samples_path(out, task.name)
    with path.open("a") as handle:
        handle.write('{"id": "11", "task": "pope-ran')  # a write cut by SIGKILL
    adapter = Recording()
    outcome = evaluate_task(task, adapter, samples, out, progress=False)
    assert outcome.n_reused == 10
    assert sorted(i for batch in adapter.batches for i in batch) == sorted(s.id for s in samples[10:])
    assert sorted(ids_in(path), key=int) == [s.id for s in samples]  # no duplicate, no torn line


def test_changed_model_is_not_reused(task: PopeRandom, tmp_path: Path) -> None:
    samples = task.load_samples()
    out = tmp_path / "out"
    evaluate_task(task, Oracle(), samples, out, progress=False)
    adapter = Recording()
    adapter.name = "other-model"
    outcome = evaluate_task(task, adapter, samples, out, progress=False)
    assert outcome.n_reused == 0
    assert len(ids_in(samples_path(out, task.name))) == len(samples)


def test_failures_are_isolated_listed_and_block_metrics(task: PopeRandom, tmp_path: Path) -> None:
    samples = task.load_samples()
    out = tmp_path / "out"
    outcome = evaluate_task(task, Recording(fail_ids=frozenset({"3", "17"})), samples, out, batch_size=6,
                            progress=False)
    assert [(f.sample_id, f.reason) for f in outcome.failures] == [
        ("3", "RuntimeError: boom on 3"), ("17", "RuntimeError: boom on 17")]
    assert outcome.metrics is None
    assert len(ids_in(samples_path(out, task.name))) == len(samples) - 2
    # Running again retries only the two failures, then scores the whole split.
    adapter = Recording()
    outcome = evaluate_task(task, adapter, samples, out, progress=False)
    assert sorted(i for batch in adapter.batches for i in batch) == ["17", "3"]
    assert outcome.metrics is not None and outcome.metrics["accuracy"] == 1.0


def test_adapter_returning_wrong_count_fails_cleanly(task: PopeRandom, tmp_path: Path) -> None:
    class Short(Recording):
        def generate(self, requests):
            return ["yes"] * (len(requests) - 1)

    outcome = evaluate_task(task, Short(), task.load_samples()[:2], tmp_path / "o", progress=False)
    assert [f.sample_id for f in outcome.failures] == ["1", "2"]
    assert "returned 0 answers to 1 generate requests" in outcome.failures[0].reason


def test_batch_cutting_keeps_images_whole_when_they_fit() -> None:
    from bench.runner import _batches_by_image, _Pending
    from bench.types import ImageRef, Sample

    def pending(image: str, index: int) -> _Pending:
        sample = Sample(id=f"{image}{index}", image=ImageRef(key=image), prompt="", target="yes")
        return _Pending(sample, [GenerationRequest(sample=sample, prompt="", regions=())], key="")

    todo = [pending(image, i) for image, count in (("a", 6), ("b", 6), ("c", 3), ("d", 10)) for i in range(count)]
    random.Random(3).shuffle(todo)

    def shape(batch_size: int) -> list[str]:
        return ["".join(sorted(p.sample.image.key for p in batch)) for batch in _batches_by_image(todo, batch_size)]

    order = list(dict.fromkeys(p.sample.image.key for p in todo))  # images by first appearance
    batches = shape(8)
    assert all(len(b) <= 8 for b in batches)
    for image in "abc":  # groups that fit are never split
        assert sum(image in b for b in batches) == 1
    assert sum("d" in b for b in batches) == 2  # 10 requests > 8 must split
    assert [b[0] for b in batches][0] == order[0]
    assert shape(100) == ["".join(sorted(p.sample.image.key for p in todo))]
