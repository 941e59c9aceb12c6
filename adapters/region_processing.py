"""What every region LLM's processor shares: prompts with ``<regionN>``, answers, training labels, batching.

A model's processor (RGPT, GPT4RoI) subclasses :class:`RegionProcessor` and says
only what differs:

* :meth:`~RegionProcessor.user_turn`: its conversation template, up to where the
  assistant's answer starts;
* :attr:`~RegionProcessor.region_text`: what a ``<regionN>`` placeholder becomes in the
  text (RGPT: ``<region>``; GPT4RoI: ``regionN <bbox>``); the region token in it takes
  region N's vector;
* :meth:`~RegionProcessor.image` and :meth:`~RegionProcessor.regions`: pixels and the
  region tensor (RGPT: soft masks; GPT4RoI: normalised boxes), under
  :attr:`~RegionProcessor.region_key` in training batches.

The image placeholder token (``config.image_token_id``) is expanded to
``config.num_image_tokens`` copies, so ids, labels and attention masks have their final
length before the model sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

PLACEHOLDER = re.compile(r"<region(\d+)>")
IGNORE_INDEX = -100


def rewrite_regions(prompt: str, n_regions: int, region_text: Callable[[int], str],
                    reserved: Sequence[str] = ()) -> tuple[str, list[int]]:
    """Replace each ``<regionN>`` by ``region_text(N)``; return the text and the 0-based region index
    of each placeholder in order. Raises ``ValueError`` unless the placeholders name exactly
    regions 1..n_regions (each at least once), or if the prompt already holds a ``reserved`` token."""
    order = [int(m.group(1)) - 1 for m in PLACEHOLDER.finditer(prompt)]
    if sorted(set(order)) != list(range(n_regions)):
        named = sorted({i + 1 for i in order})
        raise ValueError(f"the prompt names regions {named} but {n_regions} region(s) were given: {prompt!r}")
    clash = [token for token in reserved if token in prompt]
    if clash:
        raise ValueError(f"the prompt already contains {' and '.join(clash)}: {prompt!r}")
    return PLACEHOLDER.sub(lambda m: region_text(int(m.group(1))), prompt), order


class RegionProcessor:
    """Turns (image, regions, prompt) into model inputs, and batches them. Subclass per model."""

    region_key = "regions"  # the batch key of the per-row region tensors
    reserved_tokens: tuple[str, ...] = ()  # special tokens a user prompt must not contain

    def __init__(self, tokenizer: Any, config: Any) -> None:
        self.tokenizer = tokenizer
        self.config = config

    # ------------------------------------------------------------------ model specific

    def user_turn(self, text: str, first: bool) -> str:
        """One user turn up to where the answer starts (the first carries the system line and image)."""
        raise NotImplementedError

    def region_text(self, number: int) -> str:
        """What ``<region{number}>`` becomes in the text (it must contain the region token once)."""
        raise NotImplementedError

    def image(self, image: Any) -> torch.Tensor:
        """PIL RGB image -> pixel values [3, S, S]."""
        raise NotImplementedError

    def regions(self, regions: Sequence[Any], width: int, height: int) -> torch.Tensor:
        """Validated ``bench.regions.Region`` list -> the model's region tensor [n, ...]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with each image token expanded to the image-token count."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        for token in ids:
            if token == self.config.image_token_id:
                out.extend([token] * self.config.num_image_tokens)
            else:
                out.append(token)
        return out

    def encode_answer(self, text: str) -> list[int]:
        """Answer/continuation ids (no special tokens), as they follow the assistant's tag."""
        return self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]

    def rewrite(self, prompt: str, n_regions: int) -> tuple[str, list[int]]:
        return rewrite_regions(prompt, n_regions, self.region_text, self.reserved_tokens)

    # ------------------------------------------------------------------ inference

    def prompt(self, prompt: str, n_regions: int) -> tuple[list[int], list[int]]:
        """Prompt ids (``<s>`` + the first user turn up to the answer) and the region order."""
        text, order = self.rewrite(prompt, n_regions)
        return [self.config.bos_token_id, *self.encode(self.user_turn(text, first=True))], order

    # ------------------------------------------------------------------ training

    def training_tokens(self, turns: Sequence[tuple[str, str]],
                        n_regions: int) -> tuple[list[int], list[int], list[int]]:
        """Ids, labels and region order of (user, assistant) ``turns`` about ``n_regions`` regions.

        Placeholders ``<regionN>`` may appear in any user turn. Labels are the answer tokens and
        each answer's ``</s>``; -100 elsewhere. The order lists, per region token, the 0-based
        region it takes.
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
            text = PLACEHOLDER.sub(lambda m: self.region_text(int(m.group(1))), user)
            prompt_ids = self.encode(self.user_turn(text, first=index == 0))
            answer_ids = [*self.encode_answer(answer), self.config.eos_token_id]
            ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return ids, labels, order

    def training_example(self, image: Any, regions: Sequence[Any],
                         turns: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """One training example from a PIL image, its regions and (user, assistant) turns.

        Returns ``input_ids`` [L], ``labels`` [L] (see :meth:`training_tokens`),
        ``pixel_values`` [3, S, S] and the region tensors under :attr:`region_key`
        (one per placeholder, in order).
        """
        ids, labels, order = self.training_tokens(turns, len(regions))
        tensors = self.regions(regions, image.width, image.height)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "pixel_values": self.image(image),
            self.region_key: tensors[order] if order else tensors[:0],
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
        """Batch training examples: padded ids/labels/attention mask, stacked pixels (or whatever
        precomputed vision tensors the examples carry), the region tensors as a list."""
        ids, attention = self.pad([e["input_ids"].tolist() for e in examples], side)
        labels, _ = self.pad([e["labels"].tolist() for e in examples], side, value=IGNORE_INDEX)
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels,
                 self.region_key: [e[self.region_key] for e in examples]}
        skip = {"input_ids", "labels", self.region_key}
        for key in examples[0] if examples else ():
            if key not in skip and all(key in e for e in examples):
                batch[key] = torch.stack([e[key] for e in examples])
        return batch
