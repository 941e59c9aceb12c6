"""`bench train rgpt` end to end at toy length: it trains, resumes, saves, and the adapter runs the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bench.synthetic import SuiteParams, generate_suite
from tests.plugin_utils import run_bench


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("suite") / "s", SuiteParams(n_train=6, n_val=3, n_test=2))


def test_train_then_evaluate_tiny_rgpt(small_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = ["train", "rgpt", "--out", str(out), "--data-root", str(small_suite), "--vision-steps", "2",
            "--vision-start-size", "32", "--vision-finish-steps", "1",
            "--language-easy-steps", "2", "--language-steps", "1", "--language-cycles", "2",
            "--language-word-weight", "0.5", "--language-cell-detail", "colour",
            "--language-description-weight", "0.5",
            "--contrast-weight", "0.5", "--contrast-temperature", "0.05", "--image-align-share", "0.2",
            "--stage1-steps", "2", "--curriculum", "classification=2,pope=1", "--stage2-steps", "3",
            "--polish-steps", "0", "--batch-size", "4",
            "--image-size", "64", "--no-progress"]
    trained = run_bench(*args)
    assert trained.returncode == 0, trained.stderr
    log = json.loads((out / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in log] == [
        ("stage1", 1), ("stage1", 2), ("stage2-classification", 1), ("stage2-classification", 2),
        ("stage2-pope", 1), ("stage2", 1), ("stage2", 2), ("stage2", 3)]
    # Stage 0: its --vision-steps at 32 px (a 4x4 patch grid), then one step at 64 px (8x8).
    start_log = json.loads((out / "vision" / "start" / "log.json").read_text())
    assert [r["step"] for r in start_log["log"]] == [1, 2]
    vision_log = json.loads((out / "vision" / "log.json").read_text())
    assert [r["step"] for r in vision_log["log"]] == [1]
    assert vision_log["recipe"]["lr"] == 1.5e-3
    positions = "embeddings.position_embedding.weight"
    assert load_file(str(out / "vision" / "start" / "tower.safetensors"))[positions].shape[0] == 1 + 4 * 4
    assert load_file(str(out / "vision" / "tower.safetensors"))[positions].shape[0] == 1 + 8 * 8
    language_log = json.loads((out / "language" / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in language_log] == [("language-easy", 1), ("language-easy", 2),
                                                               ("language", 1), ("language-2", 1)]
    llm = load_file(str(out / "language" / "llm.safetensors"))
    heads = load_file(str(out / "language" / "heads.safetensors"))
    assert {k.split(".")[0] for k in heads} == {"match_head", "index_head", "word_head", "description_head"}
    weights = load_file(str(out / "model.safetensors"))
    tower = load_file(str(out / "vision" / "tower.safetensors"))
    # Stages 1 and 2 trained through the alignment wrapper; the checkpoint holds the model alone.
    assert not any(k.startswith(("model.", "heads.")) for k in weights)
    # The tower is frozen after stage 0: the checkpoint holds exactly the pre-trained tower.
    assert all((weights[f"vision_tower.{k}"] == v).all() for k, v in tower.items())
    assert any(k.startswith("llm.") for k in weights) and any(k.startswith("connector.") for k in weights)
    # Stage L trained the LLM that stage 2 then started from: the final LLM moved on from it.
    assert set(llm) <= {k.removeprefix("llm.") for k in weights}
    assert any(not (weights[f"llm.{k}"] == v).all() for k, v in llm.items())
    recipe = json.loads((out / "recipe.json").read_text())
    assert [recipe["recipe"][k] for k in ("language_word_weight", "language_description_weight",
                                          "contrast_weight", "contrast_temperature",
                                          "image_align_share")] == [0.5, 0.5, 0.5, 0.05, 0.2]
    assert recipe["recipe"]["language_cell_detail"] == "colour"
    assert [recipe["recipe"][k] for k in ("vision_start_size", "vision_finish_steps", "image_size")] == [32, 1, 64]
    assert recipe["recipe"]["language_box_marker"] is True  # the default: box regions carry the marker
    assert recipe["recipe"]["stage2_steps"] == 3 and set(recipe["conversations"]) == {
        "classification", "caption", "relation", "rec", "pope", "uniqueness"}

    # The same command again finds the finished run and only re-saves: weights unchanged.
    again = run_bench(*args)
    assert again.returncode == 0, again.stderr
    assert all((load_file(str(out / "model.safetensors"))[k] == v).all() for k, v in weights.items())
    # ... but not with a recipe whose stage-L heads differ from the saved ones: it says how to go on.
    without_word_head = list(args)
    without_word_head[args.index("--language-word-weight") + 1] = "0"
    other = run_bench(*without_word_head)
    assert other.returncode != 0 and "word head" in other.stderr and "delete" in other.stderr
    # A cell detail that does not exist is refused before any training.
    wrong = run_bench("train", "rgpt", "--out", str(tmp_path / "never"), "--language-cell-detail", "shape")
    message = " ".join(wrong.stderr.replace("│", " ").split())  # typer's box wraps lines
    assert wrong.returncode != 0 and "'shape': expected one of category, colour, all" in message
    assert not (tmp_path / "never").exists()
    wrong = run_bench("train", "rgpt", "--out", str(tmp_path / "never"), "--polish-mix", "captions=3")
    message = " ".join(wrong.stderr.replace("│", " ").split())
    assert wrong.returncode != 0 and "mix entry 'captions=3'" in message and not (tmp_path / "never").exists()
    wrong = run_bench("train", "rgpt", "--out", str(tmp_path / "never"), "--mix", "pope=4,rec")
    message = " ".join(wrong.stderr.replace("│", " ").split())
    assert wrong.returncode != 0 and "--mix" in message and "mix entry 'rec'" in message
    assert not (tmp_path / "never").exists()
    wrong = run_bench("train", "rgpt", "--out", str(tmp_path / "never"), "--polish-captions", "shortest")
    message = " ".join(wrong.stderr.replace("│", " ").split())
    assert wrong.returncode != 0 and "'shortest': expected one of all, longest" in message
    assert not (tmp_path / "never").exists()

    # The polish stage added to the finished run trains on from its weights (stages 0 to 2 are not
    # redone), on the bare model, with its own log and resume in polish/.
    polished = list(args)
    polished[args.index("--polish-steps") + 1] = "2"
    polished += ["--polish-lr", "0.001", "--polish-mix", "caption:refcocog=5,uniqueness=3",
                 "--polish-captions", "longest"]
    result = run_bench(*polished)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "log.json").read_text()) == log  # stages 1 and 2 untouched
    polish_log = json.loads((out / "polish" / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in polish_log] == [("polish", 1), ("polish", 2)]
    assert max(r["lr"] for r in polish_log) == 0.001
    assert not any(k.startswith(("model.", "heads.")) for k in load_file(str(out / "polish" / "resume" /
                                                                             "model.safetensors")))
    recipe = json.loads((out / "recipe.json").read_text())["recipe"]
    assert recipe["polish_steps"] == 2 and recipe["polish_mix"] == [["caption:refcocog", 5], ["uniqueness", 3]]
    assert recipe["polish_captions"] == "longest"
    polished_weights = load_file(str(out / "model.safetensors"))
    assert any(not (polished_weights[k] == v).all() for k, v in weights.items())
    # The polish stage trains refinement, connector and LLM; the tower stays the frozen stage-0 one.
    assert all((polished_weights[f"vision_tower.{k}"] == v).all() for k, v in tower.items())
    # Re-running the polished run resumes it: the checkpoint stays the polished one.
    assert run_bench(*polished).returncode == 0
    assert all((load_file(str(out / "model.safetensors"))[k] == v).all() for k, v in polished_weights.items())

    result = run_bench("run", "--model", "rgpt", "--model-args", f"pretrained={out}", "--task",
                       "pope-adversarial,coco-cls", "--data-root", str(small_suite), "--limit", "6",
                       "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_samples"] == {"pope-adversarial": 6, "coco-cls": 6}
    assert "ll_accuracy" in results["results"]["coco-cls"]  # the model scores continuations


def test_later_stages_may_draw_conversations_outside_the_stage_two_mix(small_suite: Path, tmp_path: Path) -> None:
    """The curriculum draws from beyond the stage-2 mix (the alignment needs its words too), and so
    does the polish stage (which trains the bare model: no words needed)."""
    from adapters.rgpt.train import Recipe, train_tiny_rgpt

    recipe = Recipe(vision_steps=1, vision_start_size=None, language_easy_steps=0, language_steps=1,
                    language_cycles=1, stage1_steps=1, curriculum=(("pope", 1),), stage2_steps=1, batch_size=2,
                    image_size=64, mix=(("classification", 2),), polish_steps=2,
                    polish_mix=(("caption:refcocog", 3), ("rec", 2)))
    out = train_tiny_rgpt(small_suite, tmp_path / "ckpt", recipe, progress=False)
    log = json.loads((out / "log.json").read_text())
    assert [r["stage"] for r in log] == ["stage1", "stage2-pope", "stage2"]
    assert [r["stage"] for r in json.loads((out / "polish" / "log.json").read_text())] == ["polish", "polish"]


def test_the_polish_stage_trains_what_stage_two_trains_at_its_own_rate() -> None:
    from adapters.rgpt.train import Recipe, polish_stage, stages

    recipe = Recipe(polish_steps=12, polish_lr=5e-4, warmup_steps=100)
    stage = polish_stage(recipe)
    assert (stage.name, stage.data, stage.steps, stage.lr, stage.warmup_steps, stage.weight_decay) == (
        "polish", "polish", 12, 5e-4, 6, 0.01)  # warm-up at most half the stage
    assert stage.trainable == stages(recipe)[-1].trainable == ("refinement.", "connector.", "llm.")
    assert [s.name for s in stages(recipe)] == ["stage1", "stage2"]  # not part of the paper's plan
