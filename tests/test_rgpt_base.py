"""The committed start of the default tiny RGPT recipe (``adapters/rgpt/checkpoints/tiny-base/``):
stage 0's tower and stage L's LLM and heads, with the run's tokenizer. A copy of it as ``--out``
makes ``bench train rgpt`` go straight to stages 1 and 2 (README, "Training the tiny RGPT")."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from adapters.rgpt.adapter import EMBEDDED_TINY

BASE = EMBEDDED_TINY.parent / "tiny-base"
pytestmark = pytest.mark.skipif(not (BASE / "language" / "llm.safetensors").is_file(),
                                reason="no committed tiny RGPT base (adapters/rgpt/checkpoints/tiny-base/)")


def test_the_base_fits_the_default_recipe() -> None:
    from safetensors.torch import load_file, load_model

    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
    from adapters.rgpt.processing_rgpt import config_token_ids, load_tokenizer
    from adapters.rgpt.train import Recipe
    from bench.training.language import AuxiliaryHeads

    recipe = Recipe()
    tokenizer = load_tokenizer(BASE)
    config = RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer))
    config.vision_config.image_size = recipe.image_size
    model = RGPTForCausalLM(config)
    model.vision_tower.load_state_dict(load_file(str(BASE / "vision" / "tower.safetensors")))  # strict
    load_model(model.llm, str(BASE / "language" / "llm.safetensors"))  # strict
    heads = AuxiliaryHeads(config.text_config.hidden_size, vocab_size=len(tokenizer))
    heads.load_state_dict(load_file(str(BASE / "language" / "heads.safetensors")))
    saved = json.loads((BASE / "recipe.json").read_text())["recipe"]
    defaults = dataclasses.asdict(recipe)
    stage0_and_l = [k for k in defaults if k.startswith(("vision_", "language_", "image_", "train_images", "seed"))]
    assert {k: saved[k] for k in stage0_and_l} == {k: json.loads(json.dumps(defaults[k])) for k in stage0_and_l}


def test_a_copy_of_the_base_trains_on_from_stage_one(tmp_path: Path) -> None:
    from bench.synthetic import SuiteParams, generate_suite
    from tests.plugin_utils import run_bench

    suite = generate_suite(tmp_path / "suite", SuiteParams(n_train=4, n_val=2, n_test=1))
    out = tmp_path / "run"
    shutil.copytree(BASE, out)
    result = run_bench("train", "rgpt", "--out", str(out), "--data-root", str(suite), "--stage1-steps", "1",
                       "--stage2-steps", "1", "--polish-steps", "2", "--batch-size", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [r["stage"] for r in json.loads((out / "log.json").read_text())] == ["stage1", "stage2"]
    assert [r["stage"] for r in json.loads((out / "polish" / "log.json").read_text())] == ["polish", "polish"]
    assert not (out / "vision" / "start").exists()  # stage 0 was not run again
    assert (out / "model.safetensors").is_file()
