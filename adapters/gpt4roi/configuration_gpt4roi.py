"""GPT4RoI configuration: frozen CLIP, a linear image projector, the multi-level region extractor, LLaMA.

``GPT4RoIConfig`` is a plain dataclass that round-trips through JSON. The two
sub-configs are transformers' own :class:`~transformers.CLIPVisionConfig` and
:class:`~transformers.LlamaConfig`. The released checkpoint's ``config.json``
says ``model_type: "llava"`` (which transformers would read as its own, different
LLaVA): :meth:`GPT4RoIConfig.from_released` reads that file by hand.

Presets:

* :meth:`GPT4RoIConfig.full`: the released ``GPT4RoI-7B``: CLIP ViT-L/14 at 224 px
  (16x16 grid, 256 image tokens), levels ``hs[-11], hs[-8], hs[-5], hs[-2]`` resized to
  128/64/32/16, RoIAlign 14x14, LLaMA-7B with the six added tokens (vocabulary 32006).
* :meth:`GPT4RoIConfig.tiny`: the same computation at CPU size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig

CONFIG_NAME = "config.json"
MODEL_TYPE = "gpt4roi"

# The released model's added tokens and their ids (after LLaMA's 32000).
FULL_BASE_VOCAB = 32000
ADDED_TOKENS: tuple[str, ...] = ("[PAD]", "<im_patch>", "<bbox>", "<point>", "<im_start>", "<im_end>")


@dataclass
class GPT4RoIConfig:
    """Everything that fixes the network's shapes and the meaning of its special tokens."""

    vision_config: CLIPVisionConfig
    text_config: LlamaConfig
    vision_select_layer: int = -2  # image tokens: penultimate CLIP layer, CLS dropped
    # Region extractor: the CLIP hidden states used as levels (shallow to deep) and the side each is
    # resized to (finest first). Full size: hs[-11], hs[-8], hs[-5], hs[-2] -> 128, 64, 32, 16.
    level_layers: tuple[int, ...] = (-11, -8, -5, -2)
    level_sizes: tuple[int, ...] = (128, 64, 32, 16)
    fuse_rounds: int = 5  # scale-shuffle rounds, one shared conv-GN-ReLU each
    fuse_groups: int = 64  # GroupNorm groups
    roi_output_size: int = 14
    roi_sampling_ratio: int = 2
    region_hidden_size: int = 1024  # flatten_linear / pos_embedd output width
    pos_hidden_size: int = 256  # pos_embedd's first Linear
    pad_token_id: int = FULL_BASE_VOCAB
    image_token_id: int = FULL_BASE_VOCAB + 1  # <im_patch>
    region_token_id: int = FULL_BASE_VOCAB + 2  # <bbox>
    image_start_token_id: int = FULL_BASE_VOCAB + 4  # <im_start>
    image_end_token_id: int = FULL_BASE_VOCAB + 5  # <im_end>
    bos_token_id: int = 1
    eos_token_id: int = 2
    size: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.level_layers = tuple(self.level_layers)
        self.level_sizes = tuple(self.level_sizes)
        if len(self.level_layers) != len(self.level_sizes):
            raise ValueError("level_layers and level_sizes need one entry per level")
        if self.vision_hidden_size % 4:
            raise ValueError("the scale shuffle splits the channels in quarters: hidden size must divide by 4")

    # ------------------------------------------------------------------ derived sizes

    @property
    def vision_hidden_size(self) -> int:
        return int(self.vision_config.hidden_size)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def patch_grid(self) -> int:
        """Side of CLIP's patch grid (16 for ViT-L/14 at 224 px)."""
        return self.image_size // int(self.vision_config.patch_size)

    @property
    def num_image_tokens(self) -> int:
        return self.patch_grid ** 2

    @property
    def level_strides(self) -> tuple[float, ...]:
        """Input pixels per feature cell of each level (full size: 14/8, 14/4, 14/2, 14)."""
        return tuple(self.image_size / side for side in self.level_sizes)

    # ------------------------------------------------------------------ presets

    @classmethod
    def full(cls) -> GPT4RoIConfig:
        """CLIP ViT-L/14 (224 px) + LLaMA-7B with the six added tokens, as released."""
        vision = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        )
        text = LlamaConfig(
            vocab_size=FULL_BASE_VOCAB + len(ADDED_TOKENS), hidden_size=4096, intermediate_size=11008,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
            rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=FULL_BASE_VOCAB,
            tie_word_embeddings=False,
        )
        return cls(vision_config=vision, text_config=text)

    @classmethod
    def tiny(cls, vocab_size: int, token_ids: dict[str, int], vision_layers: int = 4, vision_hidden: int = 64,
             image_size: int = 128, llm_layers: int = 4, llm_hidden: int = 128, llm_heads: int = 4,
             max_positions: int = 512, patch_size: int = 8) -> GPT4RoIConfig:
        """CPU size: 128 px, patch 8 (16x16 grid, 256 image tokens like the full model; 192 px with
        patch 12 keeps that grid at 1.5 times the pixels, as ViT-L/14 at 224 does), image tokens from
        the penultimate layer, levels = the four hidden states up to it (``hs[-5..-2]``: a 4-layer
        tower has 5) resized to 32/32/16/16, RoIAlign 7x7. ``token_ids`` from
        :func:`adapters.gpt4roi.processing_gpt4roi.config_token_ids`."""
        vision = CLIPVisionConfig(
            hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
            num_attention_heads=4, patch_size=patch_size, image_size=image_size, projection_dim=vision_hidden,
            hidden_act="quick_gelu",
        )
        text = LlamaConfig(
            vocab_size=vocab_size, hidden_size=llm_hidden, intermediate_size=4 * llm_hidden,
            num_hidden_layers=llm_layers, num_attention_heads=llm_heads, num_key_value_heads=llm_heads,
            max_position_embeddings=max_positions, rms_norm_eps=1e-6, bos_token_id=token_ids["bos_token_id"],
            eos_token_id=token_ids["eos_token_id"], pad_token_id=token_ids["pad_token_id"],
            tie_word_embeddings=False,
        )
        return cls(vision_config=vision, text_config=text, vision_select_layer=-2,
                   level_layers=tuple(range(-vision_layers - 1, -1))[-4:], level_sizes=(32, 32, 16, 16),
                   fuse_groups=8, roi_output_size=7, region_hidden_size=vision_hidden, pos_hidden_size=32,
                   size="tiny", **token_ids)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["vision_config"] = _sub_dict(self.vision_config)
        data["text_config"] = _sub_dict(self.text_config)
        data["level_layers"] = list(self.level_layers)
        data["level_sizes"] = list(self.level_sizes)
        return {"model_type": MODEL_TYPE, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPT4RoIConfig:
        data = dict(data)
        if data.pop("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError("not a GPT4RoI config (model_type must be 'gpt4roi')")
        vision = CLIPVisionConfig(**data.pop("vision_config"))
        text = LlamaConfig(**data.pop("text_config"))
        return cls(vision_config=vision, text_config=text, **data)

    @classmethod
    def from_released(cls, data: dict[str, Any], vision_config: CLIPVisionConfig | None = None) -> GPT4RoIConfig:
        """The released checkpoint's ``config.json`` (``model_type: "llava"``, LLaMA fields at top level)."""
        config = cls.full()
        text = {k: v for k, v in data.items() if k in LlamaConfig().to_dict() and k not in ("model_type",)}
        config.text_config = LlamaConfig(**{**config.text_config.to_dict(), **text, "tie_word_embeddings": False})
        config.vision_select_layer = int(data.get("mm_vision_select_layer", -2))
        if vision_config is not None:
            config.vision_config = vision_config
        if int(data.get("mm_hidden_size", config.vision_hidden_size)) != config.vision_hidden_size:
            raise ValueError(f"mm_hidden_size {data['mm_hidden_size']} does not match the CLIP tower's "
                             f"hidden size {config.vision_hidden_size}")
        return config

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> GPT4RoIConfig:
        """A ``config.json`` written by :meth:`save`, or the released one (``model_type: "llava"``)."""
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        data = json.loads(path.read_text())
        if data.get("model_type") == "llava":
            return cls.from_released(data)
        return cls.from_dict(data)


def _sub_dict(config: Any) -> dict[str, Any]:
    data = config.to_dict()
    for key in ("transformers_version", "_attn_implementation_autoset", "architectures", "torch_dtype", "dtype"):
        data.pop(key, None)
    return data
