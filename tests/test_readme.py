"""README.md stays true: its example adapter installs, registers and runs on the synthetic suite."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.plugin_utils import REPO, install_plugin, run_bench


def example_adapter_source() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- example-adapter:start -->\n```python\n(.*?)```\n<!-- example-adapter:end -->",
                      readme, re.S)
    assert block, "README.md lost its example adapter block"
    return block.group(1)


def test_readme_example_adapter_is_short_and_runs(tmp_path: Path) -> None:
    source = example_adapter_source()
    assert len(source.strip().splitlines()) < 40
    site = install_plugin(tmp_path / "site", "my_model_bench", source,
                          {"bench.adapters": {"my-model": "my_model_bench:MyRegionModel"}})
    listed = run_bench("list", "models", site=site)
    assert "my-model" in listed.stdout and "my region VLM" in listed.stdout

    threshold = tmp_path / "thr.txt"
    threshold.write_text("90")
    out = tmp_path / "out"
    result = run_bench("run", "--model", "my-model", "--model-args", f"weights={threshold}", "--task",
                       "pope-adversarial", "--limit", "24", "--output", str(out), site=site)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "samples_pope-adversarial.jsonl").read_text().splitlines()]
    assert len(records) == 24 and {r["outputs"][0] for r in records} <= {"Yes", "No"}
    results = json.loads((out / "results.json").read_text())
    assert results["n_samples"] == {"pope-adversarial": 24}
    assert results["config"]["model_args"] == {"weights": str(threshold)}
