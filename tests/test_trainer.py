"""The generic trainer on a toy model: freezing, learning, determinism, exact resume, safe loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.training import trainer as trainer_module
from bench.training.trainer import Stage, TrainingError, train


class Toy(torch.nn.Module):
    """A tiny MLP regressor with dropout (so the RNG state matters) whose forward takes a batch dict."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = torch.nn.Linear(4, 16)
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        prediction = self.head(self.dropout(torch.relu(self.encoder(x)))).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(prediction, y)}


class Output:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss


class ToyWithAttribute(Toy):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Output:  # type: ignore[override]
        return Output(super().forward(x, y)["loss"])


def make_examples(n: int = 64) -> list[tuple[torch.Tensor, float]]:
    generator = torch.Generator().manual_seed(123)
    xs = torch.randn(n, 4, generator=generator)
    ys = xs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3
    return [(xs[i], float(ys[i])) for i in range(n)]


def collate(batch: list[tuple[torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack([x for x, _ in batch]), "y": torch.tensor([y for _, y in batch])}


STAGES = (
    Stage("stage1", trainable=("head.",), steps=20, lr=0.05, batch_size=8, warmup_steps=3),
    Stage("stage2", trainable=("encoder.", "head."), steps=25, lr=0.02, batch_size=6, warmup_steps=2,
          weight_decay=0.01),
)


def run(out_dir: Path, model: torch.nn.Module | None = None, **kwargs) -> tuple[torch.nn.Module, list[dict]]:
    model = model or Toy()
    kwargs.setdefault("stages", STAGES)
    log = train(model, make_examples(), collate, out_dir=out_dir, progress=False, **kwargs)
    return model, log


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_stage_freezes_everything_but_its_prefixes(tmp_path: Path) -> None:
    model = Toy()
    before = snapshot(model)
    run(tmp_path, model, stages=STAGES[:1])
    after = model.state_dict()
    for key in ("encoder.weight", "encoder.bias"):
        assert torch.equal(before[key], after[key]), f"{key} is frozen in stage1 but changed"
        assert not dict(model.named_parameters())[key].requires_grad
    for key in ("head.weight", "head.bias"):
        assert not torch.equal(before[key], after[key]), f"{key} trains in stage1 but did not change"
    run(tmp_path / "both", model, stages=STAGES[1:])
    assert not torch.equal(before["encoder.weight"], model.state_dict()["encoder.weight"])


def test_loss_goes_down_and_log_is_written(tmp_path: Path) -> None:
    _, log = run(tmp_path)
    assert len(log) == sum(s.steps for s in STAGES)
    losses = [r["loss"] for r in log]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    on_disk = json.loads((tmp_path / "log.json").read_text())
    assert on_disk == log
    assert {r["stage"] for r in log} == {"stage1", "stage2"}
    assert all(math.isfinite(r["grad_norm"]) and r["lr"] >= 0 for r in log)


def test_forward_may_return_an_object_with_loss(tmp_path: Path) -> None:
    _, log = run(tmp_path, ToyWithAttribute(), stages=STAGES[:1])
    assert len(log) == STAGES[0].steps


def test_two_runs_are_identical(tmp_path: Path) -> None:
    a, log_a = run(tmp_path / "a")
    b, log_b = run(tmp_path / "b")
    assert_same_weights(a, b)
    assert log_a == log_b
    c, _ = run(tmp_path / "c", seed=1)
    assert not torch.equal(a.state_dict()["head.weight"], c.state_dict()["head.weight"])


class Stop(Exception):
    pass


def interrupt_at(stage: str, step: int):
    def callback(record: dict) -> None:
        if record["stage"] == stage and record["step"] == step:
            raise Stop

    return callback


@pytest.mark.parametrize(("stage", "step"), [("stage1", 10), ("stage1", 20), ("stage2", 17), ("stage2", 1)])
def test_resume_reaches_the_same_weights(tmp_path: Path, stage: str, step: int) -> None:
    reference, reference_log = run(tmp_path / "reference", checkpoint_every=7)
    out = tmp_path / "interrupted"
    with pytest.raises(Stop):
        run(out, checkpoint_every=7, callback=interrupt_at(stage, step))
    assert (out / "resume" / "state.json").is_file()
    # A fresh model with other initial weights: everything must come from the checkpoint.
    resumed, log = run(out, Toy(seed=99), checkpoint_every=7)
    assert_same_weights(reference, resumed)
    assert [r["loss"] for r in log] == [r["loss"] for r in reference_log]


def test_resume_by_running_stage_one_then_calling_again(tmp_path: Path) -> None:
    reference, _ = run(tmp_path / "reference")
    out = tmp_path / "split"
    with pytest.raises(Stop):
        run(out, callback=interrupt_at("stage2", 1))  # stage1 completes and is checkpointed at its end
    state = json.loads((out / "resume" / "state.json").read_text())
    assert (state["stage_index"], state["step"]) == (0, STAGES[0].steps)
    resumed, _ = run(out, Toy(seed=5))
    assert_same_weights(reference, resumed)


def test_a_stage_appended_to_a_finished_run_trains_on_from_it(tmp_path: Path) -> None:
    reference, reference_log = run(tmp_path / "reference")
    out = tmp_path / "appended"
    run(out, stages=STAGES[:1])  # a finished one-stage run ...
    extended, log = run(out, Toy(seed=5))  # ... then the same call with a second stage
    assert_same_weights(reference, extended)  # as if both stages had been asked for at once
    assert [(r["stage"], r["step"], r["loss"]) for r in log] == [
        (r["stage"], r["step"], r["loss"]) for r in reference_log]


def test_appending_needs_the_earlier_stages_finished_and_unchanged(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        run(tmp_path / "unfinished", stages=STAGES[:1], checkpoint_every=5, callback=interrupt_at("stage1", 7))
    with pytest.raises(TrainingError, match=r"first finish its stages \(stage1\)"):
        run(tmp_path / "unfinished")  # stage 1 stopped at step 5: appending is no resume
    run(tmp_path / "changed", stages=STAGES[:1])
    changed_first = Stage("stage1", ("head.",), steps=20, lr=0.04, batch_size=8, warmup_steps=3)
    with pytest.raises(TrainingError, match="other stages"):
        run(tmp_path / "changed", stages=(changed_first, STAGES[1]))
    with pytest.raises(TrainingError, match="other stages"):
        run(tmp_path / "changed", seed=1)


def test_resume_directory_contents_and_final_save(tmp_path: Path) -> None:
    saved: list[Path] = []

    def save(model: torch.nn.Module, path: Path) -> None:
        saved.append(path)
        torch.save(model.state_dict(), path / "final.pt")

    model, _ = run(tmp_path, save_model=save, checkpoint_every=0)
    assert saved == [tmp_path]
    names = sorted(p.name for p in (tmp_path / "resume").iterdir())
    assert names == ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    state = json.loads((tmp_path / "resume" / "state.json").read_text())
    assert (state["stage_index"], state["step"]) == (1, STAGES[1].steps)
    # Calling again after completion trains nothing more and saves again.
    before = snapshot(model)
    again = Toy(seed=3)
    run(tmp_path, again, save_model=save)
    assert_same_weights(model, again)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(saved) == 2


def test_only_weights_only_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    with pytest.raises(Stop):
        run(out, checkpoint_every=5, callback=interrupt_at("stage2", 8))
    calls: list[dict] = []
    real_load = torch.load

    def checked_load(*args, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("weights_only") is True, "torch.load must be called with weights_only=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", checked_load)
    run(out, checkpoint_every=5)
    assert len(calls) == 2  # the optimizer state and the RNG states
    source = Path(trainer_module.__file__).read_text()
    assert "weights_only=False" not in source and "pickle" not in source


def test_resume_from_another_run_is_refused(tmp_path: Path) -> None:
    run(tmp_path, stages=STAGES[:1])
    with pytest.raises(TrainingError, match="other stages"):
        run(tmp_path, stages=(Stage("stage1", ("head.",), steps=21, lr=0.05, batch_size=8),))


def test_learning_rate_schedule() -> None:
    stage = Stage("s", ("x",), steps=10, lr=1.0, batch_size=1, warmup_steps=2)
    assert [stage.lr_at(s) for s in (0, 1)] == [0.5, 1.0]
    assert stage.lr_at(2) == pytest.approx(1.0)
    assert stage.lr_at(6) == pytest.approx(0.5)
    values = [stage.lr_at(s) for s in range(2, 10)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)) and values[-1] > 0


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no parameter name"):
        run(tmp_path, stages=(Stage("s", ("nothing.",), steps=1, lr=0.1, batch_size=2),))
    with pytest.raises(ValueError, match="no training examples"):
        train(Toy(), [], collate, STAGES, tmp_path / "empty", progress=False)


def test_stages_draw_from_their_named_example_set(tmp_path: Path) -> None:
    """A curriculum: each stage samples only from the set its ``data`` names."""
    examples = make_examples()
    seen: dict[str, set[float]] = {"first": set(), "second": set()}

    def recording(batch: list[tuple[torch.Tensor, float]]) -> dict[str, torch.Tensor]:
        seen[current[0]].update(y for _, y in batch)
        return collate(batch)

    current = ["first"]
    stages = (Stage("first", ("head.",), steps=6, lr=0.05, batch_size=4, data="easy"),
              Stage("second", ("head.",), steps=6, lr=0.05, batch_size=4))

    def switch(record: dict) -> None:
        if record["stage"] == "first" and record["step"] == 6:
            current[0] = "second"

    train(Toy(), {"easy": examples[:5], "all": examples}, recording, stages, tmp_path, progress=False,
          callback=switch)
    assert seen["first"] <= {y for _, y in examples[:5]} and seen["first"]
    assert len(seen["second"] - {y for _, y in examples[:5]}) > 0
    with pytest.raises(ValueError, match="example set 'missing'"):
        train(Toy(), {"all": examples}, collate, (Stage("s", ("head.",), 1, 0.1, 2, data="missing"),),
              tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="no training examples in set 'easy'"):
        train(Toy(), {"easy": [], "all": examples}, collate, stages, tmp_path / "empty", progress=False)
    # An empty set no stage draws from is no error (a data root without one conversation kind).
    log = train(Toy(), {"unused": [], "all": examples}, collate, stages[1:], tmp_path / "unused", progress=False)
    assert len(log) == 6


def test_non_finite_loss_stops(tmp_path: Path) -> None:
    examples = make_examples()
    examples[0] = (examples[0][0], float("nan"))
    with pytest.raises(TrainingError, match="loss"):
        train(Toy(), examples, collate, (Stage("s", ("head.",), steps=20, lr=0.1, batch_size=64),), tmp_path,
              progress=False)


def test_a_set_no_stage_draws_from_may_change_between_calls(tmp_path: Path) -> None:
    """A resumed run stays the same run when only an unused example set changed (a new conversation
    kind in the data); a change in a set a stage draws from is refused."""
    examples = make_examples()
    stages = STAGES[1:]  # draws from "all"
    reference = train(Toy(), {"all": examples}, collate, stages, tmp_path / "reference", progress=False)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(Toy(), {"all": examples, "extra": examples[:3]}, collate, stages, out, progress=False,
              checkpoint_every=5, callback=interrupt_at(stages[0].name, 7))
    resumed = train(Toy(), {"all": examples, "extra": examples[:9]}, collate, stages, out, progress=False)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    with pytest.raises(TrainingError, match="other stages, examples or seed"):
        train(Toy(), {"all": examples[:40]}, collate, stages, out, progress=False)
