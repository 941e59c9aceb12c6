"""GPT4RoI reference model: released state_dict layout, the region extractor step by step, prompts,
batched generation and scoring, checkpoints (ours and the released sharded layout), the adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adapters.gpt4roi.configuration_gpt4roi import GPT4RoIConfig
from adapters.gpt4roi.modeling_gpt4roi import GPT4RoIForCausalLM, coordinate_channels
from adapters.gpt4roi.processing_gpt4roi import (
    GPT4RoIProcessor,
    build_word_tokenizer,
    config_token_ids,
    load_llama_tokenizer,
    strip_answer,
    word_tokenizer_ids,
)
from adapters.gpt4roi.roi_align import roi_align
from bench.regions import Region
from tests.plugin_utils import run_bench

SHARED_DOC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "reference-models.md"

# The released checkpoint's region extractor (../shared/docs/reference-models.md), prefix model.spi_module.
RELEASED_SPI = {
    **{f"mlvl_fuse.input_conv.{i}.weight": [1024, 1026, 1, 1] for i in range(4)},
    **{f"mlvl_fuse.input_conv.{i}.bias": [1024] for i in range(4)},
    **{f"mlvl_fuse.fuse_convs.{i}.conv.weight": [1024, 1024, 3, 3] for i in range(5)},
    **{f"mlvl_fuse.fuse_convs.{i}.gn.{p}": [1024] for i in range(5) for p in ("weight", "bias")},
    **{f"roi_align.pconvs.{i}.weight": [1024, 1024, 3, 3] for i in range(4)},
    **{f"roi_align.pconvs.{i}.bias": [1024] for i in range(4)},
    "roi_align.pos_embedd.0.weight": [256, 4], "roi_align.pos_embedd.0.bias": [256],
    "roi_align.pos_embedd.2.weight": [256], "roi_align.pos_embedd.2.bias": [256],
    "roi_align.pos_embedd.3.weight": [1024, 256], "roi_align.pos_embedd.3.bias": [1024],
    "roi_align.pos_embedd.5.weight": [1024], "roi_align.pos_embedd.5.bias": [1024],
    "roi_align.flatten_linear.weight": [1024, 200704], "roi_align.flatten_linear.bias": [1024],
    "roi_align.updims.weight": [4096, 1024], "roi_align.updims.bias": [4096],
}
BOX_A = Region(box=(10.0, 8.0, 50.0, 40.0))
BOX_B = Region(box=(55.0, 5.0, 95.0, 55.0))


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(["what is in <region1> ? is it left of <region2> ?",
                                 "a red circle . a blue square . yes no"])


def _tiny_config(tokenizer) -> GPT4RoIConfig:
    return GPT4RoIConfig.tiny(len(tokenizer), config_token_ids(tokenizer), vision_hidden=32, llm_hidden=32,
                              llm_layers=2)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT4RoIForCausalLM:
    torch.manual_seed(0)
    return GPT4RoIForCausalLM(_tiny_config(tokenizer)).eval()


@pytest.fixture(scope="module")
def processor(tokenizer, model) -> GPT4RoIProcessor:
    return GPT4RoIProcessor(tokenizer, model.config)


def _image(width: int = 100, height: int = 60) -> Image.Image:
    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand((height, width, 3), generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


# --------------------------------------------------------------------------- layout


def test_full_state_dict_has_the_released_keys_and_shapes() -> None:
    from adapters.gpt4roi.adapter import GPT4RoIAdapter

    keys = {k: list(v) for k, v in GPT4RoIAdapter.meta_model(size="full").checkpoint_keys().items()}
    spi = {k.removeprefix("model.spi_module."): v for k, v in keys.items() if k.startswith("model.spi_module.")}
    assert spi == RELEASED_SPI
    assert sum(torch.Size(v).numel() for v in spi.values()) == pytest.approx(299e6, rel=0.01)  # "about 299M"
    assert keys["model.mm_projector.weight"] == [4096, 1024] and keys["model.mm_projector.bias"] == [4096]
    assert keys["model.embed_tokens.weight"] == [32006, 4096] and keys["lm_head.weight"] == [32006, 4096]
    llama = {k for k in keys if not k.startswith(("model.spi_module.", "model.mm_projector."))}
    layers = {int(m.group(1)) for k in llama if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    assert layers == set(range(32))
    assert {k for k in llama if "layers." not in k} == {"model.embed_tokens.weight", "model.norm.weight",
                                                         "lm_head.weight"}
    assert keys["model.layers.0.mlp.gate_proj.weight"] == [11008, 4096]
    assert not any(k.startswith("vision_tower.") for k in keys)  # CLIP comes from its own directory


@pytest.mark.skipif(not SHARED_DOC.is_file(), reason="../shared/docs is not present")
def test_the_table_above_is_the_published_one() -> None:
    """RELEASED_SPI equals the table in ../shared/docs/reference-models.md, parsed."""
    published = {}
    rows = re.findall(r"^\| `([^`]+)`(?: / `(\.[a-z]+)`)? \| ([^|]+?) \|", SHARED_DOC.read_text(), flags=re.M)
    for name, other_suffix, shape_cell in rows:
        shapes = [json.loads(s) for s in shape_cell.split(" / ")]
        names = [name] + ([name.rsplit(".", 1)[0] + other_suffix] if other_suffix else [])
        for key, shape in zip(names, shapes * len(names) if len(shapes) == 1 else shapes, strict=True):
            match = re.search(r"\{(\d+)\.\.(\d+)\}", key)
            indices = range(int(match.group(1)), int(match.group(2)) + 1) if match else [None]
            for i in indices:
                published[key.replace(match.group(0), str(i)) if match else key] = shape
    assert published == RELEASED_SPI


# --------------------------------------------------------------------------- the region extractor


def test_coordinate_channels_are_x_then_y_in_minus_one_one() -> None:
    coords = coordinate_channels(torch.zeros(2, 5, 3, 4))
    assert coords.shape == (2, 2, 3, 4)
    assert torch.allclose(coords[0, 0, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # x along the width
    assert torch.allclose(coords[0, 1, :, 0], torch.tensor([-1.0, 0.0, 1.0]))  # y along the height


def _reference_regions(model: GPT4RoIForCausalLM, grids: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """The documented computation written out step by step with functional ops (one image)."""
    config, spi = model.config, model.spi_module
    channels = config.vision_hidden_size
    levels = [F.interpolate(g, size=(s, s), mode="bilinear", align_corners=True)
              for g, s in zip(grids, config.level_sizes, strict=True)]
    fused = []
    for index, x in enumerate(levels):
        h, w = x.shape[-2:]
        xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(1, 1, h, w)
        ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(1, 1, h, w)
        conv = spi.mlvl_fuse.input_conv[index]
        fused.append(F.conv2d(torch.cat([x, xs, ys], 1), conv.weight, conv.bias))
    for block in spi.mlvl_fuse.fuse_convs:
        new = []
        for index, x in enumerate(fused):
            top, down = fused[min(index + 1, 3)], fused[max(index - 1, 0)]
            size = x.shape[-2:]
            parts = [x[:, :channels // 2],
                     F.interpolate(top[:, 3 * channels // 4:], size=size, mode="bilinear", align_corners=True),
                     F.interpolate(down[:, channels // 2:3 * channels // 4], size=size, mode="bilinear",
                                   align_corners=True)]
            y = F.conv2d(torch.cat(parts, 1), block.conv.weight, padding=1)
            new.append(F.relu(F.group_norm(y, config.fuse_groups, block.gn.weight, block.gn.bias)))
        fused = new
    head = spi.roi_align
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes * config.image_size], 1)
    total = 0
    for index, x in enumerate(fused):
        stride = config.image_size / config.level_sizes[index]
        pooled = roi_align(x, rois, config.roi_output_size, 1 / stride, sampling_ratio=2, aligned=True)
        total = total + F.conv2d(pooled, head.pconvs[index].weight, head.pconvs[index].bias, padding=1)
    features = F.linear(F.relu(total).flatten(1), head.flatten_linear.weight, head.flatten_linear.bias)
    p = head.pos_embedd
    pos = F.layer_norm(F.relu(F.linear(boxes, p[0].weight, p[0].bias)), (p[0].out_features,), p[2].weight, p[2].bias)
    pos = F.layer_norm(F.relu(F.linear(pos, p[3].weight, p[3].bias)), (p[3].out_features,), p[5].weight, p[5].bias)
    return F.linear(features + pos, head.updims.weight, head.updims.bias)


def test_region_extractor_follows_the_documented_computation(model, processor) -> None:
    torch.manual_seed(3)
    for module in model.spi_module.modules():  # non-trivial norms, so a swapped weight would show
        if isinstance(module, torch.nn.GroupNorm | torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.3)
            torch.nn.init.normal_(module.bias, 0.0, 0.3)
    pixels = processor.image(_image())[None]
    grids = list(model.vision_states(pixels)[:, 1:].unbind(1))
    boxes = processor.regions([BOX_A, BOX_B, Region(box=(0.0, 0.0, 100.0, 60.0))], 100, 60)
    with torch.no_grad():
        encoded = model.encode_images(pixels)
        ours = model.spi_module.roi_align(encoded.levels, [boxes])[0]
        expected = _reference_regions(model, grids, boxes)
    assert ours.shape == (3, model.config.text_hidden_size)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    # the vision tower's selected layer feeds the image tokens through mm_projector
    hidden = model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    patches = hidden[model.config.vision_select_layer][:, 1:]
    assert torch.allclose(encoded.image_embeds, model.mm_projector(patches), atol=1e-6)
    assert torch.equal(grids[0], hidden[model.config.level_layers[0]][:, 1:].transpose(1, 2).reshape(1, -1, 16, 16))
    assert encoded.image_embeds.shape == (1, model.config.num_image_tokens, model.config.text_hidden_size)


def test_each_region_token_reads_its_own_box(model, processor) -> None:
    pixels = processor.image(_image())[None]
    boxes = processor.regions([BOX_A, BOX_B], 100, 60)
    with torch.no_grad():
        encoded = model.encode_images(pixels)
        both = model.spi_module.roi_align(encoded.levels, [boxes])[0]
        swapped = model.spi_module.roi_align(encoded.levels, [boxes.flip(0)])[0]
    assert torch.allclose(both, swapped.flip(0), atol=1e-6)
    assert not torch.allclose(both[0], both[1])


# --------------------------------------------------------------------------- processor


def test_prompt_follows_the_released_template(tokenizer, processor) -> None:
    text = processor.user_turn("what is in region1 <bbox> ?", first=True)
    assert text == ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions.\n\n### Human: The "
                    "<im_start><im_patch><im_end> provides an overview of the picture.\nwhat is in region1 <bbox> ?"
                    "\n### Assistant:")
    ids, order = processor.prompt("is <region2> left of <region1> ?", 2)
    assert order == [1, 0]
    config = processor.config
    start = ids.index(config.image_start_token_id)
    assert ids[start + 1:start + 1 + config.num_image_tokens] == [config.image_token_id] * config.num_image_tokens
    assert ids[start + 1 + config.num_image_tokens] == config.image_end_token_id
    assert tokenizer.decode(ids[start + 2 + config.num_image_tokens:]).split() == [
        "provides", "an", "overview", "of", "the", "picture", ".", "is", "region2", "<bbox>", "left", "of",
        "region1", "<bbox>", "?", "###", "assistant", ":"]
    with pytest.raises(ValueError, match="already contains"):
        processor.prompt("what is <bbox> <region1>", 1)


def test_boxes_are_normalised_and_mask_only_regions_use_their_box(processor) -> None:
    boxes = processor.regions([BOX_A, Region(mask=[[20.0, 10.0, 60.0, 10.0, 60.0, 30.0, 20.0, 30.0]])], 100, 60)
    assert torch.allclose(boxes[0], torch.tensor([0.1, 8 / 60, 0.5, 40 / 60]))
    assert torch.allclose(boxes[1], torch.tensor([0.2, 10 / 60, 0.6, 30 / 60]), atol=0.011)


def test_answers_are_cleaned_like_the_released_demo() -> None:
    assert strip_answer("Assistant: a red circle ### Human: next") == "a red circle"
    assert strip_answer("region1 is a dog") == "region1 is a dog"


def test_word_tokenizer_ids_and_llama_tokenizer_gets_the_released_ids(tmp_path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    assert config_token_ids(build_word_tokenizer(["a b"])) == word_tokenizer_ids()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 32000)}}
    base = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                   unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    base.save_pretrained(str(tmp_path))
    tokenizer = load_llama_tokenizer(tmp_path)
    ids = config_token_ids(tokenizer)
    assert ids == {"pad_token_id": 32000, "image_token_id": 32001, "region_token_id": 32002,
                   "image_start_token_id": 32004, "image_end_token_id": 32005, "bos_token_id": 1, "eos_token_id": 2}
    assert ids == {k: getattr(GPT4RoIConfig.full(), k) for k in ids}


# --------------------------------------------------------------------------- generation and scoring


def _batch(processor, prompts: list[tuple[str, list[Region]]]):
    rows, boxes = [], []
    for prompt, regions in prompts:
        ids, order = processor.prompt(prompt, len(regions))
        rows.append(ids)
        boxes.append(processor.regions(regions, 100, 60)[order])
    ids, attention = processor.pad(rows, side="left")
    pixels = processor.image(_image())[None].expand(len(prompts), -1, -1, -1)
    return ids, attention, pixels, boxes


def test_batched_generation_equals_one_by_one(model, processor) -> None:
    prompts = [("what is in <region1> ?", [BOX_A]), ("is <region2> a red circle or <region1> ?", [BOX_A, BOX_B]),
               ("yes", [])]
    ids, attention, pixels, boxes = _batch(processor, prompts)
    batched = model.generate(ids, attention, pixels, boxes, max_new_tokens=6, eos_token_id=-1)
    for row, prompt in enumerate(prompts):
        one_ids, one_attention, one_pixels, one_boxes = _batch(processor, [prompt])
        assert batched[row] == model.generate(one_ids, one_attention, one_pixels, one_boxes, max_new_tokens=6,
                                              eos_token_id=-1)[0]


def test_score_continuations_equals_a_full_forward(model, processor) -> None:
    ids, _, pixels, boxes = _batch(processor, [("what is in <region1> ?", [BOX_A])])
    continuations = [processor.encode_answer(t) for t in ("a red circle", "a blue square .", "yes")]
    shared = model.score_continuations(ids[0], continuations, pixels[:1], boxes)
    for tokens, score in zip(continuations, shared, strict=True):
        full = torch.cat([ids[0], torch.tensor(tokens)])[None]
        with torch.no_grad():
            logits = model(full, torch.ones_like(full), pixels[:1], boxes).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        expected = sum(logprobs[len(ids[0]) - 1 + i, t].item() for i, t in enumerate(tokens))
        assert score == pytest.approx(expected, abs=1e-4)


def test_training_loss_covers_answers_only(model, processor) -> None:
    example = processor.training_example(_image(), [BOX_A, BOX_B], [("what is in <region2> ?", "a red circle"),
                                                                    ("and <region1> ?", "a blue square")])
    assert example["boxes"].shape == (2, 4) and torch.allclose(example["boxes"][0], processor.regions([BOX_B], 100,
                                                                                                      60)[0])
    answers = example["labels"][example["labels"] != -100].tolist()
    eos = model.config.eos_token_id
    assert answers == [*processor.encode_answer("a red circle"), eos, *processor.encode_answer("a blue square"), eos]
    batch = processor.collate([example, example])
    model.set_stage(2)
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())  # CLIP frozen
    assert model.spi_module.roi_align.updims.weight.grad is not None
    model.zero_grad(set_to_none=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"model.mm_projector.weight",
                                                                         "lm_head.weight"}
    model.set_stage(1)
    assert not model.lm_head.weight.requires_grad and model.mm_projector.weight.requires_grad
    model.requires_grad_(False)


# --------------------------------------------------------------------------- checkpoints


def test_save_and_load_round_trip(model, processor, tokenizer, tmp_path) -> None:
    model.save_pretrained(tmp_path, tokenizer)
    loaded = GPT4RoIForCausalLM.from_pretrained(tmp_path)
    ids, attention, pixels, boxes = _batch(processor, [("what is in <region1> ?", [BOX_A])])
    with torch.no_grad():
        assert torch.equal(model(ids, attention, pixels, boxes).logits, loaded(ids, attention, pixels, boxes).logits)


def test_released_layout_loads_from_shards_with_a_separate_clip(model, processor, tmp_path) -> None:
    """Sharded safetensors + index without the tower (what `bench convert` writes), CLIP from its own dir."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("vision_tower.")}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weights = tmp_path / "gpt4roi"
    weights.mkdir()
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(weights / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (weights / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model.config.save(weights)
    model.vision_tower.save_pretrained(str(tmp_path / "clip"))
    with pytest.raises(ValueError, match="vision_tower=CLIP_DIR"):
        GPT4RoIForCausalLM.from_pretrained(weights)
    loaded = GPT4RoIForCausalLM.from_pretrained(weights, vision_tower=tmp_path / "clip")
    ids, attention, pixels, boxes = _batch(processor, [("is <region2> a red circle or <region1> ?", [BOX_A, BOX_B])])
    with torch.no_grad():
        assert torch.allclose(model(ids, attention, pixels, boxes).logits,
                              loaded(ids, attention, pixels, boxes).logits, atol=1e-6)


def test_released_config_json_is_read_by_hand() -> None:
    released = {"model_type": "llava", "hidden_size": 4096, "vocab_size": 32006, "num_hidden_layers": 32,
                "mm_hidden_size": 1024, "mm_use_im_start_end": True, "mm_vision_select_layer": -2,
                "intermediate_size": 11008, "rms_norm_eps": 1e-6}
    config = GPT4RoIConfig.from_released(released)
    assert config.text_config.vocab_size == 32006 and config.vision_select_layer == -2
    assert config.level_layers == (-11, -8, -5, -2) and config.level_sizes == (128, 64, 32, 16)
    assert config.level_strides == (14 / 8, 14 / 4, 14 / 2, 14)
    with pytest.raises(ValueError, match="mm_hidden_size"):
        GPT4RoIConfig.from_released({**released, "mm_hidden_size": 768})


# --------------------------------------------------------------------------- adapter and CLI


@pytest.mark.slow
def test_adapter_runs_a_task_and_batching_does_not_change_answers(model, tokenizer, tmp_path) -> None:
    model.save_pretrained(tmp_path / "ckpt", tokenizer)
    outputs = []
    for batch_size in ("1", "4"):
        out = tmp_path / f"run{batch_size}"
        result = run_bench("run", "--model", "gpt4roi", "--model-args",
                           f"pretrained={tmp_path / 'ckpt'},max_new_tokens=4", "--task", "coco-cls,refcocog-cap",
                           "--limit", "3", "--batch-size", batch_size, "--output", str(out), "--no-progress")
        assert result.returncode == 0, result.stderr
        outputs.append([json.loads(line)["outputs"] for task in ("coco-cls", "refcocog-cap")
                        for line in (out / f"samples_{task}.jsonl").read_text().splitlines()])
    assert len(outputs[0]) == 6
    for one, batched in zip(*outputs, strict=True):  # generated text equal, log-likelihoods equal to 1e-4
        assert str(one[0]) == str(batched[0])
        if len(one) > 1:
            assert one[1] == pytest.approx(batched[1], abs=1e-4)


def test_adapter_errors_name_the_fix(tmp_path) -> None:
    result = run_bench("run", "--model", "gpt4roi", "--model-args", "size=full", "--task", "coco-cls", "--limit",
                       "1", "--output", str(tmp_path / "x"))  # size=tiny without pretrained= is the embedded one
    assert result.returncode == 2 and "pretrained=DIR" in result.stderr
    (tmp_path / "released").mkdir()
    (tmp_path / "released" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (tmp_path / "released" / "model.safetensors.index.json").write_text("{}")
    result = run_bench("run", "--model", "gpt4roi", "--model-args", f"pretrained={tmp_path / 'released'},size=full",
                       "--task", "coco-cls", "--limit", "1", "--output", str(tmp_path / "y"))
    assert result.returncode == 2 and "vision_tower=DIR" in result.stderr


def test_inspect_full_size_shows_the_released_keys() -> None:
    from bench.inspect_model import inspect_model

    report = inspect_model("gpt4roi", {"size": "full"})
    assert "model.spi_module.roi_align.flatten_linear.weight  [1024, 200704]" in report
    assert re.search(r"spi_module\s+299,142,912 \(299\.1M\)", report)


def test_without_pretrained_the_embedded_tiny_checkpoint_is_used(tmp_path, monkeypatch) -> None:
    from adapters.gpt4roi import adapter as module
    from bench.errors import ConfigError

    monkeypatch.setattr(module, "EMBEDDED_TINY", tmp_path / "absent")
    with pytest.raises(ConfigError, match="bench train gpt4roi"):
        module.GPT4RoIAdapter._checkpoint("tiny", None)
    monkeypatch.setattr(module, "EMBEDDED_TINY", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert module.GPT4RoIAdapter._checkpoint("tiny", None) == tmp_path
    assert module.GPT4RoIAdapter._checkpoint("tiny", tmp_path / "mine") == tmp_path / "mine"
