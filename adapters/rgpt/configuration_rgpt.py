"""RegionGPT configuration: a frozen CLIP vision tower, a feature refinement, one MLP connector, a Llama LLM.

``RGPTConfig`` is a plain dataclass that round-trips through JSON
(:meth:`RGPTConfig.to_dict` / :meth:`RGPTConfig.from_dict`). The two sub-configs
are transformers' own :class:`~transformers.CLIPVisionConfig` and
:class:`~transformers.LlamaConfig`, so the vision tower and the LLM are stock
transformers modules whose weights load from ordinary local checkpoints.

Presets:

* :meth:`RGPTConfig.full`: the paper's model, CLIP ViT-L/14-336 (24x24 grid refined
  to 96x96, 576 image tokens) and Vicuna-7B (vocabulary 32000 + ``<image>``, ``<region>``).
* :meth:`RGPTConfig.tiny`: the same architecture at about 1.5M parameters
  (64 px, 8x8 grid refined to 32x32, 64 image tokens) for CPU runs and tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig

CONFIG_NAME = "config.json"
MODEL_TYPE = "rgpt"

# Vicuna's ids (LLaMA tokenizer): <unk>=0, <s>=1, </s>=2; RGPT's two added tokens follow the 32000 base rows.
FULL_BASE_VOCAB = 32000


@dataclass
class RGPTConfig:
    """Everything that fixes the network's shapes and the meaning of its special tokens."""

    vision_config: CLIPVisionConfig
    text_config: LlamaConfig
    # CLIP hidden state fed to the refinement (LLaVA/RGPT: the penultimate layer), CLS dropped.
    vision_select_layer: int = -2
    # Number of stride-2 ConvTranspose2d layers: 2 -> 4x upsampling of the patch grid.
    refinement_layers: int = 2
    # Image tokens = AdaptiveAvgPool2d(image_token_grid) of the refined map -> grid**2 tokens.
    image_token_grid: int = 24
    image_token_id: int = FULL_BASE_VOCAB
    region_token_id: int = FULL_BASE_VOCAB + 1
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    size: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)

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
        """Side of CLIP's patch grid (24 for ViT-L/14 at 336 px)."""
        return self.image_size // int(self.vision_config.patch_size)

    @property
    def refined_grid(self) -> int:
        """Side of the refined feature map (96 at full size)."""
        return self.patch_grid * 2 ** self.refinement_layers

    @property
    def num_image_tokens(self) -> int:
        return self.image_token_grid ** 2

    # ------------------------------------------------------------------ presets

    @classmethod
    def full(cls, vocab_size: int = FULL_BASE_VOCAB + 2, image_token_id: int = FULL_BASE_VOCAB,
             region_token_id: int = FULL_BASE_VOCAB + 1) -> RGPTConfig:
        """CLIP ViT-L/14-336 + Vicuna-7B, as in the paper."""
        vision = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            patch_size=14, image_size=336, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        )
        text = LlamaConfig(
            vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
        )
        return cls(vision_config=vision, text_config=text, image_token_grid=24, image_token_id=image_token_id,
                   region_token_id=region_token_id, bos_token_id=1, eos_token_id=2, pad_token_id=0, size="full")

    @classmethod
    def tiny(cls, vocab_size: int, pad_token_id: int = 0, bos_token_id: int = 2, eos_token_id: int = 3,
             image_token_id: int = 4, region_token_id: int = 5, vision_layers: int = 4, vision_hidden: int = 64,
             llm_layers: int = 4, llm_hidden: int = 128, llm_heads: int = 4,
             max_positions: int = 512) -> RGPTConfig:
        """About 1.5M parameters (64 px, 8x8 grid refined to 32x32, 64 image tokens); ids default to
        :func:`~adapters.rgpt.processing_rgpt.build_word_tokenizer`'s special tokens."""
        vision = CLIPVisionConfig(
            hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
            num_attention_heads=4, patch_size=8, image_size=64, projection_dim=vision_hidden,
            hidden_act="quick_gelu",
        )
        text = LlamaConfig(
            vocab_size=vocab_size, hidden_size=llm_hidden, intermediate_size=4 * llm_hidden,
            num_hidden_layers=llm_layers, num_attention_heads=llm_heads, num_key_value_heads=llm_heads,
            max_position_embeddings=max_positions, rms_norm_eps=1e-6,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            tie_word_embeddings=False,
        )
        return cls(vision_config=vision, text_config=text, image_token_grid=8, image_token_id=image_token_id,
                   region_token_id=region_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                   pad_token_id=pad_token_id, size="tiny")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": MODEL_TYPE,
            "vision_config": _sub_dict(self.vision_config),
            "text_config": _sub_dict(self.text_config),
            "vision_select_layer": self.vision_select_layer,
            "refinement_layers": self.refinement_layers,
            "image_token_grid": self.image_token_grid,
            "image_token_id": self.image_token_id,
            "region_token_id": self.region_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "size": self.size,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RGPTConfig:
        data = dict(data)
        if data.pop("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError("not an RGPT config (model_type must be 'rgpt')")
        vision = CLIPVisionConfig(**data.pop("vision_config"))
        text = LlamaConfig(**data.pop("text_config"))
        return cls(vision_config=vision, text_config=text, **data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RGPTConfig:
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        return cls.from_dict(json.loads(path.read_text()))


def _sub_dict(config: Any) -> dict[str, Any]:
    data = config.to_dict()
    for key in ("transformers_version", "_attn_implementation_autoset", "architectures", "torch_dtype", "dtype"):
        data.pop(key, None)
    return data
