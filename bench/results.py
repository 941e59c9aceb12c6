"""``results.json`` and the printed table.

Metrics are stored as fractions in [0, 1]; tables show percentages, as the
papers do. ``versions`` records everything needed to say which code produced
a number: harness version and git commit, task versions, Python, torch and
transformers versions (read from package metadata, without importing torch).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tabulate import tabulate

import bench

RESULTS_FILE = "results.json"


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the region-bench checkout in use, if it is a git checkout."""
    here = Path(bench.__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions(task_versions: Mapping[str, str]) -> dict[str, Any]:
    return {
        "harness": bench.__version__,
        "git_commit": git_commit(),
        "tasks": dict(task_versions),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
    }


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def format_table(results: Mapping[str, Mapping[str, float]], n_samples: Mapping[str, int],
                 task_versions: Mapping[str, str] | None = None) -> str:
    """One row per (task, metric), values as percentages with two decimals."""
    rows = []
    for task, metrics in results.items():
        first = True
        for metric, value in metrics.items():
            rows.append([
                task if first else "",
                (task_versions or {}).get(task, "") if first else "",
                metric,
                f"{100 * value:.2f}",
                n_samples.get(task, "") if first else "",
            ])
            first = False
    return tabulate(rows, headers=["task", "version", "metric", "value (%)", "n"], tablefmt="github",
                    disable_numparse=True)
