"""The bench Adapter API over an in-repo region LLM (RGPT, GPT4RoI): what both adapters share.

Requests arrive grouped by image; each image in a call is read and encoded once (the
frozen tower and whatever per-image work the model does) and shared by all its questions
and regions. Generation is batched greedy decoding (left padding, KV cache) with the
request's stop strings and the model's own; likelihood scoring prefills each prompt once.

A subclass builds ``self.model`` (a :class:`adapters.region_lm.RegionCausalLM`),
``self.processor`` (a :class:`adapters.region_processing.RegionProcessor`) and
``self.tokenizer`` in ``__init__`` after calling :meth:`RegionLMAdapter.setup`, and says how
its encoded images are split per image, stacked into a batch, and passed to the model
(:meth:`split_images`, :meth:`stack_images`, :meth:`vision_inputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.adapter import Adapter
from bench.errors import ConfigError
from bench.types import GenerationRequest, LoglikelihoodRequest

if TYPE_CHECKING:
    import torch

DTYPES = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
SIZES = ("tiny", "full")
WEIGHTS_NAME = "model.safetensors"


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


def resolve_device(device: str) -> torch.device:
    import torch

    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"--device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    return resolved


class RegionLMAdapter(Adapter):
    """Shared adapter body; see the module docstring for what a subclass provides."""

    model: Any
    processor: Any
    tokenizer: Any

    def setup(self, size: str, dtype: str, device: str, batch_size: int, max_new_tokens: int | None) -> None:
        if size not in SIZES:
            raise ConfigError(f"size={size!r}: choose tiny or full")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.size = size
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = max_new_tokens
        self.checkpoint_files: list[Path] = []
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ model specific

    def split_images(self, encoded: Any) -> list[Any]:
        raise NotImplementedError

    def stack_images(self, items: Sequence[Any]) -> Any:
        raise NotImplementedError

    def vision_inputs(self, images: Any, regions: list[torch.Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def clean_answer(self, text: str) -> str:
        return text

    # ------------------------------------------------------------------ identity

    def fingerprint_extra(self) -> str:
        """sha256 of the checkpoint files (config, weights, tokenizer, external configs)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for path in self.checkpoint_files:
                if path.is_file():
                    digest.update(path.name.encode())
                    with path.open("rb") as handle:
                        for block in iter(lambda: handle.read(1 << 20), b""):
                            digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ encoding

    def _encode_images(self, requests: Sequence[GenerationRequest | LoglikelihoodRequest]) -> dict[str, Any]:
        """Per image key: (encoded image, (width, height)); each image read and encoded once."""
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
                parts = self.split_images(self.model.encode_images(pixels.to(self.device)))
                for key, features in zip(chunk, parts, strict=True):
                    encoded[key] = (features, images[key].size)
        return encoded

    def _prompt(self, request: GenerationRequest | LoglikelihoodRequest,
                size: tuple[int, int]) -> tuple[list[int], torch.Tensor]:
        width, height = size
        regions = [r.validated(width, height) for r in request.regions]
        ids, order = self.processor.prompt(request.prompt, len(regions))
        tensors = self.processor.regions(regions, width, height)
        return ids, tensors[order] if order else tensors[:0]

    # ------------------------------------------------------------------ API

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        import torch

        encoded = self._encode_images(requests)
        model_stops = tuple(getattr(self.processor, "stop_strings", ()))
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            prompts = [self._prompt(r, encoded[r.image.key][1]) for r in chunk]
            limits = [self.max_new_tokens if self.max_new_tokens is not None else r.max_new_tokens for r in chunk]
            stops = [tuple(r.stop) + model_stops for r in chunk]
            ids, attention = self.processor.pad([p[0] for p in prompts], side="left")
            images = self.stack_images([encoded[r.image.key][0] for r in chunk])

            def stop_fn(row: int, tokens: list[int], limits: list[int] = limits,
                        stops: list[tuple[str, ...]] = stops) -> bool:
                if len(tokens) >= limits[row]:
                    return True
                return bool(stops[row]) and any(s in self._decode(tokens) for s in stops[row] if s)

            with torch.inference_mode():
                outputs = self.model.generate(ids.to(self.device), attention, max_new_tokens=max(limits, default=0),
                                              stop_fn=stop_fn, **self.vision_inputs(images, [p[1] for p in prompts]))
            for tokens, limit, stop in zip(outputs, limits, stops, strict=True):
                answers.append(self.clean_answer(cut_at_stop(self._decode(tokens[:limit]), stop)))
        return answers

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[float]]:
        """Per request: its prompt (and image tokens) run once into a KV cache, then its
        continuations scored in batches of ``batch_size`` from that cache."""
        import torch

        encoded = self._encode_images(requests)
        results: list[list[float]] = []
        for request in requests:
            image, size = encoded[request.image.key]
            prompt, regions = self._prompt(request, size)
            with torch.inference_mode():
                results.append(self.model.score_continuations(
                    torch.tensor(prompt), [self.processor.encode_answer(c) for c in request.continuations],
                    batch_size=self.batch_size, **self.vision_inputs(self.stack_images([image]), [regions]),
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
