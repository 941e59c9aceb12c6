"""The command line end to end: errors as one sentence, SIGKILL and resume, `score`, `python bench.py`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_pope_root
from tests.plugin_utils import REPO, bench_command, install_plugin, run_bench

SLOW = '''
import time
from bench.adapter import Adapter, Capabilities


class Slow(Adapter):
    """Oracle answers, wrong on every fifth question, one sleep per batch."""
    description = "slow test adapter"
    capabilities = Capabilities(needs_images=False)

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay

    def generate(self, requests):
        time.sleep(self.delay)
        flip = {"yes": "No, there is not.", "no": "Yes, there is."}
        return [flip[r.sample.gold_answer] if int(r.sample.id) % 5 == 0 else r.sample.gold_answer
                for r in requests]
'''


@pytest.fixture
def slow_site(tmp_path: Path) -> Path:
    return install_plugin(tmp_path / "site", "slow_plugin", SLOW, {"bench.adapters": {"slow": "slow_plugin:Slow"}})


def test_sigkill_then_rerun_finishes_with_same_results_and_no_duplicates(tmp_path: Path, slow_site: Path) -> None:
    root = write_pope_root(tmp_path / "data", n_images=40)  # 240 questions per split
    args = ["run", "--model", "slow", "--model-args", "delay=0.03", "--task", "pope-random",
            "--data-root", str(root), "--batch-size", "4"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(slow_site)}
    process = subprocess.Popen(bench_command(*args, "--output", str(out)), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples_pope-random.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if samples.exists() and samples.read_text().count("\n") >= 40:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = samples.read_text().count("\n")
    assert 40 <= finished_before < 240, "the kill should land mid-run"

    resumed = run_bench(*args, "--output", str(out), site=slow_site)
    assert resumed.returncode == 0, resumed.stderr
    ids = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
    assert len(ids) == 240 and len(set(ids)) == 240

    clean = run_bench(*args, "--output", str(tmp_path / "clean"), site=slow_site)
    assert clean.returncode == 0, clean.stderr
    killed_results = json.loads((out / "results.json").read_text())["results"]
    clean_results = json.loads((tmp_path / "clean" / "results.json").read_text())["results"]
    assert killed_results == clean_results
    # 48 of 240 answers flipped (ids divisible by 5): 24 yes->no, 24 no->yes.
    assert clean_results["pope-random"]["accuracy"] == pytest.approx(192 / 240)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--model", "nope", "--task", "pope-random"], "error: unknown model 'nope'"),
        (["run", "--model", "oracle", "--task", "pope-nope"], "error: unknown task 'pope-nope'"),
        (["run", "--model", "replay", "--model-args", "path", "--task", "pope-random"], "is not key=value"),
        (["run", "--model", "replay", "--model-args", "path=/nonexistent.jsonl", "--task", "pope-random"],
         "error: replay answers file not found: /nonexistent.jsonl"),
        (["run", "--model", "oracle", "--task", "pope-random", "--data-root", "/nonexistent"],
         "error: --data-root /nonexistent is not a directory"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = run_bench(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_missing_question_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_bench("run", "--model", "oracle", "--task", "pope-random", "--data-root", str(tmp_path))
    assert result.returncode == 2
    assert "error: POPE random question file not found:" in result.stderr and "Traceback" not in result.stderr


def test_malformed_question_line_is_named_on_the_command_line(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=2)
    path = root / "pope" / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    lines[6] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    result = run_bench("run", "--model", "oracle", "--task", "pope-random", "--data-root", str(root))
    assert result.returncode == 2
    assert f"error: {path}, line 7: not valid JSON" in result.stderr


def test_failed_samples_exit_nonzero_and_are_listed(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=2)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q, "text": "Yes"}) + "\n" for q in range(1, 12)))
    result = run_bench("run", "--model", "replay", "--model-args", f"path={answers}", "--task", "pope-random",
                       "--data-root", str(root), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "failed: pope-random sample 12:" in result.stderr and "no answer for sample id '12'" in result.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"] == {} and [f["id"] for f in saved["failures"]["pope-random"]] == ["12"]
    assert (tmp_path / "out" / "samples_pope-random.jsonl").read_text().count("\n") == 11


def test_score_rescores_saved_samples(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=3)
    out = tmp_path / "out"
    assert run_bench("run", "--model", "always-yes", "--task", "pope", "--data-root", str(root),
                     "--output", str(out)).returncode == 0
    # Edit one raw output: re-scoring re-parses it with the official rule.
    path = out / "samples_pope-random.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["outputs"] = ["No, there is not."]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_bench("score", str(out), "--output", str(tmp_path / "rescored.json"))
    assert result.returncode == 0, result.stderr
    rescored = json.loads((tmp_path / "rescored.json").read_text())["results"]
    assert rescored["pope-random"]["yes_ratio"] == pytest.approx(17 / 18)
    assert rescored["pope-random"]["accuracy"] == pytest.approx(10 / 18)
    assert rescored["pope-popular"]["yes_ratio"] == 1.0
    assert rescored["pope"]["mean_f1"] == pytest.approx(
        (rescored["pope-random"]["f1"] + 2 * (2 / 3)) / 3)


def test_python_bench_py_behaves_like_bench(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=2)
    common = ["run", "--model", "random", "--task", "pope-adversarial", "--data-root", str(root), "--seed", "3"]
    via_module = run_bench(*common, "--output", str(tmp_path / "a"))
    via_script = run_bench(*common, "--output", str(tmp_path / "b"), script=True)
    assert via_module.returncode == via_script.returncode == 0
    assert via_module.stdout.replace(str(tmp_path / "a"), "X") == via_script.stdout.replace(str(tmp_path / "b"), "X")
    assert run_bench("list", "models", script=True).stdout == run_bench("list", "models").stdout


def test_results_json_schema(tmp_path: Path) -> None:
    root = write_pope_root(tmp_path / "d", n_images=2)
    out = tmp_path / "out"
    assert run_bench("run", "--model", "oracle", "--task", "pope-random", "--data-root", str(root),
                     "--output", str(out), "--limit", "5", "--batch-size", "2").returncode == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_samples"] == {"pope-random": 5}
    assert results["config"]["limit"] == 5 and results["config"]["batch_size"] == 2
    assert results["config"]["model"] == "oracle" and results["config"]["tasks"] == ["pope-random"]
    assert set(results["versions"]) >= {"harness", "git_commit", "tasks", "python", "torch", "transformers"}
    assert results["versions"]["tasks"] == {"pope-random": "1"}
    assert all(0.0 <= v <= 1.0 for v in results["results"]["pope-random"].values())


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "bench"
    if not script.exists():
        pytest.skip("the `bench` console script is not installed in this environment")
    result = subprocess.run([str(script), "list", "tasks"], capture_output=True, text=True)
    assert result.returncode == 0 and "pope-adversarial" in result.stdout


def test_default_synthetic_suite_oracle_and_always_yes(tmp_path: Path) -> None:
    """No --data-root: the embedded suite is generated on first use and scored offline."""
    oracle = run_bench("run", "--model", "oracle", "--task", "pope-adversarial", "--output", str(tmp_path / "o"))
    assert oracle.returncode == 0, oracle.stderr
    assert "embedded synthetic region suite" in oracle.stderr
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["config"]["synthetic_suite"] is True
    assert saved["results"]["pope-adversarial"] == {
        "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}

    yes = run_bench("run", "--model", "always-yes", "--task", "pope", "--output", str(tmp_path / "y"))
    assert yes.returncode == 0, yes.stderr
    results = json.loads((tmp_path / "y" / "results.json").read_text())["results"]
    for split in ("pope-random", "pope-popular", "pope-adversarial"):
        assert results[split]["yes_ratio"] == 1.0
        assert results[split]["recall"] == 1.0
        assert results[split]["precision"] == 0.5


def test_data_synth_writes_a_suite_that_runs(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    made = run_bench("data", "synth", "--out", str(out), "--n-train", "2", "--n-val", "4", "--n-test", "2",
                     "--seed", "5")
    assert made.returncode == 0, made.stderr
    suite = json.loads((out / "suite.json").read_text())
    assert suite["params"]["seed"] == 5 and suite["splits"] == {"train": 2, "val": 4, "test": 2}
    questions = (out / "pope" / "coco_pope_random.json").read_text().splitlines()
    assert len(questions) == 6 * 4
    result = run_bench("run", "--model", "oracle", "--task", "pope-random", "--data-root", str(out),
                       "--output", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["n_samples"] == {"pope-random": 24}
    again = run_bench("data", "synth", "--out", str(out))
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_doctor_reports_each_check() -> None:
    result = run_bench("doctor")
    for check in ("java", "PTB tokenizer jar", "METEOR 1.5 jar", "METEOR paraphrase data", "torch", "CUDA"):
        assert check in result.stdout
    if shutil.which("java"):
        assert result.returncode == 0, result.stdout
