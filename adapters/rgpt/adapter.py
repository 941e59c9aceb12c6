"""The ``rgpt`` adapter: the in-repo RegionGPT reference model behind the bench Adapter API.

``--model-args``:

* ``size=tiny`` (default): a ~1.5M-parameter RGPT trained on the synthetic suite;
  without ``pretrained=`` the embedded checkpoint ``adapters/rgpt/checkpoints/tiny/`` is used
  (``bench train rgpt`` writes it).
* ``size=full``: CLIP ViT-L/14-336 + Vicuna-7B. ``vision_tower=DIR`` (a local CLIP directory),
  ``llm=DIR`` (a local Vicuna/LLaMA directory, which also gives the tokenizer) and
  ``pretrained=CKPT`` (RGPT refinement + connector, and optionally the fine-tuned LLM, as
  ``model.safetensors``; its ``config.json`` if present, else the paper's full config).
  The checkpoint's ``config.json`` decides the architecture; ``size`` picks the defaults.
* ``dtype=auto|bf16|fp16|fp32`` (auto: bf16 on CUDA, fp32 on CPU), ``max_new_tokens=N`` caps
  every generation; ``--device`` and ``--batch-size`` come from the command line.

Requests arrive grouped by image; each image in a call is read and encoded once (CLIP and the
refinement) and its refined map is shared by all its questions and regions
(:mod:`adapters.region_adapter` holds what RGPT and GPT4RoI share).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.region_adapter import SIZES, WEIGHTS_NAME, RegionLMAdapter, cut_at_stop, resolve_dtype
from bench.adapter import Capabilities
from bench.errors import ConfigError
from bench.registry import register_adapter

if TYPE_CHECKING:  # torch and transformers load only when the adapter is built (keeps `bench list` fast)
    import torch

    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

__all__ = ["EMBEDDED_TINY", "RGPTAdapter", "cut_at_stop", "resolve_dtype"]

EMBEDDED_TINY = Path(__file__).resolve().parent / "checkpoints" / "tiny"


@register_adapter
class RGPTAdapter(RegionLMAdapter):
    name = "rgpt"
    description = ("RegionGPT reference model: CLIP, deconv refinement, mask pooling, shared MLP, Llama "
                   "(size=tiny|full, pretrained=CKPT)")
    version = "1"
    capabilities = Capabilities(boxes=True, masks=True, max_regions=16, loglikelihood=True)

    def __init__(self, size: str = "tiny", pretrained: Path | None = None, vision_tower: Path | None = None,
                 llm: Path | None = None, dtype: str = "auto", device: str = "cpu",
                 max_new_tokens: int | None = None, batch_size: int = 8) -> None:
        from adapters.rgpt.configuration_rgpt import RGPTConfig
        from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
        from adapters.rgpt.processing_rgpt import (
            RGPTProcessor,
            config_token_ids,
            load_tokenizer,
            load_vicuna_tokenizer,
        )

        self.setup(size, dtype, device, batch_size, max_new_tokens)
        self.checkpoint = self._checkpoint(size, pretrained)
        for label, path in (("vision_tower", vision_tower), ("llm", llm)):
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"{label}={path}: not a directory (a local transformers model directory)")
        external = [Path(p) for p in (vision_tower, llm) if p is not None]
        tokenizer_dir = self.checkpoint if self.checkpoint.is_dir() else self.checkpoint.parent
        if (tokenizer_dir / "tokenizer.json").is_file():
            self.tokenizer = load_tokenizer(tokenizer_dir)
        elif llm is not None:
            self.tokenizer = load_vicuna_tokenizer(llm)
        else:
            raise ConfigError(f"{tokenizer_dir} has no tokenizer.json; pass llm=DIR (its tokenizer is used)")
        config = None
        if not (tokenizer_dir / "config.json").is_file():
            if size == "tiny":
                raise ConfigError(f"pretrained={pretrained}: no config.json next to the weights "
                                  "(a tiny checkpoint directory holds config.json, model.safetensors, tokenizer.json)")
            ids = config_token_ids(self.tokenizer)
            config = RGPTConfig.full(vocab_size=len(self.tokenizer), image_token_id=ids["image_token_id"],
                                     region_token_id=ids["region_token_id"])
        self.model = RGPTForCausalLM.from_pretrained(
            self.checkpoint, vision_tower=vision_tower, llm=llm, dtype=self.dtype, device=self.device,
            vocab_size=len(self.tokenizer), config=config,
        )
        self.model.eval()
        self.processor = RGPTProcessor(self.tokenizer, self.model.config)
        names = ("config.json", WEIGHTS_NAME, "tokenizer.json", "tokenizer_config.json")
        self.checkpoint_files = [tokenizer_dir / n for n in names] if self.checkpoint.is_dir() else [self.checkpoint]
        self.checkpoint_files += [d / "config.json" for d in external]

    @staticmethod
    def _checkpoint(size: str, pretrained: Path | None) -> Path:
        if pretrained is None:
            if size == "full":
                raise ConfigError(
                    "size=full needs RGPT weights: pretrained=CKPT_DIR (no official RegionGPT weights exist), "
                    "plus vision_tower=CLIP_DIR and llm=VICUNA_DIR unless the checkpoint holds them"
                )
            if not (EMBEDDED_TINY / WEIGHTS_NAME).is_file():
                raise ConfigError(
                    f"the embedded tiny RGPT checkpoint ({EMBEDDED_TINY}) does not exist yet: train it with "
                    "`bench train rgpt`, or pass pretrained=DIR"
                )
            print(f"using the embedded tiny RGPT checkpoint {EMBEDDED_TINY}", file=sys.stderr)
            return EMBEDDED_TINY
        path = Path(pretrained)
        weights = path / WEIGHTS_NAME if path.is_dir() else path
        if not weights.is_file() or weights.suffix != ".safetensors":
            raise ConfigError(f"pretrained={pretrained}: expected a directory with {WEIGHTS_NAME} "
                              "(and config.json), or a .safetensors file")
        return path

    @classmethod
    def meta_model(cls, size: str = "tiny", pretrained: Path | None = None, **_: Any) -> RGPTForCausalLM:
        """The network on the meta device (no weights, no memory), for ``bench inspect``."""
        import torch

        from adapters.rgpt.configuration_rgpt import RGPTConfig
        from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

        if size not in SIZES:
            raise ConfigError(f"size={size!r}: choose tiny or full")
        source = Path(pretrained) if pretrained is not None else (EMBEDDED_TINY if size == "tiny" else None)
        if source is not None and not source.is_dir():
            source = source.parent
        if source is not None and (source / "config.json").is_file():
            config = RGPTConfig.load(source)
        else:
            config = RGPTConfig.full() if size == "full" else RGPTConfig.tiny(vocab_size=512)
        with torch.device("meta"):
            return RGPTForCausalLM(config)

    # ------------------------------------------------------------------ encoded images: refined maps

    def split_images(self, encoded: torch.Tensor) -> list[torch.Tensor]:
        return list(encoded)

    def stack_images(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.stack(list(items))

    def vision_inputs(self, images: torch.Tensor, regions: list[torch.Tensor]) -> dict[str, Any]:
        return {"refined": images, "region_masks": regions}
