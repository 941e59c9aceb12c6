"""Training recipe for GPT4RoI: its two stages on the synthetic suite, with RGPT's training machinery.

Stage 1 trains ``mm_projector`` and the region extractor (``spi_module``) with CLIP and the
LLM frozen; stage 2 adds the LLM. CLIP stays frozen; the loss is on answer tokens only
(the shared processor's labels). Conversations, the trainer (deterministic, resumable) and
stage 0 are :mod:`bench.training`'s, exactly as for RGPT; only the collate differs.

Stage 0 (tiny only): the released GPT4RoI and RGPT both start from OpenAI's CLIP ViT-L/14
(at 224 and 336 px). The tiny models mirror that: the tiny GPT4RoI's tower starts from the
tiny RGPT's stage-0 tower (``Recipe.init_tower``, default: the embedded RGPT checkpoint)
and is adapted to GPT4RoI's stretched (not padded) input by ``vision_steps`` more steps of
the same stage-0 objective; with ``init_tower=None`` it is trained from scratch like
RGPT's. Then the tower is frozen and its hidden states (the image-token layer and the four
levels) are computed once per training image and reused by every step
(``vision_states=``, the same numbers as running the tower).

The LLM: both papers start from Vicuna. The tiny GPT4RoI's LLM starts from the tiny RGPT's
stand-in for it, the LLM after RGPT's text-only stage L (``Recipe.init_llm``, default the
committed ``adapters/rgpt/checkpoints/tiny-base``), its rows matched to GPT4RoI's vocabulary by
word (:func:`bench.training.runs.init_llm_by_words`), then goes through a stage L of its own
over its own grid of image tokens. The run closes with RGPT's polish stage
(:func:`bench.training.runs.polish`). The embedded ``checkpoints/tiny`` (run L5's stages 1
and 2, then this polish stage: run P5 of docs/gpt4roi-training-log.md) reaches every minimum of the
issue; the polish stage is what takes refcocog-cap's CIDEr past its own.

Layout of ``out_dir``: ``config.json``, ``model.safetensors``, ``tokenizer.json``,
``recipe.json``, ``vision/`` (the tower and its log), ``language/`` (stage L's LLM and heads),
``log.json``, ``resume/``, ``polish/``. Re-running the same call resumes. A directory holding a
finished stage 0 and stage L (``vision/``, ``language/``, the tokenizer) as ``out_dir`` starts at
stage 1: ``adapters/gpt4roi/checkpoints/tiny-base`` is the default recipe's, committed (run L5 of
the training log, whose stage L followed two others, B's and L4's: its recipe.json's ``lineage``;
tests/test_tiny_bases.py checks it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.errors import ConfigError
from bench.training import Conversation, Stage, build_conversations, mix, train
from bench.training.alignment import least_squares_start
from bench.training.conversations import vocabulary_texts
from bench.training.runs import (
    HEADS_FILE,
    LANGUAGE_DIR,
    LLM_FILE,
    POLISH_CAPTIONS,
    TOWER_FILE,
    VISION_DIR,
    borrow_heads_by_words,
    checkpoint_to_polish,
    drawn_beyond_mix,
    example_sets,
    init_llm_by_words,
    language_then_alignment,
    paper_stages,
    polish,
    record_seconds,
    run_tokenizer,
    stage0_tower,
    write_recipe,
)
from bench.training.trainer import has_resume
from bench.training.vision import (
    VisionRecipe,
    build_vision_examples,
    init_sincos_positions,
    resize_patch_embedding,
    resize_positions,
)

RGPT_TINY = Path(__file__).resolve().parents[1] / "rgpt" / "checkpoints" / "tiny"
# The tiny RGPT's LLM after its text-only stage L: the tiny stand-in for Vicuna.
RGPT_TINY_LANGUAGE = RGPT_TINY.with_name("tiny-base")
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
EXTRACTOR_PREFIXES = ("model.mm_projector.", "model.spi_module.")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on (recorded next to the checkpoint)."""

    seed: int = 0
    # 128 px, patch 8 -> 16x16 grid, 256 image tokens. Stage 0's probe names 92.9% of the objects'
    # categories at 128 px, 92.8% at 192 px with 12-px patches (the same grid, run P1) and 95.0% at
    # 160 px (20x20, run G11): the finer grid helps, not the pixels. But 400 image tokens make a
    # stage-L step 3.35 s (128 px: 2.2 s, run B), and every later step carries them: not the default.
    image_size: int = 128
    # The tower's patch side: 12 at 192 px keeps the 16x16 grid (and the LLM's cost) at 1.5 times
    # the pixels; init_tower's 8-px patch embedding is resized exactly (resize_patch_embedding).
    patch_size: int = 8
    train_images: int = 20000      # synthetic training images when no data root is given
    init_tower: str | None = str(RGPT_TINY)  # a checkpoint whose vision_tower.* starts stage 0; None: scratch
    # Stage 0 steps (12000 from scratch). 6000 (run B: probe 93.9% against 92.9%): at 3000 the probe's
    # category accuracy was still rising under the cosine schedule (runs P1, G11), and the category
    # of small objects is a shortfall (G10).
    vision_steps: int = 6000
    vision_batch_size: int = 16
    vision_lr: float = 1e-3
    # Stage 0 also learns which categories each cell of the grid pooled to this side shows, as the
    # tiny RGPT's does (what POPE asks of the image tokens); 0: off.
    vision_presence_grid: int = 4
    # > 0: stage 0 also learns, at this weight, whether another object of the image shares each
    # object's category (and colour, size), what a RefCOCOg expression's form depends on
    # (bench.training.vision.distractor_labels); 0: off.
    vision_distractor_weight: float = 0.0
    # A checkpoint directory whose language/llm.safetensors (and tokenizer.json) starts the LLM
    # (bench.training.runs.init_llm_by_words); None: a random LLM, as before stage L.
    init_llm: str | None = str(RGPT_TINY_LANGUAGE)
    # Without a stage L of its own, stages 1 and 2 still use the alignment terms, with init_llm's
    # stage-L heads (language/heads.safetensors, word rows matched by word:
    # bench.training.runs.borrow_heads_by_words); False: the answer loss alone (runs G-G4).
    borrow_heads: bool = True
    # With the alignment terms on, stage 1 starts mm_projector and the region extractor's updims at
    # their least-squares maps onto the word means (bench.training.alignment.least_squares_start).
    least_squares_start: bool = True
    least_squares_regions: int = 4000  # conversations whose regions fit updims
    # Stage L and the alignment of stages 1 and 2, as the tiny RGPT's (adapters.rgpt.train). Its
    # own stage L (run G10, 2000 steps: POPE F1 +2.4 and REC +6.3 over borrowing the tiny RGPT's
    # heads) costs 50-75 min at 256 image tokens (2.2 s a step in run B). 0 steps: borrow_heads.
    language_easy_steps: int = 0
    language_steps: int = 2000
    language_cycles: int = 1
    language_lr: float = 1e-3
    language_word_weight: float = 1.0
    language_box_marker: bool = False  # GPT4RoI reads boxes only: a marker on every region tells nothing
    # Size, colour and category in every cell, and the description head (each region's shortest
    # description among its image's objects): with them and the uniqueness questions in the mix,
    # stage L learns which form a RefCOCOg reference takes (runs L4, L5 of the training log: the
    # right form for 140 of 156 refs, text only, against 57 with categories only).
    language_cell_detail: str = "all"
    language_description_weight: float = 1.0
    align_weight: float = 1.0
    vision_aux_weight: float = 1.0
    contrast_weight: float = 0.1
    contrast_temperature: float = 0.01
    image_align_share: float = 1.0
    stage1_steps: int = 300
    # No classification-only opening: without the alignment terms stage 2 needed one (runs G-G4 of
    # docs/gpt4roi-training-log.md), with them the full mix reads the regions (runs G5, G6).
    curriculum: tuple[tuple[str, int], ...] = ()
    # 2400 steps (run G8): G7's 1200 (at 2e-4) still rose a few points every 200 steps.
    stage2_steps: int = 2400
    batch_size: int = 32
    # Stage 2 at 3e-4, not the tiny RGPT's 2e-3: at 2e-3 without the alignment terms the region
    # extractor's flatten_linear turned every region vector onto one huge common direction within a
    # few hundred steps (training log, runs G, G2, G3). Stage 1 at 1e-3 with them (runs G5, G6).
    stage1_lr: float = 1e-3
    stage2_lr: float = 3e-4
    warmup_steps: int = 100
    # The conversations of stage L and stage 2 per kind; the uniqueness questions ("Is <region1> the
    # only ring in the image?") ask what a RefCOCOg reference's form rests on (runs L4, L5).
    mix: tuple[tuple[str, int], ...] = (
        ("classification", 12000), ("caption", 24000), ("relation", 6000), ("rec", 20000), ("pope", 24000),
        ("uniqueness", 16000),
    )
    # The closing polish stage, as the tiny RGPT's (adapters.rgpt.train.Recipe says why).
    polish_steps: int = 1000
    polish_lr: float = 1e-4  # a third of stage 2's (RGPT's: a quarter), run G8
    polish_mix: tuple[tuple[str, int], ...] = (
        ("classification", 4000), ("caption:refcocog", 20000), ("caption:vg", 6000), ("relation", 2000),
        ("rec", 8000), ("pope", 8000),
    )
    polish_captions: str = "longest"


# What the polish stage trains (stage 2's parameters, on the bare model).
POLISH_TRAINED = (*EXTRACTOR_PREFIXES, *LLM_PREFIXES)


def stages(recipe: Recipe, prefix: str = "") -> list[Stage]:
    """GPT4RoI's two stages: (1) projector + region extractor; (2) + the LLM, opening with region
    classification alone (:func:`bench.training.runs.paper_stages` says why). CLIP is never trained here.
    ``prefix``: where the model's parameters sit in the trained module (``model.`` in an
    :class:`bench.training.alignment.AlignedLM`)."""
    return paper_stages(recipe, tuple(prefix + p for p in EXTRACTOR_PREFIXES), tuple(prefix + p for p in LLM_PREFIXES))


class CachedCollate:
    """Turns conversations into padded tensors from the frozen tower's precomputed hidden states."""

    def __init__(self, processor: Any, states: dict[str, torch.Tensor], sizes: dict[str, tuple[int, int]]) -> None:
        self.processor = processor
        self.states = states
        self.sizes = sizes
        self._examples: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def example(self, conversation: Conversation) -> dict[str, torch.Tensor]:
        key = id(conversation)
        if key not in self._examples:
            ids, labels, order = self.processor.training_tokens(conversation.turns, len(conversation.regions))
            width, height = self.sizes[conversation.image.key]
            boxes = self.processor.regions([conversation.regions[i] for i in order], width, height)
            self._examples[key] = (torch.tensor(ids), torch.tensor(labels), boxes)
        ids, labels, boxes = self._examples[key]
        return {"input_ids": ids, "labels": labels, "boxes": boxes,
                "vision_states": self.states[conversation.image.key].float()}

    def __call__(self, conversations: list[Conversation]) -> dict[str, Any]:
        return self.processor.collate([self.example(c) for c in conversations])


@torch.no_grad()
def precompute_states(model: Any, processor: Any, images: dict[str, Any],
                      batch_size: int = 64) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """The frozen tower's hidden states [1 + L, C, g, g] (fp16: they only feed trainable layers) and the
    (width, height) of every image, by key."""
    keys = sorted(images)
    states: dict[str, torch.Tensor] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        loaded = [images[k].load() for k in chunk]
        sizes.update((k, (image.width, image.height)) for k, image in zip(chunk, loaded, strict=True))
        pixels = torch.stack([processor.image(image) for image in loaded])
        for key, state in zip(chunk, model.vision_states(pixels), strict=True):
            states[key] = state.half().clone()
    return states, sizes


def _initial_tower(model: Any, recipe: Recipe) -> None:
    from safetensors import safe_open

    if recipe.init_tower is None:
        init_sincos_positions(model.vision_tower)
        return
    path = Path(recipe.init_tower)
    # A run directory after stage 0 (such as checkpoints/tiny-base) holds the bare tower.
    stage0 = path / VISION_DIR / TOWER_FILE
    weights = (stage0 if stage0.is_file() else path / "model.safetensors") if path.is_dir() else path
    if not weights.is_file():
        raise ConfigError(f"init_tower={recipe.init_tower}: no {weights} (point --init-tower at a tiny RGPT "
                          "checkpoint such as adapters/rgpt/checkpoints/tiny, or a run directory after stage 0 "
                          "such as adapters/gpt4roi/checkpoints/tiny-base, or set --init-tower none to train "
                          "the tower from scratch)")
    with safe_open(str(weights), framework="pt") as handle:
        prefix = "" if weights == stage0 else "vision_tower."
        state = {k.removeprefix(prefix): handle.get_tensor(k) for k in handle.keys()  # noqa: SIM118
                 if k.startswith(prefix)}
    # RGPT's tower may run at another resolution and patch side than GPT4RoI's: its position table
    # and its patch embedding are resized.
    state = resize_patch_embedding(state, int(model.config.vision_config.patch_size))
    model.vision_tower.load_state_dict(resize_positions(state, model.config.patch_grid))


def _borrowed_heads(recipe: Recipe, tokenizer: Any, load_tokenizer: Any) -> Callable[[torch.nn.Module], None] | None:
    """What fills the alignment's heads from ``init_llm``'s stage L (``Recipe.borrow_heads``), or None."""
    if not recipe.borrow_heads or recipe.init_llm is None:
        return None
    checkpoint = Path(recipe.init_llm)
    weights = checkpoint / LANGUAGE_DIR / HEADS_FILE
    if not weights.is_file():
        raise ConfigError(f"init_llm={checkpoint}: no {weights} to borrow the stage-L heads from (a tiny RGPT run "
                          "directory after stage L keeps them there; or set --no-borrow-heads to train without "
                          "the alignment terms)")

    def borrow(heads: torch.nn.Module) -> None:
        borrow_heads_by_words(heads, weights, tokenizer, load_tokenizer(checkpoint))
    return borrow


@torch.no_grad()
def _least_squares_connector(model: Any, collate: Any, conversations: Sequence[Conversation], regions: int,
                             out_dir: Path, chunk: int = 100) -> dict[str, float]:
    """Start ``mm_projector`` at its least-squares map from the tower's image-token features to each
    cell's word mean (one conversation per training image), and the region extractor's last linear
    layer (``updims``) at its map from the extractor's features, at initialisation, to each region's
    word mean (the first ``regions`` conversations that have regions). ``collate``: the
    :class:`bench.training.alignment.WithVerbalTargets` of stages 1 and 2 (its cached tower states
    and words). Writes the fits' relative errors (:func:`bench.training.alignment.least_squares_start`)
    to ``out_dir/least_squares.json`` and returns them. A resumed run skips it: its resume weights
    replace every parameter."""
    import json

    from bench.training.language import mean_word_embeddings

    plain, verbal = collate.collate, collate.verbal
    embedding = model.llm.get_input_embeddings()
    one_per_image = list({c.image.key: c for c in conversations if id(c) in verbal.verbals}.values())

    def image_pairs() -> Any:
        for start in range(0, len(one_per_image), chunk):
            batch = one_per_image[start:start + chunk]
            states = torch.stack([plain.states[c.image.key] for c in batch]).float()
            words = torch.stack([verbal.word_ids(verbal.verbals[id(c)].cells) for c in batch])
            yield (states[:, 0].flatten(2).transpose(1, 2).flatten(0, 1),
                   mean_word_embeddings(embedding, words).flatten(0, 1))

    with_regions = [c for c in conversations if c.regions and id(c) in verbal.verbals][:regions]
    updims = model.spi_module.roi_align.updims

    def region_pairs() -> Any:
        features: list[torch.Tensor] = []  # updims' input, caught by a hook
        hook = updims.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))
        try:
            for start in range(0, len(with_regions), chunk):
                part = with_regions[start:start + chunk]
                batch = plain(part)
                features.clear()
                model.vision_embeds(vision_states=batch["vision_states"], boxes=batch["boxes"])
                yield features[0], mean_word_embeddings(embedding, torch.cat(verbal(part)["region_words"]))
        finally:
            hook.remove()

    fits = {"mm_projector": least_squares_start(model.mm_projector, image_pairs()),
            "updims": least_squares_start(updims, region_pairs(), ridge=1e-2) if with_regions else 1.0}
    (out_dir / "least_squares.json").write_text(json.dumps(fits, indent=2) + "\n")
    return fits


def _initial_llm(model: Any, tokenizer: Any, checkpoint: Path, load_tokenizer: Any) -> None:
    weights = checkpoint / LANGUAGE_DIR / LLM_FILE
    if not weights.is_file() or not (checkpoint / "tokenizer.json").is_file():
        raise ConfigError(f"init_llm={checkpoint}: no {weights} or tokenizer.json there (a tiny RGPT run "
                          "directory after stage L, such as adapters/rgpt/checkpoints/tiny-base; or set "
                          "--init-llm none for a random LLM)")
    init_llm_by_words(model.llm, weights, tokenizer, load_tokenizer(checkpoint))


def train_tiny_gpt4roi(data_root: Path | None, out_dir: Path, recipe: Recipe = Recipe(), progress: bool = True,
                       conversations: Sequence[Conversation] | None = None, polish_from: Path | None = None) -> Path:
    """Train the tiny GPT4RoI on ``data_root``'s training split (default: the RGPT training suite);
    the checkpoint lands in ``out_dir``. Re-running the same call resumes after an interruption.

    ``polish_from``: a tiny GPT4RoI checkpoint directory (``config.json``, ``model.safetensors``,
    ``tokenizer.json``) to run only the polish stage on, instead of stages 0 to 2, as the tiny
    RGPT's (:func:`bench.training.runs.checkpoint_to_polish`)."""
    from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
    from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM
    from adapters.gpt4roi.processing_gpt4roi import (
        GPT4RoIProcessor,
        build_word_tokenizer,
        config_token_ids,
        load_tokenizer,
        stretched_masks,
    )
    from bench.synthetic import SuiteParams, default_suite_dir

    if recipe.polish_captions not in POLISH_CAPTIONS:
        raise ConfigError(f"polish_captions {recipe.polish_captions!r}: expected one of {', '.join(POLISH_CAPTIONS)}")
    if recipe.image_size % recipe.patch_size:
        raise ConfigError(f"image_size {recipe.image_size} is not a multiple of patch_size {recipe.patch_size}: "
                          "the tower's patch grid must cover the image (e.g. --image-size 192 --patch-size 12)")
    started = time.time()
    data_root = Path(data_root) if data_root is not None else default_suite_dir(SuiteParams(
        n_train=recipe.train_images))
    torch.manual_seed(recipe.seed)
    base = list(conversations) if conversations is not None else build_conversations(data_root, "train",
                                                                                       recipe.seed)
    examples = mix(base, dict(recipe.mix), seed=recipe.seed)
    if polish_from is not None:
        model, tokenizer = checkpoint_to_polish(Path(polish_from), out_dir, recipe, GPT4RoIForCausalLM,
                                                load_tokenizer, "GPT4RoI")
    evaluated_texts, training_only_texts = vocabulary_texts(base)
    tokenizer = run_tokenizer(out_dir, evaluated_texts, build_word_tokenizer, load_tokenizer,
                              extra_texts=training_only_texts)
    if polish_from is None:
        model = GPT4RoIForCausalLM(GPT4RoIConfig.tiny(len(tokenizer), config_token_ids(tokenizer),
                                                      image_size=recipe.image_size, patch_size=recipe.patch_size))
        if recipe.init_llm is not None:
            _initial_llm(model, tokenizer, Path(recipe.init_llm), load_tokenizer)
    config = model.config
    processor = GPT4RoIProcessor(tokenizer, config)

    write_recipe(out_dir, recipe, data_root, base, examples,
                 polish_from=str(polish_from) if polish_from is not None else None)

    plain: list[CachedCollate] = []  # built once: stages 1 and 2 and the polish stage share the states

    def cached_collate() -> CachedCollate:
        if not plain:
            states, sizes = precompute_states(model, processor, {c.image.key: c.image for c in base})
            plain.append(CachedCollate(processor, states, sizes))
        return plain[0]

    def save(_: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(out_dir, tokenizer=tokenizer)  # the model alone, without any wrapper

    if polish_from is None:
        # Stage 0: the tiny CLIP's stand-in for its pre-training, then frozen for good.
        def stretched(regions: Any, width: int, height: int) -> Any:
            return stretched_masks(regions, width, height, config.image_size)

        stage0_tower(model.vision_tower, out_dir, lambda: _initial_tower(model, recipe),
                     lambda: build_vision_examples(data_root, "train", processor.image, stretched, config.patch_grid),
                     config.vision_select_layer, VisionRecipe(steps=recipe.vision_steps, lr=recipe.vision_lr,
                                                              seed=recipe.seed, batch_size=recipe.vision_batch_size,
                                                              presence_grid=recipe.vision_presence_grid,
                                                              distractor_weight=recipe.vision_distractor_weight),
                     progress=progress)

        # Stage L: text only, vision tokens as words, images stretched; then the alignment of
        # stages 1 and 2 (bench.training.alignment).
        sets = example_sets(base, examples, [kind for kind, _ in recipe.curriculum])
        trained, collate, prefix = language_then_alignment(model, processor, examples, data_root, out_dir, recipe,
                                                           cached_collate, config.patch_grid,
                                                           llm_prefixes=LLM_PREFIXES, square=False, progress=progress,
                                                           later=drawn_beyond_mix(sets, stages(recipe)),
                                                           borrowed_heads=_borrowed_heads(recipe, tokenizer,
                                                                                          load_tokenizer))

        # A run that has saved a resume point of stages 1 and 2 loads every weight from it (strictly),
        # so the fit, minutes on the real suite, would be overwritten: skip it there.
        if prefix and recipe.least_squares_start and not has_resume(out_dir):
            _least_squares_connector(model, collate, examples, recipe.least_squares_regions, out_dir)

        # With a polish stage, out_dir's checkpoint is the polished model (written once it is done).
        train(trained, sets, collate, stages(recipe, prefix), out_dir, seed=recipe.seed,
              save_model=None if recipe.polish_steps else save, progress=progress)
    if recipe.polish_steps:
        polish(model, base, recipe, cached_collate(), POLISH_TRAINED, out_dir, save, progress)
    record_seconds(out_dir, started)
    return out_dir
