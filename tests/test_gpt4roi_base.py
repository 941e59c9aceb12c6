"""The committed start of the default tiny GPT4RoI recipe (``adapters/gpt4roi/checkpoints/tiny-base/``):
stage 0's tower and stage L's LLM and heads, with the run's tokenizer. A copy of it as ``--out``
makes ``bench train gpt4roi`` go straight to stages 1 and 2 (README, the GPT4RoI section)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from adapters.gpt4roi.adapter import EMBEDDED_TINY
from adapters.gpt4roi.train import Recipe

BASE = EMBEDDED_TINY.parent / "tiny-base"
pytestmark = pytest.mark.skipif(not (BASE / "language" / "llm.safetensors").is_file(),
                                reason="no committed tiny GPT4RoI base (adapters/gpt4roi/checkpoints/tiny-base/)")


def test_the_base_fits_the_default_recipe() -> None:
    from safetensors.torch import load_file, load_model

    from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
    from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM
    from adapters.gpt4roi.processing_gpt4roi import config_token_ids, load_tokenizer
    from bench.training.language import AuxiliaryHeads

    recipe = Recipe()
    tokenizer = load_tokenizer(BASE)
    config = GPT4RoIConfig.tiny(len(tokenizer), config_token_ids(tokenizer), image_size=recipe.image_size,
                                patch_size=recipe.patch_size)
    model = GPT4RoIForCausalLM(config)
    model.vision_tower.load_state_dict(load_file(str(BASE / "vision" / "tower.safetensors")))  # strict
    load_model(model.llm, str(BASE / "language" / "llm.safetensors"))  # strict
    heads = AuxiliaryHeads(config.text_config.hidden_size, vocab_size=len(tokenizer))
    heads.load_state_dict(load_file(str(BASE / "language" / "heads.safetensors")))
    saved = json.loads((BASE / "recipe.json").read_text())["recipe"]
    defaults = dataclasses.asdict(recipe)
    stage0_and_l = [k for k in defaults if k.startswith(("vision_", "language_", "image_", "patch_", "train_images",
                                                         "seed"))]
    assert {k: saved[k] for k in stage0_and_l} == {k: json.loads(json.dumps(defaults[k])) for k in stage0_and_l}


def test_a_copy_of_the_base_trains_on_from_stage_one(tmp_path: Path) -> None:
    from bench.synthetic import SuiteParams, generate_suite
    from tests.plugin_utils import run_bench

    suite = generate_suite(tmp_path / "suite", SuiteParams(n_train=4, n_val=2, n_test=1))
    out = tmp_path / "run"
    shutil.copytree(BASE, out)
    result = run_bench("train", "gpt4roi", "--out", str(out), "--data-root", str(suite), "--stage1-steps", "1",
                       "--stage2-steps", "1", "--polish-steps", "2", "--batch-size", "2",
                       "--least-squares-regions", "4", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [r["stage"] for r in json.loads((out / "log.json").read_text())] == ["stage1", "stage2"]
    assert [r["stage"] for r in json.loads((out / "polish" / "log.json").read_text())] == ["polish", "polish"]
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["vision_config"]["image_size"] == Recipe().image_size
