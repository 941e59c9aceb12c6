"""Stages 1 and 2 after stage L (bench.training.alignment): the extra terms, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.training.alignment import (
    AlignedLM,
    WithVerbalTargets,
    alignment_loss,
    verbal_training,
    word_contrast_loss,
)
from bench.training.language import AuxiliaryHeads, mean_word_embeddings


def test_alignment_loss_by_hand() -> None:
    vectors = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # squared errors 1 and 4 (mean 2.5) over the targets' mean squared norm (0 and 4: 2)
    assert alignment_loss(vectors, targets).item() == pytest.approx(1.25)
    assert alignment_loss(targets, targets).item() == 0.0
    assert alignment_loss(torch.zeros_like(targets), targets).item() == pytest.approx(1.0)
    assert alignment_loss(vectors, targets, scale=torch.tensor(5.0)).item() == pytest.approx(0.5)  # 2.5 / 5


def test_word_contrast_loss_by_hand() -> None:
    embedding = torch.nn.Embedding(3, 2)
    with torch.no_grad():
        embedding.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]))
    # vector 1: words {1} (target [2, 0]) at [2, 0]; vector 2: words {1, 2} (target [1, 1]) at
    # [1, 0]; vector 3: no words (left out). Targets' mean squared norm (4 + 2) / 2 = 3, so
    # temperature 1/3 makes the logits the negative squared distances to the swapped targets:
    # vector 1, word 1 -> u = 0, 1, 2: targets [0, 0], [2, 0], [0, 2]: distances 4, 0, 8
    # vector 2, word 1 -> targets [0, 1], [1, 1], [0, 2]: 2, 1, 5 (own: u = 1)
    # vector 2, word 2 -> targets [1, 0], [2, 0], [1, 1]: 0, 1, 1 (own: u = 2)
    words = torch.tensor([[1, -1], [1, 2], [-1, -1]])
    vectors = torch.tensor([[2.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    expected = (math.log(1 + math.exp(-4) + math.exp(-8))
                + 1 + math.log(math.exp(-2) + math.exp(-1) + math.exp(-5))
                + 1 + math.log(1 + 2 * math.exp(-1))) / 3
    assert word_contrast_loss(vectors, words, embedding, 1 / 3).item() == pytest.approx(expected, rel=1e-5)
    # The gradient reaches the vectors only (the word table is the LLM's, read as targets).
    vectors.requires_grad_(True)
    word_contrast_loss(vectors, words, embedding, 1 / 3).backward()
    assert vectors.grad[1].abs().sum() > 0 and vectors.grad[2].abs().sum() == 0
    assert embedding.weight.grad is None


def _model_and_batch() -> tuple[torch.nn.Module, dict, dict]:
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

    torch.manual_seed(0)
    config = RGPTConfig.tiny(vocab_size=20, image_token_id=10, region_token_id=11, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    config.vision_config.image_size = 32
    model = RGPTForCausalLM(config)
    n_image = config.num_image_tokens
    ids = torch.tensor([[1] + [10] * n_image + [11, 3, 11, 4]])
    masks = torch.zeros(2, 32, 32)
    masks[0, :16, :16] = 1
    masks[1, 8:, 8:] = 1
    vision = {"pixel_values": torch.rand(1, 3, 32, 32), "region_masks": [masks]}
    cells = torch.full((1, n_image, 8), -1)
    cells[0, 0, :2] = torch.tensor([5, 6])
    words = {"cell_words": cells, "region_words": [torch.tensor([[7] + [-1] * 7, [-1] * 8])],
             "aux_positions": torch.tensor([[0, 1 + n_image], [0, 3 + n_image]]),
             "aux_match": torch.tensor([1.0, 0.0]), "aux_index": torch.tensor([0, 1]),
             "region_descriptions": torch.tensor([2, -100])}
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, **vision}, words


def test_aligned_lm_adds_the_alignment_and_the_auxiliary_terms_to_the_model_loss() -> None:
    model, batch, words = _model_and_batch()
    heads = AuxiliaryHeads(model.config.text_config.hidden_size, layer=1)
    plain = AlignedLM(model, heads, align_weight=0.0, aux_weight=0.0)(**batch, **words)
    reference = model(**batch)
    assert torch.allclose(plain.loss, reference.loss, atol=1e-6)

    image, regions = model.vision_embeds(pixel_values=batch["pixel_values"], region_masks=batch["region_masks"])
    embedding = model.llm.get_input_embeddings()
    image_targets = mean_word_embeddings(embedding, words["cell_words"][0])
    region_targets = mean_word_embeddings(embedding, words["region_words"][0])
    # one scale for both groups: the mean squared norm of all targets
    scale = torch.cat([image_targets, region_targets]).pow(2).sum(-1).mean()
    image_align = (image[0] - image_targets).pow(2).sum(-1).mean() / scale
    region_align = (regions[0] - region_targets).pow(2).sum(-1).mean() / scale
    expected_align = 0.25 * image_align + region_align  # each group a mean; image tokens at their share
    out = AlignedLM(model, heads, align_weight=0.5, aux_weight=2.0, image_share=0.25)(**batch, **words)
    expected_aux = heads.loss(out.hidden_states, words["aux_positions"], words["aux_match"], words["aux_index"])
    assert out.alignment.item() == pytest.approx(expected_align.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((reference.loss + 0.5 * expected_align + 2.0 * expected_aux).item(),
                                            rel=1e-5)

    expected_contrast = (0.25 * word_contrast_loss(image[0], words["cell_words"][0], embedding, 0.1)
                         + word_contrast_loss(regions[0], words["region_words"][0], embedding, 0.1))
    contrasted = AlignedLM(model, heads, align_weight=0.5, aux_weight=2.0, contrast_weight=3.0,
                           contrast_temperature=0.1, image_share=0.25)(**batch, **words)
    assert contrasted.loss.item() == pytest.approx(
        (out.loss + 3.0 * expected_contrast).item(), rel=1e-5)


def test_aligned_lm_asks_the_frozen_word_head_at_the_region_tokens_with_the_auxiliary_weight() -> None:
    from bench.training.language import region_word_loss

    model, batch, words = _model_and_batch()
    plain_heads = AuxiliaryHeads(model.config.text_config.hidden_size, layer=1)
    word_heads = AuxiliaryHeads(model.config.text_config.hidden_size, layer=1, vocab_size=20)
    word_heads.load_state_dict(plain_heads.state_dict(), strict=False)  # same match and index heads
    without = AlignedLM(model, plain_heads, align_weight=0.0, aux_weight=2.0)(**batch, **words)
    out = AlignedLM(model, word_heads, align_weight=0.0, aux_weight=2.0)(**batch, **words)
    n_image = model.config.num_image_tokens
    hidden = out.hidden_states[1][0, [1 + n_image, 3 + n_image]]  # the two region tokens
    expected = region_word_loss(word_heads.word_head(hidden), words["region_words"][0])
    assert expected.item() > 0  # the first region has a word (7); the second, none, is left out
    assert out.loss.item() == pytest.approx((without.loss + 2.0 * expected).item(), rel=1e-5)


def test_aligned_lm_asks_the_frozen_description_head_at_the_region_tokens_with_the_auxiliary_weight() -> None:
    model, batch, words = _model_and_batch()
    plain_heads = AuxiliaryHeads(model.config.text_config.hidden_size, layer=1)
    described_heads = AuxiliaryHeads(model.config.text_config.hidden_size, layer=1, descriptions=True)
    described_heads.load_state_dict(plain_heads.state_dict(), strict=False)
    without = AlignedLM(model, plain_heads, align_weight=0.0, aux_weight=2.0)(**batch, **words)
    out = AlignedLM(model, described_heads, align_weight=0.0, aux_weight=2.0)(**batch, **words)
    n_image = model.config.num_image_tokens
    first_region = out.hidden_states[1][0, 1 + n_image]  # the second region's target is -100: left out
    expected = -torch.log_softmax(described_heads.description_head(first_region), -1)[2]
    assert out.loss.item() == pytest.approx((without.loss + 2.0 * expected).item(), rel=1e-5)


def test_a_batch_without_regions_aligns_its_image_tokens_only() -> None:
    model, batch, words = _model_and_batch()
    n_image = model.config.num_image_tokens
    batch = {**batch, "input_ids": batch["input_ids"][:, :1 + n_image], "region_masks": [torch.zeros(0, 32, 32)]}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = batch["input_ids"]
    words = {**words, "region_words": [torch.zeros(0, 8, dtype=torch.long)],
             "aux_positions": torch.zeros(0, 2, dtype=torch.long), "aux_match": torch.zeros(0),
             "aux_index": torch.zeros(0, dtype=torch.long)}
    out = AlignedLM(model, AuxiliaryHeads(model.config.text_config.hidden_size), contrast_weight=1.0,
                    image_share=0.5)(**batch, **words)
    image, _ = model.vision_embeds(pixel_values=batch["pixel_values"])
    targets = mean_word_embeddings(model.llm.get_input_embeddings(), words["cell_words"][0])
    assert out.alignment.item() == pytest.approx(0.5 * alignment_loss(image[0], targets).item(), rel=1e-5)
    assert torch.isfinite(out.loss)


def test_the_alignment_term_trains_the_vision_side_not_the_word_table() -> None:
    model, batch, words = _model_and_batch()
    out = AlignedLM(model, AuxiliaryHeads(model.config.text_config.hidden_size), aux_weight=0.0)(
        **{**batch, "labels": None}, **words)
    out.alignment.backward()
    assert model.connector[0].weight.grad is not None and model.connector[0].weight.grad.abs().sum() > 0
    assert model.llm.get_input_embeddings().weight.grad is None  # targets carry no gradient


def test_verbal_training_freezes_the_heads_and_checks_the_two_tokenizations_agree() -> None:
    model, batch, words = _model_and_batch()
    heads = AuxiliaryHeads(model.config.text_config.hidden_size)

    class _Verbal:
        def __call__(self, conversations):
            ids = batch["input_ids"] if conversations == ["same"] else batch["input_ids"][:, :-1]
            return {"input_ids": ids, **words}

    wrapped, collate = verbal_training(model, heads, lambda c: dict(batch), object(), {}, 16, 1.0, 1.0)
    assert not any(p.requires_grad for p in wrapped.heads.parameters())
    collate = WithVerbalTargets(lambda c: dict(batch), _Verbal())
    merged = collate(["same"])
    assert merged["cell_words"] is words["cell_words"] and "region_masks" in merged
    with pytest.raises(ValueError, match="tokenize differently"):
        collate(["other"])


def test_least_squares_start_recovers_a_linear_map_and_reports_its_error() -> None:
    """Targets made by a known affine map: fitted exactly (error ~0); with noise the returned error is
    alignment_loss of the fitted map, and the ridge shrinks the weights but not the bias."""
    from bench.training.alignment import alignment_loss, least_squares_start

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(600, 5, generator=generator) * torch.tensor([100.0, 1.0, 0.01, 3.0, 1.0])  # ill-conditioned
    weight, bias = torch.randn(3, 5, generator=generator), torch.randn(3, generator=generator)
    targets = inputs @ weight.T + bias
    linear = nn.Linear(5, 3)
    error = least_squares_start(linear, [(inputs[:300], targets[:300]), (inputs[300:], targets[300:])], ridge=0.0)
    assert torch.allclose(linear.weight, weight, atol=1e-3) and torch.allclose(linear.bias, bias, atol=1e-3)
    assert error < 1e-8

    noisy = targets + torch.randn(600, 3, generator=generator)
    error = least_squares_start(linear, [(inputs, noisy)], ridge=0.0)
    with torch.no_grad():
        assert error == pytest.approx(alignment_loss(linear(inputs), noisy).item(), rel=1e-4)
    shrunk = nn.Linear(5, 3)
    least_squares_start(shrunk, [(inputs, targets)], ridge=100.0)
    assert shrunk.weight.norm() < 0.5 * weight.norm()
    assert torch.allclose(shrunk.bias, (targets - inputs @ shrunk.weight.T.detach()).mean(0), atol=1e-3)
    with pytest.raises(ValueError, match="no .inputs, targets. pairs"):
        least_squares_start(linear, [])
