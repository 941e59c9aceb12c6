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
masks all have their final length before the model sees them. Forward, batched
generation and likelihood scoring are shared with GPT4RoI (:mod:`adapters.region_lm`);
this file is what makes the model RGPT.

Weights: :meth:`RGPTForCausalLM.save_pretrained` writes ``config.json`` and
``model.safetensors``; :meth:`RGPTForCausalLM.from_pretrained` reads them with
``safetensors`` only (never a pickle). The full-size model can take its CLIP
tower and LLM from local transformers directories and only the RGPT parts (and,
if present, a fine-tuned LLM) from the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM

from adapters.region_lm import RegionCausalLM
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


class RGPTForCausalLM(RegionCausalLM):
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

    # ------------------------------------------------------------------ parts

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

    def vision_embeds(self, pixel_values: torch.Tensor | None = None,
                      region_masks: Sequence[torch.Tensor] | None = None,
                      refined: torch.Tensor | None = None,
                      vision_grid: torch.Tensor | None = None) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
        """Image tokens [B, T, D] and each row's region tokens: encode images (or take precomputed
        CLIP grids or ``refined`` maps, one per row), pool the regions of each row."""
        if refined is None and (pixel_values is not None or vision_grid is not None):
            refined = self.encode_images(pixel_values, vision_grid)
        image_embeds = self.image_tokens(refined) if refined is not None else None
        region_embeds = None
        if region_masks is not None:
            if refined is None:
                raise ValueError("region masks need an image")
            pooled = batched_mask_pool(refined, region_masks)  # = region_tokens row by row, batched
            region_embeds = list(self.connector(torch.cat(pooled)).split([len(p) for p in pooled]))
        return image_embeds, region_embeds

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
