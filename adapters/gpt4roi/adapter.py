"""The ``gpt4roi`` adapter: the in-repo GPT4RoI reference model behind the bench Adapter API.

``--model-args``:

* ``size=tiny`` (default): the same network at CPU size, trained on the synthetic suite;
  without ``pretrained=`` the embedded checkpoint ``adapters/gpt4roi/checkpoints/tiny/`` is used
  (``bench train gpt4roi`` writes it); ``pretrained=DIR`` is a directory written by
  :meth:`~adapters.gpt4roi.modeling_gpt4roi.GPT4RoIForCausalLM.save_pretrained`
  (config.json, model.safetensors, tokenizer.json).
* ``size=full``: the released GPT4RoI-7B. ``pretrained=DIR`` is the output of
  ``bench convert gpt4roi`` (the delta applied to LLaMA-7B: safetensors shards, the released
  config and tokenizer) and ``vision_tower=DIR`` a local ``openai/clip-vit-large-patch14``
  directory (the tower is not part of the released weights).
* ``dtype=auto|bf16|fp16|fp32`` (auto: bf16 on CUDA, fp32 on CPU), ``max_new_tokens=N``.

Regions are boxes (a mask-only region uses its mask's box). Answers are cut at ``###`` and a
leading ``Assistant:`` is dropped, as the released demo does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.region_adapter import SIZES, WEIGHTS_NAME, RegionLMAdapter
from bench.adapter import Capabilities
from bench.errors import ConfigError
from bench.registry import register_adapter

if TYPE_CHECKING:
    import torch

    from adapters.gpt4roi.modeling_gpt4roi import EncodedImages, GPT4RoIForCausalLM

INDEX_NAME = "model.safetensors.index.json"
EMBEDDED_TINY = Path(__file__).resolve().parent / "checkpoints" / "tiny"


@register_adapter
class GPT4RoIAdapter(RegionLMAdapter):
    name = "gpt4roi"
    description = ("GPT4RoI reference model: CLIP levels, scale shuffle, RoIAlign, LLaMA "
                   "(size=tiny|full, pretrained=DIR, vision_tower=CLIP_DIR)")
    version = "1"
    capabilities = Capabilities(boxes=True, masks=False, max_regions=16, loglikelihood=True)

    def __init__(self, size: str = "tiny", pretrained: Path | None = None, vision_tower: Path | None = None,
                 dtype: str = "auto", device: str = "cpu", max_new_tokens: int | None = None,
                 batch_size: int = 8) -> None:
        from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM
        from adapters.gpt4roi.processing_gpt4roi import GPT4RoIProcessor, load_llama_tokenizer, load_tokenizer

        self.setup(size, dtype, device, batch_size, max_new_tokens)
        directory = self._checkpoint(size, pretrained)
        if not directory.is_dir() or not (directory / "config.json").is_file():
            raise ConfigError(f"pretrained={pretrained}: expected a directory with config.json and "
                              f"{WEIGHTS_NAME} or {INDEX_NAME}")
        if not ((directory / WEIGHTS_NAME).is_file() or (directory / INDEX_NAME).is_file()):
            raise ConfigError(f"pretrained={pretrained}: no {WEIGHTS_NAME} or {INDEX_NAME} (for the released "
                              "delta run `bench convert gpt4roi --delta DIR --base LLAMA_DIR --out DIR` first)")
        if vision_tower is not None and not Path(vision_tower).is_dir():
            raise ConfigError(f"vision_tower={vision_tower}: not a directory (a local CLIP model directory)")
        released = json.loads((directory / "config.json").read_text()).get("model_type") == "llava"
        if released and vision_tower is None:
            raise ConfigError(f"pretrained={pretrained} is the released GPT4RoI, whose weights exclude CLIP: "
                              "pass vision_tower=DIR (a local openai/clip-vit-large-patch14 directory)")
        self.tokenizer = load_llama_tokenizer(directory) if released else load_tokenizer(directory)
        try:
            self.model = GPT4RoIForCausalLM.from_pretrained(directory, vision_tower=vision_tower, dtype=self.dtype,
                                                            device=self.device)
        except ValueError as error:
            raise ConfigError(f"pretrained={pretrained}: {error}") from None
        self.processor = GPT4RoIProcessor(self.tokenizer, self.model.config)
        self.checkpoint = directory
        names = ("config.json", WEIGHTS_NAME, INDEX_NAME, "tokenizer.json", "tokenizer_config.json")
        self.checkpoint_files = [directory / n for n in names]
        if vision_tower is not None:
            self.checkpoint_files.append(Path(vision_tower) / "config.json")

    @staticmethod
    def _checkpoint(size: str, pretrained: Path | None) -> Path:
        if pretrained is not None:
            return Path(pretrained)
        if size == "full":
            raise ConfigError("size=full needs weights: pretrained=DIR (the output of `bench convert gpt4roi`) "
                              "plus vision_tower=CLIP_DIR")
        if not (EMBEDDED_TINY / WEIGHTS_NAME).is_file():
            raise ConfigError(f"the embedded tiny GPT4RoI checkpoint ({EMBEDDED_TINY}) does not exist yet: train it "
                              "with `bench train gpt4roi`, or pass pretrained=DIR")
        print(f"using the embedded tiny GPT4RoI checkpoint {EMBEDDED_TINY}", file=sys.stderr)
        return EMBEDDED_TINY

    @classmethod
    def meta_model(cls, size: str = "tiny", pretrained: Path | None = None, **_: Any) -> GPT4RoIForCausalLM:
        """The network on the meta device (no weights, no memory), for ``bench inspect``."""
        import torch

        from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
        from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM
        from adapters.gpt4roi.processing_gpt4roi import word_tokenizer_ids

        if size not in SIZES:
            raise ConfigError(f"size={size!r}: choose tiny or full")
        source = Path(pretrained) if pretrained is not None else (EMBEDDED_TINY if size == "tiny" else None)
        if source is not None and (source / "config.json").is_file():
            config = GPT4RoIConfig.load(source)
        elif size == "full":
            config = GPT4RoIConfig.full()
        else:
            config = GPT4RoIConfig.tiny(vocab_size=512, token_ids=word_tokenizer_ids())
        with torch.device("meta"):
            return GPT4RoIForCausalLM(config)

    # ------------------------------------------------------------------ encoded images

    def split_images(self, encoded: EncodedImages) -> list[EncodedImages]:
        return encoded.split()

    def stack_images(self, items: Sequence[EncodedImages]) -> EncodedImages:
        from adapters.gpt4roi.modeling_gpt4roi import EncodedImages

        return EncodedImages.stack(items)

    def vision_inputs(self, images: EncodedImages, regions: list[torch.Tensor]) -> dict[str, Any]:
        return {"encoded": images, "boxes": regions}

    def clean_answer(self, text: str) -> str:
        from adapters.gpt4roi.processing_gpt4roi import strip_answer

        return strip_answer(text)
