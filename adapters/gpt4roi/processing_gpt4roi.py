"""GPT4RoI inputs: the ``###`` conversation, ``regionN <bbox>``, the stretched 224 px image, normalised boxes.

* Prompt (Vicuna v0 style, as released)::

    A chat between a curious human and an artificial intelligence assistant. The assistant gives
    helpful, detailed, and polite answers to the human's questions.

    ### Human: The <im_start><im_patch>x256<im_end> provides an overview of the picture.
    {prompt}
    ### Assistant:

  The released demo stops the prompt at ``### `` and strips the ``Assistant: `` the model
  writes; ending the prompt with ``### Assistant:`` is that same text, and lets answers be
  scored as continuations. Generation stops at ``###`` (or ``</s>``).
* ``<regionN>`` becomes ``regionN <bbox>`` so answers can name "region1" in plain text; the
  k-th ``<bbox>`` takes the box of the k-th placeholder.
* Image: resized to 224x224 without keeping the aspect ratio (bicubic), CLIP mean/std.
* Boxes: pixel xyxy divided by [W, H, W, H]; a mask-only region uses its mask's box.
* Tokens: LLaMA's tokenizer with ``[PAD]`` 32000, ``<im_patch>`` 32001, ``<bbox>`` 32002,
  ``<point>`` 32003, ``<im_start>`` 32004, ``<im_end>`` 32005 (the released ids); the tiny
  model uses a word-level tokenizer with the same added tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters.gpt4roi.configuration_gpt4roi import ADDED_TOKENS, FULL_BASE_VOCAB, GPT4RoIConfig
from adapters.region_processing import PLACEHOLDER, RegionProcessor

PAD_TOKEN, IMAGE_PATCH, BBOX, POINT, IMAGE_START, IMAGE_END = ADDED_TOKENS
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
IMAGE_PREFIX = "The {image} provides an overview of the picture."
STOP = "###"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", *ADDED_TOKENS)  # word tokenizer ids 0..8


# --------------------------------------------------------------------------- tokenizers


def build_word_tokenizer(texts: Iterable[str], max_regions: int = 16) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``texts`` for the tiny model (lower-cased).

    Special tokens ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then the six released added tokens in
    their order (``[PAD]`` 3 ... ``<im_end>`` 8); the template's words and ``region1`` ..
    ``region{max_regions}`` are always in the vocabulary.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
    template = " ".join([SYSTEM, "### Human: Assistant:", IMAGE_PREFIX.format(image=""), "yes no . , ? ! : ; ' \" ( )",
                         *(f"region{n}" for n in range(1, max_regions + 1))])
    cleaned = (PLACEHOLDER.sub(" ", text) for text in texts)
    tokenizer.train_from_iterator([template, *cleaned], trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token=PAD_TOKEN)


def load_llama_tokenizer(directory: str | Path) -> Any:
    """A local LLaMA tokenizer with the six added tokens at the released ids (32000..32005).

    The released delta ships its tokenizer with them already; a plain LLaMA tokenizer gets them
    added in the released order.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    missing = [t for t in ADDED_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        tokenizer.add_tokens([t for t in ADDED_TOKENS[1:] if t in missing], special_tokens=True)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS]
    if ids != list(range(FULL_BASE_VOCAB, FULL_BASE_VOCAB + len(ADDED_TOKENS))):
        raise ValueError(f"{directory}: the added tokens {list(ADDED_TOKENS)} have ids {ids}, not 32000..32005 "
                         "as in the released checkpoint (use the tokenizer shipped with the delta)")
    tokenizer.pad_token = PAD_TOKEN
    return tokenizer


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved next to a checkpoint (``tokenizer.json``)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def word_tokenizer_ids() -> dict[str, int]:
    """:func:`config_token_ids` of any :func:`build_word_tokenizer` tokenizer (fixed special ids)."""
    index = SPECIAL_TOKENS.index
    return {"pad_token_id": index(PAD_TOKEN), "image_token_id": index(IMAGE_PATCH), "region_token_id": index(BBOX),
            "image_start_token_id": index(IMAGE_START), "image_end_token_id": index(IMAGE_END),
            "bos_token_id": index("<s>"), "eos_token_id": index("</s>")}


def config_token_ids(tokenizer: Any) -> dict[str, int]:
    """The special token ids a :class:`GPT4RoIConfig` needs, read from ``tokenizer``."""
    return {
        "pad_token_id": tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_PATCH),
        "region_token_id": tokenizer.convert_tokens_to_ids(BBOX),
        "image_start_token_id": tokenizer.convert_tokens_to_ids(IMAGE_START),
        "image_end_token_id": tokenizer.convert_tokens_to_ids(IMAGE_END),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


# --------------------------------------------------------------------------- images and boxes


def preprocess_image(image: Any, size: int) -> torch.Tensor:
    """PIL RGB image -> [3, size, size]: stretched (aspect ratio not kept), bicubic, CLIP-normalised."""
    from PIL import Image

    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def normalised_boxes(regions: Sequence[Any], width: int, height: int) -> torch.Tensor:
    """Regions (``bench.regions.Region``, validated) -> xyxy / [W, H, W, H]: [n, 4]."""
    rows = []
    for region in regions:
        box = region.box
        if box is None:  # a mask-only region: the box around its mask
            ys, xs = np.nonzero(region.decode_mask(width, height))
            box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
        rows.append([box[0] / width, box[1] / height, box[2] / width, box[3] / height])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def stretched_masks(regions: Sequence[Any], width: int, height: int, size: int) -> torch.Tensor:
    """Region masks stretched like the image: [n, size, size], soft (bilinear, antialiased).

    The model itself reads boxes only; these feed the tiny tower's stage-0 pre-training.
    """
    import torch.nn.functional as F

    if not regions:
        return torch.zeros((0, size, size))
    masks = torch.stack([torch.from_numpy(np.ascontiguousarray(r.decode_mask(width, height))).float()
                         for r in regions])
    return F.interpolate(masks[:, None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[:, 0].clamp(0, 1)


# --------------------------------------------------------------------------- the processor


class GPT4RoIProcessor(RegionProcessor):
    """Turns (image, regions, prompt) into GPT4RoI inputs (shared parts:
    :class:`adapters.region_processing.RegionProcessor`). Regions are boxes, batched as ``boxes``."""

    region_key = "boxes"
    reserved_tokens = ADDED_TOKENS
    stop_strings = (STOP,)

    def __init__(self, tokenizer: Any, config: GPT4RoIConfig) -> None:
        super().__init__(tokenizer, config)
        ids = config_token_ids(tokenizer)
        wanted = {k: getattr(config, k) for k in ids}
        if ids != wanted:
            raise ValueError(f"tokenizer ids {ids} do not match the config's {wanted}")

    def user_turn(self, text: str, first: bool) -> str:
        if first:
            image = IMAGE_START + IMAGE_PATCH + IMAGE_END  # the processor expands <im_patch> to 256
            return f"{SYSTEM}\n\n### Human: {IMAGE_PREFIX.format(image=image)}\n{text}\n### Assistant:"
        return f"\n### Human: {text}\n### Assistant:"

    def region_text(self, number: int) -> str:
        return f"region{number} {BBOX}"

    def image(self, image: Any) -> torch.Tensor:
        return preprocess_image(image, self.config.image_size)

    def regions(self, regions: Sequence[Any], width: int, height: int) -> torch.Tensor:
        return normalised_boxes(regions, width, height)


def strip_answer(text: str) -> str:
    """The released demo's clean-up: cut at ``###`` and drop a leading ``Assistant:``."""
    text = text.split(STOP, 1)[0].strip()
    return text[len("Assistant:"):].strip() if text.startswith("Assistant:") else text
