"""Region captioning tasks (refcocog-cap, vg-cap): samples, parsing, and real corpus metrics end to end.

METEOR loads its paraphrase table in a JVM (~20 s, more on a busy machine), so
the module starts ONE :class:`MeteorScorer` at its beginning (it loads while the
Java-free tests run) and routes the task's ``caption_metrics`` through it with
``meteor=...``: the same jar and protocol, so the same numbers as the default
one-JVM-per-call path (which bench/metrics tests cover). Tests needing Java skip
cleanly without ``java`` on PATH.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.adapter import Capabilities
from bench.evaluate import RunConfig, run_evaluation
from bench.metrics.captions import caption_metrics
from bench.metrics.meteor import MeteorScorer
from bench.rescore import rescore_paths
from bench.store import read_records
from bench.synthetic import default_suite_dir
from tasks import captioning
from tasks.captioning import (
    MAX_NEW_TOKENS,
    REFCOCOG_PROMPT,
    VG_PROMPT,
    RefCocogCaptioning,
    VisualGenomeCaptioning,
    caption_from_output,
)

HAVE_JAVA = shutil.which("java") is not None
requires_java = pytest.mark.skipif(not HAVE_JAVA, reason="caption metrics need `java` on PATH")
KEYS = {"meteor", "cider", "bleu4", "rouge_l"}


def run(task: str, out: Path, model: str = "oracle", **kwargs: Any) -> dict[str, Any]:
    report = run_evaluation(RunConfig(model=model, tasks=task, output=out, progress=False, **kwargs))
    assert not report.failed, report.results["failures"]
    return report.results


def perfect(value: float) -> Any:
    return pytest.approx(1.0, abs=1e-9) if value != 1.0 else 1.0


@pytest.fixture(scope="module", autouse=True)
def meteor_session() -> Iterator[MeteorScorer | None]:
    """One METEOR JVM for the module, started first; the task's aggregate is routed through it."""
    if not HAVE_JAVA:
        yield None
        return
    with MeteorScorer() as meteor, pytest.MonkeyPatch.context() as patch:
        patch.setattr(captioning, "caption_metrics", functools.partial(caption_metrics, meteor=meteor))
        yield meteor


@pytest.fixture
def shared_meteor(meteor_session: MeteorScorer | None) -> MeteorScorer:
    assert meteor_session is not None
    return meteor_session


# ----------------------------------------------------------------------------- no Java needed


@pytest.mark.parametrize(("raw", "caption"), [
    ("  a red square. \n", "a red square."),
    ("\n\nthe man on the left\nAnd a second sentence.", "the man on the left"),
    ("", ""),
    ("   \n  ", ""),
])
def test_caption_is_the_stripped_first_line(raw: str, caption: str) -> None:
    assert caption_from_output(raw) == caption


def test_refcocog_samples_one_per_region_with_all_expressions() -> None:
    task = RefCocogCaptioning(default_suite_dir())
    samples = task.load_samples()
    assert len(samples) == 178 and len({s.id for s in samples}) == 178
    first = samples[0]
    assert first.id == "1000000"
    assert first.prompt == REFCOCOG_PROMPT == "Give a short description to refer to <region1> only."
    assert first.target == ["The medium circle", "The circle that is medium", "The medium-sized circle"]
    assert first.gold_answer == first.target[0]
    assert sum(len(s.target) for s in samples) == 319  # every expression of the split is a reference
    assert first.metadata["ann_id"] == 20000101 and first.metadata["image_id"] == 200001
    (region,) = first.regions
    assert region.box is not None and region.mask is not None
    # Box-only adapters get the box without the mask; mask-taking ones get both.
    (boxed,) = task.build_requests(first, Capabilities(boxes=True, masks=False))
    assert boxed.regions[0].box == region.box and boxed.regions[0].mask is None
    assert boxed.max_new_tokens == MAX_NEW_TOKENS == 32 and boxed.prompt == REFCOCOG_PROMPT
    (masked,) = task.build_requests(first, Capabilities(boxes=True, masks=True))
    assert masked.regions == (region,)
    assert len(RefCocogCaptioning(default_suite_dir(), split="test").load_samples()) == 128


def test_vg_samples_one_per_region_of_the_test_split() -> None:
    samples = VisualGenomeCaptioning(default_suite_dir()).load_samples()
    assert len(samples) == 293
    assert {s.metadata["image_id"] for s in samples} == set(range(300001, 300041))
    assert all(s.target == [s.gold_answer] and s.regions[0].mask is None for s in samples)
    assert {s.prompt for s in samples} == {VG_PROMPT} != {REFCOCOG_PROMPT}  # a description, not a referring one


# ----------------------------------------------------------------------------- real metrics


@requires_java
def test_refcocog_oracle_end_to_end(tmp_path: Path) -> None:
    """The oracle answers the first expression, one of the references: METEOR, BLEU-4 and ROUGE-L
    are perfect; CIDEr-D is what it is (its idf weights and length penalty are not normalised)."""
    results = run("refcocog-cap", tmp_path)
    assert results["n_samples"] == {"refcocog-cap": 178}
    metrics = results["results"]["refcocog-cap"]
    assert set(metrics) == KEYS
    assert metrics == {"meteor": 1.0, "bleu4": perfect(metrics["bleu4"]), "rouge_l": 1.0,
                       "cider": pytest.approx(6.1182918568599804, rel=1e-9)}


@requires_java
def test_refcocog_test_split(tmp_path: Path) -> None:
    results = run("refcocog-cap", tmp_path, split="test")
    assert results["n_samples"] == {"refcocog-cap@test": 128}
    assert (tmp_path / "samples_refcocog-cap@test.jsonl").is_file()
    metrics = results["results"]["refcocog-cap@test"]
    assert metrics == {"meteor": 1.0, "bleu4": perfect(metrics["bleu4"]), "rouge_l": 1.0,
                       "cider": pytest.approx(5.97669072521969, rel=1e-9)}


@requires_java
def test_vg_oracle_perfect_cider_is_neither_10_nor_1(tmp_path: Path) -> None:
    results = run("vg-cap", tmp_path)
    metrics = results["results"]["vg-cap"]
    assert metrics["meteor"] == 1.0 and metrics["rouge_l"] == 1.0 and metrics["bleu4"] == perfect(metrics["bleu4"])
    # CIDEr-D averages the cosine similarity over n = 1..4; a phrase shorter than n words has no
    # n-grams and gets 0 for that n, so a perfect answer scores 10 * min(words, 4) / 4.
    samples = VisualGenomeCaptioning(default_suite_dir()).load_samples()
    expected = sum(2.5 * min(len(s.gold_answer.split()), 4) for s in samples) / len(samples)
    assert metrics["cider"] == pytest.approx(expected, rel=1e-12) == pytest.approx(8.19112627986348, rel=1e-9)


@pytest.fixture(scope="module")
def bad_vg_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """vg-cap replayed from a deliberately bad answer file: each region gets the phrase of the region
    7 places later; two answers exercise parsing (empty, and a caption followed by a second line)."""
    out = tmp_path_factory.mktemp("bad-vg")
    samples = VisualGenomeCaptioning(default_suite_dir()).load_samples()
    answers = [{"id": s.id, "text": samples[(i + 7) % len(samples)].gold_answer} for i, s in enumerate(samples)]
    answers[0]["text"] = ""
    answers[1]["text"] = f"  {samples[1].gold_answer}\nIt is next to something else."
    path = out / "answers.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    return out, run("vg-cap", out / "run", model="replay", model_args={"path": str(path)})


@requires_java
def test_bad_answers_score_far_lower(bad_vg_run: tuple[Path, dict]) -> None:
    metrics = bad_vg_run[1]["results"]["vg-cap"]
    assert metrics == pytest.approx({"meteor": 0.08516626705195567, "cider": 0.5032977845297535,
                                     "bleu4": 0.04435544487440341, "rouge_l": 0.20376144394421486}, rel=1e-9)
    assert metrics["cider"] < 0.1 * 8.19 and metrics["meteor"] < 0.1  # the oracle: 8.19 and 1.0


@requires_java
def test_aggregate_equals_caption_metrics_and_pycocoevalcap(
    bad_vg_run: tuple[Path, dict], shared_meteor: MeteorScorer
) -> None:
    records = list(read_records(bad_vg_run[0] / "run" / "samples_vg-cap.jsonl"))
    assert records[0]["parsed"] == "" and records[1]["parsed"] == records[1]["gold_answer"]
    assert all(r["scores"] == {} for r in records)
    candidates = {r["id"]: r["parsed"] for r in records}
    references = {r["id"]: r["target"] for r in records}
    metrics = VisualGenomeCaptioning(Path(".")).aggregate(records)
    direct = caption_metrics(candidates, references, meteor=shared_meteor)
    assert metrics == direct == bad_vg_run[1]["results"]["vg-cap"]

    # The COCO caption toolkit itself (its own tokenizer runs; METEOR left out: another ~20 s JVM).
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in candidates.items()})
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in references.items()})
    assert metrics["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], rel=1e-12)
    assert metrics["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    assert metrics["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)


@requires_java
def test_bench_score_rescoring_gives_identical_numbers(bad_vg_run: tuple[Path, dict]) -> None:
    results, n_samples, versions, warnings = rescore_paths(bad_vg_run[0] / "run" / "samples_vg-cap.jsonl")
    assert results == bad_vg_run[1]["results"] and n_samples == {"vg-cap": 293}
    assert versions == {"vg-cap": "1"} and warnings == []
