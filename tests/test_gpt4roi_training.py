"""`bench train gpt4roi` end to end at toy length: it trains, resumes, saves, and the adapter runs the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.synthetic import SuiteParams, generate_suite
from tests.plugin_utils import run_bench


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("suite") / "s", SuiteParams(n_train=6, n_val=3, n_test=2))


@pytest.mark.slow
def test_train_then_evaluate_tiny_gpt4roi(small_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = ["train", "gpt4roi", "--out", str(out), "--data-root", str(small_suite), "--init-tower", "none",
            "--vision-steps", "2", "--language-steps", "2", "--stage1-steps", "2", "--curriculum",
            "classification=1", "--stage2-steps", "2", "--polish-steps", "2", "--stage1-lr", "3e-4",
            "--batch-size", "4", "--least-squares-regions", "8",
            "--mix", "classification=6,caption=6,rec=4,pope=4,uniqueness=4",
            "--image-size", "64", "--no-progress"]
    trained = run_bench(*args)
    assert trained.returncode == 0, trained.stderr
    log = json.loads((out / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in log] == [("stage1", 1), ("stage1", 2), ("stage2-classification", 1),
                                                      ("stage2", 1), ("stage2", 2)]
    polish_log = json.loads((out / "polish" / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in polish_log] == [("polish", 1), ("polish", 2)]
    recipe = json.loads((out / "recipe.json").read_text())["recipe"]
    assert recipe["init_llm"].endswith("tiny-base") and recipe["stage1_lr"] == 3e-4
    assert recipe["mix"] == [["classification", 6], ["caption", 6], ["rec", 4], ["pope", 4], ["uniqueness", 4]]
    weights = load_file(str(out / "model.safetensors"))
    tower = load_file(str(out / "vision" / "tower.safetensors"))
    assert all((weights[f"vision_tower.{k}"] == v).all() for k, v in tower.items())  # frozen after stage 0
    assert any(k.startswith("model.spi_module.roi_align.") for k in weights) and "lm_head.weight" in weights
    # Stage L ran (text only) and stages 1 and 2 trained through the alignment wrapper; the
    # checkpoint holds the model alone, with the LLM moved on from stage L's.
    language_log = json.loads((out / "language" / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in language_log] == [("language", 1), ("language", 2)]
    assert not any(k.startswith(("model.model.", "heads.")) for k in weights)
    llm = load_file(str(out / "language" / "llm.safetensors"))
    assert any(not (weights[k] == llm[k]).all() for k in llm if k.startswith("model.layers."))

    fitted = (out / "least_squares.json").stat().st_mtime_ns
    again = run_bench(*args)  # finds the finished run: weights unchanged
    assert again.returncode == 0, again.stderr
    assert all((load_file(str(out / "model.safetensors"))[k] == v).all() for k, v in weights.items())
    # Its resume point replaces every weight, so the least-squares fit is not redone.
    assert (out / "least_squares.json").stat().st_mtime_ns == fitted

    result = run_bench("run", "--model", "gpt4roi", "--model-args", f"pretrained={out},max_new_tokens=4",
                       "--task", "pope-adversarial,coco-cls", "--data-root", str(small_suite), "--limit", "4",
                       "--output", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_samples"] == {"pope-adversarial": 4, "coco-cls": 4}


def test_stage0_starts_from_another_checkpoints_tower(tmp_path: Path) -> None:
    """init_tower copies vision_tower.* from a checkpoint (the tiny RGPT's by default)."""
    from safetensors.torch import save_file

    from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
    from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM
    from adapters.gpt4roi.processing_gpt4roi import word_tokenizer_ids
    from adapters.gpt4roi.train import Recipe, _initial_tower

    config = GPT4RoIConfig.tiny(64, word_tokenizer_ids(), llm_hidden=32, llm_layers=1)
    source = GPT4RoIForCausalLM(config)
    torch.nn.init.normal_(source.vision_tower.embeddings.patch_embedding.weight)
    save_file({f"vision_tower.{k}": v.contiguous() for k, v in source.vision_tower.state_dict().items()}
              | {"connector.0.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    target = GPT4RoIForCausalLM(config)
    _initial_tower(target, Recipe(init_tower=str(tmp_path)))
    assert all(torch.equal(a, b) for a, b in zip(source.vision_tower.state_dict().values(),
                                                  target.vision_tower.state_dict().values(), strict=True))
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"init_tower=.*absent.*--init-tower none"):
        _initial_tower(target, Recipe(init_tower=str(tmp_path / "absent")))
    # A run directory after stage 0 (vision/tower.safetensors, bare keys) wins over its model.safetensors.
    (tmp_path / "vision").mkdir()
    again = GPT4RoIForCausalLM(config)
    torch.nn.init.normal_(again.vision_tower.embeddings.patch_embedding.weight)
    save_file({k: v.contiguous() for k, v in again.vision_tower.state_dict().items()},
              str(tmp_path / "vision" / "tower.safetensors"))
    _initial_tower(target, Recipe(init_tower=str(tmp_path)))
    assert all(torch.equal(a, b) for a, b in zip(again.vision_tower.state_dict().values(),
                                                  target.vision_tower.state_dict().values(), strict=True))
    (tmp_path / "vision" / "tower.safetensors").unlink()
    # A tower trained at another resolution (RGPT's finishes at 192 px; here 96 px into 128 px) loads
    # with its position table resized and everything else as it is.
    wide = GPT4RoIConfig.tiny(64, word_tokenizer_ids(), image_size=96, llm_hidden=32, llm_layers=1)
    larger = GPT4RoIForCausalLM(wide)
    torch.nn.init.normal_(larger.vision_tower.embeddings.patch_embedding.weight)
    save_file({f"vision_tower.{k}": v.contiguous() for k, v in larger.vision_tower.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    _initial_tower(target, Recipe(init_tower=str(tmp_path)))
    loaded = target.vision_tower.embeddings
    assert torch.equal(loaded.patch_embedding.weight, larger.vision_tower.embeddings.patch_embedding.weight)
    assert loaded.position_embedding.weight.shape[0] == 1 + target.config.patch_grid ** 2 != 1 + 12 * 12
    # A 12-px-patch tower (192 px, the same 16x16 grid) starts from the 8-px one with its patch
    # embedding resized (resize_patch_embedding) and the position table as it is.
    coarse = GPT4RoIForCausalLM(GPT4RoIConfig.tiny(64, word_tokenizer_ids(), image_size=192, patch_size=12,
                                                   llm_hidden=32, llm_layers=1))
    assert coarse.config.patch_grid == 16 and coarse.config.num_image_tokens == 256
    save_file({f"vision_tower.{k}": v.contiguous() for k, v in source.vision_tower.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    _initial_tower(coarse, Recipe(init_tower=str(tmp_path)))
    kernel = coarse.vision_tower.embeddings.patch_embedding.weight
    assert kernel.shape[-2:] == (12, 12)
    assert torch.equal(coarse.vision_tower.embeddings.position_embedding.weight,
                       source.vision_tower.embeddings.position_embedding.weight)
    patch = torch.randn(1, 3, 8, 8)
    upsampled = torch.nn.functional.interpolate(patch, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(torch.nn.functional.conv2d(upsampled, kernel),
                          torch.nn.functional.conv2d(patch, source.vision_tower.embeddings.patch_embedding.weight),
                          atol=1e-3)


def test_the_llm_starts_from_another_vocabularys_llm_row_by_word(tmp_path: Path) -> None:
    """init_llm_by_words: transformer weights copied, embedding and lm_head rows matched by token text,
    rows of words the source never saw left as initialised; another shape is refused."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from adapters.gpt4roi.processing_gpt4roi import build_word_tokenizer
    from adapters.rgpt.processing_rgpt import build_word_tokenizer as build_rgpt_tokenizer
    from bench.training.runs import init_llm_by_words

    source_tokenizer = build_rgpt_tokenizer(["the red ring", "is there a star"])
    tokenizer = build_word_tokenizer(["the blue ring", "is there a heart"])

    def llm(vocab: int, hidden: int = 16) -> LlamaForCausalLM:
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))

    torch.manual_seed(0)
    source = llm(len(source_tokenizer))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "llm.safetensors"))
    target = llm(len(tokenizer))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    matched = init_llm_by_words(target, tmp_path / "llm.safetensors", tokenizer, source_tokenizer)

    shared = sorted(set(tokenizer.get_vocab()) & set(source_tokenizer.get_vocab()))
    assert {"the", "ring", "is", "there", "a", "<s>", "</s>"} <= set(shared) and matched == len(shared)
    assert "blue" not in shared and "red" not in shared
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        for word in shared:
            row, source_row = tokenizer.get_vocab()[word], source_tokenizer.get_vocab()[word]
            assert torch.equal(target.state_dict()[key][row], source.state_dict()[key][source_row])
        blue = tokenizer.get_vocab()["blue"]
        assert torch.equal(target.state_dict()[key][blue], before[key][blue])
    assert torch.equal(target.model.layers[0].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight)

    with pytest.raises(ValueError, match="same LLaMA shape"):
        init_llm_by_words(llm(len(tokenizer), hidden=32), tmp_path / "llm.safetensors", tokenizer, source_tokenizer)


def test_an_init_llm_without_a_stage_l_llm_is_refused_naming_the_fix(tmp_path: Path) -> None:
    from adapters.gpt4roi.train import _initial_llm
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"language/llm.safetensors.*--init-llm none"):
        _initial_llm(None, None, tmp_path, None)


@pytest.mark.slow
def test_without_a_stage_l_the_alignment_borrows_the_init_llms_heads(small_suite: Path, tmp_path: Path) -> None:
    """Same seed, same data: stage 1's first loss with the borrowed heads is the answer loss plus the
    alignment terms, so it is larger than the loss of the same step without them (--no-borrow-heads)."""
    def first_loss(name: str, *extra: str) -> float:
        out = tmp_path / name
        trained = run_bench("train", "gpt4roi", "--out", str(out), "--data-root", str(small_suite), "--init-tower",
                            "none", "--vision-steps", "1", "--stage1-steps", "1", "--curriculum", "none",
                            "--stage2-steps", "1", "--polish-steps", "0", "--batch-size", "4", "--image-size", "64",
                            "--language-steps", "0", "--least-squares-regions", "8", "--no-progress",
                            "--language-description-weight", "0",  # RGPT's stage-L heads have no description head
                            *extra)
        assert trained.returncode == 0, trained.stderr
        log = json.loads((out / "log.json").read_text())
        assert [(r["stage"], r["step"]) for r in log] == [("stage1", 1), ("stage2", 1)]
        assert not (out / "language").exists()  # no stage L of its own
        return log[0]["loss"]

    raw, plain = first_loss("raw", "--no-least-squares-start"), first_loss("plain", "--no-borrow-heads")
    assert plain < 20 < raw  # the alignment of vision vectors far from any word mean dominates
    # The least-squares start of mm_projector and updims brings them near the word means at once.
    started = first_loss("started", "--least-squares-regions", "40")
    fits = json.loads((tmp_path / "started" / "least_squares.json").read_text())
    assert set(fits) == {"mm_projector", "updims"} and all(0 < v < 1 for v in fits.values())
    assert json.loads((tmp_path / "started" / "recipe.json").read_text())["recipe"]["least_squares_regions"] == 40
    assert plain < started < raw / 5 and not (tmp_path / "raw" / "least_squares.json").exists()


def test_the_heads_are_borrowed_row_by_word(tmp_path: Path) -> None:
    """borrow_heads_by_words: match and index heads copied, word-head rows matched by token text, a word
    the source lacks gets a zero row and the source's lowest bias; another set of heads is refused."""
    from safetensors.torch import save_model

    from adapters.gpt4roi.processing_gpt4roi import build_word_tokenizer
    from adapters.rgpt.processing_rgpt import build_word_tokenizer as build_rgpt_tokenizer
    from bench.errors import ConfigError
    from bench.training.language import AuxiliaryHeads
    from bench.training.runs import borrow_heads_by_words

    source_tokenizer = build_rgpt_tokenizer(["the red ring", "is there a star"])
    tokenizer = build_word_tokenizer(["the blue ring", "is there a heart"])
    torch.manual_seed(0)
    source = AuxiliaryHeads(16, vocab_size=len(source_tokenizer))
    save_model(source, str(tmp_path / "heads.safetensors"))
    heads = AuxiliaryHeads(16, vocab_size=len(tokenizer))
    matched = borrow_heads_by_words(heads, tmp_path / "heads.safetensors", tokenizer, source_tokenizer)

    shared = set(tokenizer.get_vocab()) & set(source_tokenizer.get_vocab())
    assert matched == len(shared) and {"ring", "there"} <= shared and "blue" not in shared
    assert torch.equal(heads.match_head.weight, source.match_head.weight)
    assert torch.equal(heads.index_head.bias, source.index_head.bias)
    ring, source_ring = tokenizer.get_vocab()["ring"], source_tokenizer.get_vocab()["ring"]
    assert torch.equal(heads.word_head.weight[ring], source.word_head.weight[source_ring])
    assert heads.word_head.bias[ring] == source.word_head.bias[source_ring]
    blue = tokenizer.get_vocab()["blue"]
    assert not heads.word_head.weight[blue].any() and heads.word_head.bias[blue] == source.word_head.bias.min()

    with pytest.raises(ConfigError, match=r"heads \['index_head', 'match_head', 'word_head'\].*--language-word-weight"):
        borrow_heads_by_words(AuxiliaryHeads(16), tmp_path / "heads.safetensors", tokenizer, source_tokenizer)
    with pytest.raises(ConfigError, match="another hidden size.*--init-llm"):
        borrow_heads_by_words(AuxiliaryHeads(8, vocab_size=len(tokenizer)), tmp_path / "heads.safetensors",
                              tokenizer, source_tokenizer)


def test_borrowing_heads_that_are_not_there_is_refused_naming_the_fix(tmp_path: Path) -> None:
    from adapters.gpt4roi.train import Recipe, _borrowed_heads
    from bench.errors import ConfigError

    assert _borrowed_heads(Recipe(borrow_heads=False), None, None) is None
    assert _borrowed_heads(Recipe(init_llm=None), None, None) is None
    assert _borrowed_heads(Recipe(), None, None) is not None  # the committed tiny-base keeps its heads
    with pytest.raises(ConfigError, match=r"language/heads.safetensors.*--no-borrow-heads"):
        _borrowed_heads(Recipe(init_llm=str(tmp_path)), None, None)


def test_a_patch_side_that_does_not_divide_the_image_is_refused_naming_the_fix(tmp_path: Path) -> None:
    from adapters.gpt4roi.train import Recipe, train_tiny_gpt4roi
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"image_size 100 is not a multiple of patch_size 12.*--patch-size 12"):
        train_tiny_gpt4roi(tmp_path, tmp_path / "out", Recipe(image_size=100, patch_size=12))
