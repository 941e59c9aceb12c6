"""Applying the GPT4RoI delta: exact sums, any base layout, streaming, safe loading, clear errors, the CLI."""

from __future__ import annotations

import json
import pickle
import weakref
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import adapters.gpt4roi.convert as convert
from adapters.gpt4roi.convert import apply_delta
from bench.errors import BenchError, ConfigError, DataError
from tests.plugin_utils import run_bench

HIDDEN, FFN, LAYERS = 8, 16, 2
BASE_VOCAB, DELTA_VOCAB = 32000, 32006
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
F16, F32 = torch.float16, torch.float32
FP32_IN_BASE = "model.layers.1.mlp.up_proj.weight"
SIDE_FILES = {
    "config.json": json.dumps({"model_type": "llava", "vocab_size": DELTA_VOCAB}),
    "generation_config.json": "{}",
    "tokenizer.model": "sentencepiece bytes",
    "tokenizer_config.json": "{}",
    "special_tokens_map.json": "{}",
    "added_tokens.json": json.dumps({"<im_patch>": 32000}),
}


def llama_specs(vocab: int, layer_dtypes: dict[str, torch.dtype]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """LLaMA's key names at toy sizes: name -> (shape, dtype)."""
    specs = {EMBED: ((vocab, HIDDEN), F16)}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        for proj in ("q", "k", "v", "o"):
            specs[f"{prefix}self_attn.{proj}_proj.weight"] = ((HIDDEN, HIDDEN), F16)
        specs[f"{prefix}mlp.gate_proj.weight"] = ((FFN, HIDDEN), F16)
        specs[f"{prefix}mlp.up_proj.weight"] = ((FFN, HIDDEN), F16)
        specs[f"{prefix}mlp.down_proj.weight"] = ((HIDDEN, FFN), F16)
        specs[f"{prefix}input_layernorm.weight"] = ((HIDDEN,), layer_dtypes.get("input_layernorm", F16))
        specs[f"{prefix}post_attention_layernorm.weight"] = ((HIDDEN,), F16)
    specs["model.norm.weight"] = ((HIDDEN,), layer_dtypes.get("norm", F16))
    specs[HEAD] = ((vocab, HIDDEN), F16)
    return specs


def random_tensors(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator).to(dtype) for k, (shape, dtype) in specs.items()}


def make_base() -> dict[str, torch.Tensor]:
    # Some tensors are fp32 in the base and fp16 in the delta: the sum is taken in fp32, cast to fp16.
    tensors = random_tensors(llama_specs(BASE_VOCAB, {"norm": F32}), seed=1)
    generator = torch.Generator().manual_seed(4)
    tensors[FP32_IN_BASE] = tensors[FP32_IN_BASE].float() + torch.rand(FFN, HIDDEN, generator=generator) * 1e-3
    for layer in range(LAYERS):  # old transformers versions saved RoPE buffers; they are not in the delta
        tensors[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.rand(HIDDEN // 2, generator=generator)
    return tensors


def make_delta() -> dict[str, torch.Tensor]:
    tensors = random_tensors(llama_specs(DELTA_VOCAB, {"input_layernorm": F32}), seed=2)
    generator = torch.Generator().manual_seed(3)
    tensors["model.mm_projector.weight"] = torch.randn(HIDDEN, 12, generator=generator).half()
    tensors["model.mm_projector.bias"] = torch.randn(HIDDEN, generator=generator).half()
    tensors["model.spi_module.roi_align.updims.weight"] = torch.randn(HIDDEN, 4, generator=generator)
    tensors["model.spi_module.roi_align.updims.bias"] = torch.randn(HIDDEN, generator=generator)
    return tensors


def expected_output(delta: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, d in delta.items():
        if key not in base:
            out[key] = d
        elif key in (EMBED, HEAD):
            total = d.float().clone()
            total[:BASE_VOCAB] += base[key].float()
            out[key] = total.to(d.dtype)
        else:
            out[key] = (d.float() + base[key].float()).to(d.dtype)
    return out


def split_two(keys: list[str], first: set[str]) -> list[list[str]]:
    return [[k for k in keys if k in first], [k for k in keys if k not in first]]


def delta_groups(keys: list[str]) -> list[list[str]]:
    """Shard 1: embeddings, layer 0, projector; shard 2: layer 1, norm, lm_head, spi_module."""
    return split_two(keys, {k for k in keys if k == EMBED or ".layers.0." in k or "mm_projector" in k})


def base_groups(keys: list[str]) -> list[list[str]]:
    """Split differently from the delta, so one delta shard needs both base shards."""
    return split_two(keys, {k for k in keys if k == EMBED or ".layers.0." in k or ".layers.1.self_attn" in k})


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], fmt: str,
                     groups: list[list[str]] | None) -> Path:
    """A Hugging Face checkpoint: ``fmt`` "bin" or "safetensors", sharded with an index when ``groups``."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix, suffix = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")

    def save(part: dict[str, torch.Tensor], path: Path) -> None:
        if fmt == "bin":
            torch.save(part, path)
        else:
            save_file(part, str(path), metadata={"format": "pt"})

    if groups is None:
        save(tensors, directory / f"{prefix}.{suffix}")
        return directory
    weight_map = {}
    for i, keys in enumerate(groups, start=1):
        name = f"{prefix}-{i:05d}-of-{len(groups):05d}.{suffix}"
        save({k: tensors[k] for k in keys}, directory / name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / f"{prefix}.{suffix}.index.json").write_text(json.dumps(index))
    return directory


def write_delta(directory: Path, tensors: dict[str, torch.Tensor] | None = None, fmt: str = "bin") -> Path:
    tensors = make_delta() if tensors is None else tensors
    write_checkpoint(directory, tensors, fmt, delta_groups(list(tensors)))
    for name, text in SIDE_FILES.items():
        (directory / name).write_text(text)
    return directory


def write_base(directory: Path, tensors: dict[str, torch.Tensor] | None = None, layout: str = "bin-sharded") -> Path:
    tensors = make_base() if tensors is None else tensors
    fmt, sharding = layout.split("-")
    return write_checkpoint(directory, tensors, fmt, base_groups(list(tensors)) if sharding == "sharded" else None)


def read_output(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            for key in names:
                assert key not in tensors, f"{key} is in two shards"
                assert index["weight_map"][key] == shard.name
                tensors[key] = handle.get_tensor(key)
    return tensors, index


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gpt4roi")
    return write_delta(root / "delta"), write_base(root / "base")


def test_output_is_delta_plus_base_with_dtypes_index_and_side_files(inputs: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    delta_dir, base_dir = inputs
    delta, base = make_delta(), make_base()
    assert apply_delta(delta_dir, base_dir, tmp_path / "out") == tmp_path / "out"
    out, index = read_output(tmp_path / "out")

    assert set(out) == set(delta)  # inv_freq buffers of the base are not written
    expected = expected_output(delta, base)
    for key, tensor in out.items():
        assert tensor.dtype == delta[key].dtype, key
        assert torch.equal(tensor, expected[key]), key
    for key in (EMBED, HEAD):
        assert out[key].shape == (DELTA_VOCAB, HIDDEN)
        assert torch.equal(out[key][BASE_VOCAB:], delta[key][BASE_VOCAB:])  # the 6 new tokens: delta as is
        assert torch.equal(out[key][:BASE_VOCAB], delta[key][:BASE_VOCAB] + base[key])  # upstream's fp16 +=
    for key in ("model.mm_projector.weight", "model.mm_projector.bias", "model.spi_module.roi_align.updims.weight"):
        assert torch.equal(out[key], delta[key])
    q = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(out[q], delta[q].clone().add_(base[q]))
    assert out["model.norm.weight"].dtype == F16 and out["model.layers.0.input_layernorm.weight"].dtype == F32
    assert not torch.equal(out["model.norm.weight"], delta["model.norm.weight"])
    # fp32 base values are added at full precision, not rounded to fp16 first.
    assert base[FP32_IN_BASE].dtype == F32 and out[FP32_IN_BASE].dtype == F16
    assert not torch.equal(out[FP32_IN_BASE], delta[FP32_IN_BASE] + base[FP32_IN_BASE].half())

    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    assert index["weight_map"][EMBED] == "model-00001-of-00002.safetensors"
    assert index["weight_map"][HEAD] == "model-00002-of-00002.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    for name, text in SIDE_FILES.items():
        assert (tmp_path / "out" / name).read_text() == text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [*SIDE_FILES, "model.safetensors.index.json", *set(index["weight_map"].values())])


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin-single", "safetensors-single"])
def test_every_base_layout_gives_the_same_output(inputs: tuple[Path, Path], tmp_path: Path, layout: str) -> None:
    delta_dir, base_dir = inputs
    reference, _ = read_output(apply_delta(delta_dir, base_dir, tmp_path / "reference"))
    other, _ = read_output(apply_delta(delta_dir, write_base(tmp_path / "base", layout=layout), tmp_path / "out"))
    assert other.keys() == reference.keys()
    assert all(torch.equal(other[k], reference[k]) and other[k].dtype == reference[k].dtype for k in reference)


def test_delta_as_safetensors_gives_the_same_output(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, base_dir = inputs
    reference, _ = read_output(apply_delta(delta_dir, base_dir, tmp_path / "reference"))
    other, _ = read_output(apply_delta(write_delta(tmp_path / "delta", fmt="safetensors"), base_dir,
                                       tmp_path / "out"))
    assert all(torch.equal(other[k], reference[k]) for k in reference) and other.keys() == reference.keys()


class Tracked(dict):
    """A loaded state dict whose lifetime the test can watch (plain dicts take no weak references)."""


def test_at_most_one_delta_and_one_base_bin_shard_are_alive(inputs: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    delta_dir, base_dir = inputs
    real_load = convert._load_bin
    alive: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    loads: Counter[Path] = Counter()
    calls: list[dict] = []
    real_torch_load = torch.load

    def checked_torch_load(*args, **kwargs):
        calls.append(kwargs)
        return real_torch_load(*args, **kwargs)

    def tracked_load(path: Path) -> dict:
        role = path.parent.name
        assert alive[role] == 0, f"loading {path.name} while another {role} shard is alive"
        state = Tracked(real_load(path))
        alive[role] += 1
        peak[role] = max(peak[role], alive[role])
        loads[path] += 1
        weakref.finalize(state, alive.subtract, [role])
        return state

    monkeypatch.setattr(convert, "_load_bin", tracked_load)
    monkeypatch.setattr(torch, "load", checked_torch_load)
    apply_delta(delta_dir, base_dir, tmp_path / "out")
    assert peak == {"delta": 1, "base": 1}
    assert +alive == Counter()  # everything was released at the end
    assert calls and all(c == {"map_location": "cpu", "weights_only": True, "mmap": True} for c in calls)
    # Each delta shard: once to read shapes, once to convert. Each base shard: once to read shapes, then at
    # most once per delta shard (its tensors are visited grouped by base shard).
    assert sorted(loads[p] for p in loads if p.parent == delta_dir) == [2, 2]
    assert all(2 <= loads[p] <= 3 for p in loads if p.parent == base_dir) and len(loads) == 4
    source = Path(convert.__file__).read_text()
    assert "weights_only=False" not in source and "pickle.load" not in source


def test_safetensors_base_reads_each_needed_tensor_once(inputs: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    delta_dir, _ = inputs
    base_dir = write_base(tmp_path / "base", layout="safetensors-sharded")
    reads: Counter[str] = Counter()
    real_open = convert._open_safetensors

    class Counting:
        def __init__(self, path: Path) -> None:
            self.handle = real_open(path)

        def __getattr__(self, name: str):
            return getattr(self.handle, name)

        def get_tensor(self, key: str) -> torch.Tensor:
            reads[key] += 1
            return self.handle.get_tensor(key)

    monkeypatch.setattr(convert, "_open_safetensors", Counting)
    apply_delta(delta_dir, base_dir, tmp_path / "out")
    llama_keys = [k for k in make_base() if "inv_freq" not in k]
    assert reads == Counter(dict.fromkeys(llama_keys, 1))  # lazily, one by one, never the whole file


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(convert.is_weight_file(p) for p in out.iterdir())


def test_shape_mismatch_names_key_shapes_and_files(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, _ = inputs
    base = make_base()
    key = "model.layers.1.mlp.up_proj.weight"
    base[key] = torch.zeros(FFN + 1, HIDDEN, dtype=F16)
    base_dir = write_base(tmp_path / "base", base)
    with pytest.raises(DataError) as error:
        apply_delta(delta_dir, base_dir, tmp_path / "out")
    message = str(error.value)
    assert key in message and "[16, 8]" in message and "[17, 8]" in message
    assert str(delta_dir / "pytorch_model-00002-of-00002.bin") in message
    assert str(base_dir / "pytorch_model-00002-of-00002.bin") in message
    assert_nothing_written(tmp_path / "out")


def test_embedding_width_mismatch_is_an_error(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, _ = inputs
    base = make_base()
    base[HEAD] = torch.zeros(BASE_VOCAB, HIDDEN + 1, dtype=F16)
    with pytest.raises(DataError, match=r"lm_head\.weight: the delta has shape \[32006, 8\].*\[32000, 9\]"):
        apply_delta(delta_dir, write_base(tmp_path / "base", base), tmp_path / "out")


def test_base_tensors_missing_from_the_delta_are_listed(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    _, base_dir = inputs
    delta = make_delta()
    del delta["model.layers.0.mlp.down_proj.weight"], delta["model.norm.weight"]
    with pytest.raises(DataError, match=r"2 base tensor\(s\) are absent from the delta: "
                                        r"model\.layers\.0\.mlp\.down_proj\.weight, model\.norm\.weight;"):
        apply_delta(write_delta(tmp_path / "delta", delta), base_dir, tmp_path / "out")


def test_delta_only_rotary_buffers_are_not_written(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    _, base_dir = inputs
    base = {k: v for k, v in make_base().items() if "inv_freq" not in k}
    delta = make_delta()
    delta["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(HIDDEN // 2)  # target - base of a buffer
    out, _ = read_output(apply_delta(write_delta(tmp_path / "delta", delta),
                                     write_base(tmp_path / "base", base), tmp_path / "out"))
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in out and len(out) == len(delta) - 1


def test_missing_index_entry_is_named(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    _, base_dir = inputs
    delta_dir = write_delta(tmp_path / "delta")
    index_path = delta_dir / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.layers.1.mlp.gate_proj.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"pytorch_model-00002-of-00002\.bin holds model\.layers\.1\.mlp\.gate_proj"
                                        r"\.weight, but .*pytorch_model\.bin\.index\.json has no entry for it"):
        apply_delta(delta_dir, base_dir, tmp_path / "out")


def test_index_naming_a_missing_shard_is_named(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, _ = inputs
    base_dir = write_base(tmp_path / "base")
    (base_dir / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(DataError, match=r"names the shard pytorch_model-00002-of-00002\.bin, which is missing"):
        apply_delta(delta_dir, base_dir, tmp_path / "out")


@pytest.mark.parametrize("case", ["missing", "empty", "no-weights"])
def test_unusable_directories_are_named(inputs: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    delta_dir, _ = inputs
    base_dir = tmp_path / "base"
    if case != "missing":
        base_dir.mkdir()
    if case == "no-weights":
        (base_dir / "config.json").write_text("{}")
    expected = {"missing": "does not exist", "empty": "is empty", "no-weights": "no weights found"}[case]
    with pytest.raises(BenchError) as error:
        apply_delta(delta_dir, base_dir, tmp_path / "out")
    assert str(base_dir) in str(error.value) and expected in str(error.value)
    assert "LLaMA-7B in Hugging Face transformers format" in str(error.value)


def test_out_with_weights_is_refused_unless_overwrite(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, base_dir = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "model-00001-of-00003.safetensors").write_bytes(b"old")
    with pytest.raises(ConfigError, match=r"already holds weights \(model-00001-of-00003\.safetensors\).*--overwrite"):
        apply_delta(delta_dir, base_dir, out)
    apply_delta(delta_dir, base_dir, out, overwrite=True)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model-00001-of-00002.safetensors",
                                                                 "model-00002-of-00002.safetensors"]
    with pytest.raises(ConfigError, match="is an input directory"):
        apply_delta(delta_dir, base_dir, delta_dir, overwrite=True)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_bin_is_refused_and_never_runs(inputs: tuple[Path, Path], tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str], writer: str) -> None:
    delta_dir, _ = inputs
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    evil = base_dir / "pytorch_model.bin"
    state = {"model.norm.weight": torch.ones(HIDDEN), "model.evil": Payload()}
    if writer == "torch.save":
        torch.save(state, evil)
    else:
        with evil.open("wb") as handle:
            pickle.dump(state, handle)
    with pytest.raises(DataError) as error:
        apply_delta(delta_dir, base_dir, tmp_path / "out")
    message = str(error.value)
    assert f"{evil} is refused: it is not a plain tensor file" in message
    if writer == "torch.save":
        assert "print" in message  # the global that weights_only refused
    assert "pwned" not in capfd.readouterr().out
    assert_nothing_written(tmp_path / "out")


def test_bin_holding_more_than_tensors_is_refused(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, _ = inputs
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    torch.save({"model.norm.weight": torch.ones(HIDDEN), "step": 3}, base_dir / "pytorch_model.bin")
    with pytest.raises(DataError, match=r"is refused: it is not a plain tensor file \('step' holds a int"):
        apply_delta(delta_dir, base_dir, tmp_path / "out")


def test_cli_converts_and_reports_bad_base(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    delta_dir, base_dir = inputs
    out = tmp_path / "out"
    result = run_bench("convert", "gpt4roi", "--delta", str(delta_dir), "--base", str(base_dir), "--out", str(out),
                       "--no-progress")
    assert result.returncode == 0, result.stderr
    n_tensors = len(make_delta())
    assert result.stdout.strip() == f"wrote {n_tensors} tensors in 2 safetensors shard(s) to {out}"
    converted, _ = read_output(out)
    assert len(converted) == n_tensors and (out / "config.json").is_file()

    bad = run_bench("convert", "gpt4roi", "--delta", str(delta_dir), "--base", str(tmp_path / "nowhere"),
                    "--out", str(tmp_path / "out2"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the base directory ") and "does not exist" in lines[0]
    assert not (tmp_path / "out2").exists()
