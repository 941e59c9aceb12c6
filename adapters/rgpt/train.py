"""Training recipe for RGPT: the paper's two stages on the synthetic suite (or real conversations).

Stage 1 trains the refinement and the connector with CLIP and the LLM frozen;
stage 2 adds the LLM. CLIP stays frozen throughout; the loss is on answer
tokens only (the processor's labels).

At tiny size there is no pretrained tiny CLIP to load offline, and a frozen
*random* tower leaves the model at chance. So a "stage 0"
(:mod:`bench.training.vision`) first trains the tiny tower on the training
split's ground truth, as a stand-in for CLIP's own pre-training; then the
tower is frozen and stages 1 and 2 run as in the paper. Because the tower is
frozen, its patch grid is computed once per training image and reused by
every step (``vision_grid=``): the same numbers as running the tower each
step, at a fraction of the cost.

Data: by default a synthetic suite with ``Recipe.train_images`` training
images (its val/test images are the default suite's: splits are seeded
independently), turned into conversations by
:mod:`bench.training.conversations` with the evaluation prompts verbatim.
The tiny word-level tokenizer is built from their text.

Layout of ``out_dir``: ``config.json``, ``model.safetensors``,
``tokenizer.json`` (+ tokenizer config), ``recipe.json``, ``vision/``
(the pre-trained tower and its log), ``log.json`` and ``resume/`` (the
trainer's). Re-running the same call resumes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.errors import ConfigError
from bench.training import Conversation, Stage, build_conversations, mix, runs, train
from bench.training.conversations import vocabulary_texts
from bench.training.runs import (
    POLISH_CAPTIONS,
    VISION_DIR,
    checkpoint_to_polish,
    drawn_beyond_mix,
    example_sets,
    language_then_alignment,
    paper_stages,
    polish,
    record_seconds,
    run_tokenizer,
    stage0_tower,
    write_recipe,
)
from bench.training.vision import (
    VisionRecipe,
    build_vision_examples,
    init_sincos_positions,
    resize_positions,
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on (recorded next to the checkpoint)."""

    seed: int = 0
    image_size: int = 192          # tiny: 192 px, patch 8 -> 24x24 grid, refined to 96x96
    image_token_grid: int = 4      # image tokens = 4x4 pooled cells (64 tokens left the LLM at chance)
    train_images: int = 20000      # synthetic training images when no data root is given
    vision_steps: int = 12000      # stage 0: the tiny tower's stand-in for CLIP pre-training
    vision_batch_size: int = 16
    vision_lr: float = 3e-3
    # Stage 0 runs its vision_steps at this resolution, then vision_finish_steps at image_size
    # (position embeddings resized; bench.training.vision.resize_positions): 128 px costs a third
    # of 192 px per step, and at 128 px small objects were most of coco-cls's errors (README).
    # None or >= image_size: all of stage 0 at image_size.
    vision_start_size: int | None = 128
    vision_finish_steps: int = 4000
    vision_finish_lr: float = 1.5e-3
    # Stage 0 also learns which categories each image-token cell shows (what POPE asks of them).
    vision_presence: bool = True
    # Stage L: the tiny LLM's stand-in for language pre-training (bench.training.language says why).
    language_easy_steps: int = 0  # REC cut to 2 candidates, with classification and POPE (not needed: measured)
    language_steps: int = 4000  # the verbalized mix
    language_cycles: int = 2  # warm restarts of the mix phase (LanguageRecipe.cycles)
    language_lr: float = 1e-3
    # Stage L's word head: each word of a region read at the region's token (colour included;
    # bench.training.language.region_word_loss says why). 0: no word head.
    language_word_weight: float = 1.0
    # Box regions (no mask) verbalized with a marker word after their object's words, so that
    # box and mask regions can ask for their two caption styles (bench.training.language.verbalize).
    language_box_marker: bool = True
    # What an image token's cell names in stage L: "category" (each object's category), "colour"
    # (colour and category) or "all" (size, colour and category; bench.training.language.cell_words).
    language_cell_detail: str = "category"
    # Stage L's description head: each region's shortest description among its image's objects
    # (bench.training.language.shortest_description says why). 0: no description head.
    language_description_weight: float = 0.0
    # Stages 1 and 2 after stage L: weights of the vision tokens' pull toward stage L's word
    # means and of stage L's frozen auxiliary heads (bench.training.alignment says why).
    align_weight: float = 1.0
    vision_aux_weight: float = 1.0
    # ... and of a contrast: each word of a vision token must beat every other word in its place
    # (bench.training.alignment.word_contrast_loss; the pull alone all but ignores colour).
    contrast_weight: float = 0.1
    contrast_temperature: float = 0.01
    # The image tokens' terms (a mean) beside the region tokens' (a mean, weight 1). In one mean
    # the image tokens' 16 category-only cells took the regions' colour away; before stage L's
    # word head, share 0.1 was what kept it. With the word head asked in stages 1 and 2, share 1
    # keeps colour too and POPE F1 gains 11 points over 0.1 (README, runs M and N).
    image_align_share: float = 1.0
    stage1_steps: int = 600
    # Phases opening stage 2 (bench.training.runs.paper_stages). Without stage L, region
    # classification alone (1500 steps) was what made the LLM read the vision tokens; after
    # stage L it already does, and stage 2 is the full mix from the start.
    curriculum: tuple[tuple[str, int], ...] = ()
    # 2330: with captions doubled in the mix (below), the other kinds get as many steps as 2000 gave them before.
    stage2_steps: int = 2330
    batch_size: int = 32
    stage1_lr: float = 2e-3
    stage2_lr: float = 2e-3
    warmup_steps: int = 100
    # Conversations per kind after re-weighting (REC and relations are the hardest; POPE at 24000
    # rather than 12000 gained 4 F1 points, README runs N and O; captions at 24000 rather than
    # 12000 gained 15 refcocog-cap CIDEr points, runs R and S).
    mix: tuple[tuple[str, int], ...] = (
        ("classification", 12000), ("caption", 24000), ("relation", 6000), ("rec", 20000), ("pope", 24000),
    )
    # Stage "polish": stage 2's parameters, a quarter of its rate, on a mix led by RefCOCOg's captions,
    # on the bare model (no alignment terms; its own directory, polish/). Why: which description a
    # RefCOCOg reference chooses ("the ring" when no other ring is there, "the red ring" when one is)
    # is what keeps refcocog-cap's CIDEr low. On run S, 1200 such steps raised every score (training
    # log, run U; 2400 steps, run V, no better); with the alignment terms on, vg-cap's CIDEr fell from
    # 296 to 249 instead (run W). With the longest sentence of each ref (below), 1200 steps on the
    # defaults' stage-2 checkpoint gave the embedded checkpoint (run PA), the first to meet every minimum.
    polish_steps: int = 1200
    polish_lr: float = 5e-4
    polish_mix: tuple[tuple[str, int], ...] = (
        ("classification", 4000), ("caption:refcocog", 20000), ("caption:vg", 6000), ("relation", 2000),
        ("rec", 8000), ("pope", 8000),
    )
    # Which sentences of a RefCOCOg ref the polish stage's captions train on: "all", or "longest"
    # (bench.training.conversations.longest_phrasings says why).
    polish_captions: str = "longest"


# What the polish stage trains (stage 2's parameters, on the bare model).
POLISH_TRAINED = ("refinement.", "connector.", "llm.")


def stages(recipe: Recipe, prefix: str = "") -> list[Stage]:
    """The paper's two stages: (1) refinement + connector; (2) + the LLM (:func:`bench.training.runs.paper_stages`).
    CLIP is never trained here. ``prefix``: where the model's parameters sit in the trained module
    (``model.`` in an :class:`bench.training.alignment.AlignedLM`)."""
    return paper_stages(recipe, (f"{prefix}refinement.", f"{prefix}connector."), (f"{prefix}llm.",))


def polish_stage(recipe: Recipe) -> Stage:
    """The closing polish stage (``Recipe.polish_steps``): what stage 2 trains, on the bare model,
    at ``Recipe.polish_lr``, drawing from the example set ``polish`` (``Recipe.polish_mix``)."""
    return runs.polish_stage(recipe, POLISH_TRAINED)


class CachedCollate:
    """Turns conversations into padded tensors from the frozen tower's precomputed grids.

    Each conversation is tokenized and its region masks are decoded and resized to the
    refined map (what Mask Pooling would do) once, the first time it is drawn; masks are
    kept in half precision, as soft masks in [0, 1] lose nothing that matters there.
    """

    def __init__(self, processor: Any, grids: dict[str, torch.Tensor], sizes: dict[str, tuple[int, int]],
                 refined_side: int) -> None:
        self.processor = processor
        self.grids = grids
        self.sizes = sizes
        self.refined_side = refined_side
        self._examples: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def example(self, conversation: Conversation) -> dict[str, torch.Tensor]:
        from adapters.rgpt.modeling_rgpt import resize_masks

        key = id(conversation)
        if key not in self._examples:
            ids, labels, order = self.processor.training_tokens(conversation.turns, len(conversation.regions))
            width, height = self.sizes[conversation.image.key]
            masks = self.processor.masks([conversation.regions[i] for i in order], width, height)
            self._examples[key] = (torch.tensor(ids), torch.tensor(labels),
                                   resize_masks(masks, self.refined_side).half())
        ids, labels, masks = self._examples[key]
        return {"input_ids": ids, "labels": labels, "region_masks": masks.float(),
                "vision_grid": self.grids[conversation.image.key]}

    def __call__(self, conversations: list[Conversation]) -> dict[str, Any]:
        return self.processor.collate([self.example(c) for c in conversations])


@torch.no_grad()
def precompute_grids(model: Any, processor: Any, images: dict[str, Any],
                     batch_size: int = 64) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """The frozen tower's patch grid [C, g, g] and the (width, height) of every image, by key."""
    keys = sorted(images)
    grids: dict[str, torch.Tensor] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        loaded = [images[k].load() for k in chunk]
        sizes.update((k, (image.width, image.height)) for k, image in zip(chunk, loaded, strict=True))
        pixels = torch.stack([processor.image(image) for image in loaded])
        for key, grid in zip(chunk, model.vision_grid(pixels), strict=True):
            grids[key] = grid.clone()
    return grids, sizes


def training_suite(recipe: Recipe) -> Path:
    """The synthetic suite the default recipe trains on (generated on first use)."""
    from bench.synthetic import SuiteParams, default_suite_dir

    return default_suite_dir(SuiteParams(n_train=recipe.train_images))


def stage0(model: Any, tokenizer: Any, data_root: Path, out_dir: Path, recipe: Recipe, progress: bool) -> None:
    """Stage 0 into ``out_dir/vision/``: ``recipe.vision_steps`` at ``recipe.vision_start_size``
    (saved in ``vision/start/``), then ``recipe.vision_finish_steps`` at ``recipe.image_size``;
    or all steps at ``image_size`` when the start size is None or not smaller."""
    from transformers import CLIPVisionModel

    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.processing_rgpt import RGPTProcessor

    def phase(tower: Any, config: Any, initialise: Any, steps: int, lr: float, warmup: int,
              subdir: str) -> None:
        processor = RGPTProcessor(tokenizer, config)
        stage0_tower(tower, out_dir, initialise,
                     lambda: build_vision_examples(data_root, "train", processor.image, processor.masks,
                                                   config.patch_grid),
                     config.vision_select_layer,
                     VisionRecipe(steps=steps, lr=lr, seed=recipe.seed, batch_size=recipe.vision_batch_size,
                                  warmup_steps=warmup,
                                  presence_grid=recipe.image_token_grid if recipe.vision_presence else 0),
                     progress=progress, subdir=subdir)

    config = model.config
    start = recipe.vision_start_size
    if start is None or start >= recipe.image_size:
        phase(model.vision_tower, config, lambda: init_sincos_positions(model.vision_tower), recipe.vision_steps,
              recipe.vision_lr, VisionRecipe.warmup_steps, VISION_DIR)
        return

    def from_start() -> None:  # only when the finished tower is not saved yet
        start_config = RGPTConfig.from_dict(config.to_dict())
        start_config.vision_config.image_size = start
        start_tower = CLIPVisionModel(start_config.vision_config)
        phase(start_tower, start_config, lambda: init_sincos_positions(start_tower), recipe.vision_steps,
              recipe.vision_lr, VisionRecipe.warmup_steps, f"{VISION_DIR}/start")
        model.vision_tower.load_state_dict(resize_positions(start_tower.state_dict(), config.patch_grid))

    # Twice the usual warm-up: the finishing phase starts with fresh probe heads on a trained tower
    # (the setting of run R, README).
    phase(model.vision_tower, config, from_start, recipe.vision_finish_steps, recipe.vision_finish_lr,
          2 * VisionRecipe.warmup_steps, VISION_DIR)


def train_tiny_rgpt(data_root: Path | None, out_dir: Path, recipe: Recipe = Recipe(), progress: bool = True,
                    conversations: Sequence[Conversation] | None = None, polish_from: Path | None = None) -> Path:
    """Train the tiny RGPT on ``data_root``'s training split (default: :func:`training_suite`);
    the checkpoint lands in ``out_dir``. Re-running the same call resumes after an interruption.

    ``polish_from``: a tiny RGPT checkpoint directory (``config.json``, ``model.safetensors``,
    ``tokenizer.json``) to run only the polish stage on, instead of stages 0 to 2: the same stage,
    data and seed as a polish stage at the end of a run, so polishing a run's stage-2 checkpoint
    gives what that run with ``polish_steps`` gives."""
    from adapters.rgpt.configuration_rgpt import RGPTConfig
    from adapters.rgpt.modeling_rgpt import RGPTForCausalLM
    from adapters.rgpt.processing_rgpt import RGPTProcessor, build_word_tokenizer, config_token_ids, load_tokenizer

    if recipe.polish_captions not in POLISH_CAPTIONS:
        raise ConfigError(f"polish_captions {recipe.polish_captions!r}: expected one of {', '.join(POLISH_CAPTIONS)}")
    started = time.time()
    data_root = Path(data_root) if data_root is not None else training_suite(recipe)
    torch.manual_seed(recipe.seed)
    base = list(conversations) if conversations is not None else build_conversations(data_root, "train",
                                                                                       recipe.seed)
    examples = mix(base, dict(recipe.mix), seed=recipe.seed)
    if polish_from is not None:
        model, tokenizer = checkpoint_to_polish(Path(polish_from), out_dir, recipe, RGPTForCausalLM,
                                                load_tokenizer, "RGPT")
    evaluated_texts, training_only_texts = vocabulary_texts(base)
    tokenizer = run_tokenizer(out_dir, evaluated_texts, build_word_tokenizer, load_tokenizer,
                              extra_texts=training_only_texts)
    if polish_from is None:
        config = RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer))
        config.vision_config.image_size = recipe.image_size
        config.image_token_grid = recipe.image_token_grid
        model = RGPTForCausalLM(config)
    config = model.config
    processor = RGPTProcessor(tokenizer, config)
    write_recipe(out_dir, recipe, data_root, base, examples,
                 polish_from=str(polish_from) if polish_from is not None else None)

    plain: list[CachedCollate] = []  # built once: stages 1 and 2 and the polish stage share the grids

    def cached_collate() -> CachedCollate:
        if not plain:
            grids, sizes = precompute_grids(model, processor, {c.image.key: c.image for c in base})
            plain.append(CachedCollate(processor, grids, sizes, config.refined_grid))
        return plain[0]

    def save(_: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(out_dir, tokenizer=tokenizer)  # the model alone, without any wrapper

    if polish_from is None:
        # Stage 0: the tiny tower's stand-in for CLIP pre-training, then frozen for good.
        stage0(model, tokenizer, data_root, out_dir, recipe, progress)
        # Stage L: the tiny LLM's stand-in for language pre-training, text only (vision tokens as words);
        # then stages 1 and 2 keep the vision tokens close to its words (bench.training.alignment).
        sets = example_sets(base, examples, [kind for kind, _ in recipe.curriculum])
        trained, collate, prefix = language_then_alignment(model, processor, examples, data_root, out_dir, recipe,
                                                           cached_collate, config.image_token_grid,
                                                           progress=progress,
                                                           later=drawn_beyond_mix(sets, stages(recipe)))
        # With a polish stage, out_dir's checkpoint is the polished model (written once it is done).
        train(trained, sets, collate, stages(recipe, prefix), out_dir, seed=recipe.seed,
              save_model=None if recipe.polish_steps else save, progress=progress)
    if recipe.polish_steps:
        # The bare model with the plain collate, in polish/ (bench.training.runs.polish).
        polish(model, base, recipe, cached_collate(), POLISH_TRAINED, out_dir, save, progress)
    record_seconds(out_dir, started)
    return out_dir
