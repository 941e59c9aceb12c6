"""RGPT inputs: the Vicuna v1 conversation, region placeholders, image and mask preprocessing.

* Prompt (Vicuna v1)::

    A chat between a curious user and an artificial intelligence assistant. The assistant gives
    helpful, detailed, and polite answers to the user's questions. USER: <image>\\n{prompt} ASSISTANT:

  ``<regionN>`` placeholders (anywhere, any order, repeats allowed) become ``<region>``
  tokens; the k-th ``<region>`` token takes region number N of the k-th placeholder.
  The one ``<image>`` becomes ``num_image_tokens`` ``<image>`` ids.
* Image: padded to a square with the CLIP mean colour (centred), resized to the vision
  size (bicubic), scaled to [0, 1] and normalised with CLIP's mean and std.
* Regions: the mask when the region has one, else its box as a rectangle, drawn on the
  original image, then padded and resized like the image (bilinear, kept soft): [n, S, S].
* Training examples (:meth:`RGPTProcessor.training_example`, shared with GPT4RoI in
  :mod:`adapters.region_processing`): labels are the answer tokens and the ``</s>`` after
  each answer; everything else is -100.
* Tokenizers: :func:`build_word_tokenizer` (tiny size, word level, built from texts) and
  :func:`load_vicuna_tokenizer` (full size, a local Vicuna/LLaMA tokenizer directory).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adapters.region_processing import IGNORE_INDEX, PLACEHOLDER, RegionProcessor
from adapters.region_processing import rewrite_regions as _rewrite
from adapters.rgpt.configuration_rgpt import RGPTConfig

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN, REGION_TOKEN)  # word tokenizer ids 0..5
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
__all__ = ["IGNORE_INDEX", "RGPTProcessor", "build_word_tokenizer", "config_token_ids", "load_tokenizer",
           "load_vicuna_tokenizer", "preprocess_image", "region_masks", "rewrite_regions", "user_turn"]


# --------------------------------------------------------------------------- tokenizers


def build_word_tokenizer(texts: Iterable[str], min_count: int = 1) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``texts`` (lower-cased; words and punctuation).

    Special tokens ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, ``<image>`` 4, ``<region>`` 5;
    the conversation template's words are always in the vocabulary.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=min_count)
    template = f"{SYSTEM} USER: ASSISTANT: region yes no . , ? ! : ; ' \" ( ) [ ] -"
    cleaned = (PLACEHOLDER.sub(" ", text) for text in texts)
    tokenizer.train_from_iterator([template, *cleaned], trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "region_token": REGION_TOKEN},
    )


def load_vicuna_tokenizer(directory: str | Path) -> Any:
    """A local Vicuna/LLaMA tokenizer with ``<image>`` and ``<region>`` added (ids 32000, 32001)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, REGION_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved next to a checkpoint (``tokenizer.json``), special tokens included."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    unknown = (None, tokenizer.unk_token_id)
    missing = [t for t in (IMAGE_TOKEN, REGION_TOKEN) if tokenizer.convert_tokens_to_ids(t) in unknown]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return tokenizer


def config_token_ids(tokenizer: Any) -> dict[str, int]:
    """The special token ids an :class:`RGPTConfig` needs, read from ``tokenizer``."""
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "region_token_id": tokenizer.convert_tokens_to_ids(REGION_TOKEN),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# --------------------------------------------------------------------------- prompts


def rewrite_regions(prompt: str, n_regions: int) -> tuple[str, list[int]]:
    """Replace each ``<regionN>`` by ``<region>``; return the text and the 0-based region index
    of each placeholder in order. Raises ``ValueError`` unless the placeholders name exactly
    regions 1..n_regions (each at least once)."""
    return _rewrite(prompt, n_regions, lambda _: REGION_TOKEN, (REGION_TOKEN, IMAGE_TOKEN))


def user_turn(prompt: str, first: bool) -> str:
    """One USER turn up to and including ``ASSISTANT:`` (the first carries the system line and image)."""
    if first:
        return f"{SYSTEM} USER: {IMAGE_TOKEN}\n{prompt} ASSISTANT:"
    return f"USER: {prompt} ASSISTANT:"


# --------------------------------------------------------------------------- images and masks


@dataclass(frozen=True)
class Frame:
    """How an image of ``width`` x ``height`` maps to the model's square input."""

    width: int
    height: int
    size: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        return ((self.side - self.width) // 2, (self.side - self.height) // 2)


def preprocess_image(image: Any, size: int) -> torch.Tensor:
    """PIL RGB image -> [3, size, size]: pad to square with the CLIP mean colour, resize, normalise."""
    from PIL import Image

    frame = Frame(image.width, image.height, size)
    fill = tuple(int(round(m * 255)) for m in CLIP_MEAN)
    square = Image.new("RGB", (frame.side, frame.side), fill)
    square.paste(image, frame.offset)
    square = square.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (pixels - mean) / std


def region_masks(regions: Sequence[Any], width: int, height: int, size: int) -> torch.Tensor:
    """Regions (``bench.regions.Region``) -> soft masks [n, size, size] in the padded, resized frame.

    A region with a mask uses the decoded mask; a box-only region is its rectangle.
    """
    frame = Frame(width, height, size)
    if not regions:
        return torch.zeros((0, size, size))
    x0, y0 = frame.offset
    square = torch.zeros((len(regions), frame.side, frame.side))
    for i, region in enumerate(regions):
        mask = torch.from_numpy(np.ascontiguousarray(region.decode_mask(width, height))).float()
        square[i, y0:y0 + height, x0:x0 + width] = mask
    return F.interpolate(square[:, None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[:, 0].clamp(0, 1)


# --------------------------------------------------------------------------- the processor


class RGPTProcessor(RegionProcessor):
    """Turns (image, regions, prompt) into RGPT inputs, and batches them (shared parts:
    :class:`adapters.region_processing.RegionProcessor`). Regions are soft masks, batched as
    ``region_masks``."""

    region_key = "region_masks"
    reserved_tokens = (REGION_TOKEN, IMAGE_TOKEN)

    def __init__(self, tokenizer: Any, config: RGPTConfig) -> None:
        super().__init__(tokenizer, config)
        ids = config_token_ids(tokenizer)
        if ids["image_token_id"] != config.image_token_id or ids["region_token_id"] != config.region_token_id:
            raise ValueError(f"tokenizer ids {ids} do not match the config's <image>/<region> ids "
                             f"({config.image_token_id}, {config.region_token_id})")

    def user_turn(self, text: str, first: bool) -> str:
        return user_turn(text, first)

    def region_text(self, number: int) -> str:
        return REGION_TOKEN

    def image(self, image: Any) -> torch.Tensor:
        return preprocess_image(image, self.config.image_size)

    def regions(self, regions: Sequence[Any], width: int, height: int) -> torch.Tensor:
        return region_masks(regions, width, height, self.config.image_size)

    masks = regions  # RGPT's regions are masks
