"""RegionGPT (RGPT), top to bottom as in the paper.

    image --CLIP ViT (frozen)--> hidden_states[select_layer][:, 1:]    [B, g*g, C]   (g = 24 at 336 px)
          --reshape--> [B, C, g, g]
          --refinement: ConvT(k2,s2), LayerNorm2d, GELU, ConvT(k2,s2), GELU--> [B, C, 4g, 4g]
    (a) image tokens:  AdaptiveAvgPool2d(image_token_grid) -> flatten -> connector   [B, T, D]
    (b) region tokens: Mask Pooling, sum(feat * mask) / (mask.sum() + 1e-8) with each mask
                       resized bilinearly to 4g x 4g (soft, no threshold) -> connector  [n, D]
    LLM (Llama/Vicuna): inputs_embeds where the T ``<image>`` positions hold the image tokens and
                        the k-th ``<region>`` position holds the k-th region token.

The connector (Linear, GELU, Linear) is ONE module shared by image and region tokens.
The processor (:mod:`adapters.rgpt.processing_rgpt`) expands the single ``<image>``
placeholder of the prompt to ``T`` ``<image>`` ids, so ids, labels and attention
masks all have their final length before the model sees them.

Weights: :meth:`RGPTForCausalLM.save_pretrained` writes ``config.json`` and
``model.safetensors``; :meth:`RGPTForCausalLM.from_pretrained` reads them with
``safetensors`` only (never a pickle). The full-size model can take its CLIP
tower and LLM from local transformers directories and only the RGPT parts (and,
if present, a fine-tuned LLM) from the checkpoint.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, DynamicCache, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from adapters.rgpt.configuration_rgpt import RGPTConfig

WEIGHTS_NAME = "model.safetensors"
COMPONENTS = ("vision_tower", "refinement", "connector", "llm")


# --------------------------------------------------------------------------- building blocks


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a [B, C, H, W] map (SAM / SpatialRGPT style)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class RGPTRefinement(nn.Sequential):
    """Feature refinement: stride-2 deconvolutions, each 2x upsampling the patch grid.

    Two layers (the paper): ConvT, LayerNorm2d, GELU, ConvT, GELU -> 4x (24x24 -> 96x96).
    """

    def __init__(self, channels: int, layers: int = 2) -> None:
        modules: list[nn.Module] = []
        for index in range(layers):
            modules.append(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
            if index < layers - 1:
                modules.append(LayerNorm2d(channels, eps=1e-6))
            modules.append(nn.GELU())
        super().__init__(*modules)


class RGPTConnector(nn.Sequential):
    """The 2-layer MLP (Linear, GELU, Linear) shared by image tokens and region tokens."""

    def __init__(self, vision_hidden: int, text_hidden: int) -> None:
        super().__init__(nn.Linear(vision_hidden, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden))


def resize_masks(masks: torch.Tensor, side: int) -> torch.Tensor:
    """Masks [n, H, W] resized bilinearly (soft, no threshold) to the refined map's ``side`` x ``side``."""
    if masks.shape[-2:] == (side, side):
        return masks
    return F.interpolate(masks[:, None].float(), size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mask Pooling: the soft average of ``features`` [C, h, w] inside each of ``masks`` [n, H, W].

    Each mask is resized bilinearly to h x w (no threshold) and
    ``sum(feat * mask) / (mask.sum() + 1e-8)`` is taken per channel; returns [n, C].
    """
    if masks.numel() == 0:
        return features.new_zeros((0, features.shape[0]))
    masks = resize_masks(masks.to(device=features.device, dtype=torch.float32), features.shape[-1])
    flat = features.float().flatten(1)  # [C, h*w]
    weights = masks.flatten(1)  # [n, h*w]
    pooled = weights @ flat.T / (weights.sum(-1, keepdim=True) + 1e-8)
    return pooled.to(features.dtype)


def batched_mask_pool(features: torch.Tensor, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`mask_pool` for a batch: ``features`` [B, C, h, w], ``masks[i]`` [n_i, H, W] -> [n_i, C] each.

    One batched matmul over masks padded to the longest row. Same numbers as calling
    :func:`mask_pool` row by row, but its backward does not materialise a zero-filled copy
    of the whole refined batch per row (``features[i]``), which made that loop the slowest
    part of a tiny training step.
    """
    counts = [len(m) for m in masks]
    width = max(counts, default=0)
    batch, channels, side = features.shape[0], features.shape[1], features.shape[-1]
    if width == 0:
        return [features.new_zeros((0, channels)) for _ in masks]
    weights = torch.zeros((batch, width, side * side), device=features.device, dtype=torch.float32)
    for row, row_masks in enumerate(masks):
        if len(row_masks):
            weights[row, :len(row_masks)] = resize_masks(row_masks.to(features.device, torch.float32), side).flatten(1)
    flat = features.float().flatten(2).transpose(1, 2)  # [B, h*w, C]
    pooled = torch.bmm(weights, flat) / (weights.sum(-1, keepdim=True) + 1e-8)
    return [pooled[row, :n].to(features.dtype) for row, n in enumerate(counts)]


# --------------------------------------------------------------------------- the model


class RGPTForCausalLM(nn.Module):
    """RegionGPT. Build from an :class:`RGPTConfig` (random weights), or pass pre-loaded
    ``vision_tower`` / ``llm`` modules (e.g. ``CLIPVisionModel.from_pretrained(local_dir)``)."""

    def __init__(self, config: RGPTConfig, vision_tower: CLIPVisionModel | None = None,
                 llm: LlamaForCausalLM | None = None) -> None:
        super().__init__()
        self.config = config
        config.vision_config._attn_implementation = "sdpa"
        config.text_config._attn_implementation = "sdpa"
        self.vision_tower = vision_tower if vision_tower is not None else CLIPVisionModel(config.vision_config)
        self.vision_tower.requires_grad_(False)  # frozen in both training stages
        self.refinement = RGPTRefinement(config.vision_hidden_size, config.refinement_layers)
        self.image_pool = nn.AdaptiveAvgPool2d(config.image_token_grid)
        self.connector = RGPTConnector(config.vision_hidden_size, config.text_hidden_size)
        self.llm = llm if llm is not None else LlamaForCausalLM(config.text_config)

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.connector[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.connector[0].weight.dtype

    def components(self) -> dict[str, nn.Module]:
        """The four parts, for parameter counts and for choosing what to train."""
        return {name: getattr(self, name) for name in COMPONENTS}

    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """The paper's training stages; returns the trainable parameters.

        Stage 1 (pre-training): refinement + connector. Stage 2 (fine-tuning): refinement +
        connector + LLM. The CLIP tower stays frozen in both.
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.vision_tower.requires_grad_(False)
        self.refinement.requires_grad_(True)
        self.connector.requires_grad_(True)
        self.llm.requires_grad_(stage == 2)
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ vision side

    def vision_grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP -> selected hidden state without CLS -> patch grid: [B, C, g, g].

        The tower is frozen in both stages, so training code may compute this once per
        image and pass it back as ``vision_grid=`` instead of ``pixel_values``.
        """
        pixel_values = pixel_values.to(device=self.device, dtype=self.vision_tower.dtype)
        with torch.no_grad():  # the tower is frozen; no graph through it
            out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
        patches = out.hidden_states[self.config.vision_select_layer][:, 1:]
        b, n, c = patches.shape
        g = math.isqrt(n)
        return patches.transpose(1, 2).reshape(b, c, g, g)

    def encode_images(self, pixel_values: torch.Tensor | None = None,
                      vision_grid: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP patch grid (computed, or given) -> refinement: [B, C, 4g, 4g]."""
        if vision_grid is None:
            if pixel_values is None:
                raise ValueError("encode_images needs pixel_values or vision_grid")
            vision_grid = self.vision_grid(pixel_values)
        return self.refinement(vision_grid.to(device=self.device, dtype=self.dtype))

    def image_tokens(self, refined: torch.Tensor) -> torch.Tensor:
        """Adaptive average pooling to ``image_token_grid`` then the connector: [B, T, D]."""
        pooled = self.image_pool(refined).flatten(2).transpose(1, 2)
        return self.connector(pooled)

    def region_tokens(self, refined: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mask pooling on one image's refined map [C, h, w] then the (same) connector: [n, D]."""
        return self.connector(mask_pool(refined, masks))

    # ------------------------------------------------------------------ LLM input

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None,
                     region_embeds: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Token embeddings with ``<image>`` positions <- image tokens (row by row, in order) and
        the k-th ``<region>`` of each row <- that row's k-th region token."""
        image_id, region_id = self.config.image_token_id, self.config.region_token_id
        is_image = input_ids == image_id
        is_region = input_ids == region_id
        safe_ids = input_ids.masked_fill(is_image | is_region, 0)
        embeds = self.llm.get_input_embeddings()(safe_ids)
        if is_image.any():
            if image_embeds is None:
                raise ValueError("input_ids contain <image> tokens but no image was given")
            counts = is_image.sum(1)
            if not bool((counts == image_embeds.shape[1]).all()):
                raise ValueError(f"each row needs exactly {image_embeds.shape[1]} <image> tokens, "
                                 f"got {counts.tolist()}")
            embeds = embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype))
        counts = is_region.sum(1).tolist()
        given = [0 if r is None else len(r) for r in (region_embeds or [None] * len(counts))]
        if counts != given:
            raise ValueError(f"<region> tokens per row {counts} do not match the regions given {given}")
        if sum(counts):
            assert region_embeds is not None
            values = torch.cat([r for r in region_embeds if len(r)]).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_region[..., None], values)
        return embeds

    def multimodal_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                          region_masks: Sequence[torch.Tensor] | None = None,
                          refined: torch.Tensor | None = None,
                          vision_grid: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs_embeds`` for a batch: encode images (or take precomputed CLIP grids or
        ``refined`` maps, one per row), pool the regions of each row, substitute both into
        the token embeddings."""
        if refined is None and (pixel_values is not None or vision_grid is not None):
            refined = self.encode_images(pixel_values, vision_grid)
        image_embeds = self.image_tokens(refined) if refined is not None else None
        region_embeds = None
        if region_masks is not None:
            if refined is None:
                raise ValueError("region masks need an image")
            pooled = batched_mask_pool(refined, region_masks)  # = region_tokens row by row, batched
            region_embeds = list(self.connector(torch.cat(pooled)).split([len(p) for p in pooled]))
        return self.embed_inputs(input_ids.to(self.device), image_embeds, region_embeds)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, region_masks: Sequence[torch.Tensor] | None = None,
                labels: torch.Tensor | None = None, refined: torch.Tensor | None = None,
                vision_grid: torch.Tensor | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits for every position; with ``labels`` (-100 outside the answers) also the mean
        next-token cross-entropy over the labelled tokens."""
        embeds = self.multimodal_embeds(input_ids, pixel_values, region_masks, refined, vision_grid)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                        position_ids=_positions(attention_mask),
                        labels=None if labels is None else labels.to(self.device), **kwargs)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pixel_values: torch.Tensor | None = None, region_masks: Sequence[torch.Tensor] | None = None,
                 refined: torch.Tensor | None = None, max_new_tokens: int = 32,
                 eos_token_id: int | None = None,
                 stop_fn: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
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
        embeds = self.multimodal_embeds(input_ids, pixel_values, region_masks, refined)
        positions = _positions(attention_mask)
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
                              target_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                              region_masks: Sequence[torch.Tensor] | None = None,
                              refined: torch.Tensor | None = None) -> torch.Tensor:
        """Per row, the summed log-probability of the tokens where ``target_mask`` is true,
        each given everything before it (one forward; logits only at the scored positions)."""
        attention_mask = attention_mask.to(self.device)
        target_mask = target_mask.to(self.device).bool()
        embeds = self.multimodal_embeds(input_ids, pixel_values, region_masks, refined)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=_positions(attention_mask)).last_hidden_state
        predict = target_mask[:, 1:]  # position t-1 predicts token t
        states = hidden[:, :-1][predict]
        targets = input_ids.to(self.device)[:, 1:][predict]
        logprobs = torch.log_softmax(self.llm.lm_head(states).float(), dim=-1)
        picked = logprobs.gather(-1, targets[:, None])[:, 0]
        rows = torch.arange(input_ids.shape[0], device=self.device)[:, None].expand_as(predict)[predict]
        return torch.zeros(input_ids.shape[0], device=self.device).index_add(0, rows, picked)

    @torch.no_grad()
    def score_continuations(self, prompt_ids: torch.Tensor, continuations: Sequence[Sequence[int]],
                            pixel_values: torch.Tensor | None = None,
                            region_masks: Sequence[torch.Tensor] | None = None,
                            refined: torch.Tensor | None = None, batch_size: int = 8) -> list[float]:
        """Summed log-probability of each continuation of ONE prompt, the prompt run once.

        Same numbers as :meth:`continuation_logprobs` on prompt + continuation rows, but the
        prompt (with its image tokens) is prefilled once into a KV cache that every batch of
        continuations branches from: 80 COCO category names cost one prompt forward, not 80.
        ``prompt_ids`` [P] or [1, P]; ``refined`` / ``pixel_values`` and ``region_masks`` for one image.
        """
        prompt_ids = prompt_ids.reshape(1, -1).to(self.device)
        embeds = self.multimodal_embeds(prompt_ids, pixel_values, region_masks, refined)
        length = prompt_ids.shape[1]
        cache = DynamicCache(config=self.llm.config)
        out = self.llm(inputs_embeds=embeds, attention_mask=torch.ones_like(prompt_ids),
                       position_ids=torch.arange(length, device=self.device)[None], past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores: list[float] = []
        for start in range(0, len(continuations), max(1, batch_size)):
            chunk = [list(c) for c in continuations[start:start + max(1, batch_size)]]
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

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None,
                        components: Sequence[str] = COMPONENTS) -> Path:
        """Write ``config.json``, ``model.safetensors`` (the chosen components) and the tokenizer."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        prefixes = tuple(f"{c}." for c in components)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()
                 if k.startswith(prefixes)}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "model_type": "rgpt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, vision_tower: str | Path | None = None,
                        llm: str | Path | None = None, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, config: RGPTConfig | None = None,
                        vocab_size: int | None = None) -> RGPTForCausalLM:
        """Load a checkpoint directory (or a ``.safetensors`` file) written by :meth:`save_pretrained`.

        ``vision_tower`` / ``llm``: local transformers directories to take those parts from
        (full size: CLIP ViT-L/14-336, Vicuna-7B); the checkpoint then has to hold only the
        refinement and connector, and its LLM weights (stage 2) override the base LLM's.
        ``vocab_size`` resizes a base LLM's embeddings (the tokenizer's length with the added tokens).
        """
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / WEIGHTS_NAME if path.is_dir() else path
        if config is None:
            config_dir = path if path.is_dir() else path.parent
            config = RGPTConfig.load(config_dir) if (config_dir / "config.json").is_file() else RGPTConfig.full()
        local = {"dtype": dtype, "local_files_only": True, "attn_implementation": "sdpa"}
        tower = CLIPVisionModel.from_pretrained(str(vision_tower), **local) if vision_tower is not None else None
        base = LlamaForCausalLM.from_pretrained(str(llm), **local) if llm is not None else None
        if base is not None:
            size = vocab_size or config.text_config.vocab_size
            if base.get_input_embeddings().weight.shape[0] != size:
                base.resize_token_embeddings(size)
            config.text_config = base.config
            config.text_config.vocab_size = size
        if tower is not None:
            config.vision_config = tower.config
        model = cls(config, vision_tower=tower, llm=base)
        state = load_file(str(weights), device="cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{weights}: unexpected keys {unexpected[:5]}")
        external = tuple(p for p, given in (("vision_tower.", tower), ("llm.", base)) if given is not None)
        missing = [k for k in missing if not k.startswith(external)]
        if missing:
            raise ValueError(f"{weights}: missing keys {missing[:5]} (pass vision_tower=/llm= directories "
                             "when the checkpoint holds only the RGPT parts)")
        model.eval()
        return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding (left or right): 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
