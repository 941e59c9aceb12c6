"""Vision pre-training for the tiny reference models: a stand-in for CLIP's own pre-training.

Why this exists: RGPT and GPT4RoI freeze a CLIP tower that was pre-trained on
hundreds of millions of image-text pairs. At tiny size no such tower exists
offline, and a frozen *random* tower gives the LLM nothing to read: trained that
way (and even with the tower unfrozen in stage 2) the tiny RGPT stayed at chance
on every task. So before the papers' stages, the tiny tower is trained once on
the training split's ground truth, with supervision of what CLIP features are
known to carry, at the hidden layer the model reads (``select_layer``):

* per patch (dense, soft targets = the share of the patch each object covers):
  which category, which colour and which size class covers it, or background;
* per object (its visible mask area-pooled over the patch grid, as Mask Pooling
  does downstream): category, colour, size class and the centre of its mask;
* optionally (``distractor_weight``), per object, whether another object of the
  image matches its category, its category and colour, its category and size,
  and all three: what a referring expression's shortest unique wording depends on
  (:mod:`bench.synthetic.expressions`). A region feature pooled from the
  object's own patches carries no such fact unless the tower puts it there,
  and the tiny GPT4RoI's answers showed it missing: the form of its RefCOCOg
  answers did not depend on the other objects (docs/gpt4roi-training-log.md).

The tower is then frozen, exactly as the papers freeze CLIP, and the model's
stages 1 and 2 run unchanged. The full-size models never use this: they load
the real CLIP.

Everything model-specific (how pixels and region masks are made) comes from
the caller, so RGPT (pad to square) and GPT4RoI (resize) share it. Training is
deterministic given the seed (seeded batch order and flips).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.coco import load_coco_instances
from bench.data.layout import dataset_path
from bench.errors import DataError
from bench.regions import Region
from bench.synthetic.expressions import ATTRIBUTE_SETS, Description
from bench.synthetic.vocab import COLOUR_NAMES, SIZE_NAMES

IGNORE = -100
PRESENCE_MIN_SHARE = 0.01  # of a pooled cell (a sixth of a patch when a cell is 4x4 patches)


@dataclass(frozen=True)
class VisionRecipe:
    """Settings of the vision pre-training (recorded next to the checkpoint)."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    # > 0: also train category presence per cell of the patch grid average-pooled to this side
    # (RGPT's image tokens), and per image (max over cells). 0: off.
    presence_grid: int = 0
    # > 0: also train, at this weight, whether another object matches each object's description
    # under each of ATTRIBUTE_SETS (VisionExample.distractors). 0: off.
    distractor_weight: float = 0.0


@dataclass
class VisionExample:
    """One training image in the model's input frame, with its objects' labels.

    ``coverage`` [n, g, g]: the share of each patch that object ``i``'s visible mask covers.
    ``category`` / ``colour`` / ``size`` [n]: class indices (``size`` is -100 for crowds);
    ``centre`` [n, 2]: the mask's centroid as fractions of the input side (x, y).
    ``dense``: per label kind, the soft per-patch targets [g, g, classes + 1] (background last).
    ``distractors`` [n, len(ATTRIBUTE_SETS)]: 1 where another object of the image matches object
    ``i``'s category plus that set's attributes (:class:`Description`'s rule: a crowd matches any
    size), else 0; -100 for a crowd, which is never a referring expression's target.
    """

    pixels: torch.Tensor
    coverage: torch.Tensor
    category: torch.Tensor
    colour: torch.Tensor
    size: torch.Tensor
    centre: torch.Tensor
    dense: dict[str, torch.Tensor]
    distractors: torch.Tensor | None = None


@dataclass(frozen=True)
class _Item:
    """What :meth:`Description.matches` reads of an object (index strings stand in for the words)."""

    category: str
    colour: str
    size: str | None  # None for a crowd


def distractor_labels(category: Sequence[int], colour: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """[n, len(ATTRIBUTE_SETS)] distractor labels of one image's objects (see :class:`VisionExample`);
    ``size`` is -100 for a crowd. The matching rule is the suite's own (:meth:`Description.matches`)."""
    items = [_Item(str(c), str(o), None if z == IGNORE else str(z)) for c, o, z in zip(category, colour, size,
                                                                                        strict=True)]
    labels = torch.full((len(items), len(ATTRIBUTE_SETS)), float(IGNORE))
    for i, target in enumerate(items):
        if target.size is None:
            continue
        others = items[:i] + items[i + 1:]
        for k, attributes in enumerate(ATTRIBUTE_SETS):
            words = Description(target.category, target.colour if "colour" in attributes else None,
                                target.size if "size" in attributes else None)
            labels[i, k] = float(any(words.matches(other) for other in others))
    return labels


def build_vision_examples(
    data_root: Path,
    split: str,
    pixels: Callable[[Any], torch.Tensor],
    masks: Callable[[Sequence[Region], int, int], torch.Tensor],
    grid: int,
) -> tuple[list[VisionExample], list[str]]:
    """Examples for every image of ``split``'s COCO instances, and the category names (in id order).

    ``pixels(pil_image)`` -> [3, S, S] and ``masks(regions, width, height)`` -> [n, S, S] are the
    model processor's own; colours and size classes come from the synthetic suite's
    ``meta/objects_{split}.json``, so this needs a suite (real data has no colour labels).
    """
    instances = load_coco_instances(dataset_path(data_root, "coco_instances", split=split), key="coco_instances")
    image_dir = dataset_path(data_root, "coco_images", split=split)
    meta_path = Path(data_root) / "meta" / f"objects_{split}.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: vision pre-training needs the synthetic suite's object metadata "
                        "(colour and size per object); train on a synthetic suite")
    meta = {int(o["id"]): o for image in json.loads(meta_path.read_text(encoding="utf-8")) for o in image["objects"]}
    categories = sorted(instances.categories.values(), key=lambda c: c.id)
    category_index = {c.id: i for i, c in enumerate(categories)}
    by_image: dict[int, list] = {}
    for annotation in instances.annotations:
        by_image.setdefault(annotation.image_id, []).append(annotation)
    examples = []
    for image_id in sorted(by_image):
        image = instances.image_ref(image_id, image_dir).load()
        annotations = by_image[image_id]
        regions = [instances.region(annotation, with_mask=True) for annotation in annotations]
        full = masks(regions, image.width, image.height).float()
        side = full.shape[-1]
        coverage = F.adaptive_avg_pool2d(full[:, None], grid)[:, 0]
        ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
        area = full.sum((1, 2)).clamp(min=1e-6)
        centre = torch.stack([(full * xs).sum((1, 2)) / area, (full * ys).sum((1, 2)) / area], dim=1) / side
        labels = [meta.get(a.id) for a in annotations]
        if any(label is None for label in labels):
            missing = next(a.id for a, label in zip(annotations, labels, strict=True) if label is None)
            raise DataError(f"{meta_path}: no entry for annotation {missing} of image {image_id}")
        category = torch.tensor([category_index[a.category_id] for a in annotations])
        colour = torch.tensor([COLOUR_NAMES.index(label["colour"]) for label in labels])
        size = torch.tensor([IGNORE if a.iscrowd else SIZE_NAMES.index(label["size"])
                             for a, label in zip(annotations, labels, strict=True)])
        dense_size = size.masked_fill(size == IGNORE, SIZE_NAMES.index("small"))  # a crowd's dots are small
        dense = {name: _dense_targets(coverage, values, classes).reshape(grid, grid, classes + 1)
                 for name, values, classes in (("category", category, len(categories)),
                                               ("colour", colour, len(COLOUR_NAMES)),
                                               ("size", dense_size, len(SIZE_NAMES)))}
        distractors = distractor_labels(category.tolist(), colour.tolist(), size.tolist())
        examples.append(VisionExample(pixels(image), coverage, category, colour, size, centre, dense, distractors))
    return examples, [c.name for c in categories]


class VisionProbe(nn.Module):
    """The throw-away heads of the pre-training (dense: +1 background class each)."""

    def __init__(self, channels: int, n_categories: int, distractors: bool = False) -> None:
        super().__init__()
        self.dense_category = nn.Linear(channels, n_categories + 1)
        self.dense_colour = nn.Linear(channels, len(COLOUR_NAMES) + 1)
        self.dense_size = nn.Linear(channels, len(SIZE_NAMES) + 1)
        self.category = nn.Linear(channels, n_categories)
        self.colour = nn.Linear(channels, len(COLOUR_NAMES))
        self.size = nn.Linear(channels, len(SIZE_NAMES))
        self.centre = nn.Linear(channels, 2)
        # Created last, so the heads above start as they did before it existed (same seed, same draws).
        self.cell_category = nn.Linear(channels, n_categories)
        if distractors:  # likewise after it, and only when trained
            self.distractors = nn.Linear(channels, len(ATTRIBUTE_SETS))


def init_sincos_positions(tower: nn.Module) -> None:
    """Start a CLIP tower's learned position embeddings at 2-D sine-cosine values (CLS row zero).

    Why: a ViT trained from scratch on little data spends most of its early steps learning
    where patches are; MAE-style fixed 2-D sin-cos embeddings give that for free. They stay
    learned parameters. Measured on the default training suite (1500 steps, batch 8, 128 px):
    region category accuracy 27% instead of 24%.
    """
    embedding = tower.embeddings.position_embedding.weight  # [1 + g*g, C]
    grid = math.isqrt(embedding.shape[0] - 1)
    quarter = embedding.shape[1] // 4
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    x, y = xs.flatten()[:, None] * frequencies, ys.flatten()[:, None] * frequencies
    values = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    with torch.no_grad():
        embedding.zero_()
        embedding[1:, :values.shape[1]] = values


def resize_positions(state: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """A CLIP tower's ``state`` with its position embeddings resized (bicubic; the CLS row kept)
    to a ``grid`` x ``grid`` patch grid, so that a tower trained at one resolution loads into the
    same tower at another (the fine-tuning step of FixRes and of ViT's higher-resolution fine-tuning).

    Why: the tiny tower's stage 0 costs about 0.08 s per step at 128 px and 0.23 s at 192 px
    (its attention grows with the square of the patch count), so it trains at the low
    resolution first and finishes at the high one (``stage0_tower``'s ``initialise``).
    ``position_ids`` buffers are dropped: the target tower has its own."""
    key = next((k for k in state if k.endswith("position_embedding.weight")), None)
    if key is None:
        raise ValueError("no position_embedding.weight in the tower's state dict")
    table = state[key]
    old = math.isqrt(table.shape[0] - 1)
    if old * old != table.shape[0] - 1:
        raise ValueError(f"{key}: {table.shape[0] - 1} patch positions are not a square grid")
    resized = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if old != grid:
        patches = table[1:].T.reshape(1, -1, old, old).float()
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        resized[key] = torch.cat([table[:1], patches.reshape(-1, grid * grid).T.to(table.dtype)], dim=0)
    return resized


def resize_patch_embedding(state: dict[str, torch.Tensor], patch: int) -> dict[str, torch.Tensor]:
    """A CLIP tower's ``state`` with its patch embedding (a conv, kernel = stride = patch side)
    resized to ``patch`` x ``patch`` pixels, FlexiViT's pseudo-inverse resize (Beyer et al. 2023):
    with ``B`` the bilinear resize of a patch from the old side to the new, the new kernel is
    ``pinv(B^T) w``, so a patch upsampled by ``B`` gives exactly the token its original gave.

    Why: the tiny GPT4RoI's tower starts from the tiny RGPT's (8-px patches); at 192 px with
    12-px patches it keeps the 16x16 grid of 256 image tokens. Resizing the kernel naively
    (interpolating it) changes every token's scale; this keeps stage 0's starting point."""
    key = next((k for k in state if k.endswith("patch_embedding.weight")), None)
    if key is None:
        raise ValueError("no patch_embedding.weight in the tower's state dict")
    kernel = state[key]
    old = kernel.shape[-1]
    if old == patch:
        return dict(state)
    basis = torch.eye(old * old, dtype=torch.float64).reshape(-1, 1, old, old)
    resize = F.interpolate(basis, size=(patch, patch), mode="bilinear", align_corners=False)
    resize = resize.reshape(old * old, patch * patch)  # rows: B^T (old pixel -> its weights in the new patch)
    flat = kernel.double().reshape(-1, old * old)  # [C * 3, old * old]
    new = flat @ torch.linalg.pinv(resize).T  # solves B^T w' = w with the least norm, per row
    return {**state, key: new.reshape(*kernel.shape[:2], patch, patch).to(kernel.dtype)}


def patch_features(tower: nn.Module, pixel_values: torch.Tensor, select_layer: int) -> torch.Tensor:
    """The tower's ``select_layer`` hidden state without CLS: [B, g*g, C]."""
    out = tower(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[select_layer][:, 1:]


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _dense_targets(coverage: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[g*g, n_classes + 1] soft targets: per patch, the covered share of each class, background last."""
    flat = coverage.flatten(1).T  # [g*g, n]
    valid = labels >= 0
    target = torch.zeros(flat.shape[0], n_classes + 1)
    target[:, :n_classes].index_add_(1, labels[valid], flat[:, valid])
    covered = target[:, :n_classes].sum(-1, keepdim=True)
    scale = torch.where(covered > 1, covered, torch.ones_like(covered))
    target[:, :n_classes] /= scale
    target[:, n_classes] = (1 - target[:, :n_classes].sum(-1)).clamp(min=0)
    return target


def presence_targets(example: VisionExample, n_categories: int, cells: int) -> torch.Tensor:
    """[cells*cells, n_categories]: 1 where a category's visible mask covers at least
    :data:`PRESENCE_MIN_SHARE` of a cell of the patch grid average-pooled to ``cells`` a side."""
    share = F.adaptive_avg_pool2d(example.coverage[:, None], cells)[:, 0].flatten(1)  # [n, cells^2]
    present = (share >= PRESENCE_MIN_SHARE).float()
    return (present.T @ F.one_hot(example.category, n_categories).float()).clamp(max=1)


def presence_loss(features: torch.Tensor, batch: Sequence[VisionExample], probe: VisionProbe,
                  n_categories: int, cells: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Category presence per pooled cell and per image (the max over cells): binary cross-entropy."""
    side = math.isqrt(features.shape[1])
    grid = features.transpose(1, 2).reshape(features.shape[0], -1, side, side)
    pooled = F.adaptive_avg_pool2d(grid, cells).flatten(2).transpose(1, 2)  # [B, cells^2, C]
    logits = probe.cell_category(pooled)  # [B, cells^2, K]
    target = torch.stack([presence_targets(e, n_categories, cells) for e in batch]).to(features.device)
    image_logits, image_target = logits.max(1).values, target.max(1).values
    loss = (F.binary_cross_entropy_with_logits(logits, target)
            + F.binary_cross_entropy_with_logits(image_logits, image_target))
    predicted = image_logits > 0
    hits = (predicted & (image_target > 0)).sum()
    f1 = 2 * hits / (predicted.sum() + (image_target > 0).sum()).clamp(min=1)
    return loss, {"presence_f1": float(f1)}


def vision_loss(features: torch.Tensor, batch: Sequence[VisionExample], probe: VisionProbe,
                n_categories: int, presence_grid: int = 0,
                distractor_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The pre-training loss of a batch from its patch features [B, g*g, C]; also per-part accuracies."""
    dense_logits = {"category": probe.dense_category(features), "colour": probe.dense_colour(features),
                    "size": probe.dense_size(features)}
    loss = features.new_zeros(())
    for name, logits in dense_logits.items():
        target = torch.stack([e.dense[name].flatten(0, 1) for e in batch]).to(features.device)
        loss = loss + _soft_ce(logits, target)
    pooled, labels = [], {"category": [], "colour": [], "size": [], "centre": []}
    for row, example in enumerate(batch):
        weights = example.coverage.flatten(1).to(features.device)  # [n, g*g]
        pooled.append(weights @ features[row] / (weights.sum(-1, keepdim=True) + 1e-8))
        for name in labels:
            labels[name].append(getattr(example, name))
    regions = torch.cat(pooled)
    stats: dict[str, float] = {}
    for name in ("category", "colour", "size"):
        target = torch.cat(labels[name]).to(features.device)
        logits = getattr(probe, name)(regions)
        loss = loss + F.cross_entropy(logits, target, ignore_index=IGNORE)
        valid = target != IGNORE
        stats[f"{name}_acc"] = float((logits.argmax(-1)[valid] == target[valid]).float().mean())
    centre = torch.cat(labels["centre"]).to(features.device)
    centre_error = probe.centre(regions) - centre
    loss = loss + 10.0 * centre_error.pow(2).mean()
    stats["centre_mae"] = float(centre_error.detach().abs().mean())
    if distractor_weight:
        target = torch.cat([e.distractors for e in batch]).to(features.device)
        logits = probe.distractors(regions)
        valid = target != IGNORE
        loss = loss + distractor_weight * F.binary_cross_entropy_with_logits(logits[valid], target[valid])
        stats["distractor_acc"] = float(((logits[valid] > 0).float() == target[valid]).float().mean())
    if presence_grid:
        extra, presence_stats = presence_loss(features, batch, probe, n_categories, presence_grid)
        loss = loss + extra
        stats.update(presence_stats)
    return loss, stats


def _flipped(example: VisionExample) -> VisionExample:
    centre = example.centre.clone()
    centre[:, 0] = 1 - centre[:, 0]
    return VisionExample(example.pixels.flip(-1), example.coverage.flip(-1), example.category, example.colour,
                         example.size, centre, {k: v.flip(1) for k, v in example.dense.items()},
                         example.distractors)


def pretrain_vision_tower(
    tower: nn.Module,
    examples: Sequence[VisionExample],
    n_categories: int,
    select_layer: int,
    recipe: VisionRecipe = VisionRecipe(),
    progress: bool = True,
    log_path: Path | None = None,
) -> list[dict[str, float]]:
    """Train ``tower`` in place on ``examples`` (random horizontal flips); return the per-step log.

    The probe heads are discarded afterwards: only the tower's weights matter downstream.
    """
    if not examples:
        raise ValueError("no vision pre-training examples")
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = next(tower.parameters()).device
    with torch.no_grad():
        probe_channels = patch_features(tower, examples[0].pixels[None].to(device), select_layer).shape[-1]
    if recipe.distractor_weight and any(e.distractors is None for e in examples):
        raise ValueError("distractor_weight > 0 needs every example's distractors (build_vision_examples)")
    probe = VisionProbe(probe_channels, n_categories, distractors=bool(recipe.distractor_weight)).to(device)
    tower.requires_grad_(True)
    tower.train()
    params = [*tower.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc="vision", dynamic_ncols=True)
    log: list[dict[str, float]] = []
    order: list[int] = []
    for step in range(recipe.steps):
        lr = _lr(recipe, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        while len(order) < recipe.batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        picked, order = order[:recipe.batch_size], order[recipe.batch_size:]
        flips = torch.rand(len(picked), generator=generator) < 0.5
        batch = [_flipped(examples[i]) if flip else examples[i] for i, flip in zip(picked, flips.tolist(), strict=True)]
        pixels = torch.stack([e.pixels for e in batch]).to(device)
        loss, stats = vision_loss(patch_features(tower, pixels, select_layer), batch, probe, n_categories,
                                  recipe.presence_grid, recipe.distractor_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        record = {"step": step + 1, "loss": float(loss.detach()), "lr": lr, **stats}
        log.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", cat=f"{stats['category_acc']:.2f}")
    if bar is not None:
        bar.close()
    tower.requires_grad_(False)
    tower.eval()
    if log_path is not None:
        log_path.write_text(json.dumps({"recipe": asdict(recipe), "log": log}) + "\n", encoding="utf-8")
    return log


@torch.no_grad()
def probe_accuracy(tower: nn.Module, examples: Sequence[VisionExample], select_layer: int,
                   train_examples: Sequence[VisionExample], n_categories: int, steps: int = 300) -> dict[str, float]:
    """Linear-probe accuracies of a (frozen) tower on held-out ``examples``: a quick check that the
    features carry category, colour, size and position. Heads are fitted on ``train_examples``."""
    def regions(items: Sequence[VisionExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pooled, labels = [], {"category": [], "colour": [], "size": [], "centre": []}
        for start in range(0, len(items), 64):
            chunk = items[start:start + 64]
            feats = patch_features(tower, torch.stack([e.pixels for e in chunk]), select_layer)
            for row, e in enumerate(chunk):
                w = e.coverage.flatten(1)
                pooled.append(w @ feats[row] / (w.sum(-1, keepdim=True) + 1e-8))
                for name in labels:
                    labels[name].append(getattr(e, name))
        return torch.cat(pooled), {k: torch.cat(v) for k, v in labels.items()}

    x_train, y_train = regions(train_examples)
    x_test, y_test = regions(examples)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    out: dict[str, float] = {}
    for name, classes in (("category", n_categories), ("colour", len(COLOUR_NAMES)), ("size", len(SIZE_NAMES))):
        head = nn.Linear(x_train.shape[1], classes)
        with torch.enable_grad():
            optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(head(x_train), y_train[name], ignore_index=IGNORE).backward()
                optimizer.step()
        valid = y_test[name] != IGNORE
        out[name] = float((head(x_test).argmax(-1)[valid] == y_test[name][valid]).float().mean())
    return out


def _lr(recipe: VisionRecipe, step: int) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


__all__ = ["VisionExample", "VisionProbe", "VisionRecipe", "build_vision_examples", "distractor_labels",
           "init_sincos_positions",
           "pretrain_vision_tower",
           "probe_accuracy", "vision_loss"]
