"""GPT4RoI, top to bottom as released (``GPT4RoI-7B-delta-V0``), weight-compatible with its checkpoint.

    image (224x224, stretched) --CLIP ViT-L/14 (frozen)--> hidden states hs[0..24]
    (a) image tokens:  hs[-2][:, 1:] (256 x 1024) --model.mm_projector (Linear 1024->4096)--> [B, 256, D]
    (b) region tokens: model.spi_module, the multi-level region extractor:
        1. levels hs[-11], hs[-8], hs[-5], hs[-2] (CLS dropped) as [B, 1024, 16, 16] maps, each resized
           bilinearly (align_corners=True) to 128, 64, 32, 16 (strides 14/8, 14/4, 14/2, 14 px);
        2. mlvl_fuse: 2 coordinate channels (x, y in [-1, 1]) -> input_conv[l] (1x1), then 5 rounds
           of scale shuffle: level l keeps channels [:C/2], takes [3C/4:] of the coarser level and
           [C/2:3C/4] of the finer one (resized to its size), through fuse_convs[r]
           (conv3x3 -> GroupNorm(64) -> ReLU, shared by all levels);
        3. roi_align: RoIAlign 14x14 (aligned=True, sampling_ratio=2) of each box on each level,
           pconvs[l] (3x3), SUM over levels, ReLU, flatten, flatten_linear -> 1024,
           + pos_embedd(normalised xyxy), updims -> D.               [n, D]
    LLM (LLaMA-7B): inputs_embeds where the 256 ``<im_patch>`` positions hold the image tokens and
                    the k-th ``<bbox>`` holds the k-th region token.

Module names follow the released state_dict exactly: the LLaMA body is ``model.*`` with
``model.mm_projector`` and ``model.spi_module`` inside it, the head is ``lm_head``; the
frozen CLIP tower (``vision_tower.*``) is not part of the released checkpoint and comes from
its own directory. Forward, batched generation and likelihood scoring are shared with RGPT
(:mod:`adapters.region_lm`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM

from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
from adapters.gpt4roi.roi_align import roi_align
from adapters.region_lm import RegionCausalLM

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
COMPONENTS = ("vision_tower", "mm_projector", "spi_module", "llm")
# Buffers older LLaMA checkpoints carry (the released delta does); recomputed, never loaded.
IGNORED_KEYS = ("rotary_emb.inv_freq",)


# --------------------------------------------------------------------------- the region extractor


class ConvGNReLU(nn.Module):
    """mmcv's ConvModule(3x3, norm=GN): conv without bias, GroupNorm, ReLU (keys ``conv``, ``gn``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gn(self.conv(x)))


def coordinate_channels(like: torch.Tensor) -> torch.Tensor:
    """Two channels, x then y, each ``linspace(-1, 1)`` over the map's width / height: [B, 2, h, w]."""
    b, _, h, w = like.shape
    ys = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y])[None].expand(b, -1, -1, -1)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners=True, computed in fp32 (as released), returned in ``x``'s dtype."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=True).to(x.dtype)


class MultiLevelFuse(nn.Module):
    """Coordinate channels + 1x1 conv per level, then rounds of scale shuffle (``mlvl_fuse``)."""

    def __init__(self, channels: int, levels: int, rounds: int, groups: int) -> None:
        super().__init__()
        self.channels = channels
        self.input_conv = nn.ModuleList(nn.Conv2d(channels + 2, channels, 1) for _ in range(levels))
        self.fuse_convs = nn.ModuleList(ConvGNReLU(channels, groups) for _ in range(rounds))

    def shuffle(self, levels: list[torch.Tensor], conv: nn.Module) -> list[torch.Tensor]:
        """One round: each level keeps half its channels and takes a quarter from each neighbour."""
        half, three_quarters = self.channels // 2, 3 * self.channels // 4
        last = len(levels) - 1
        fused = []
        for index, x in enumerate(levels):
            coarser, finer = levels[min(index + 1, last)], levels[max(index - 1, 0)]
            size = x.shape[-2:]
            fused.append(conv(torch.cat([x[:, :half], resize(coarser[:, three_quarters:], size),
                                         resize(finer[:, half:three_quarters], size)], dim=1)))
        return fused

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = [conv(torch.cat([x, coordinate_channels(x)], dim=1)) for conv, x in zip(self.input_conv, levels,
                                                                                      strict=True)]
        for conv in self.fuse_convs:
            out = self.shuffle(out, conv)
        return out


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign on every level, per-level 3x3 conv, sum, ReLU, flatten, + box embedding, up to the LLM
    width (``roi_align``)."""

    def __init__(self, config: GPT4RoIConfig) -> None:
        super().__init__()
        channels, width, pos = config.vision_hidden_size, config.region_hidden_size, config.pos_hidden_size
        self.output_size = config.roi_output_size
        self.sampling_ratio = config.roi_sampling_ratio
        self.image_size = config.image_size
        self.strides = config.level_strides
        self.pconvs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in self.strides)
        self.pos_embedd = nn.Sequential(nn.Linear(4, pos), nn.ReLU(), nn.LayerNorm(pos), nn.Linear(pos, width),
                                        nn.ReLU(), nn.LayerNorm(width))
        self.flatten_linear = nn.Linear(channels * self.output_size ** 2, width)
        self.updims = nn.Linear(width, config.text_hidden_size)

    def forward(self, levels: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``boxes[i]``: image i's boxes [n_i, 4], xyxy normalised to [0, 1]; returns [n_i, D] each."""
        counts = [len(b) for b in boxes]
        dtype = self.flatten_linear.weight.dtype
        if not sum(counts):
            return [levels[0].new_zeros((0, self.updims.out_features)) for _ in boxes]
        normalised = torch.cat([b.to(levels[0].device, torch.float32) for b in boxes if len(b)])
        index = torch.repeat_interleave(torch.arange(len(boxes), device=normalised.device),
                                        torch.tensor(counts, device=normalised.device))
        rois = torch.cat([index[:, None].float(), normalised * self.image_size], dim=1)
        summed = None
        for conv, x, stride in zip(self.pconvs, levels, self.strides, strict=True):
            pooled = roi_align(x.float(), rois, self.output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=self.sampling_ratio, aligned=True).to(dtype)
            level = conv(pooled)
            summed = level if summed is None else summed + level
        assert summed is not None
        features = self.flatten_linear(F.relu(summed).flatten(1)) + self.pos_embedd(normalised.to(dtype))
        return list(self.updims(features).split(counts))


class SpatialInstructionModule(nn.Module):
    """``spi_module``: resize the CLIP levels, fuse them, pool each box (the region extractor)."""

    def __init__(self, config: GPT4RoIConfig) -> None:
        super().__init__()
        self.level_sizes = config.level_sizes
        self.mlvl_fuse = MultiLevelFuse(config.vision_hidden_size, len(config.level_sizes), config.fuse_rounds,
                                        config.fuse_groups)
        self.roi_align = MultiLevelRoIAlign(config)

    def fuse(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw CLIP level grids [B, C, g, g] (shallow to deep) -> fused maps at ``level_sizes``."""
        return self.mlvl_fuse([resize(x, (side, side)) for x, side in zip(levels, self.level_sizes, strict=True)])

    def forward(self, levels: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.roi_align(self.fuse(levels), boxes)


# --------------------------------------------------------------------------- encoded images


@dataclass
class EncodedImages:
    """What the model keeps per image: its projected image tokens and its fused level maps."""

    image_embeds: torch.Tensor  # [B, 256, D]
    levels: list[torch.Tensor]  # [B, C, side_l, side_l] each, after mlvl_fuse

    def __len__(self) -> int:
        return self.image_embeds.shape[0]

    def split(self) -> list[EncodedImages]:
        return [EncodedImages(self.image_embeds[i:i + 1], [x[i:i + 1] for x in self.levels]) for i in range(len(self))]

    @staticmethod
    def stack(items: Sequence[EncodedImages]) -> EncodedImages:
        return EncodedImages(torch.cat([e.image_embeds for e in items]),
                             [torch.cat(parts) for parts in zip(*(e.levels for e in items), strict=True)])


# --------------------------------------------------------------------------- the model


class GPT4RoIForCausalLM(RegionCausalLM):
    """GPT4RoI. Build from a :class:`GPT4RoIConfig` (random weights), or pass pre-loaded
    ``vision_tower`` / ``llm`` modules."""

    def __init__(self, config: GPT4RoIConfig, vision_tower: CLIPVisionModel | None = None,
                 llm: LlamaForCausalLM | None = None) -> None:
        super().__init__()
        self.config = config
        config.vision_config._attn_implementation = "sdpa"
        config.text_config._attn_implementation = "sdpa"
        self.vision_tower = vision_tower if vision_tower is not None else CLIPVisionModel(config.vision_config)
        self.vision_tower.requires_grad_(False)  # frozen in both training stages
        llm = llm if llm is not None else LlamaForCausalLM(config.text_config)
        # Registered as the released names: model.* (LLaMA body + the two GPT4RoI parts), lm_head.*
        self.model = llm.model
        self.lm_head = llm.lm_head
        self.model.mm_projector = nn.Linear(config.vision_hidden_size, config.text_hidden_size)
        self.model.spi_module = SpatialInstructionModule(config)
        # The LlamaForCausalLM around them, kept out of the module tree (its parts are registered above).
        object.__setattr__(self, "_llm", llm)

    # ------------------------------------------------------------------ parts

    @property
    def llm(self) -> LlamaForCausalLM:
        return self._llm

    @property
    def mm_projector(self) -> nn.Linear:
        return self.model.mm_projector

    @property
    def spi_module(self) -> SpatialInstructionModule:
        return self.model.spi_module

    def components(self) -> dict[str, nn.Module]:
        """Parameter groups: the frozen tower, the projector, the region extractor, the LLM."""
        llm_only = _Group({n: m for n, m in self.model.named_children() if n not in ("mm_projector", "spi_module")}
                          | {"lm_head": self.lm_head})
        return {"vision_tower": self.vision_tower, "mm_projector": self.mm_projector,
                "spi_module": self.spi_module, "llm": llm_only}

    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """Stage 1: projector + region extractor; stage 2: + the LLM. CLIP stays frozen."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.requires_grad_(False)
        self.mm_projector.requires_grad_(True)
        self.spi_module.requires_grad_(True)
        if stage == 2:
            self.components()["llm"].requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> GPT4RoIForCausalLM:
        super().train(mode)
        self._llm.training = mode
        return self

    def checkpoint_keys(self) -> dict[str, torch.Size]:
        """state_dict keys and shapes of the released checkpoint (everything but the CLIP tower)."""
        return {k: v.shape for k, v in self.state_dict().items() if not k.startswith("vision_tower.")}

    # ------------------------------------------------------------------ vision side

    def vision_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP -> [B, 1 + L, C, g, g]: the image-token layer, then the L level grids (no CLS).

        The tower is frozen, so training code may compute this once per image and pass it back
        as ``vision_states=`` instead of ``pixel_values``.
        """
        pixel_values = pixel_values.to(device=self.device, dtype=self.vision_tower.dtype)
        with torch.no_grad():
            hidden = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        g = self.config.patch_grid
        layers = (self.config.vision_select_layer, *self.config.level_layers)
        return torch.stack([hidden[layer][:, 1:].transpose(1, 2).reshape(pixel_values.shape[0], -1, g, g)
                            for layer in layers], dim=1)

    def encode_images(self, pixel_values: torch.Tensor | None = None,
                      vision_states: torch.Tensor | None = None) -> EncodedImages:
        """Image tokens through ``mm_projector`` and the fused level maps, once per image."""
        if vision_states is None:
            if pixel_values is None:
                raise ValueError("encode_images needs pixel_values or vision_states")
            vision_states = self.vision_states(pixel_values)
        dtype = self.mm_projector.weight.dtype
        states = vision_states.to(self.device, dtype)
        image_embeds = self.mm_projector(states[:, 0].flatten(2).transpose(1, 2))
        levels = self.spi_module.fuse(list(states[:, 1:].unbind(1)))
        return EncodedImages(image_embeds, levels)

    # ------------------------------------------------------------------ LLM input

    def vision_embeds(self, pixel_values: torch.Tensor | None = None,
                      boxes: Sequence[torch.Tensor] | None = None, encoded: EncodedImages | None = None,
                      vision_states: torch.Tensor | None = None) -> tuple[torch.Tensor | None,
                                                                          list[torch.Tensor] | None]:
        """Image tokens [B, T, D] and each row's region vectors: encode images (or take them
        ``encoded``, one per row), pool each row's boxes (xyxy normalised to [0, 1])."""
        if encoded is None and (pixel_values is not None or vision_states is not None):
            encoded = self.encode_images(pixel_values, vision_states)
        region_embeds = None
        if boxes is not None:
            if encoded is None:
                raise ValueError("boxes need an image")
            region_embeds = self.spi_module.roi_align(encoded.levels, boxes)
        image_embeds = encoded.image_embeds if encoded is not None else None
        return image_embeds, region_embeds

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, with_vision_tower: bool = True) -> Path:
        """Write ``config.json``, ``model.safetensors`` (released key names) and the tokenizer."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()
                 if with_vision_tower or not k.startswith("vision_tower.")}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "model_type": "gpt4roi"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, vision_tower: str | Path | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        config: GPT4RoIConfig | None = None) -> GPT4RoIForCausalLM:
        """Load a directory written by :meth:`save_pretrained`, or a released-format directory
        (``bench convert gpt4roi`` output: sharded safetensors + index, ``model_type: "llava"``).

        The network is built on the meta device and each tensor is materialised straight from
        its shard in ``dtype`` on ``device``, so a 7B model never exists twice in memory.
        ``vision_tower``: a local CLIP directory (required when the checkpoint has no tower).
        """
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        tower = None
        if vision_tower is not None:
            tower = CLIPVisionModel.from_pretrained(str(vision_tower), dtype=dtype, local_files_only=True,
                                                    attn_implementation="sdpa")
        if config is None:
            config = GPT4RoIConfig.load(directory)
        if tower is not None:
            config.vision_config = tower.config
        with torch.device("meta"):
            model = cls(config)
        if tower is not None:
            model.vision_tower = tower.requires_grad_(False)
        target = torch.device(device) if device is not None else torch.device("cpu")
        expected = set(model.state_dict())
        loaded: set[str] = set()
        for name, tensor in _checkpoint_tensors(path):
            if name.endswith(IGNORED_KEYS):
                continue
            if name not in expected:
                raise ValueError(f"{path}: unexpected key {name} (not a GPT4RoI checkpoint?)")
            if tower is not None and name.startswith("vision_tower."):
                continue
            _assign(model, name, tensor.to(device=target, dtype=dtype if tensor.is_floating_point() else None))
            loaded.add(name)
        missing = sorted(k for k in expected - loaded if not (tower is not None and k.startswith("vision_tower.")))
        if missing:
            hint = " (pass vision_tower=CLIP_DIR)" if any(k.startswith("vision_tower.") for k in missing) else ""
            raise ValueError(f"{path}: missing keys {missing[:5]}{hint}")
        _materialise_buffers(model, target)
        model.eval()
        return model.to(device=target, dtype=dtype) if dtype is not None else model.to(target)


class _Group(nn.Module):
    """A view that groups existing modules for parameter counts (registers, does not copy)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


# --------------------------------------------------------------------------- loading helpers


def _checkpoint_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from ``model.safetensors``, a sharded safetensors index, or one file; lazily."""
    from safetensors import safe_open

    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
            files = [path / name for name in dict.fromkeys(weight_map.values())]
        elif (path / WEIGHTS_NAME).is_file():
            files = [path / WEIGHTS_NAME]
        else:
            raise ValueError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME} (convert the released delta with "
                             "`bench convert gpt4roi`)")
    else:
        files = [path]
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, handle.get_tensor(name)


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter/buffer ``name`` (possibly on meta) by ``value``."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    current = getattr(owner, leaf)
    if tuple(current.shape) != tuple(value.shape):
        raise ValueError(f"{name}: checkpoint shape {list(value.shape)} != model shape {list(current.shape)}")
    if isinstance(current, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=current.requires_grad))
    else:
        owner.register_buffer(leaf, value, persistent=leaf not in owner._non_persistent_buffers_set)


def _materialise_buffers(model: nn.Module, device: torch.device) -> None:
    """Recompute the non-persistent buffers a meta-built model lacks (rotary tables, CLIP position ids)."""
    for name, module in list(model.named_modules()):
        inv_freq = getattr(module, "inv_freq", None)
        if isinstance(inv_freq, torch.Tensor) and inv_freq.is_meta:  # a rotary embedding: rebuild from its config
            owner_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner_name), leaf, type(module)(module.config).to(device))
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name.endswith("position_ids"):
            owner_name, _, leaf = name.rpartition(".")
            model.get_submodule(owner_name).register_buffer(
                leaf, torch.arange(buffer.shape[-1], device=device).expand(buffer.shape), persistent=False)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"tensors left unloaded: {left[:5]}")
