"""RegionGPT reference model: shapes, mask pooling, token substitution, loss masking, KV-cache
generation, likelihood scoring, checkpoints, meta-device inspection, and the adapter end to end.
Everything runs on CPU with a randomly initialised tiny model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.rgpt import RGPTConfig, RGPTForCausalLM, RGPTProcessor, build_word_tokenizer, mask_pool
from adapters.rgpt.adapter import RGPTAdapter, cut_at_stop
from adapters.rgpt.processing_rgpt import IGNORE_INDEX, config_token_ids, rewrite_regions
from bench.errors import ConfigError
from bench.regions import Region

TEXTS = [
    "What is in <region1>? A red circle.",
    "Describe <region1> and <region2>: a blue square next to a green triangle.",
    "Is there a star in the image? Yes, no.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def model(tokenizer) -> RGPTForCausalLM:
    torch.manual_seed(0)
    config = RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer))
    return RGPTForCausalLM(config).eval()


@pytest.fixture(scope="module")
def processor(tokenizer, model) -> RGPTProcessor:
    return RGPTProcessor(tokenizer, model.config)


def _image(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _inputs(processor, prompts, regions_per_prompt, seed=0):
    """Left-padded prompt ids, attention mask, pixels and per-row masks."""
    image = _image(seed=seed)
    ids, masks = [], []
    for prompt, regions in zip(prompts, regions_per_prompt, strict=True):
        row, order = processor.prompt(prompt, len(regions))
        ids.append(row)
        m = processor.masks(regions, image.width, image.height)
        masks.append(m[order] if order else m[:0])
    input_ids, attention = processor.pad(ids, side="left")
    pixels = processor.image(image)[None].expand(len(prompts), -1, -1, -1)
    return input_ids, attention, pixels, masks


BOX_A = Region(box=(5.0, 10.0, 40.0, 50.0))
BOX_B = Region(box=(30.0, 0.0, 80.0, 30.0))


# --------------------------------------------------------------------------- shapes and pooling


def test_shapes_through_the_pipeline(model, processor) -> None:
    config = model.config
    assert (config.patch_grid, config.refined_grid, config.num_image_tokens) == (8, 32, 64)
    ids, attention, pixels, masks = _inputs(processor, ["What is in <region1>?"] * 2, [[BOX_A], [BOX_B]])
    with torch.no_grad():
        refined = model.encode_images(pixels)
        assert refined.shape == (2, config.vision_hidden_size, 32, 32)
        assert model.image_tokens(refined).shape == (2, 64, config.text_hidden_size)
        assert model.region_tokens(refined[0], masks[0]).shape == (1, config.text_hidden_size)
        out = model(ids, attention, pixels, masks)
    assert out.logits.shape == (2, ids.shape[1], config.text_config.vocab_size)
    assert (ids == config.image_token_id).sum(1).tolist() == [64, 64]
    params = sum(p.numel() for p in model.parameters())
    assert 5e5 < params < 2e7
    assert not any(p.requires_grad for p in model.vision_tower.parameters())


def test_mask_pooling_is_the_average_inside_the_mask() -> None:
    features = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, 1:3, 0:2] = 1.0
    expected = features[:, 1:3, 0:2].reshape(2, -1).mean(-1)
    assert torch.allclose(mask_pool(features, mask)[0], expected)
    # A soft mask weighs each cell: sum(f * m) / sum(m).
    soft = torch.rand(1, 4, 4)
    manual = (features * soft).sum((1, 2)) / (soft.sum() + 1e-8)
    assert torch.allclose(mask_pool(features, soft)[0], manual, atol=1e-5)
    # A mask at twice the resolution is resized bilinearly first: an aligned block stays the same block.
    big = torch.zeros(1, 8, 8)
    big[0, 2:6, 0:4] = 1.0
    resized = torch.nn.functional.interpolate(big[:, None], size=(4, 4), mode="bilinear")[:, 0]
    manual = (features * resized).sum((1, 2)) / resized.sum()
    assert torch.allclose(mask_pool(features, big)[0], manual, atol=1e-5)


def test_box_region_equals_its_rectangle_mask_in_the_padded_frame(processor) -> None:
    box = Region(box=(0.0, 0.0, 50.0, 50.0))
    polygon = Region(box=box.box, mask=[[0, 0, 50, 0, 50, 50, 0, 50]])
    from_box = processor.masks([box], 100, 50)
    from_mask = processor.masks([polygon], 100, 50)
    assert from_box.shape == (1, 64, 64)
    assert torch.allclose(from_box, from_mask)
    # 100x50 is padded to 100x100 (25 rows above), then scaled to 64: the box covers rows 16..48, cols 0..32.
    inside = from_box[0, 17:47, 1:31]
    assert bool((inside > 0.99).all())
    assert float(from_box[0, :15].sum()) == 0.0 and float(from_box[0, 50:].sum()) == 0.0
    assert float(from_box[0, :, 34:].sum()) == 0.0


def test_connector_is_one_module_for_image_and_region_tokens(model, processor) -> None:
    assert [name for name, _ in model.named_children()] == ["vision_tower", "refinement", "image_pool",
                                                            "connector", "llm"]
    calls: list[tuple[int, ...]] = []
    handle = model.connector.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    try:
        ids, attention, pixels, masks = _inputs(processor, ["<region1> and <region2>?"], [[BOX_A, BOX_B]])
        with torch.no_grad():
            model(ids, attention, pixels, masks)
    finally:
        handle.remove()
    hidden = model.config.vision_hidden_size
    assert calls == [(1, 64, hidden), (2, hidden)]  # the same module: image tokens, then region tokens


# --------------------------------------------------------------------------- substitution and loss


def test_image_and_region_positions_hold_their_features(model, processor) -> None:
    ids, attention, pixels, masks = _inputs(processor, ["<region2> left of <region1>, <region2>?"],
                                            [[BOX_A, BOX_B]])
    captured = {}
    handle = model.llm.register_forward_pre_hook(
        lambda _m, _a, kwargs: captured.update(embeds=kwargs["inputs_embeds"].detach()), with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids, attention, pixels, masks)
            refined = model.encode_images(pixels)
            image_tokens = model.image_tokens(refined)[0]
            regions = model.region_tokens(refined[0], processor.masks([BOX_A, BOX_B], 80, 60))
    finally:
        handle.remove()
    embeds = captured["embeds"][0]
    region_positions = (ids[0] == model.config.region_token_id).nonzero()[:, 0]
    assert len(region_positions) == 3
    for position, region in zip(region_positions, [1, 0, 1], strict=True):  # placeholders in order: 2, 1, 2
        assert torch.allclose(embeds[position], regions[region], atol=1e-6)
    image_positions = (ids[0] == model.config.image_token_id).nonzero()[:, 0]
    assert torch.allclose(embeds[image_positions], image_tokens, atol=1e-6)
    text = (ids[0] != model.config.image_token_id) & (ids[0] != model.config.region_token_id)
    assert torch.equal(embeds[text], model.llm.get_input_embeddings()(ids[0][text]))


def test_region_placeholders_are_validated() -> None:
    assert rewrite_regions("<region2> or <region1>", 2) == ("<region> or <region>", [1, 0])
    with pytest.raises(ValueError, match="names regions"):
        rewrite_regions("<region1> and <region3>", 2)
    with pytest.raises(ValueError, match="names regions"):
        rewrite_regions("only <region1>", 2)


def test_labels_cover_only_answers_and_eos(processor, tokenizer) -> None:
    example = processor.training_example(
        _image(), [BOX_A, BOX_B],
        [("What is in <region1>?", "A red circle."), ("And <region2>?", "A blue square.")],
    )
    ids, labels = example["input_ids"], example["labels"]
    assert ids.shape == labels.shape and example["pixel_values"].shape == (3, 64, 64)
    assert example["region_masks"].shape == (2, 64, 64)
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept])
    assert tokenizer.decode(labels[kept].tolist()) == "a red circle . </s> a blue square . </s>"
    eos = processor.config.eos_token_id
    assert (ids == eos).sum() == 2 and bool(kept[ids == eos].all())
    assert not bool(kept[ids == processor.config.image_token_id].any())


def test_a_few_steps_overfit_one_example(tokenizer) -> None:
    torch.manual_seed(1)
    config = RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer))
    model = RGPTForCausalLM(config)
    processor = RGPTProcessor(tokenizer, config)
    batch = processor.collate([processor.training_example(_image(), [BOX_A], [("What is in <region1>?",
                                                                               "A red circle.")])])
    stage1 = model.set_stage(1)
    assert len(stage1) == len(list(model.refinement.parameters())) + len(list(model.connector.parameters()))
    trainable = model.set_stage(2)
    assert len(trainable) == len(stage1) + len(list(model.llm.parameters()))
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in model.vision_tower.parameters())


# --------------------------------------------------------------------------- generation and scoring


PROMPTS = ["What is in <region1>?", "Describe <region1> and <region2>: a blue square next to it", "Is there a star?"]
REGIONS = [[BOX_A], [BOX_A, BOX_B], []]


def test_batched_left_padded_generation_equals_one_by_one(model, processor) -> None:
    ids, attention, pixels, masks = _inputs(processor, PROMPTS, REGIONS)
    assert bool((attention[:, 0] == 0).any())  # really padded
    batched = model.generate(ids, attention, pixels, masks, max_new_tokens=8, eos_token_id=-1)
    for row, (prompt, regions) in enumerate(zip(PROMPTS, REGIONS, strict=True)):
        one_ids, one_attention, one_pixels, one_masks = _inputs(processor, [prompt], [regions])
        single = model.generate(one_ids, one_attention, one_pixels, one_masks, max_new_tokens=8, eos_token_id=-1)
        assert single[0] == batched[row]
        assert len(single[0]) == 8
    # The KV cache gives what re-running the full sequence every step gives.
    one_ids, one_attention, one_pixels, one_masks = _inputs(processor, [PROMPTS[1]], [REGIONS[1]])
    sequence = one_ids
    with torch.no_grad():
        for _ in range(8):
            logits = model(sequence, torch.ones_like(sequence), one_pixels, one_masks).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert sequence[0, one_ids.shape[1]:].tolist() == batched[1]


def test_generation_stops_at_eos_and_stop_function(model, processor) -> None:
    ids, attention, pixels, masks = _inputs(processor, PROMPTS[:1], REGIONS[:1])
    free = model.generate(ids, attention, pixels, masks, max_new_tokens=6, eos_token_id=-1)[0]
    cut = model.generate(ids, attention, pixels, masks, max_new_tokens=6, eos_token_id=free[2])[0]
    assert cut == free[:free.index(free[2])]
    stopped = model.generate(ids, attention, pixels, masks, max_new_tokens=6, eos_token_id=-1,
                             stop_fn=lambda _row, tokens: len(tokens) >= 2)[0]
    assert stopped == free[:2]


def test_cut_at_stop() -> None:
    assert cut_at_stop("a red circle. USER: next", ("USER:", "###")) == "a red circle."
    assert cut_at_stop("a b ### c USER:", ("USER:", "###")) == "a b"
    assert cut_at_stop("plain", ()) == "plain"


def test_continuation_logprobs_equal_a_plain_forward(model, processor) -> None:
    image = _image()
    rows = []
    for prompt, regions, continuation in [(PROMPTS[0], REGIONS[0], "a red circle"),
                                          (PROMPTS[1], REGIONS[1], "yes"), (PROMPTS[2], REGIONS[2], "no , a star")]:
        ids, order = processor.prompt(prompt, len(regions))
        m = processor.masks(regions, image.width, image.height)
        rows.append((ids, processor.encode_answer(continuation), m[order] if order else m[:0]))
    ids, attention = processor.pad([p + c for p, c, _ in rows], side="right")
    target = torch.zeros_like(attention, dtype=torch.bool)
    for row, (prompt, continuation, _) in enumerate(rows):
        target[row, len(prompt):len(prompt) + len(continuation)] = True
    pixels = processor.image(image)[None].expand(3, -1, -1, -1)
    scores = model.continuation_logprobs(ids, attention, target, pixels, [r[2] for r in rows])
    for row, (prompt, continuation, masks) in enumerate(rows):
        full = torch.tensor([prompt + continuation])
        with torch.no_grad():
            logits = model(full, torch.ones_like(full), pixels[:1], [masks]).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        expected = sum(logprobs[len(prompt) + i - 1, token].item() for i, token in enumerate(continuation))
        assert scores[row].item() == pytest.approx(expected, abs=1e-4)
        assert expected < 0
    # The shared-prefix path (prompt prefilled once, continuations branch from its cache) agrees.
    continuations = [processor.encode_answer(c) for c in ("a red circle", "yes", "no , a star", "")]
    shared = model.score_continuations(torch.tensor(rows[0][0]), continuations, pixels[:1], [rows[0][2]],
                                       batch_size=2)
    assert shared[0] == pytest.approx(scores[0].item(), abs=1e-4)
    assert shared[3] == 0.0
    for value, continuation in zip(shared[1:3], continuations[1:3], strict=True):
        ids = torch.tensor([rows[0][0] + continuation])
        target = torch.zeros_like(ids, dtype=torch.bool)
        target[0, len(rows[0][0]):] = True
        plain = model.continuation_logprobs(ids, torch.ones_like(ids), target, pixels[:1], [rows[0][2]])
        assert value == pytest.approx(plain.item(), abs=1e-4)


# --------------------------------------------------------------------------- checkpoints and inspection


def test_save_load_round_trip_reads_safetensors_only(model, processor, tokenizer, tmp_path, monkeypatch) -> None:
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}

    def no_pickles(*_args, **_kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = RGPTForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.to_dict() == model.config.to_dict()
    ids, attention, pixels, masks = _inputs(processor, PROMPTS, REGIONS)
    with torch.no_grad():
        assert torch.equal(model(ids, attention, pixels, masks).logits, loaded(ids, attention, pixels, masks).logits)


def test_inspect_full_size_on_meta() -> None:
    from bench.inspect_model import inspect_model

    report = inspect_model("rgpt", {"size": "full"})
    assert "meta device" in report
    table = report.split("## parameters")[1].split("## state_dict")[0]
    vision = next(line for line in table.splitlines() if line.startswith("vision_tower"))
    llm = next(line for line in table.splitlines() if line.startswith("llm"))
    assert "303,507,456" in vision and vision.split()[-2] == "303,507,456"  # CLIP-L, all frozen
    assert "6,738,432,000" in llm  # Vicuna-7B with 32002 rows
    for key in ("llm.model.layers.31.mlp.down_proj.weight  [4096, 11008]", "refinement.0.weight  [1024, 1024, 2, 2]",
                "connector.0.weight  [4096, 1024]", "connector.2.weight  [4096, 4096]",
                "llm.lm_head.weight  [32002, 4096]", "refinement.1.weight  [1024]"):
        assert key in report
    assert "0..31 (32x): LlamaDecoderLayer" in report


# --------------------------------------------------------------------------- the adapter


@pytest.fixture(scope="module")
def suite_root():
    from bench.synthetic import default_suite_dir

    return default_suite_dir()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, suite_root):
    from tasks.coco_cls import CocoClassification
    from tasks.pope import PopeAdversarial

    texts = [s.prompt for s in PopeAdversarial(suite_root).load_samples()[:50]]
    texts += [s.prompt + " " + str(s.gold_answer) for s in CocoClassification(suite_root).load_samples()[:50]]
    tokenizer = build_word_tokenizer(texts)
    torch.manual_seed(2)
    model = RGPTForCausalLM(RGPTConfig.tiny(vocab_size=len(tokenizer), **config_token_ids(tokenizer)))
    return model.save_pretrained(tmp_path_factory.mktemp("rgpt") / "tiny", tokenizer=tokenizer)


def test_adapter_end_to_end_on_the_synthetic_suite(tiny_checkpoint, suite_root) -> None:
    from bench.registry import build_adapter
    from tasks.coco_cls import CocoClassification
    from tasks.pope import PopeAdversarial

    adapter = build_adapter("rgpt", {"pretrained": str(tiny_checkpoint), "max_new_tokens": "5"},
                            device="cpu", batch_size=3, seed=0)
    assert isinstance(adapter, RGPTAdapter) and adapter.max_new_tokens == 5
    assert len(adapter.fingerprint_extra()) == 64

    pope = PopeAdversarial(suite_root).load_samples()[:4]
    requests = [r for s in pope for r in PopeAdversarial(suite_root).build_requests(s, adapter.capabilities)]
    answers = adapter.generate(requests)
    assert len(answers) == len(requests) and all(isinstance(a, str) for a in answers)
    assert all(len(a.split()) <= 5 for a in answers)
    # A stop string cuts the text where it first occurs (here: the last word of each free answer).
    first_words = [a.split()[-1] if a.split() else "" for a in answers]
    stopped = [dataclasses.replace(r, stop=(w,) if w else ()) for r, w in zip(requests, first_words, strict=True)]
    assert adapter.generate(stopped) == [a[:a.find(w)].strip() if w else a
                                         for a, w in zip(answers, first_words, strict=True)]

    task = CocoClassification(suite_root)
    samples = task.load_samples()[:4]
    requests = [r for s in samples for r in task.build_requests(s, adapter.capabilities)]
    generation = [r for r in requests if r.kind == "generate"]
    likelihood = [r for r in requests if r.kind == "loglikelihood"]
    assert generation[0].regions[0].mask is not None  # masks reach the model
    assert len(adapter.generate(generation)) == len(generation)
    scores = adapter.loglikelihood(likelihood)
    assert [len(s) for s in scores] == [len(r.continuations) for r in likelihood]
    assert all(math.isfinite(v) and v < 0 for row in scores for v in row)
    # Batching does not change the scores.
    alone = build_adapter("rgpt", {"pretrained": str(tiny_checkpoint)}, device="cpu", batch_size=1)
    assert np.allclose(alone.loglikelihood(likelihood[:1])[0], scores[0], atol=1e-4)


def test_adapter_argument_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="size"):
        RGPTAdapter(size="huge")
    with pytest.raises(ConfigError, match="pretrained="):
        RGPTAdapter(size="full")
    with pytest.raises(ConfigError, match="model.safetensors"):
        RGPTAdapter(pretrained=tmp_path)


def test_full_style_loading_from_separate_tower_and_llm_directories(model, processor, tokenizer, tmp_path) -> None:
    """size=full's path: CLIP and the LLM from their own local directories, the RGPT parts from the checkpoint."""
    model.vision_tower.save_pretrained(tmp_path / "clip")
    model.llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    model.save_pretrained(tmp_path / "ckpt", components=("refinement", "connector"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as handle:
        assert {k.split(".")[0] for k in handle.keys()} == {"refinement", "connector"}  # noqa: SIM118
    with pytest.raises(ValueError, match="missing keys"):
        RGPTForCausalLM.from_pretrained(tmp_path / "ckpt")
    loaded = RGPTForCausalLM.from_pretrained(tmp_path / "ckpt", vision_tower=tmp_path / "clip", llm=tmp_path / "llm")
    ids, attention, pixels, masks = _inputs(processor, PROMPTS, REGIONS)
    with torch.no_grad():
        assert torch.allclose(model(ids, attention, pixels, masks).logits, loaded(ids, attention, pixels, masks).logits,
                              atol=1e-5)
    adapter = RGPTAdapter(size="full", pretrained=tmp_path / "ckpt", vision_tower=tmp_path / "clip",
                          llm=tmp_path / "llm")
    assert adapter.model.config.image_token_id == model.config.image_token_id


def test_precomputed_vision_grid_gives_the_same_logits_as_pixels(model, processor) -> None:
    """Training feeds the frozen tower's grid once per image; the numbers must equal the pixel path."""
    input_ids, attention, pixels, masks = _inputs(processor, ["What is <region1>?", "Is <region1> left of <region2>?"],
                                                  [[BOX_A], [BOX_A, BOX_B]])
    with torch.no_grad():
        from_pixels = model(input_ids, attention, pixel_values=pixels, region_masks=masks).logits
        grid = model.vision_grid(pixels)
        from_grid = model(input_ids, attention, vision_grid=grid, region_masks=masks).logits
    assert grid.shape == (2, model.config.vision_hidden_size, model.config.patch_grid, model.config.patch_grid)
    assert torch.allclose(from_pixels, from_grid)


def test_cached_training_batches_equal_the_processor_path(processor, model) -> None:
    from adapters.rgpt.modeling_rgpt import resize_masks
    from adapters.rgpt.train import CachedCollate
    from bench.training import Conversation
    from bench.types import ImageRef

    image = _image()
    ref = ImageRef(key="img")
    conversation = Conversation(ref, (BOX_A, BOX_B), (("Is <region2> left of <region1>?", "Yes"),), "relation")
    grid = model.vision_grid(processor.image(image)[None])[0]
    collate = CachedCollate(processor, {"img": grid}, {"img": (image.width, image.height)},
                            model.config.refined_grid)
    cached = collate([conversation, conversation])
    plain = processor.collate([processor.training_example(image, conversation.regions, conversation.turns)] * 2)
    assert torch.equal(cached["input_ids"], plain["input_ids"]) and torch.equal(cached["labels"], plain["labels"])
    expected = resize_masks(plain["region_masks"][0], model.config.refined_grid)
    assert torch.allclose(cached["region_masks"][0], expected, atol=1e-3)  # kept in half precision
    assert torch.equal(cached["vision_grid"][1], grid)
    with torch.no_grad():
        a = model(**{k: v for k, v in cached.items()}).loss
        b = model(**plain).loss
    assert torch.allclose(a, b, atol=1e-3)


def test_batched_mask_pooling_equals_row_by_row() -> None:
    from adapters.rgpt.modeling_rgpt import batched_mask_pool

    torch.manual_seed(0)
    features = torch.randn(3, 5, 8, 8, requires_grad=True)
    masks = [torch.rand(2, 32, 32), torch.rand(0, 32, 32), torch.rand(4, 32, 32)]
    batched = batched_mask_pool(features, masks)
    assert [tuple(b.shape) for b in batched] == [(2, 5), (0, 5), (4, 5)]
    for row, row_masks in enumerate(masks):
        assert torch.allclose(batched[row], mask_pool(features[row], row_masks), atol=1e-6)
    # Gradients flow to the features exactly as in the per-row form.
    torch.cat(batched).sum().backward()
    grad = features.grad.clone()
    features.grad = None
    torch.cat([mask_pool(features[i], m) for i, m in enumerate(masks)]).sum().backward()
    assert torch.allclose(grad, features.grad, atol=1e-6)
