"""Turn the released GPT4RoI-7B delta into usable weights: ``target = delta + LLaMA-7B``.

Why this file exists: LLaMA's licence kept GPT4RoI from publishing its weights,
so ``GPT4RoI-7B-delta-V0`` holds ``target - base`` for every LLaMA parameter,
plus whole tensors for what GPT4RoI adds (``model.mm_projector.*``,
``model.spi_module.*``). Upstream's ``scripts/apply_delta.py`` builds both full
models in fp16 (about 27 GB of RAM), needs GPT4RoI's own model code, and
unpickles the ``.bin`` shards with plain ``torch.load``, which runs whatever code
a pickle names. This module does the same arithmetic without any of
that:

* **Safe loading.** ``.bin`` files are pickles. They are read only with
  ``torch.load(..., weights_only=True, mmap=True)``, which builds tensors and plain
  containers and refuses everything else; a file it refuses (or one that is not in
  torch's zip format at all) is reported as not a plain tensor file and nothing in
  it runs. ``.safetensors`` files are read with ``safe_open``, one tensor at a time.
* **Streaming.** First every shard's tensor names and shapes are read (metadata
  only: one shard at a time) and the merge is checked completely, so a wrong
  ``--base`` fails before anything is written. Then the delta is processed shard by
  shard: each delta tensor's base counterpart is fetched lazily from the shard the
  base index names (a safetensors shard reads just that tensor; a ``.bin`` shard is
  memory-mapped, and :class:`ShardReader` holds at most one shard at a time), and
  one output safetensors shard is written per delta shard before the next delta
  shard is opened. Peak memory is about one delta shard + one (memory-mapped) base
  shard + one output shard.
* **Arithmetic.** Sums are computed in float32 and cast back to the delta tensor's
  dtype; for two fp16 tensors on CPU this is bit-identical to upstream's fp16
  ``+=``. ``model.embed_tokens.weight`` and ``lm_head.weight`` have 32006 rows in
  the delta and 32000 in LLaMA: the base is added to the first 32000 rows and the
  six new token rows stay as in the delta. Every other shared tensor must have the
  same shape. Tensors only in the delta are copied unchanged; LLaMA tensors missing
  from the delta are an error. RoPE ``rotary_emb.inv_freq`` buffers (saved by old
  transformers versions, recomputed from the config by every version) are ignored
  when only the base has them and not written when only the delta has them (there
  they are ``target - base`` of a buffer, i.e. zeros, not the buffer).

The output directory gets ``model-0000i-of-0000N.safetensors`` shards, a
``model.safetensors.index.json`` (written last, so its presence means the
conversion finished) and the delta's configuration and tokenizer files (every
top-level file that is not a weight file), i.e. a Hugging Face style checkpoint
directory. Unlike upstream, which loads everything as fp16, each tensor keeps the
delta's dtype.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from bench.errors import ConfigError, DataError

__all__ = ["OUTPUT_INDEX", "Checkpoint", "ShardReader", "TensorInfo", "apply_delta", "find_checkpoint",
           "plan_merge", "scan_checkpoint"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
OUTPUT_INDEX = SAFETENSORS_INDEX

#: Tensors whose rows are token ids: the delta has rows for the added tokens, which get no base.
EMBEDDING_KEYS = frozenset({"model.embed_tokens.weight", "lm_head.weight"})
ROTARY_SUFFIX = "rotary_emb.inv_freq"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".partial")

#: What each tensor of the delta becomes: base added to all of it, to its first rows, copied, or not written.
ADD, ADD_ROWS, COPY, SKIP = "add", "add_rows", "copy", "skip"

_HINTS = {
    "delta": "download GPT4RoI-7B-delta-V0 (its .bin shards, pytorch_model.bin.index.json, config and tokenizer "
             "files) into it and pass that directory as --delta",
    "base": "pass as --base the directory of LLaMA-7B in Hugging Face transformers format (.bin or .safetensors "
            "shards with their index json; Meta's original consolidated.*.pth weights must first be converted with "
            "transformers' convert_llama_weights_to_hf.py)",
}


@dataclass
class Checkpoint:
    """The weight files of one Hugging Face checkpoint directory."""

    role: str  # "delta" or "base", for messages
    directory: Path
    shards: tuple[Path, ...]  # in index order (shard numbering); one file when unsharded
    index: Path | None  # the index json; None for an unsharded checkpoint
    weight_map: dict[str, Path]  # tensor name -> shard, as the index says (empty when unsharded)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and its shape, read from shard metadata without loading the data."""

    shape: tuple[int, ...]
    shard: Path


def is_weight_file(path: Path) -> bool:
    """Weights, weight indexes and half-written output shards: never copied, and what ``--out`` must not hold."""
    return path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json")


def _is_rotary(key: str) -> bool:
    return key.endswith(ROTARY_SUFFIX)


def _check_directory(directory: Path, role: str) -> None:
    if not directory.exists():
        raise ConfigError(f"the {role} directory {directory} does not exist; {_HINTS[role]}")
    if not directory.is_dir():
        raise ConfigError(f"the {role} path {directory} is not a directory; {_HINTS[role]}")
    if not any(directory.iterdir()):
        raise ConfigError(f"the {role} directory {directory} is empty; {_HINTS[role]}")


def _read_index(index: Path, role: str) -> dict[str, Path]:
    """``weight_map`` of a Hugging Face index json, as tensor name -> shard path (shards must exist)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{index} is not a readable JSON index ({error}); re-download it") from error
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DataError(f"{index} has no \"weight_map\" of tensor names to shard files; re-download it")
    shards: dict[str, Path] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise DataError(f"{index} maps {key!r} to {name!r}, which is not a file name in its directory")
        if name not in shards:
            shard = index.parent / name
            if not shard.is_file():
                raise DataError(f"{index} names the shard {name}, which is missing from {index.parent}; "
                                f"download it ({_HINTS[role]})")
            shards[name] = shard
    return {key: shards[name] for key, name in weight_map.items()}


def find_checkpoint(directory: Path, role: str) -> Checkpoint:
    """The weight files in ``directory``: an index json (safetensors preferred) or a single unsharded file."""
    directory = Path(directory)
    _check_directory(directory, role)
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            weight_map = _read_index(index, role)
            shards = tuple(sorted(set(weight_map.values()), key=lambda p: p.name))
            return Checkpoint(role, directory, shards, index, weight_map)
    for name in SINGLE_FILES:
        if (directory / name).is_file():
            return Checkpoint(role, directory, (directory / name,), None, {})
    loose = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if loose:
        raise DataError(f"the {role} directory {directory} holds {', '.join(loose[:4])}"
                        f"{' ...' if len(loose) > 4 else ''} but neither {SAFETENSORS_INDEX} nor {BIN_INDEX} "
                        f"(nor a single {' or '.join(SINGLE_FILES)}); download the index json that comes with them")
    raise DataError(f"no weights found in the {role} directory {directory}: expected {SAFETENSORS_INDEX}, "
                    f"{BIN_INDEX}, {SINGLE_FILES[0]} or {SINGLE_FILES[1]}; {_HINTS[role]}")


def _weights_only_reason(error: BaseException) -> str:
    match = re.search(r"WeightsUnpickler error: (.*?)(?:\. Please|\n|$)", str(error))
    return match.group(1).strip() if match else type(error).__name__


def _load_bin(path: Path) -> dict[str, Tensor]:
    """Memory-map a torch ``.bin`` state dict with ``weights_only=True``: tensors only, no code runs."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is refused: it is not a plain tensor file in torch's zip format (a raw pickle, or "
                        "a checkpoint saved by PyTorch < 1.6), and region-bench unpickles .bin files only with "
                        "weights_only=True and mmap=True; get the weights as .safetensors or from a trusted source")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise DataError(f"{path} is refused: it is not a plain tensor file (loading with weights_only=True stopped "
                        f"at: {_weights_only_reason(error)}); nothing in it was run. Use weights from a trusted "
                        "source, preferably .safetensors") from error
    except Exception as error:  # a truncated or corrupt archive: torch raises RuntimeError, OSError, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} cannot be read as a torch checkpoint ({first_line}); re-download it") from error
    if not isinstance(state, dict):
        raise DataError(f"{path} is refused: it is not a plain tensor file (it holds a {type(state).__name__}, "
                        "not a dict of tensor names to tensors)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise DataError(f"{path} is refused: it is not a plain tensor file ({key!r} holds a "
                            f"{type(value).__name__}, not a tensor)")
    return state


def _open_safetensors(path: Path) -> Any:
    """A lazy ``safe_open`` handle: the header is parsed, tensors are read one at a time."""
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # SafetensorError for a bad header, OSError for I/O
        raise DataError(f"{path} is not a readable safetensors file ({error}); re-download it") from error


def _shard_shapes(shard: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of one shard, from its metadata (a ``.bin`` is memory-mapped, then dropped)."""
    if shard.suffix == ".safetensors":
        handle = _open_safetensors(shard)
        names = handle.keys()  # a safe_open handle is not iterable
        return {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    return {key: tuple(tensor.shape) for key, tensor in _load_bin(shard).items()}


def scan_checkpoint(checkpoint: Checkpoint) -> dict[str, TensorInfo]:
    """Every tensor's shape and shard, checking that the index and the shards agree (one shard open at a time)."""
    found: dict[str, TensorInfo] = {}
    for shard in checkpoint.shards:
        for key, shape in _shard_shapes(shard).items():
            if key in found:
                raise DataError(f"{key} is stored twice, in {found[key].shard} and in {shard}; re-download "
                                f"{checkpoint.directory}")
            if checkpoint.index is not None and key not in checkpoint.weight_map:
                raise DataError(f"{shard} holds {key}, but {checkpoint.index} has no entry for it (a missing "
                                "index entry); re-download the index json")
            if checkpoint.index is not None and checkpoint.weight_map[key] != shard:
                raise DataError(f"{checkpoint.index} maps {key} to {checkpoint.weight_map[key].name}, but it is "
                                f"stored in {shard.name}; re-download the index json")
            found[key] = TensorInfo(shape, shard)
    missing = [key for key in checkpoint.weight_map if key not in found]
    if missing:
        key = missing[0]
        raise DataError(f"{checkpoint.index} maps {key} to {checkpoint.weight_map[key].name}, which has no such "
                        f"tensor ({len(missing)} such entries); the index does not match the shards: re-download "
                        f"{checkpoint.directory}")
    if not found:
        raise DataError(f"no tensors found in the {checkpoint.role} directory {checkpoint.directory}; "
                        f"{_HINTS[checkpoint.role]}")
    return found


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def plan_merge(delta: dict[str, TensorInfo], base: dict[str, TensorInfo]) -> dict[str, str]:
    """What to do with each delta tensor (:data:`ADD`, :data:`ADD_ROWS`, :data:`COPY`, :data:`SKIP`), or raise."""
    missing = sorted(key for key in base if key not in delta and not _is_rotary(key))
    if missing:
        raise DataError(f"{len(missing)} base tensor(s) are absent from the delta: {_listing(missing)}; --delta must "
                        "be GPT4RoI-7B-delta-V0 and --base LLaMA-7B, both in Hugging Face transformers format")
    plan: dict[str, str] = {}
    for key, info in delta.items():
        if key not in base:
            plan[key] = SKIP if _is_rotary(key) else COPY
            continue
        theirs = base[key]
        where = f"the delta has shape {list(info.shape)} in {info.shard} but the base has {list(theirs.shape)} " \
                f"in {theirs.shard}"
        if key in EMBEDDING_KEYS:
            if len(info.shape) != 2 or len(theirs.shape) != 2 or info.shape[1] != theirs.shape[1] \
                    or info.shape[0] < theirs.shape[0]:
                raise DataError(f"{key}: {where}; these token tables must have the same width and the delta at "
                                "least as many rows. Is --base LLaMA-7B (not another size)?")
            plan[key] = ADD_ROWS
        elif info.shape != theirs.shape:
            raise DataError(f"{key}: {where}; apart from model.embed_tokens.weight and lm_head.weight (rows) the "
                            "shapes must be equal. Is --base LLaMA-7B (not another size)?")
        else:
            plan[key] = ADD
    return plan


class ShardReader:
    """Reads tensors of one checkpoint lazily, holding at most one shard open at a time.

    A ``.safetensors`` shard is an open ``safe_open`` handle (each tensor is read when asked
    for); a ``.bin`` shard is the memory-mapped state dict from :func:`_load_bin`. Asking for
    a tensor of another shard drops the held one first, so two shards are never alive at once.
    """

    def __init__(self, layout: dict[str, TensorInfo]) -> None:
        self.layout = layout
        self.shard: Path | None = None
        self._tensors: dict[str, Tensor] | None = None
        self._handle: Any = None
        self.opened = 0  # how many times a shard was opened

    def get(self, key: str) -> Tensor:
        shard = self.layout[key].shard
        if shard != self.shard:
            self.release()
            if shard.suffix == ".safetensors":
                self._handle = _open_safetensors(shard)
            else:
                self._tensors = _load_bin(shard)
            self.shard = shard
            self.opened += 1
        if self._tensors is not None:
            return self._tensors[key]
        return self._handle.get_tensor(key)

    def release(self) -> None:
        """Drop the held shard (its memory map closes once no tensor of it is referenced)."""
        self.shard = None
        self._tensors = None
        self._handle = None


def merge_tensor(action: str, delta: Tensor, base: Tensor | None) -> Tensor:
    """The target tensor: a fresh contiguous tensor in the delta's dtype, sharing no storage with the inputs."""
    if action == COPY or base is None:
        return delta.clone(memory_format=torch.contiguous_format)
    total = delta.to(torch.float32, copy=True).contiguous()
    if action == ADD_ROWS:
        total[: base.shape[0]] += base.to(torch.float32)
    else:
        total += base.to(torch.float32)
    return total.to(delta.dtype).contiguous()


def _shard_name(number: int, count: int) -> str:
    return f"model-{number:05d}-of-{count:05d}.safetensors"


def _write_atomic(path: Path, write: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def _prepare_out(out_dir: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; choose a directory")
    for source in inputs:
        if out_dir.exists() and out_dir.resolve() == Path(source).resolve():
            raise ConfigError(f"--out {out_dir} is an input directory; choose a new directory")
    existing = sorted(p for p in out_dir.iterdir() if is_weight_file(p)) if out_dir.exists() else []
    if existing and not overwrite:
        raise ConfigError(f"--out {out_dir} already holds weights ({_listing([p.name for p in existing], 3)}); "
                          "choose a new directory or pass --overwrite to replace them")


def _copy_side_files(delta_dir: Path, out_dir: Path) -> list[str]:
    """Copy config, generation config, tokenizer and other non-weight files of the delta's top level."""
    copied = []
    for path in sorted(delta_dir.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not is_weight_file(path):
            shutil.copyfile(path, out_dir / path.name)
            copied.append(path.name)
    return copied


def _merge_shard(shard: Path, delta: ShardReader, base: ShardReader, plan: dict[str, str],
                 base_order: dict[Path, int], bar: tqdm) -> dict[str, Tensor]:
    """The output tensors of one delta shard; base tensors are read grouped by base shard."""
    keys = [key for key, info in delta.layout.items() if info.shard == shard]
    keys.sort(key=lambda k: (base_order[base.layout[k].shard] if k in base.layout else -1, k))
    merged: dict[str, Tensor] = {}
    for key in keys:
        action = plan[key]
        if action != SKIP:
            base_tensor = base.get(key) if action in (ADD, ADD_ROWS) else None
            merged[key] = merge_tensor(action, delta.get(key), base_tensor)
        bar.update(1)
    delta.release()
    return merged


def apply_delta(delta_dir: Path, base_dir: Path, out_dir: Path, progress: bool = False,
                overwrite: bool = False) -> Path:
    """Write ``delta + base`` (GPT4RoI-7B from its delta and LLaMA-7B) to ``out_dir`` as safetensors shards.

    Everything is checked before anything is written; ``overwrite`` replaces weight files already
    in ``out_dir``. Returns ``out_dir``; its ``model.safetensors.index.json`` lists what was written.
    """
    delta_dir, base_dir, out_dir = Path(delta_dir), Path(base_dir), Path(out_dir)
    delta_ckpt = find_checkpoint(delta_dir, "delta")
    base_ckpt = find_checkpoint(base_dir, "base")
    _prepare_out(out_dir, (delta_dir, base_dir), overwrite)
    delta_layout = scan_checkpoint(delta_ckpt)
    base_layout = scan_checkpoint(base_ckpt)
    plan = plan_merge(delta_layout, base_layout)

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (p for p in out_dir.iterdir() if is_weight_file(p)):
        stale.unlink()
    _copy_side_files(delta_dir, out_dir)

    delta, base = ShardReader(delta_layout), ShardReader(base_layout)
    base_order = {shard: i for i, shard in enumerate(base_ckpt.shards)}
    weight_map: dict[str, str] = {}
    total_size = 0
    count = len(delta_ckpt.shards)
    with tqdm(total=len(delta_layout), desc="applying the GPT4RoI delta", unit="tensor",
              disable=not progress) as bar:
        for number, shard in enumerate(delta_ckpt.shards, start=1):
            merged = _merge_shard(shard, delta, base, plan, base_order, bar)
            name = _shard_name(number, count)
            _write_atomic(out_dir / name, lambda p, t=merged: save_file(t, str(p), metadata={"format": "pt"}))
            weight_map.update(dict.fromkeys(merged, name))
            total_size += sum(t.numel() * t.element_size() for t in merged.values())
            del merged
    base.release()
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    _write_atomic(out_dir / OUTPUT_INDEX, lambda p: p.write_text(json.dumps(index, indent=2) + "\n"))
    return out_dir
