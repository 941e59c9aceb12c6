"""Stage 0 of the tiny models: the vision tower's stand-in for CLIP pre-training (bench.training.vision)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from adapters.rgpt.processing_rgpt import preprocess_image, region_masks
from bench.errors import DataError
from bench.synthetic import SuiteParams, generate_suite
from bench.synthetic.vocab import COLOUR_NAMES, SIZE_NAMES
from bench.training.vision import (
    IGNORE,
    VisionExample,
    VisionProbe,
    VisionRecipe,
    _dense_targets,
    _flipped,
    build_vision_examples,
    distractor_labels,
    init_sincos_positions,
    presence_loss,
    presence_targets,
    pretrain_vision_tower,
    resize_patch_embedding,
    resize_positions,
)

SIDE, PATCH = 32, 8


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("suite") / "s", SuiteParams(n_train=4, n_val=1, n_test=1))


def _examples(root: Path):
    return build_vision_examples(root, "train", lambda image: preprocess_image(image, SIDE),
                                 lambda regions, w, h: region_masks(regions, w, h, SIDE), SIDE // PATCH)


def _tower(seed: int = 0, side: int = SIDE) -> CLIPVisionModel:
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, patch_size=PATCH, image_size=side))


def test_dense_targets_by_hand() -> None:
    # Two objects on a 1x2 grid: object 0 (class 1) covers half of patch 0; object 1 (class 0)
    # covers all of patch 1 and a quarter of patch 0.
    coverage = torch.tensor([[[0.5, 0.0]], [[0.25, 1.0]]])
    target = _dense_targets(coverage, torch.tensor([1, 0]), n_classes=2)
    assert torch.allclose(target, torch.tensor([[0.25, 0.5, 0.25], [1.0, 0.0, 0.0]]))
    # A label of -100 contributes nothing but background.
    target = _dense_targets(coverage, torch.tensor([IGNORE, 0]), n_classes=2)
    assert torch.allclose(target, torch.tensor([[0.25, 0.0, 0.75], [1.0, 0.0, 0.0]]))


def _coverage_example(coverage: torch.Tensor, category: list[int]) -> VisionExample:
    n = coverage.shape[0]
    return VisionExample(torch.zeros(3, 1, 1), coverage, torch.tensor(category), torch.zeros(n, dtype=torch.long),
                         torch.zeros(n, dtype=torch.long), torch.zeros(n, 2), {})


def test_presence_targets_by_hand() -> None:
    # A 4x4 patch grid pooled to 2x2 cells (2x2 patches each). Object 0 (category 2) fills the
    # top-left patch: a quarter of cell 0. Object 1 (category 0) covers 3% of one patch of cell 3:
    # 0.75% of the cell, under the 1% minimum. Object 2 (category 0 again) covers 8% of a patch
    # of cell 1: 2% of the cell.
    coverage = torch.zeros(3, 4, 4)
    coverage[0, 0, 0] = 1.0
    coverage[1, 3, 3] = 0.03
    coverage[2, 0, 3] = 0.08
    target = presence_targets(_coverage_example(coverage, [2, 0, 0]), n_categories=3, cells=2)
    expected = torch.zeros(4, 3)
    expected[0, 2] = 1  # cell 0: category 2
    expected[1, 0] = 1  # cell 1: category 0 (object 2)
    assert torch.equal(target, expected)


def test_presence_loss_rewards_features_that_show_the_category() -> None:
    # One channel per category, set where the category's object is: the right sign of the head
    # gives a lower loss than the wrong one, and the image-level F1 of the right one is 1.
    coverage = torch.zeros(1, 4, 4)
    coverage[0, :2, :2] = 1.0
    example = _coverage_example(coverage, [1])
    features = torch.zeros(1, 16, 2)
    features[0, [0, 1, 4, 5], 1] = 1.0
    probe = VisionProbe(2, n_categories=2)
    with torch.no_grad():
        probe.cell_category.weight.copy_(torch.eye(2) * 20)
        probe.cell_category.bias.fill_(-10)
    right, stats = presence_loss(features, [example], probe, 2, cells=2)
    with torch.no_grad():
        probe.cell_category.weight.mul_(-1)
    wrong, _ = presence_loss(features, [example], probe, 2, cells=2)
    assert stats["presence_f1"] == 1.0
    assert right < 0.01 < wrong


def test_examples_carry_the_suite_labels(suite: Path) -> None:
    examples, names = _examples(suite)
    meta = json.loads((suite / "meta" / "objects_train.json").read_text())
    assert len(examples) == len(meta) == 4
    assert names[0] == "circle" and len(names) == 10
    first = meta[0]["objects"]
    example = examples[0]
    assert [names[i] for i in example.category.tolist()] == [o["category"] for o in first]
    assert [COLOUR_NAMES[i] for i in example.colour.tolist()] == [o["colour"] for o in first]
    assert [SIZE_NAMES[i] if i != IGNORE else None for i in example.size.tolist()] == [
        o["size"] if not o["iscrowd"] else None for o in first]
    assert example.pixels.shape == (3, SIDE, SIDE) and example.coverage.shape == (len(first), 4, 4)
    assert example.dense["category"].shape == (4, 4, 11)
    assert torch.allclose(example.dense["colour"].sum(-1), torch.ones(4, 4))
    # The centre of the mask is where the object is: compare with the suite's own centre (padded frame).
    width, height = meta[0]["width"], meta[0]["height"]
    side = max(width, height)
    cx, cy = first[0]["center"]
    expected = torch.tensor([(cx + (side - width) // 2) / side, (cy + (side - height) // 2) / side])
    assert torch.allclose(example.centre[0], expected, atol=0.08)


def test_distractor_labels_by_hand() -> None:
    # Objects: 0 small red ring, 1 small blue ring, 2 large red ring, 3 small red star, 4 a crowd
    # of red rings (size -100). Attribute sets: (), colour, size, size + colour.
    labels = distractor_labels([0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 2, 0, IGNORE])
    assert labels.tolist() == [
        [1, 1, 1, 1],  # the other rings; red: ring 2 and the crowd; small: ring 1; small red: the crowd
        [1, 0, 1, 0],  # the only blue ring
        [1, 1, 1, 1],  # the crowd matches "large" and "large red" (a crowd matches any size)
        [0, 0, 0, 0],  # the only star
        [IGNORE] * 4,  # a crowd is never a target
    ]
    assert distractor_labels([0, 0, 1], [0, 1, 0], [0, 0, 0]).tolist() == [[1, 0, 1, 0], [1, 0, 1, 0],
                                                                          [0, 0, 0, 0]]


def test_distractor_labels_give_each_suite_expression_its_form(suite: Path) -> None:
    """The labels agree with the suite's own RefCOCOg refs: a plain expression uses the first
    attribute set with no distractor, a relational one appears only where every set has one."""
    from bench.data.coco import load_coco_instances
    from bench.data.layout import dataset_path
    from bench.data.refcocog import load_refcocog
    from bench.synthetic.expressions import ATTRIBUTE_SETS
    from bench.synthetic.vocab import RELATION_PHRASES, SIZE_WORDS

    examples, _ = _examples(suite)
    instances = load_coco_instances(dataset_path(suite, "coco_instances", split="train"), key="coco_instances")
    image_ids = sorted({a.image_id for a in instances.annotations})
    by_annotation = {}
    for example, image_id in zip(examples, image_ids, strict=True):
        annotations = [a for a in instances.annotations if a.image_id == image_id]
        by_annotation.update((a.id, (example, i)) for i, a in enumerate(annotations))
    refs = load_refcocog(dataset_path(suite, "refcocog_refs"), dataset_path(suite, "refcocog_instances")).split(
        "train")
    relation_words = {phrase for phrases in RELATION_PHRASES.values() for phrase in phrases}
    forms = set()
    for ref in refs:
        example, index = by_annotation[ref.ann_id]
        labels = example.distractors[index].tolist()
        sentence = f" {ref.expressions[0].text} "
        if any(f" {phrase} " in sentence for phrase in relation_words):
            assert labels == [1] * len(ATTRIBUTE_SETS), (ref.ref_id, sentence)
            forms.add("relation")
            continue
        colour = COLOUR_NAMES[int(example.colour[index])]
        size = SIZE_NAMES[int(example.size[index])]
        used = tuple(name for name, words in (("size", SIZE_WORDS[size]), ("colour", (colour,)))
                     if any(f" {word} " in sentence for word in words))
        form = ATTRIBUTE_SETS.index(used)
        assert labels[:form] == [1] * form and labels[form] == 0, (ref.ref_id, sentence, labels)
        forms.add(used)
    assert len(forms) >= 3  # the test saw several forms, not one


def test_flip_mirrors_pixels_masks_targets_and_centre(suite: Path) -> None:
    example = _examples(suite)[0][0]
    flipped = _flipped(example)
    assert torch.equal(flipped.pixels, example.pixels.flip(-1))
    assert torch.equal(flipped.coverage[:, :, 0], example.coverage[:, :, -1])
    assert torch.equal(flipped.dense["size"][:, 0], example.dense["size"][:, -1])
    assert torch.allclose(flipped.centre[:, 0], 1 - example.centre[:, 0]) and torch.equal(
        flipped.centre[:, 1], example.centre[:, 1])


def test_pretraining_is_deterministic_lowers_the_loss_and_freezes_the_tower(suite: Path, tmp_path: Path) -> None:
    examples, names = _examples(suite)
    recipe = VisionRecipe(steps=25, batch_size=4, lr=3e-3, warmup_steps=2, presence_grid=2, distractor_weight=1.0)
    towers = [_tower(), _tower()]
    logs = [pretrain_vision_tower(t, examples, len(names), -2, recipe, progress=False,
                                  log_path=tmp_path / f"log{i}.json") for i, t in enumerate(towers)]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert all(torch.equal(a, b) for a, b in zip(towers[0].state_dict().values(), towers[1].state_dict().values(),
                                                 strict=True))
    first, last = sum(r["loss"] for r in logs[0][:5]), sum(r["loss"] for r in logs[0][-5:])
    assert last < first
    assert not any(p.requires_grad for p in towers[0].parameters()) and not towers[0].training
    assert json.loads((tmp_path / "log0.json").read_text())["recipe"]["steps"] == 25
    assert 0 <= logs[0][-1]["distractor_acc"] <= 1


def test_needs_the_suite_metadata(suite: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(suite, copy)
    (copy / "meta" / "objects_train.json").unlink()
    with pytest.raises(DataError, match="objects_train.json"):
        _examples(copy)


def test_sincos_positions_encode_the_grid() -> None:
    tower = _tower()
    init_sincos_positions(tower)
    table = tower.embeddings.position_embedding.weight.detach()
    grid = SIDE // PATCH
    assert torch.equal(table[0], torch.zeros(16))  # CLS
    # Column x of the first frequency: sin(x) in the first quarter; row y: sin(y) in the third quarter.
    for y in range(grid):
        for x in range(grid):
            row = table[1 + y * grid + x]
            assert torch.isclose(row[0], torch.tensor(float(x)).sin())
            assert torch.isclose(row[8], torch.tensor(float(y)).sin())
    assert tower.embeddings.position_embedding.weight.requires_grad  # still learned


def test_resize_positions_carries_a_tower_to_a_larger_grid() -> None:
    small, large = _tower(0), _tower(1, side=2 * SIDE)  # 4x4 -> 8x8 patches
    state = small.state_dict()
    key = "embeddings.position_embedding.weight"
    table = torch.zeros(17, 16)
    table[0] = 5.0  # CLS
    table[1:, 0] = torch.arange(4.0).repeat(4)  # channel 0: the column index x
    table[1:, 1] = 3.0  # channel 1: constant
    state[key] = table
    resized = resize_positions(state, 8)
    out = resized[key]
    assert out.shape == (65, 16) and torch.equal(out[0], table[0])
    grid = out[1:].reshape(8, 8, 16)
    assert torch.allclose(grid[..., 1], torch.full((8, 8), 3.0))  # bicubic weights sum to 1
    # Output column j samples source column j / 2 - 0.25 (align_corners=False). Column 3 samples
    # 1.25: taps 0..3 at distances 1.25, 0.25, 0.75, 1.75 with PyTorch's cubic kernel (a = -0.75)
    # weigh -0.105469, 0.878906, 0.261719, -0.035156, so the ramp gives 0.878906 + 2 * 0.261719
    # - 3 * 0.035156 = 1.296875; column 4 (1.75) mirrors it: 0.261719 + 2 * 0.878906 - 3 * 0.105469.
    assert torch.allclose(grid[:, 3, 0], torch.full((8,), 1.296875))
    assert torch.allclose(grid[:, 4, 0], torch.full((8,), 1.703125))
    assert torch.equal(resize_positions(state, 4)[key], table)  # same grid: untouched
    large.load_state_dict(resized)  # strict: every other weight carries over as it is
    assert torch.equal(large.state_dict()["encoder.layers.0.mlp.fc1.weight"],
                       state["encoder.layers.0.mlp.fc1.weight"])
    assert large(pixel_values=torch.zeros(1, 3, 2 * SIDE, 2 * SIDE)).last_hidden_state.shape == (1, 65, 16)
    state[key] = torch.zeros(11, 16)
    with pytest.raises(ValueError, match="not a square grid"):
        resize_positions(state, 8)


def test_resize_patch_embedding_by_hand_2_to_3() -> None:
    """1-D bilinear 2 -> 3 (align_corners=False) samples the source at 0, 0.5, 1, so B^T =
    [[1, .5, 0], [0, .5, 1]]; the least-norm w' with B^T w' = (1, 0) is B (B^T B)^-1 (1, 0) =
    (5/6, 1/3, -1/6). The 2-D resize is separable: a kernel with only its top-left pixel set
    becomes the outer product of that vector with itself."""
    kernel = torch.zeros(1, 1, 2, 2)
    kernel[0, 0, 0, 0] = 1.0
    out = resize_patch_embedding({"embeddings.patch_embedding.weight": kernel}, 3)
    row = torch.tensor([5 / 6, 1 / 3, -1 / 6])
    assert torch.allclose(out["embeddings.patch_embedding.weight"][0, 0], torch.outer(row, row), atol=1e-6)


def test_resize_patch_embedding_keeps_each_token_of_an_upsampled_patch() -> None:
    torch.manual_seed(0)
    tower = _tower(0)  # patch 8
    state = tower.state_dict()
    resized = resize_patch_embedding(state, 12)
    old, new = state["embeddings.patch_embedding.weight"], resized["embeddings.patch_embedding.weight"]
    assert new.shape == (*old.shape[:2], 12, 12)
    patches = torch.randn(6, 3, 8, 8)
    upsampled = torch.nn.functional.interpolate(patches, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(torch.nn.functional.conv2d(patches, old), torch.nn.functional.conv2d(upsampled, new),
                          atol=1e-4)
    assert torch.equal(resize_patch_embedding(state, 8)["embeddings.patch_embedding.weight"], old)  # same side
    with pytest.raises(ValueError, match="no patch_embedding.weight"):
        resize_patch_embedding({"other.weight": old}, 12)
