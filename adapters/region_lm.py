"""What every region LLM in this repo shares: token substitution, forward, batched generation, scoring.

RGPT and GPT4RoI differ in how they turn an image and its regions into vectors;
from there on they are the same machine. A subclass provides

* ``llm``: a ``LlamaForCausalLM`` (or anything with its ``model`` / ``lm_head`` / ``config``
  and call signature), and ``config`` with ``image_token_id``, ``region_token_id``,
  ``eos_token_id`` and ``pad_token_id``;
* ``vision_embeds(*vision, **vision_kw)``: the image vectors [B, T, D] (or None) and each
  row's region vectors (a list of [n_i, D], or None) -- the vectors that stand in for the
  image and region tokens; :meth:`multimodal_embeds` substitutes them into the token
  embeddings (:meth:`embed_inputs`). Training code that adds terms on those vectors
  (:mod:`bench.training.alignment`) calls the two steps itself.

and inherits :meth:`forward` (training loss), :meth:`generate` (batched greedy decoding of
left-padded prompts with a KV cache), :meth:`continuation_logprobs` and
:meth:`score_continuations` (likelihood of candidate answers, the prompt prefilled once).
The ``*vision`` / ``**vision_kw`` arguments of those methods are passed through to
``vision_embeds`` unchanged, so each model keeps its own names (RGPT: pixel values,
region masks, refined maps; GPT4RoI: pixel values, boxes, encoded images).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast


class RegionCausalLM(nn.Module):
    """Base class: a causal LM whose input embeddings carry image and region vectors."""

    config: Any
    llm: Any

    def vision_embeds(self, *vision: Any, **vision_kw: Any) -> tuple[torch.Tensor | None,
                                                                     list[torch.Tensor] | None]:
        raise NotImplementedError

    def multimodal_embeds(self, input_ids: torch.Tensor, *vision: Any, **vision_kw: Any) -> torch.Tensor:
        """``inputs_embeds`` for a batch: the model's vision vectors substituted into the token embeddings."""
        image_embeds, region_embeds = self.vision_embeds(*vision, **vision_kw)
        return self.embed_inputs(input_ids.to(self.device), image_embeds, region_embeds)

    @property
    def device(self) -> torch.device:
        return self.llm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.lm_head.weight.dtype

    # ------------------------------------------------------------------ LLM input

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None,
                     region_embeds: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Token embeddings with the image-token positions <- image vectors (row by row, in order)
        and the k-th region-token position of each row <- that row's k-th region vector."""
        image_id, region_id = self.config.image_token_id, self.config.region_token_id
        is_image = input_ids == image_id
        is_region = input_ids == region_id
        safe_ids = input_ids.masked_fill(is_image | is_region, 0)
        embeds = self.llm.get_input_embeddings()(safe_ids)
        if is_image.any():
            if image_embeds is None:
                raise ValueError("input_ids contain image tokens but no image was given")
            counts = is_image.sum(1)
            if not bool((counts == image_embeds.shape[1]).all()):
                raise ValueError(f"each row needs exactly {image_embeds.shape[1]} image tokens, "
                                 f"got {counts.tolist()}")
            embeds = embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype))
        counts = is_region.sum(1).tolist()
        given = [0 if r is None else len(r) for r in (region_embeds or [None] * len(counts))]
        if counts != given:
            raise ValueError(f"region tokens per row {counts} do not match the regions given {given}")
        if sum(counts):
            assert region_embeds is not None
            values = torch.cat([r for r in region_embeds if len(r)]).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_region[..., None], values)
        return embeds

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *vision: Any,
                labels: torch.Tensor | None = None, **vision_kw: Any) -> CausalLMOutputWithPast:
        """Logits for every position; with ``labels`` (-100 outside the answers) also the mean
        next-token cross-entropy over the labelled tokens."""
        embeds = self.multimodal_embeds(input_ids, *vision, **vision_kw)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                        position_ids=positions_from_mask(attention_mask),
                        labels=None if labels is None else labels.to(self.device))

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *vision: Any,
                 max_new_tokens: int = 32, eos_token_id: int | None = None,
                 stop_fn: Callable[[int, list[int]], bool] | None = None, **vision_kw: Any) -> list[list[int]]:
        """Batched greedy decoding of LEFT-padded prompts with a KV cache.

        Prefill runs on ``inputs_embeds``; each later step feeds only the new token ids and
        the cache. Position ids follow the attention mask so padding does not shift them,
        which makes a batch decode exactly like its rows decoded one by one. Returns the new
        token ids per row, without the EOS; ``stop_fn(row, ids)`` may end a row early.
        """
        if input_ids.shape[0] and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate expects LEFT padding (every row's last position is a real token)")
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        attention_mask = attention_mask.to(self.device)
        embeds = self.multimodal_embeds(input_ids, *vision, **vision_kw)
        positions = positions_from_mask(attention_mask)
        cache = DynamicCache(config=self.llm.config)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
        batch = input_ids.shape[0]
        generated: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        for step in range(max_new_tokens):
            next_ids = out.logits[:, -1].argmax(-1)
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                if token == eos:
                    done[row] = True
                    continue
                generated[row].append(token)
                if stop_fn is not None and stop_fn(row, generated[row]):
                    done[row] = True
            if all(done) or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
            positions = positions[:, -1:] + 1
            out = self.llm(input_ids=next_ids[:, None], attention_mask=attention_mask, position_ids=positions,
                           past_key_values=out.past_key_values, use_cache=True)
        return generated

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def continuation_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              target_mask: torch.Tensor, *vision: Any, **vision_kw: Any) -> torch.Tensor:
        """Per row, the summed log-probability of the tokens where ``target_mask`` is true,
        each given everything before it (one forward; logits only at the scored positions)."""
        attention_mask = attention_mask.to(self.device)
        target_mask = target_mask.to(self.device).bool()
        embeds = self.multimodal_embeds(input_ids, *vision, **vision_kw)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=positions_from_mask(attention_mask)).last_hidden_state
        predict = target_mask[:, 1:]  # position t-1 predicts token t
        states = hidden[:, :-1][predict]
        targets = input_ids.to(self.device)[:, 1:][predict]
        logprobs = torch.log_softmax(self.llm.lm_head(states).float(), dim=-1)
        picked = logprobs.gather(-1, targets[:, None])[:, 0]
        rows = torch.arange(input_ids.shape[0], device=self.device)[:, None].expand_as(predict)[predict]
        return torch.zeros(input_ids.shape[0], device=self.device).index_add(0, rows, picked)

    @torch.no_grad()
    def score_continuations(self, prompt_ids: torch.Tensor, continuations: Sequence[Sequence[int]], *vision: Any,
                            batch_size: int = 8, **vision_kw: Any) -> list[float]:
        """Summed log-probability of each continuation of ONE prompt, the prompt run once.

        Same numbers as :meth:`continuation_logprobs` on prompt + continuation rows, but the
        prompt (with its image tokens) is prefilled once into a KV cache that every batch of
        continuations branches from: 80 COCO category names cost one prompt forward, not 80.
        ``prompt_ids`` [P] or [1, P]; the vision arguments describe that one image.
        """
        prompt_ids = prompt_ids.reshape(1, -1).to(self.device)
        embeds = self.multimodal_embeds(prompt_ids, *vision, **vision_kw)
        length = prompt_ids.shape[1]
        cache = DynamicCache(config=self.llm.config)
        out = self.llm(inputs_embeds=embeds, attention_mask=torch.ones_like(prompt_ids),
                       position_ids=torch.arange(length, device=self.device)[None], past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores: list[float] = []
        step = max(1, batch_size)
        for start in range(0, len(continuations), step):
            chunk = [list(c) for c in continuations[start:start + step]]
            width = max((len(c) for c in chunk), default=0) - 1
            if width <= 0:  # single-token (or empty) continuations: the prefill's logits suffice
                scores.extend(first[c[0]].item() if c else 0.0 for c in chunk)
                continue
            n = len(chunk)
            inputs = torch.full((n, width), self.config.pad_token_id, dtype=torch.long, device=self.device)
            targets = torch.zeros_like(inputs)
            valid = torch.zeros_like(inputs, dtype=torch.bool)
            for row, tokens in enumerate(chunk):
                k = max(len(tokens) - 1, 0)
                inputs[row, :k] = torch.as_tensor(tokens[:-1][:k], dtype=torch.long)
                targets[row, :k] = torch.as_tensor(tokens[1:], dtype=torch.long)
                valid[row, :k] = True
            branch = copy.deepcopy(cache)
            branch.batch_repeat_interleave(n)
            attention = torch.cat([torch.ones((n, length), dtype=torch.long, device=self.device),
                                   valid.long()], dim=1)
            positions = (length + torch.arange(width, device=self.device))[None].expand(n, -1)
            logits = self.llm(input_ids=inputs, attention_mask=attention, position_ids=positions,
                              past_key_values=branch, use_cache=True).logits
            picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
            rest = (picked * valid).sum(-1)
            scores.extend((first[c[0]] + rest[row]).item() if c else 0.0 for row, c in enumerate(chunk))
        return scores


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding (left or right): 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
