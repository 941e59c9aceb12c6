"""Stages 1 and 2 after stage L: the vision tokens are taught to say what stage L's words said.

Why: stage L (:mod:`bench.training.language`) trains the tiny LLM on conversations whose
vision tokens are word means (a region token: the mean embedding of ``medium red ring``).
The LLM then answers POPE and REC from those vectors, but stage 1 only asks the connector
for vectors that make the answers likely, and through a frozen LLM that signal is weak:
the connector's outputs drifted far from the word means (after 600 steps their squared
distance was 50 times the means' squared norm), and the transfer was
fragile (two runs differing only in the stage-L checkpoint: REC 48.0 and 17.2). The paper
models have no such gap to cross: at full size, stage 1's captions align the connector with
Vicuna's word embeddings.

What: three terms are added to the answer loss of stages 1 and 2 (the model's own forward):

* **alignment**: each vision vector (every image token and every region token) is pulled
  toward the word mean stage L put in its place (:func:`alignment_loss`, a squared error
  relative to the targets' mean squared norm, so its scale does not depend on the
  embeddings'); the targets come from the LLM's current input embeddings, without gradient;
* **word contrast**: each word of each vision vector must beat every other vocabulary word
  in its place (:func:`word_contrast_loss`), so that colour counts as much as category.
  Both terms are a mean over the image tokens plus a mean over the region tokens, the image
  tokens' at ``image_share`` (their category-only words in one mean with the regions' took
  the regions' colour away: README);
* **the auxiliary heads** of stage L, frozen, on the hidden states of the vision run: the
  hops the LLM learned on words (does this candidate show the described object, which
  number is it; is the asked category in the image) and, with a word head, each word of
  each region, with a description head, each region's shortest description, keep being
  asked for on vision tokens.

Measured on the tiny RGPT (stage 1 alone, 600 steps, the step-4000 stage-L LLM, 150 val
conversations per kind): without these terms classification 83%, POPE 51%, REC 23%; with
them 77%, 76% and 37%. After the full stage 2, on the evaluation split: POPE-adversarial
F1 54.2 -> 82.8, REC 17.2 -> 61.1 (README, runs B and C).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.training.language import AuxiliaryHeads, Verbal, VerbalCollate, mean_word_embeddings


def alignment_loss(vectors: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance of ``vectors`` [N, D] to ``targets`` [N, D], divided by ``scale``,
    by default the mean squared norm of the targets (so 1.0 is what an all-zero output scores;
    0 is a perfect match)."""
    if scale is None:
        scale = targets.pow(2).sum(-1).mean()
    scale = scale.clamp(min=1e-12)
    return (vectors - targets).pow(2).sum(-1).mean() / scale


def word_contrast_loss(vectors: torch.Tensor, word_ids: torch.Tensor, embedding: nn.Embedding,
                       temperature: float) -> torch.Tensor:
    """Each word of each vision vector must beat every other word of the vocabulary in its place.

    ``vectors`` [N, D], ``word_ids`` [N, W] (-1: none). For a vector with words ``w_1..w_n``
    (target: their mean) and each of its words ``w``, the candidates are the word means with
    ``w`` replaced by each vocabulary word ``u`` (``u = w``: the target itself); the logits
    are the negative squared distances to them, divided by ``temperature`` times the
    targets' mean squared norm; softmax cross-entropy toward ``w``, averaged over the
    (vector, word) pairs. Vectors without words are left to :func:`alignment_loss`.

    Why, beside :func:`alignment_loss`: a squared error weighs each word by how far its
    embedding is from its neighbours', and the tiny LLM's colour words sit ten times closer
    together than its size or category words (relative distance 0.05 against 0.43 and
    0.51), so the pull all but ignores colour, and stage 1 lost it: a linear probe of the
    trained region tokens reads colour for 30-35% of val objects (95% at initialisation),
    category for 97%. Swapping one word at a time asks for every word, colour included,
    with the same force; a contrast over the batch's own word sets did not (its negatives
    rarely differ in colour alone: after stage 1 the probe still read 37%)."""
    present = word_ids >= 0
    rows = present.any(-1)
    if not rows.any():
        return vectors.sum() * 0.0
    ids, present = word_ids[rows], present[rows]
    counts = present.sum(-1).to(vectors.dtype)
    row, slot = present.nonzero(as_tuple=True)
    word, n = ids[row, slot], counts[row, None]
    with torch.no_grad():
        table = embedding.weight.detach().to(vectors.dtype)  # [V, D]
        targets = mean_word_embeddings(embedding, ids).to(vectors.dtype)
        scale = targets.pow(2).sum(-1).mean().clamp(min=1e-12)
        norms = table.pow(2).sum(-1)
        # ||E_w - E_u||^2 for each (vector, word) pair's w and every u: [P, V], never [V, V]
        swap_cost = (norms[word, None] + norms[None, :] - 2 * table[word] @ table.T).clamp(min=0)
    residual = vectors[rows] - targets
    dots = residual @ table.T  # [M, V]
    # ||residual - (E_u - E_w) / n||^2 - ||residual||^2, for every u (0 at u = w)
    distance = -2 / n * (dots[row] - dots[row, word, None]) + swap_cost / n**2
    return F.cross_entropy(-distance / (temperature * scale), word)


class WithVerbalTargets:
    """A model's training collate plus what :class:`AlignedLM` needs: the word ids of every
    vision token (``cell_words``, ``region_words``) and the auxiliary targets, from a
    :class:`bench.training.language.VerbalCollate` over the same conversations (checked to
    tokenize them identically)."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], verbal: VerbalCollate) -> None:
        self.collate = collate
        self.verbal = verbal

    def __call__(self, conversations: list[Any]) -> dict[str, Any]:
        batch = self.collate(conversations)
        words = self.verbal(conversations)
        if not torch.equal(batch["input_ids"], words["input_ids"]):
            raise ValueError("the model's collate and the verbal collate tokenize differently")
        batch.update((key, words[key]) for key in ("cell_words", "region_words", "aux_positions", "aux_match",
                                                   "aux_index", "region_descriptions"))
        return batch


class AlignedLM(nn.Module):
    """A :class:`adapters.region_lm.RegionCausalLM` (``model.``) trained with the terms of
    this module on top of its answer loss; ``heads`` (``heads.``) come from stage L and are
    meant to stay frozen (leave ``heads.`` out of the stages' trainable prefixes).

    ``forward`` takes the model's own batch (ids, mask, labels and its vision arguments,
    passed to ``model.vision_embeds``) plus :class:`WithVerbalTargets`' keys; the output
    carries ``alignment`` (the unweighted term) for logging.
    """

    def __init__(self, model: nn.Module, heads: AuxiliaryHeads, align_weight: float = 1.0,
                 aux_weight: float = 1.0, contrast_weight: float = 0.0, contrast_temperature: float = 0.01,
                 image_share: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.align_weight, self.aux_weight = align_weight, aux_weight
        self.contrast_weight, self.contrast_temperature = contrast_weight, contrast_temperature
        self.image_share = image_share

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                cell_words: torch.Tensor, region_words: Sequence[torch.Tensor], aux_positions: torch.Tensor,
                aux_match: torch.Tensor, aux_index: torch.Tensor, region_descriptions: torch.Tensor | None = None,
                **vision: Any) -> Any:
        from adapters.region_lm import positions_from_mask

        image, regions = self.model.vision_embeds(**vision)
        embeds = self.model.embed_inputs(input_ids, image, regions)
        out = self.model.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                             position_ids=positions_from_mask(attention_mask), labels=labels,
                             output_hidden_states=self.aux_weight > 0)
        embedding = self.model.llm.get_input_embeddings()
        groups = []  # (vectors, their word ids, share): image tokens and region tokens, each a mean
        if image is not None:
            groups.append((image.flatten(0, 1), cell_words.flatten(0, 1), self.image_share))
        if regions and sum(len(r) for r in regions):  # a batch of POPE questions has none
            groups.append((torch.cat(list(regions)), torch.cat(list(region_words)), 1.0))
        with torch.no_grad():
            targets = [mean_word_embeddings(embedding, words) for _, words, _ in groups]
            scale = torch.cat(targets).pow(2).sum(-1).mean()  # one scale for both groups
        out.alignment = sum(share * alignment_loss(vectors, target, scale)
                            for (vectors, _, share), target in zip(groups, targets, strict=True))
        if out.loss is not None:
            if self.align_weight:
                out.loss = out.loss + self.align_weight * out.alignment
            if self.contrast_weight:
                out.loss = out.loss + self.contrast_weight * sum(
                    share * word_contrast_loss(vectors, words, embedding, self.contrast_temperature)
                    for vectors, words, share in groups)
            if self.aux_weight and len(aux_positions):
                out.loss = out.loss + self.aux_weight * self.heads.loss(out.hidden_states, aux_positions,
                                                                        aux_match, aux_index)
            if self.aux_weight and self.heads.word_head is not None:
                out.loss = out.loss + self.aux_weight * self.heads.word_loss(
                    out.hidden_states, input_ids, self.model.config.region_token_id, region_words)
            if self.aux_weight and self.heads.description_head is not None and region_descriptions is not None:
                out.loss = out.loss + self.aux_weight * self.heads.description_loss(
                    out.hidden_states, input_ids, self.model.config.region_token_id, region_descriptions)
        return out


def verbal_training(model: nn.Module, heads: AuxiliaryHeads, collate: Callable[[list[Any]], dict[str, Any]],
                    processor: Any, verbals: dict[int, Verbal], num_image_tokens: int, align_weight: float,
                    aux_weight: float, contrast_weight: float = 0.0, contrast_temperature: float = 0.01,
                    image_share: float = 1.0) -> tuple[AlignedLM, WithVerbalTargets]:
    """The wrapped model and collate for stages 1 and 2 (``verbals``: from
    :func:`bench.training.language.verbalize_all` over the training conversations)."""
    heads.requires_grad_(False)
    return (AlignedLM(model, heads, align_weight, aux_weight, contrast_weight, contrast_temperature, image_share),
            WithVerbalTargets(collate, VerbalCollate(processor, verbals, num_image_tokens)))


@torch.no_grad()
def least_squares_start(linear: nn.Linear, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        ridge: float = 1e-3) -> float:
    """Set ``linear`` (weight and bias) to the ridge least-squares map from the inputs to the targets
    of ``pairs`` ([N, in] and [N, out] chunks, accumulated in float64); returns what
    :func:`alignment_loss` scores the fitted map on them (1.0: no better than an all-zero output).

    Why: with a stage L to align to, stage 1's alignment term asks a linear projector (GPT4RoI's
    ``mm_projector``) for a linear regression, which has a closed form. Adam does not find it in
    stage 1's steps: on the tiny GPT4RoI the tower's features are ill-conditioned, and after 600
    steps at 1e-3 the image tokens scored 9.6 where the least-squares map scores 0.46 on
    held-out images (docs/gpt4roi-training-log.md, run G5). ``ridge`` is relative to the mean
    diagonal of the inputs' Gram matrix, so it does not depend on their scale."""
    gram = cross = None
    target_sq, count = 0.0, 0
    for inputs, targets in pairs:
        design = torch.cat([inputs.double(), inputs.new_ones(len(inputs), 1).double()], 1)
        targets = targets.double()
        gram = design.T @ design if gram is None else gram + design.T @ design
        cross = design.T @ targets if cross is None else cross + design.T @ targets
        target_sq += targets.pow(2).sum().item()
        count += len(targets)
    if gram is None or not count:
        raise ValueError("least_squares_start: no (inputs, targets) pairs")
    regulariser = ridge * gram.diagonal()[:-1].mean() * torch.eye(len(gram), dtype=gram.dtype)
    regulariser[-1, -1] = 0  # the bias is not shrunk
    solution = torch.linalg.solve(gram + regulariser, cross)  # [in + 1, out]
    linear.weight.copy_(solution[:-1].T.to(linear.weight.dtype))
    linear.bias.copy_(solution[-1].to(linear.bias.dtype))
    # sum ||Y - A W||^2 = sum ||Y||^2 - 2 tr(W^T A^T Y) + tr(W^T A^T A W)
    residual = target_sq - 2 * (solution * cross).sum().item() + (solution * (gram @ solution)).sum().item()
    return max(residual, 0.0) / max(target_sq, 1e-12)
