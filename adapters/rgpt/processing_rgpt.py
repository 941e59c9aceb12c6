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
* Training examples (:meth:`RGPTProcessor.training_example`): labels are the answer
  tokens and the ``</s>`` after each answer; everything else is -100.
* Tokenizers: :func:`build_word_tokenizer` (tiny size, word level, built from texts) and
  :func:`load_vicuna_tokenizer` (full size, a local Vicuna/LLaMA tokenizer directory).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adapters.rgpt.configuration_rgpt import RGPTConfig

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN, REGION_TOKEN)  # word tokenizer ids 0..5
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PLACEHOLDER = re.compile(r"<region(\d+)>")
IGNORE_INDEX = -100


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
    order = [int(m.group(1)) - 1 for m in PLACEHOLDER.finditer(prompt)]
    if sorted(set(order)) != list(range(n_regions)):
        named = sorted({i + 1 for i in order})
        raise ValueError(f"the prompt names regions {named} but {n_regions} region(s) were given: {prompt!r}")
    if REGION_TOKEN in prompt or IMAGE_TOKEN in prompt:
        raise ValueError(f"the prompt already contains {REGION_TOKEN} or {IMAGE_TOKEN}: {prompt!r}")
    return PLACEHOLDER.sub(REGION_TOKEN, prompt), order


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


class RGPTProcessor:
    """Turns (image, regions, prompt) into model inputs, and batches them."""

    def __init__(self, tokenizer: Any, config: RGPTConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        ids = config_token_ids(tokenizer)
        if ids["image_token_id"] != config.image_token_id or ids["region_token_id"] != config.region_token_id:
            raise ValueError(f"tokenizer ids {ids} do not match the config's <image>/<region> ids "
                             f"({config.image_token_id}, {config.region_token_id})")

    # ------------------------------------------------------------------ pieces

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the single ``<image>`` expanded to the image-token count."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        for token in ids:
            if token == self.config.image_token_id:
                out.extend([token] * self.config.num_image_tokens)
            else:
                out.append(token)
        return out

    def encode_answer(self, text: str) -> list[int]:
        """Answer/continuation ids (no special tokens), as they follow ``ASSISTANT:``."""
        return self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]

    def image(self, image: Any) -> torch.Tensor:
        return preprocess_image(image, self.config.image_size)

    def masks(self, regions: Sequence[Any], width: int, height: int) -> torch.Tensor:
        return region_masks(regions, width, height, self.config.image_size)

    # ------------------------------------------------------------------ inference

    def prompt(self, prompt: str, n_regions: int) -> tuple[list[int], list[int]]:
        """Prompt ids (``<s>`` + first USER turn up to ``ASSISTANT:``) and the region order."""
        text, order = rewrite_regions(prompt, n_regions)
        return [self.config.bos_token_id, *self._encode(user_turn(text, first=True))], order

    # ------------------------------------------------------------------ training

    def training_tokens(self, turns: Sequence[tuple[str, str]],
                        n_regions: int) -> tuple[list[int], list[int], list[int]]:
        """Ids, labels and region order of (user, assistant) ``turns`` about ``n_regions`` regions.

        Placeholders ``<regionN>`` may appear in any user turn. Labels are the answer tokens and
        each answer's ``</s>``; -100 elsewhere. The order lists, per ``<region>`` token, the
        0-based region it takes.
        """
        if not turns:
            raise ValueError("a training example needs at least one (user, assistant) turn")
        ids = [self.config.bos_token_id]
        labels = [IGNORE_INDEX]
        order: list[int] = []
        for index, (user, answer) in enumerate(turns):
            found = [int(m.group(1)) - 1 for m in PLACEHOLDER.finditer(user)]
            if any(i < 0 or i >= n_regions for i in found):
                raise ValueError(f"turn {index + 1} names a region beyond the {n_regions} given: {user!r}")
            order.extend(found)
            prompt_ids = self._encode(user_turn(PLACEHOLDER.sub(REGION_TOKEN, user), first=index == 0))
            answer_ids = [*self.encode_answer(answer), self.config.eos_token_id]
            ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return ids, labels, order

    def training_example(self, image: Any, regions: Sequence[Any],
                         turns: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """One training example from a PIL image, its regions and (user, assistant) turns.

        Returns ``input_ids`` [L], ``labels`` [L] (see :meth:`training_tokens`),
        ``pixel_values`` [3, S, S] and ``region_masks`` [k, S, S] (k = placeholders, in order).
        """
        ids, labels, order = self.training_tokens(turns, len(regions))
        masks = self.masks(regions, image.width, image.height)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "pixel_values": self.image(image),
            "region_masks": masks[order] if order else masks[:0],
        }

    # ------------------------------------------------------------------ batching

    def pad(self, sequences: Sequence[Sequence[int]], side: str = "left",
            value: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad id lists to one length: (ids [B, L], attention_mask [B, L])."""
        fill = self.config.pad_token_id if value is None else value
        length = max((len(s) for s in sequences), default=0)
        ids = torch.full((len(sequences), length), fill, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if not len(seq):
                continue
            span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
            ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, span] = 1
        return ids, mask

    def collate(self, examples: Sequence[dict[str, torch.Tensor]], side: str = "right") -> dict[str, Any]:
        """Batch training examples: padded ids/labels/attention mask, stacked pixels (or vision grids),
        mask list."""
        ids, attention = self.pad([e["input_ids"].tolist() for e in examples], side)
        labels, _ = self.pad([e["labels"].tolist() for e in examples], side, value=IGNORE_INDEX)
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels,
                 "region_masks": [e["region_masks"] for e in examples]}
        for key in ("pixel_values", "vision_grid"):  # pixels, or the frozen tower's precomputed grids
            if all(key in e for e in examples):
                batch[key] = torch.stack([e[key] for e in examples])
        return batch
