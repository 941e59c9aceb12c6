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
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tabulate import tabulate

import bench
from bench.errors import DataError

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


def find_results(paths: Sequence[Path]) -> list[Path]:
    """The ``results.json`` files named by ``paths``: a file, a run directory, or a directory of run
    directories (what :mod:`bench.embedded_suite` writes), so one argument can cover a whole suite.
    Shared by ``bench check`` and ``bench leaderboard``."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif (path / RESULTS_FILE).is_file():
            found.append(path / RESULTS_FILE)
        elif path.is_dir():
            children = sorted(child / RESULTS_FILE for child in path.iterdir() if (child / RESULTS_FILE).is_file())
            if not children:
                raise DataError(f"{path}: no {RESULTS_FILE} in it or in its subdirectories; pass the --output "
                                "directory of a `bench run`, or its results.json")
            found.extend(children)
        else:
            raise DataError(f"{path}: no such file or directory; pass a results.json or a `bench run` --output "
                            "directory")
    return found


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object; an unreadable or malformed one is a :class:`DataError` naming
    the file (and the line) and ``what`` it should have been."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: the {what} is not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the {what} must hold a JSON object")
    return data


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_run_results(path: Path) -> dict[str, Any]:
    """Read and validate a ``results.json`` that ``bench run`` wrote (``bench check`` and ``bench
    leaderboard`` read them); every problem names the file and what to do."""
    data = read_json_object(path, "results file")
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise DataError(f"{path}: no run configuration (config.model); is it a results.json written by bench run? "
                        "(`bench score --output` writes none)")
    results = data.get("results")
    if not isinstance(results, dict) or not all(isinstance(m, dict) for m in results.values()):
        raise DataError(f"{path}: 'results' must map each task to its metrics; is this a `bench run` results.json?")
    for task, metrics in results.items():
        for metric, value in metrics.items():
            if not is_number(value):
                raise DataError(f"{path}: {task} {metric} is {value!r}, not a number; rerun `bench run`")
    if not isinstance(data.get("n_samples", {}), dict) or not isinstance(data.get("versions", {}), dict):
        raise DataError(f"{path}: 'n_samples' and 'versions' must be objects; rerun `bench run`")
    return data


def write_json_atomic(path: Path, data: Mapping[str, Any], sort_keys: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n",
                         encoding="utf-8")
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
