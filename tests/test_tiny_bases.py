"""The committed starts of the default tiny recipes (``adapters/{rgpt,gpt4roi}/checkpoints/tiny-base/``):
stage 0's tower and stage L's LLM and heads, with the run's tokenizer. A copy of one as ``--out``
makes ``bench train MODEL`` go straight to stages 1 and 2 (README: "Training the tiny RGPT" and the
GPT4RoI section)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest


def _base(model: str) -> Path:
    return importlib.import_module(f"adapters.{model}.adapter").EMBEDDED_TINY.parent / "tiny-base"


def _rgpt(tokenizer: Any, recipe: Any) -> Any:
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
    from adapters.rgpt.processing_rgpt import config_token_ids

    config = RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer))
    config.vision_config.image_size = recipe.image_size
    return RGPTForCausalLM(config)


def _gpt4roi(tokenizer: Any, recipe: Any) -> Any:
    from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
    from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM
    from adapters.gpt4roi.processing_gpt4roi import config_token_ids

    return GPT4RoIForCausalLM(GPT4RoIConfig.tiny(len(tokenizer), config_token_ids(tokenizer),
                                                 image_size=recipe.image_size, patch_size=recipe.patch_size))


# model -> (the default recipe's model at its input size, the extra training flags of the toy run)
MODELS = {"rgpt": (_rgpt, ()), "gpt4roi": (_gpt4roi, ("--least-squares-regions", "4"))}
with_base = pytest.mark.parametrize("model", [
    pytest.param(m, marks=pytest.mark.skipif(not (_base(m) / "language" / "llm.safetensors").is_file(),
                                             reason=f"no committed tiny {m} base ({_base(m)})"))
    for m in MODELS])


# Recipe options added after a base was trained, at the value that means "off" (what it ran).
ADDED_SINCE = {"vision_distractor_weight": 0.0}


@with_base
def test_the_base_fits_the_default_recipe(model: str) -> None:
    from safetensors.torch import load_file, load_model

    from bench.training.language import AuxiliaryHeads

    base = _base(model)
    recipe = importlib.import_module(f"adapters.{model}.train").Recipe()
    tokenizer = importlib.import_module(f"adapters.{model}.processing_{model}").load_tokenizer(base)
    built = MODELS[model][0](tokenizer, recipe)
    built.vision_tower.load_state_dict(load_file(str(base / "vision" / "tower.safetensors")))  # strict
    load_model(built.llm, str(base / "language" / "llm.safetensors"))  # strict
    heads = AuxiliaryHeads(built.config.text_config.hidden_size, vocab_size=len(tokenizer),
                           descriptions=bool(recipe.language_description_weight))
    heads.load_state_dict(load_file(str(base / "language" / "heads.safetensors")))
    saved = {**ADDED_SINCE, **json.loads((base / "recipe.json").read_text())["recipe"]}
    defaults = dataclasses.asdict(recipe)
    stage0_and_l = [k for k in defaults if k.startswith(("vision_", "language_", "image_", "patch_", "train_images",
                                                         "seed"))]
    assert {k: saved[k] for k in stage0_and_l} == {k: json.loads(json.dumps(defaults[k])) for k in stage0_and_l}


@with_base
def test_a_copy_of_the_base_trains_on_from_stage_one(model: str, tmp_path: Path) -> None:
    from bench.synthetic import SuiteParams, generate_suite
    from tests.plugin_utils import run_bench

    suite = generate_suite(tmp_path / "suite", SuiteParams(n_train=4, n_val=2, n_test=1))
    out = tmp_path / "run"
    shutil.copytree(_base(model), out)
    result = run_bench("train", model, "--out", str(out), "--data-root", str(suite), "--stage1-steps", "1",
                       "--stage2-steps", "1", "--polish-steps", "2", "--batch-size", "2", *MODELS[model][1],
                       "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [r["stage"] for r in json.loads((out / "log.json").read_text())] == ["stage1", "stage2"]
    assert [r["stage"] for r in json.loads((out / "polish" / "log.json").read_text())] == ["polish", "polish"]
    assert not (out / "vision" / "start").exists()  # stage 0 was not run again
    assert (out / "model.safetensors").is_file()
    recipe = importlib.import_module(f"adapters.{model}.train").Recipe()
    assert json.loads((out / "config.json").read_text())["vision_config"]["image_size"] == recipe.image_size
