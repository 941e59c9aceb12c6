"""Training recipe for RGPT: the paper's two stages on the synthetic suite (or real conversations).

Stage 1 trains the refinement and the connector with CLIP and the LLM frozen;
stage 2 adds the LLM. The loss is on answer tokens only (the processor's labels).

One deviation at tiny size, on purpose: there is no pretrained tiny CLIP to
load offline, so a frozen tower would be a frozen *random* one. The tiny
recipe therefore also trains the vision tower in stage 2. The full-size recipe
keeps CLIP frozen, as the paper does.

Data are the conversations of :mod:`bench.training.conversations`, built from
the suite's training split with the evaluation prompts verbatim; the tiny
word-level tokenizer is built from their text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.training import Conversation, Stage, all_texts, build_conversations, kind_counts, mix, train


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on (recorded next to the checkpoint)."""

    seed: int = 0
    image_size: int = 128          # tiny: 128 px, patch 8 -> 16x16 grid, refined to 64x64
    stage1_steps: int = 300
    stage2_steps: int = 3000
    batch_size: int = 32
    stage1_lr: float = 2e-3
    stage2_lr: float = 1e-3
    warmup_steps: int = 100
    # Conversations per kind after re-weighting (REC and relations are the hardest).
    mix: tuple[tuple[str, int], ...] = (
        ("classification", 3000), ("caption", 3000), ("relation", 2000), ("rec", 5000), ("pope", 3000),
    )


def stages(recipe: Recipe, train_vision: bool) -> list[Stage]:
    stage2 = ("refinement.", "connector.", "llm.") + (("vision_tower.",) if train_vision else ())
    return [
        Stage("stage1", ("refinement.", "connector."), recipe.stage1_steps, recipe.stage1_lr, recipe.batch_size,
              warmup_steps=min(recipe.warmup_steps, recipe.stage1_steps // 2)),
        Stage("stage2", stage2, recipe.stage2_steps, recipe.stage2_lr, recipe.batch_size,
              warmup_steps=recipe.warmup_steps, weight_decay=0.01),
    ]


class _Collate:
    """Turns conversations into padded tensors; each image is read from disk once."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._images: dict[str, Any] = {}

    def __call__(self, conversations: list[Conversation]) -> dict[str, Any]:
        examples = []
        for conversation in conversations:
            key = conversation.image.key
            if key not in self._images:
                self._images[key] = conversation.image.load()
            examples.append(self.processor.training_example(self._images[key], conversation.regions,
                                                            conversation.turns))
        return self.processor.collate(examples)


def train_tiny_rgpt(data_root: Path, out_dir: Path, recipe: Recipe = Recipe(), progress: bool = True,
                    conversations: Sequence[Conversation] | None = None) -> Path:
    """Train the tiny RGPT on ``data_root``'s training split; the checkpoint lands in ``out_dir``.

    Re-running the same call resumes from ``out_dir/resume`` after an interruption.
    """
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
    from adapters.rgpt.processing_rgpt import RGPTProcessor, build_word_tokenizer, config_token_ids

    torch.manual_seed(recipe.seed)
    base = list(conversations) if conversations is not None else build_conversations(data_root, "train",
                                                                                       recipe.seed)
    examples = mix(base, dict(recipe.mix), seed=recipe.seed)
    tokenizer = build_word_tokenizer(all_texts(base))
    config = RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer))
    config.vision_config.image_size = recipe.image_size
    model = RGPTForCausalLM(config)
    processor = RGPTProcessor(tokenizer, config)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.json").write_text(json.dumps({
        "recipe": dataclasses.asdict(recipe), "data_root": str(data_root),
        "conversations": kind_counts(base), "examples": kind_counts(examples),
    }, indent=2) + "\n")

    def save(trained: torch.nn.Module, directory: Path) -> None:
        trained.save_pretrained(directory, tokenizer=tokenizer)

    train(model, examples, _Collate(processor), stages(recipe, train_vision=True), out_dir, seed=recipe.seed,
          save_model=save, progress=progress)
    return out_dir
