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
refinement) and its refined map is shared by all its questions and regions.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.adapter import Adapter, Capabilities
from bench.errors import ConfigError
from bench.registry import register_adapter
from bench.types import GenerationRequest, LoglikelihoodRequest

if TYPE_CHECKING:  # torch and transformers load only when the adapter is built (keeps `bench list` fast)
    import torch

    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM

EMBEDDED_TINY = Path(__file__).resolve().parent / "checkpoints" / "tiny"
WEIGHTS_NAME = "model.safetensors"
DTYPES = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
SIZES = ("tiny", "full")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA, fp32 elsewhere; else one of :data:`DTYPES`."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r}: choose auto, bf16, fp16 or fp32")
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    return torch.float16 if name in ("fp16", "float16") else torch.float32


@register_adapter
class RGPTAdapter(Adapter):
    name = "rgpt"
    description = ("RegionGPT reference model: CLIP, deconv refinement, mask pooling, shared MLP, Llama "
                   "(size=tiny|full, pretrained=CKPT)")
    version = "1"
    capabilities = Capabilities(boxes=True, masks=True, max_regions=16, loglikelihood=True)

    def __init__(self, size: str = "tiny", pretrained: Path | None = None, vision_tower: Path | None = None,
                 llm: Path | None = None, dtype: str = "auto", device: str = "cpu",
                 max_new_tokens: int | None = None, batch_size: int = 8) -> None:
        import torch

        from adapters.rgpt.configuration_rgpt import RGPTConfig
        from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
        from adapters.rgpt.processing_rgpt import (
            RGPTProcessor,
            config_token_ids,
            load_tokenizer,
            load_vicuna_tokenizer,
        )

        if size not in SIZES:
            raise ConfigError(f"size={size!r}: choose tiny or full")
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise ConfigError(f"--device {device!r}: {error}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.size = size
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = max_new_tokens
        self.checkpoint = self._checkpoint(size, pretrained)
        for label, path in (("vision_tower", vision_tower), ("llm", llm)):
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"{label}={path}: not a directory (a local transformers model directory)")
        self.external = [Path(p) for p in (vision_tower, llm) if p is not None]
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
        self._fingerprint: str | None = None

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

    # ------------------------------------------------------------------ identity

    def fingerprint_extra(self) -> str:
        """sha256 of the checkpoint files (config, weights, tokenizer) and of the external dirs' configs."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            base = self.checkpoint if self.checkpoint.is_dir() else self.checkpoint.parent
            names = ("config.json", WEIGHTS_NAME, "tokenizer.json", "tokenizer_config.json")
            files = [base / n for n in names] if self.checkpoint.is_dir() else [self.checkpoint]
            files += [d / "config.json" for d in self.external]
            for path in files:
                if path.is_file():
                    digest.update(path.name.encode())
                    with path.open("rb") as handle:
                        for block in iter(lambda: handle.read(1 << 20), b""):
                            digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

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

    # ------------------------------------------------------------------ encoding

    def _encode_images(self, requests: Sequence[GenerationRequest | LoglikelihoodRequest]) -> dict[str, Any]:
        """Per image key: (refined map [C, h, w], (width, height)); each image read and encoded once."""
        import torch

        images: dict[str, Any] = {}
        for request in requests:
            if request.image.key not in images:
                images[request.image.key] = request.image.load()
        keys = list(images)
        encoded: dict[str, Any] = {}
        with torch.inference_mode():
            for start in range(0, len(keys), self.batch_size):
                chunk = keys[start:start + self.batch_size]
                pixels = torch.stack([self.processor.image(images[k]) for k in chunk])
                refined = self.model.encode_images(pixels.to(self.device))
                for key, features in zip(chunk, refined, strict=True):
                    encoded[key] = (features, images[key].size)
        return encoded

    def _prompt(self, request: GenerationRequest | LoglikelihoodRequest,
                size: tuple[int, int]) -> tuple[list[int], torch.Tensor]:
        width, height = size
        regions = [r.validated(width, height) for r in request.regions]
        ids, order = self.processor.prompt(request.prompt, len(regions))
        masks = self.processor.masks(regions, width, height)
        return ids, masks[order] if order else masks[:0]

    # ------------------------------------------------------------------ API

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        import torch

        encoded = self._encode_images(requests)
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            prompts = [self._prompt(r, encoded[r.image.key][1]) for r in chunk]
            limits = [self.max_new_tokens if self.max_new_tokens is not None else r.max_new_tokens for r in chunk]
            stops = [r.stop for r in chunk]
            ids, attention = self.processor.pad([p[0] for p in prompts], side="left")
            refined = torch.stack([encoded[r.image.key][0] for r in chunk])

            def stop_fn(row: int, tokens: list[int], limits: list[int] = limits,
                        stops: list[tuple[str, ...]] = stops) -> bool:
                if len(tokens) >= limits[row]:
                    return True
                return bool(stops[row]) and any(s in self._decode(tokens) for s in stops[row] if s)

            with torch.inference_mode():
                outputs = self.model.generate(
                    ids.to(self.device), attention, refined=refined, region_masks=[p[1] for p in prompts],
                    max_new_tokens=max(limits, default=0), stop_fn=stop_fn,
                )
            for tokens, limit, stop in zip(outputs, limits, stops, strict=True):
                answers.append(cut_at_stop(self._decode(tokens[:limit]), stop))
        return answers

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[float]]:
        """Per request: its prompt (and image tokens) run once into a KV cache, then its
        continuations scored in batches of ``batch_size`` from that cache."""
        import torch

        encoded = self._encode_images(requests)
        results: list[list[float]] = []
        for request in requests:
            refined, size = encoded[request.image.key]
            prompt, masks = self._prompt(request, size)
            with torch.inference_mode():
                results.append(self.model.score_continuations(
                    torch.tensor(prompt), [self.processor.encode_answer(c) for c in request.continuations],
                    refined=refined[None], region_masks=[masks], batch_size=self.batch_size,
                ))
        return results

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (stripped)."""
    cut = len(text)
    for stop in stops:
        if stop:
            position = text.find(stop)
            if position != -1:
                cut = min(cut, position)
    return text[:cut].strip()
