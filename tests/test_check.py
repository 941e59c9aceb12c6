"""`bench check`: the regression gate against a stored baseline, and `--update`, which rewrites it on purpose."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench import registry
from bench.check import Tolerances, load_all_results, model_key, parse_tolerances
from bench.cli import app
from bench.embedded_suite import MODELS, TASKS, main
from bench.errors import ConfigError
from tests.plugin_utils import run_bench

METRICS = {
    "pope-random": {"accuracy": 0.80, "f1": 0.75, "yes_ratio": 0.40},
    "refcocog-cap": {"cider": 1.20, "meteor": 0.15},
    "pope": {"mean_f1": 0.75},  # a group: no version, no sample count
}


def results_data(model: str = "mymodel", metrics: dict[str, dict[str, float]] | None = None,
                 **config: Any) -> dict[str, Any]:
    """A results.json as `bench run` writes it, by hand."""
    metrics = copy.deepcopy(METRICS if metrics is None else metrics)
    tasks = [t for t in metrics if t != "pope"]
    return {
        "results": metrics,
        "n_samples": {t: 100 for t in tasks},
        "config": {"model": model, "model_args": {}, "model_fingerprint": "abc123", "tasks": tasks, "groups": [],
                   "limit": None, "seed": 0, "split": None, "task_args": {}, "batch_size": 8, "device": "cpu",
                   "data_root": "/somewhere/synthetic-1-4e8fd2f2a7c2", "synthetic_suite": True,
                   "data_files": {t: {"questions": {"path": f"{t}.json", "sha256": "aa"}} for t in tasks}, **config},
        "versions": {"harness": "0.1.0", "git_commit": None, "tasks": {t: "1" for t in tasks}},
        "failures": {},
    }


def write_results(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(data))
    return directory


def bench(*args: str | Path) -> Any:
    """The CLI in process (fast; the real subprocess runs are in the last test)."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    """A baseline holding `mymodel` and `other`, written by --update from hand-built results."""
    path = tmp_path / "baseline.json"
    mine = write_results(tmp_path / "base-mine", results_data())
    other = write_results(tmp_path / "base-other", results_data("other"))
    result = bench("check", mine, other, "--baseline", path, "--update")
    assert result.exit_code == 0, result.output
    assert "mymodel: added (3 tasks, 6 metrics)" in result.output
    return path


def test_within_tolerance_passes_and_prints_a_table(tmp_path: Path, baseline: Path) -> None:
    data = results_data()
    data["results"]["pope-random"]["f1"] += 0.009  # 0.9 points: inside the default 0.01
    mine = write_results(tmp_path / "mine", data)
    other = write_results(tmp_path / "other", results_data("other"))
    result = bench("check", mine, other, "--baseline", baseline)
    assert result.exit_code == 0, result.output
    assert "| mymodel" in result.output and "0.90" in result.output and "pope-random f1" in result.output
    assert "within the tolerance" in result.output


def test_moved_metric_fails_naming_it_with_both_values_and_the_difference(tmp_path: Path, baseline: Path) -> None:
    data = results_data()
    data["results"]["pope-random"]["accuracy"] = 0.78  # -2 points
    data["results"]["refcocog-cap"]["cider"] = 1.23  # +3 points
    mine = write_results(tmp_path / "mine", data)
    result = bench("check", mine, "--baseline", baseline, "--subset")
    assert result.exit_code == 1
    assert ("failed: mymodel pope-random accuracy: baseline 0.8000, now 0.7800: moved -0.0200 "
            "(80.00 -> 78.00, -2.00 points), beyond the tolerance 0.01 (1.00 points)") in result.output
    assert "failed: mymodel refcocog-cap cider" in result.output and "+3.00 points" in result.output
    assert "f1" not in "".join(line for line in result.output.splitlines() if line.startswith("failed"))
    assert "2 check(s) failed" in result.output

    # A per-metric tolerance lets CIDEr (hundreds of points wide) move more; the accuracy still fails.
    loose = bench("check", mine, "--baseline", baseline, "--subset", "--tolerance", "cider=0.05")
    assert loose.exit_code == 1 and "cider" not in loose.stderr and "accuracy" in loose.stderr
    assert bench("check", mine, "--baseline", baseline, "--subset", "--tolerance", "0.03").exit_code == 0


def test_missing_task_metric_or_model_fails_and_an_extra_task_is_only_a_note(tmp_path: Path, baseline: Path) -> None:
    data = results_data()
    del data["results"]["refcocog-cap"]
    del data["results"]["pope-random"]["yes_ratio"]
    data["results"]["vg-cap"] = {"cider": 0.5}
    mine = write_results(tmp_path / "mine", data)
    result = bench("check", mine, "--baseline", baseline)  # no --subset: `other` is missing too
    assert result.exit_code == 1
    assert "failed: mymodel: task refcocog-cap is in the baseline but missing from" in result.output
    assert "failed: mymodel pope-random yes_ratio: in the baseline but missing" in result.output
    assert "failed: other: in the baseline but no results given" in result.output
    assert "note: mymodel: task vg-cap is not in the baseline (not checked)" in result.output
    assert "vg-cap" not in "".join(line for line in result.output.splitlines() if line.startswith("failed"))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["versions"]["tasks"].update({"pope-random": "2"}),
     "mymodel pope-random: task version 2, the baseline's 1 (the task changed); the scores were not compared"),
    (lambda d: d["n_samples"].update({"refcocog-cap": 50}),
     "mymodel refcocog-cap: 50 samples, the baseline 100 (the split changed)"),
    (lambda d: d["config"].update({"model_fingerprint": "def456"}),
     "mymodel: model fingerprint def456, the baseline's abc123"),
    (lambda d: d["config"].update({"data_root": "/x/synthetic-2-ffff"}),
     "mymodel: data the synthetic suite synthetic-2-ffff, the baseline's the synthetic suite synthetic-1-4e8fd2f2a7c2"),
    (lambda d: d["config"].update({"limit": 20}), "mymodel: --limit 20, the baseline's (none)"),
    (lambda d: d["config"]["data_files"]["pope-random"]["questions"].update({"sha256": "bb"}),
     "mymodel pope-random: annotation file(s) questions differ from the baseline's (checksums; the data changed)"),
], ids=["task-version", "n-samples", "fingerprint", "data-root", "limit", "annotation-checksum"])
def test_changed_task_version_count_or_provenance_fails_and_asks_for_a_deliberate_update(
        tmp_path: Path, baseline: Path, change: Any, message: str) -> None:
    data = results_data()
    change(data)
    result = bench("check", write_results(tmp_path / "mine", data), "--baseline", baseline, "--subset")
    assert result.exit_code == 1
    assert message in result.output
    assert "update the baseline with --update and say why in the commit message" in result.output


def test_update_rewrites_only_the_given_models_entry_and_prints_the_changes(tmp_path: Path, baseline: Path) -> None:
    before = json.loads(baseline.read_text())
    data = results_data()
    data["results"]["pope-random"]["accuracy"] = 0.85
    data["versions"]["tasks"]["refcocog-cap"] = "2"
    result = bench("check", write_results(tmp_path / "mine", data), "--baseline", baseline, "--update")
    assert result.exit_code == 0, result.output
    assert "mymodel: pope-random accuracy: 80.00 -> 85.00 (+5.00 points)" in result.output
    assert "mymodel: refcocog-cap: task version 2, the baseline's 1" in result.output
    after = json.loads(baseline.read_text())
    assert after["models"]["other"] == before["models"]["other"]
    assert after["models"]["mymodel"]["tasks"]["pope-random"]["metrics"]["accuracy"] == 0.85
    assert baseline.read_text() == json.dumps(after, indent=2, sort_keys=True) + "\n"  # sorted, diffable
    again = bench("check", write_results(tmp_path / "mine", data), "--baseline", baseline, "--update")
    assert "mymodel: unchanged" in again.output


def test_bad_input_exits_2_naming_the_file(tmp_path: Path, baseline: Path) -> None:
    mine = write_results(tmp_path / "mine", results_data())
    missing = tmp_path / "nope.json"
    result = bench("check", mine, "--baseline", missing)
    assert result.exit_code == 2
    assert f"error: {missing}: no such baseline file; create it from a run with" in result.output

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = bench("check", mine, "--baseline", broken)
    assert result.exit_code == 2 and f"error: {broken}, line 1: the baseline is not valid JSON" in result.output

    scored = tmp_path / "scored.json"  # what `bench score --output` writes: no run configuration
    scored.write_text(json.dumps({"results": METRICS, "n_samples": {}}))
    result = bench("check", scored, "--baseline", baseline)
    assert result.exit_code == 2 and f"error: {scored}: no run configuration" in result.output

    result = bench("check", tmp_path / "absent", "--baseline", baseline)
    assert result.exit_code == 2 and "absent: no such file or directory" in result.output

    twice = write_results(tmp_path / "twice", results_data())
    result = bench("check", mine, twice, "--baseline", baseline)
    assert result.exit_code == 2 and "are both results of model mymodel" in result.output

    result = bench("check", mine, "--baseline", baseline, "--tolerance", "cidr=0.05")
    assert result.exit_code == 2 and "--tolerance names metric(s) cidr" in result.output

    failed = results_data()
    failed["failures"] = {"pope-random": [{"id": "1", "reason": "boom"}]}
    result = bench("check", write_results(tmp_path / "failed", failed), "--baseline", baseline, "--update")
    assert result.exit_code == 2 and "1 sample(s) failed" in result.output


def test_a_directory_of_run_directories_is_read_and_model_args_make_the_key(tmp_path: Path) -> None:
    write_results(tmp_path / "suite" / "a", results_data("a"))
    write_results(tmp_path / "suite" / "b", results_data("b", model_args={"size": "tiny", "pretrained": "x"}))
    assert [r.key for r in load_all_results([tmp_path / "suite"])] == ["a", "b[pretrained=x,size=tiny]"]
    assert model_key("rgpt", {}) == "rgpt"


def test_parse_tolerances() -> None:
    assert parse_tolerances(None) == Tolerances(0.01, {})
    tolerances = parse_tolerances(["0.02", "cider=0.05"])
    assert tolerances.for_metric("cider") == 0.05 and tolerances.for_metric("f1") == 0.02
    for bad in ("x", "-1", "=0.1", "cider=nan"):
        with pytest.raises(ConfigError, match="--tolerance"):
            parse_tolerances([bad])


def test_embedded_suite_covers_every_built_in_task_and_adapter_but_replay() -> None:
    built_in = {n for n in registry.task_names() if registry.get_task(n).__module__.startswith("tasks.")}
    covered, _ = registry.expand_tasks(",".join(TASKS))
    assert set(covered) == built_in
    adapters = {n for n in registry.adapter_names() if registry.get_adapter(n).__module__.startswith("adapters.")}
    assert set(MODELS) == adapters - {"replay"}
    committed = Path(__file__).resolve().parent.parent / "leaderboards" / "baselines" / "embedded.json"
    assert set(json.loads(committed.read_text())["models"]) == set(MODELS)


def test_embedded_suite_refuses_a_directory_with_files_and_an_unknown_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.txt").write_text("x")
    assert main([str(tmp_path)]) == 2
    assert "is not an empty directory; the suite must answer afresh" in capsys.readouterr().err
    assert main([str(tmp_path / "new"), "--models", "replay"]) == 2
    assert "replay: not in the embedded suite" in capsys.readouterr().err


@pytest.mark.slow
def test_real_run_passes_against_its_own_update_and_fails_against_a_perturbed_copy(tmp_path: Path) -> None:
    args = ("run", "--model", "random", "--task", "pope-random,coco-cls", "--limit", "30", "--no-progress")
    first = run_bench(*args, "--output", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    baseline = tmp_path / "baseline.json"
    update = run_bench("check", str(tmp_path / "first"), "--baseline", str(baseline), "--update")
    assert update.returncode == 0, update.stderr
    second = run_bench(*args, "--output", str(tmp_path / "second"))
    assert second.returncode == 0, second.stderr

    same = run_bench("check", str(tmp_path / "second" / "results.json"), "--baseline", str(baseline))
    assert same.returncode == 0, same.stderr
    assert "| random" in same.stdout and "| ok" in same.stdout

    perturbed = json.loads(baseline.read_text())
    perturbed["models"]["random"]["tasks"]["coco-cls"]["metrics"]["accuracy"] += 0.05
    (tmp_path / "perturbed.json").write_text(json.dumps(perturbed))
    moved = run_bench("check", str(tmp_path / "second"), "--baseline", str(tmp_path / "perturbed.json"))
    assert moved.returncode == 1
    assert "failed: random coco-cls accuracy: baseline" in moved.stderr and "-5.00 points" in moved.stderr
