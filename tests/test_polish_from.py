"""`bench train {rgpt,gpt4roi} --polish-from CKPT`: the polish stage alone on a stage-2 checkpoint gives,
weight for weight, what the whole run with that polish stage gives (same data, seed and batches)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bench.synthetic import SuiteParams, generate_suite
from bench.training.runs import portable_path

POLISH = {"polish_steps": 3, "polish_mix": (("caption:refcocog", 4), ("uniqueness", 3)),
          "mix": (("classification", 4), ("pope", 2)), "stage1_steps": 1, "stage2_steps": 2, "batch_size": 2,
          "image_size": 64}


def _rgpt() -> tuple[Callable[..., Path], Any]:
    from adapters.rgpt.train import Recipe, train_tiny_rgpt

    return train_tiny_rgpt, Recipe(vision_steps=1, vision_start_size=None, language_easy_steps=0,
                                   language_steps=1, language_cycles=1, **POLISH)


def _gpt4roi() -> tuple[Callable[..., Path], Any]:
    from adapters.gpt4roi.train import Recipe, train_tiny_gpt4roi

    return train_tiny_gpt4roi, Recipe(init_tower=None, vision_steps=1, language_steps=1, least_squares_regions=8,
                                      **POLISH)


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("suite") / "s", SuiteParams(n_train=6, n_val=3, n_test=2))


@pytest.mark.slow
@pytest.mark.parametrize("toy", [_rgpt, _gpt4roi], ids=["rgpt", "gpt4roi"])
def test_polishing_a_checkpoint_gives_what_the_run_with_a_polish_stage_gives(
        toy: Callable[[], tuple[Callable[..., Path], Any]], small_suite: Path, tmp_path: Path) -> None:
    from bench.errors import ConfigError

    train, recipe = toy()
    whole = train(small_suite, tmp_path / "whole", recipe, progress=False)
    unpolished = train(small_suite, tmp_path / "stage2", dataclasses.replace(recipe, polish_steps=0), progress=False)
    polished = train(small_suite, tmp_path / "polished", recipe, progress=False, polish_from=unpolished)
    expected, got = load_file(str(whole / "model.safetensors")), load_file(str(polished / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not all(torch.equal(expected[k], v) for k, v in load_file(str(unpolished / "model.safetensors")).items())
    assert json.loads((polished / "recipe.json").read_text())["polish_from"] == portable_path(str(unpolished))
    assert not (polished / "vision").exists() and not (polished / "language").exists()  # stages 0 to 2 not run
    with pytest.raises(ConfigError, match="--polish-steps"):
        train(small_suite, tmp_path / "x", dataclasses.replace(recipe, polish_steps=0), progress=False,
              polish_from=unpolished)
    with pytest.raises(ConfigError, match="no config.json, model.safetensors, tokenizer.json there"):
        train(small_suite, tmp_path / "y", recipe, progress=False, polish_from=tmp_path / "whole" / "polish")
