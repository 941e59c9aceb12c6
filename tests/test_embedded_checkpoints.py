"""The embedded tiny checkpoints (``adapters/{rgpt,gpt4roi}/checkpoints/tiny/``), trained by ``bench train``.

Each must reach the RGPT issue's minimum scores (the GPT4RoI issue asks the same) on the
synthetic suite's evaluation splits (coco-cls accuracy 90, pope-adversarial F1 85, refcocog-rec
accuracy 80, captions well above a nearest-category baseline), and it must read the regions:
asking about another object of the same image changes the answer to that object's category.
A minimum a checkpoint does not reach yet is listed in SHORT_OF_MINIMUM, as a strict expected failure.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from adapters.gpt4roi.adapter import EMBEDDED_TINY as GPT4ROI_TINY
from adapters.rgpt.adapter import EMBEDDED_TINY as RGPT_TINY
from bench.synthetic.vocab import CATEGORIES
from tests.plugin_utils import run_bench

CAPTION_TASKS = ("refcocog-cap", "vg-cap")
EMBEDDED = {"rgpt": (RGPT_TINY, "RGPT"), "gpt4roi": (GPT4ROI_TINY, "GPT4RoI")}
CATEGORY_WORD = re.compile(r"\b(" + "|".join(c.name for c in CATEGORIES) + r")\b")
# The minimums an embedded checkpoint does not reach yet, by model, each with the reason (README,
# the model's section). Each is a strict expected failure: once the checkpoint reaches it, the
# suite goes red until the entry is removed. Every other minimum is asserted as for any model.
# Empty since the tiny GPT4RoI's polish stage (run P5) took refcocog-cap's CIDEr past its minimum.
SHORT_OF_MINIMUM: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module", params=sorted(EMBEDDED))
def model(request: pytest.FixtureRequest) -> str:
    """Each embedded model; one not committed yet is skipped, saying why (README, the model's section)."""
    directory, _ = EMBEDDED[request.param]
    if not (directory / "model.safetensors").is_file():
        pytest.skip(f"no embedded tiny {request.param} checkpoint yet ({directory})")
    return request.param


def test_the_checkpoint_is_embedded_as_safetensors(model: str) -> None:
    directory, _ = EMBEDDED[model]
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in names)
    assert json.loads((directory / "config.json").read_text())["size"] == "tiny"


@pytest.fixture(scope="module")
def run_dir(model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"embedded-{model}")
    result = run_bench("run", "--model", model, "--task", "coco-cls,pope-adversarial,refcocog-rec,"
                       + ",".join(CAPTION_TASKS), "--output", str(out), "--batch-size", "16", "--no-progress",
                       # about a minute on an idle 2-core machine; 300 s ran out beside a training run
                       timeout=1200)
    assert result.returncode == 0, result.stderr
    assert f"using the embedded tiny {EMBEDDED[model][1]} checkpoint" in result.stderr  # the one-line notice
    return out


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["results"]


def _known_shortfall(request: pytest.FixtureRequest, model: str, minimum: str) -> None:
    """Mark this test a strict expected failure where SHORT_OF_MINIMUM lists ``minimum`` for ``model``."""
    reason = SHORT_OF_MINIMUM.get(model, {}).get(minimum)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{model} {minimum}: {reason}"))


@pytest.mark.parametrize(("task", "metric", "minimum"), [("coco-cls", "accuracy", 0.90),
                                                         ("pope-adversarial", "f1", 0.85),
                                                         ("refcocog-rec", "accuracy", 0.80)])
def test_minimum_scores_on_the_evaluation_split(model: str, run_dir: Path, request: pytest.FixtureRequest,
                                                task: str, metric: str, minimum: float) -> None:
    _known_shortfall(request, model, f"{task} {metric}")
    assert _results(run_dir)[task][metric] >= minimum  # results.json holds fractions


def _nearest_category_captions(samples: Path, article: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A perfect classifier that names only the category: '{article} {category}' per region, by sample id."""
    candidates, references = {}, {}
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        words = CATEGORY_WORD.findall(" ".join(record["target"]).lower())
        candidates[record["id"]] = f"{article} {words[0]}" if words else article
        references[record["id"]] = record["target"]
    return candidates, references


@pytest.fixture(scope="module")
def baselines(run_dir: Path) -> dict[str, dict[str, float]]:
    """The nearest-category captions' scores per caption task, on the same samples as the model's."""
    from bench.metrics.captions import caption_metrics

    articles = {"refcocog-cap": "the", "vg-cap": "a"}  # the references' own habit
    return {task: caption_metrics(*_nearest_category_captions(run_dir / f"samples_{task}.jsonl", articles[task]))
            for task in CAPTION_TASKS}


@pytest.mark.parametrize("task", CAPTION_TASKS)
@pytest.mark.parametrize("metric", ["meteor", "cider"])
def test_captions_are_well_above_a_nearest_category_baseline(model: str, run_dir: Path,
                                                             baselines: dict[str, dict[str, float]],
                                                             request: pytest.FixtureRequest, task: str,
                                                             metric: str) -> None:
    _known_shortfall(request, model, f"{task} {metric}")
    scores = _results(run_dir)[task]  # fractions, as pycocoevalcap returns them
    baseline = baselines[task]
    minimum = baseline["meteor"] + 0.05 if metric == "meteor" else 1.5 * baseline["cider"]  # 5 METEOR points
    assert scores[metric] >= minimum, (scores, baseline)


def test_the_answer_follows_the_region(model: str) -> None:
    """Same image, same question; the region moves from one object to another of another category."""
    from bench.evaluate import resolve_data_root
    from bench.registry import build_adapter
    from tasks.coco_cls import CocoClassification

    task = CocoClassification(resolve_data_root(None))
    adapter = build_adapter(model, {}, device="cpu", batch_size=16, seed=0)
    by_image: dict[str, list] = {}
    for sample in task.load_samples():
        by_image.setdefault(sample.image.key, []).append(sample)
    swaps = 0
    followed = 0
    for samples in list(by_image.values())[:30]:
        first = samples[0]
        other = next((s for s in samples[1:] if s.target["category"] != first.target["category"]), None)
        if other is None:
            continue
        other = dataclasses.replace(other, prompt=first.prompt)  # the very same question
        requests = [r for s in (first, other) for r in task.build_requests(s, adapter.capabilities)
                    if r.kind == "generate"]
        answers = adapter.generate(requests)
        parsed = [task.process(s, [a]).parsed["answer"] for s, a in zip((first, other), answers, strict=True)]
        swaps += 1
        followed += parsed == [first.target["category"], other.target["category"]]
    assert swaps >= 20
    assert followed / swaps >= 0.85, f"{followed}/{swaps} swaps changed the answer to the new object's category"
