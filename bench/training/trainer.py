"""A small, model-agnostic, deterministic and resumable trainer.

:func:`train` runs a sequence of :class:`Stage` s over one model. Each stage
trains only the parameters whose names start with one of its ``trainable``
prefixes (everything else gets ``requires_grad=False``) with AdamW, a linear
warm-up then cosine decay to zero, and gradient clipping at 1.0.

The model is any ``torch.nn.Module`` whose ``forward(**batch)`` returns an
object with a ``.loss`` attribute or a mapping with a ``"loss"`` key; ``batch``
is what ``collate`` makes of a list of examples. Top-level tensors of the
batch (and tensors in top-level lists/tuples) are moved to the device of the
model's first parameter.

Determinism: ``torch.manual_seed(seed)`` at the start, and batches drawn from
epoch permutations of ``range(len(examples))`` made by a ``torch.Generator``
seeded from ``(seed, stage index, epoch)``; a batch may straddle two epochs.
The batch at any step is therefore a pure function of the arguments, which is
what makes resuming exact.

Resuming: every ``checkpoint_every`` steps and at the end of every stage,
``out_dir/resume/`` is rewritten (atomically, via a temporary directory and a
rename) with::

    model.safetensors   the model's state_dict (safetensors.torch.save_model: shared tensors kept once)
    optimizer.pt        torch.save(optimizer.state_dict()); loaded back with torch.load(weights_only=True)
    rng.pt              torch CPU (and CUDA) RNG states, tensors only; loaded with weights_only=True
    state.json          stage index, step within the stage, python/numpy RNG states, a run signature

Calling :func:`train` again with the same arguments finds ``resume/``, checks
that the run signature (stage settings, number of examples, seed) matches, and
continues from there; the final weights are the same as an uninterrupted
run's. Stages appended to a finished run (same stages, examples and seed
before them) train on from its final weights. ``out_dir/log.json`` holds one
record per step (stage, step, loss, learning rate, gradient norm), rewritten
at every checkpoint and at the end.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESUME_DIR = "resume"
LOG_FILE = "log.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
MAX_GRAD_NORM = 1.0


class TrainingError(RuntimeError):
    """A training run cannot continue (a non-finite loss, a resume directory from another run, ...)."""


@dataclass
class Stage:
    """One training stage: which parameters train (name prefixes), for how many steps, how fast, on what.

    ``data`` names the example set the stage draws from when :func:`train` is given several
    (a curriculum: e.g. region classification alone before the full mix); with one plain
    sequence of examples every stage uses it.
    """

    name: str
    trainable: tuple[str, ...]
    steps: int
    lr: float
    batch_size: int
    warmup_steps: int = 0
    weight_decay: float = 0.0
    data: str = "all"

    def lr_at(self, step: int) -> float:
        """Learning rate for 0-based ``step``: linear warm-up to ``lr``, then cosine decay to 0 at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: torch.nn.Module,
    examples: Sequence[Any] | Mapping[str, Sequence[Any]],
    collate: Callable[[list[Any]], dict[str, Any]],
    stages: Sequence[Stage],
    out_dir: Path,
    seed: int = 0,
    checkpoint_every: int = 200,
    save_model: Callable[[torch.nn.Module, Path], None] | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` through ``stages``; return the per-step log (including steps of earlier, resumed calls).

    ``examples``: one sequence for every stage, or named sets that each stage picks by ``Stage.data``.
    ``checkpoint_every``: steps between resume checkpoints (0: only at stage ends).
    ``save_model(model, out_dir)`` is called once all stages are done, to write the final checkpoint.
    ``callback(record)`` is called after every step with its log record (raising from it stops
    training; the next call resumes from the last checkpoint).
    """
    out_dir = Path(out_dir)
    sets = dict(examples) if isinstance(examples, Mapping) else {"all": examples}
    _check_arguments(sets, stages, checkpoint_every)
    out_dir.mkdir(parents=True, exist_ok=True)
    signature = _signature(stages, {name: len(chosen) for name, chosen in sets.items()}, seed)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    log: list[dict[str, Any]] = []
    start_stage, start_step = 0, 0
    resume = out_dir / RESUME_DIR
    if has_resume(out_dir):
        start_stage, start_step = _load_resume(resume, model, signature)
        log = _load_log(out_dir, start_stage, start_step)

    for stage_index in range(start_stage, len(stages)):
        stage = stages[stage_index]
        first_step = start_step if stage_index == start_stage else 0
        if first_step >= stage.steps:
            continue
        params = _configure(model, stage)
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        if first_step > 0:
            state = torch.load(resume / OPTIMIZER_FILE, map_location=_device(model), weights_only=True)
            optimizer.load_state_dict(state)
        stage_examples = sets[stage.data]
        sampler = _Sampler(len(stage_examples), stage.batch_size, seed, stage_index)
        model.train()
        bar = _progress_bar(progress, stage, first_step)
        try:
            for step in range(first_step, stage.steps):
                lr = stage.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = _to_device(collate([stage_examples[i] for i in sampler.batch(step)]), _device(model))
                loss = _loss(model(**batch))
                if not torch.isfinite(loss):
                    raise TrainingError(f"{stage.name}, step {step}: the loss is {loss.item()}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                record = {"stage": stage.name, "stage_index": stage_index, "step": step + 1,
                          "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}
                log.append(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                done = step + 1
                if done == stage.steps or (checkpoint_every and done % checkpoint_every == 0):
                    _save_resume(out_dir, model, optimizer, stage_index, done, signature)
                    _write_log(out_dir, log)
                if callback is not None:
                    callback(record)
        finally:
            if bar is not None:
                bar.close()
    _write_log(out_dir, log)
    if save_model is not None:
        save_model(model, out_dir)
    return log


# ------------------------------------------------------------------ stages


def _check_arguments(sets: Mapping[str, Sequence[Any]], stages: Sequence[Stage], checkpoint_every: int) -> None:
    for stage in stages:
        if stage.data not in sets:
            raise ValueError(f"stage {stage.name!r} trains on example set {stage.data!r}, but only "
                             f"{sorted(sets)} were given")
    for name in {stage.data for stage in stages}:
        if len(sets[name]) == 0:
            raise ValueError(f"no training examples in set {name!r}")
    if not stages:
        raise ValueError("no stages to run")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must differ: {names}")
    for stage in stages:
        if stage.steps < 0 or stage.batch_size < 1 or stage.lr < 0 or stage.warmup_steps < 0:
            raise ValueError(f"stage {stage.name}: steps and warmup_steps >= 0, batch_size >= 1, lr >= 0")
        if not stage.trainable:
            raise ValueError(f"stage {stage.name}: no trainable parameter prefixes")
    if checkpoint_every < 0:
        raise ValueError("checkpoint_every must be >= 0")


def _configure(model: torch.nn.Module, stage: Stage) -> list[torch.nn.Parameter]:
    """Freeze every parameter but those whose names start with a trainable prefix; return those, in order."""
    params = []
    for name, param in model.named_parameters():
        trainable = any(name.startswith(prefix) for prefix in stage.trainable)
        param.requires_grad_(trainable)
        if trainable:
            params.append(param)
    if not params:
        raise ValueError(f"stage {stage.name}: no parameter name starts with any of {stage.trainable}")
    return params


class _Sampler:
    """Batches as consecutive slices of an endless sequence of seeded epoch permutations."""

    def __init__(self, n: int, batch_size: int, seed: int, stage_index: int) -> None:
        self.n, self.batch_size, self.seed, self.stage_index = n, batch_size, seed, stage_index
        self._epochs: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.clear()
            generator = torch.Generator()
            generator.manual_seed((self.seed * 1_000_003 + self.stage_index * 10_007 + epoch) % 2**63)
            self._epochs[epoch] = torch.randperm(self.n, generator=generator).tolist()
        return self._epochs[epoch]

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._epoch(p // self.n)[p % self.n] for p in range(start, start + self.batch_size)]


def _device(model: torch.nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, (list, tuple)):
            return type(value)(v.to(device) if isinstance(v, torch.Tensor) else v for v in value)
        return value

    return {key: move(value) for key, value in batch.items()}


def _loss(output: Any) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise TrainingError("the model's forward must return an object with .loss or a dict with 'loss'")
    return loss


def _progress_bar(enabled: bool, stage: Stage, first_step: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=stage.steps, initial=first_step, desc=stage.name, dynamic_ncols=True)


# ------------------------------------------------------------------ resume


def has_resume(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a resume point of :func:`train` (which then loads every weight from it)."""
    return (Path(out_dir) / RESUME_DIR / STATE_FILE).is_file()


def _signature(stages: Sequence[Stage], n_examples: dict[str, int], seed: int) -> dict[str, Any]:
    return {"stages": [{**asdict(s), "trainable": list(s.trainable)} for s in stages],
            "n_examples": n_examples, "seed": seed}


def _save_resume(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, stage_index: int,
                 step: int, signature: dict[str, Any]) -> None:
    from safetensors.torch import save_model

    target = out_dir / RESUME_DIR
    scratch = out_dir / f"{RESUME_DIR}.tmp"
    old = out_dir / f"{RESUME_DIR}.old"
    for path in (scratch, old):
        if path.exists():
            shutil.rmtree(path)
    scratch.mkdir()
    save_model(model, str(scratch / MODEL_FILE))
    torch.save(optimizer.state_dict(), scratch / OPTIMIZER_FILE)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    torch.save(rng, scratch / RNG_FILE)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "stage_index": stage_index, "step": step, "signature": signature,
        "python_random": _jsonable(random.getstate()),
        "numpy_random": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    (scratch / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    if target.exists():
        os.rename(target, old)
    os.rename(scratch, target)
    if old.exists():
        shutil.rmtree(old)


def _load_resume(resume: Path, model: torch.nn.Module, signature: dict[str, Any]) -> tuple[int, int]:
    from safetensors.torch import load_model

    state = json.loads((resume / STATE_FILE).read_text(encoding="utf-8"))
    if not _same_run(state.get("signature") or {}, signature) and not _extends_finished_run(state, signature):
        saved = (state.get("signature") or {}).get("stages", [])
        appended = 0 < len(saved) < len(signature["stages"]) and signature["stages"][:len(saved)] == saved
        names = ", ".join(stage["name"] for stage in saved)
        hint = (f"; stages are added only to a finished run: first finish its stages ({names}) "
                "with the same settings") if appended else ""
        raise TrainingError(
            f"{resume}: this checkpoint belongs to a run with other stages, examples or seed; "
            f"use another out_dir or delete the resume directory{hint}"
        )
    device = _device(model)
    load_model(model, resume / MODEL_FILE, strict=True, device=str(device))
    rng = torch.load(resume / RNG_FILE, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
    random.setstate(_tupled(state["python_random"]))
    kind, keys, pos, has_gauss, cached = state["numpy_random"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return int(state["stage_index"]), int(state["step"])


def _same_run(saved: dict[str, Any], signature: dict[str, Any]) -> bool:
    """Same stages, seed, and sizes of the example sets the stages draw from. A set no stage draws
    from may come or go (a new conversation kind in the data) without changing the run."""
    if saved.get("stages") != signature["stages"] or saved.get("seed") != signature["seed"]:
        return False
    drawn = {stage["data"] for stage in signature["stages"]}
    sizes, new_sizes = saved.get("n_examples", {}), signature["n_examples"]
    return all(sizes.get(name) == new_sizes.get(name) for name in drawn)


def _extends_finished_run(state: dict[str, Any], signature: dict[str, Any]) -> bool:
    """Does ``signature`` only append stages to the run that ``state`` saw to its end?

    Why: a stage appended to the plan of a finished run then trains from that run's final
    weights, instead of the whole run being redone. The finished stages, the seed and
    the example sets they drew from must be unchanged.
    """
    saved = state.get("signature") or {}
    done, new = saved.get("stages", []), signature["stages"]
    if not done or len(new) <= len(done) or new[:len(done)] != done or saved.get("seed") != signature["seed"]:
        return False
    if (state.get("stage_index"), state.get("step")) != (len(done) - 1, done[-1]["steps"]):
        return False
    sizes, new_sizes = saved.get("n_examples", {}), signature["n_examples"]
    return all(new_sizes.get(stage["data"]) == sizes.get(stage["data"]) for stage in done)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _load_log(out_dir: Path, stage_index: int, step: int) -> list[dict[str, Any]]:
    """The log up to the checkpoint (records written after it are dropped: those steps run again)."""
    path = out_dir / LOG_FILE
    if not path.is_file():
        return []
    records = json.loads(path.read_text(encoding="utf-8"))
    return [r for r in records if (r["stage_index"], r["step"]) <= (stage_index, step)]


def _write_log(out_dir: Path, log: list[dict[str, Any]]) -> None:
    scratch = out_dir / f"{LOG_FILE}.tmp"
    scratch.write_text(json.dumps(log), encoding="utf-8")
    os.replace(scratch, out_dir / LOG_FILE)
