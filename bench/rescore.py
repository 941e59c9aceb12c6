"""``bench score``: recompute metrics from saved samples files, without the model.

Raw outputs are re-parsed by the current task code, so a fixed parser or a new
metric applies to old predictions without running the model again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import registry
from bench.errors import DataError
from bench.runner import sample_from_record
from bench.store import read_records


def rescore_paths(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, int], dict[str, str], list[str]]:
    """Re-score a samples file or every ``samples_*.jsonl`` in a directory.

    Returns ``(results, n_samples, task_versions, warnings)``.
    """
    if path.is_dir():
        files = sorted(path.glob("samples_*.jsonl"))
        if not files:
            raise DataError(f"{path}: no samples_<task>.jsonl files here; pass a `bench run --output` directory")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or directory")

    results: dict[str, dict[str, float]] = {}
    n_samples: dict[str, int] = {}
    versions: dict[str, str] = {}
    warnings: list[str] = []
    for file in files:
        records = list(read_records(file))
        if not records:
            warnings.append(f"{file} holds no samples; skipped")
            continue
        name, _, file_split = file.stem.removeprefix("samples_").partition("@")
        name = records[0].get("task") or name
        task = registry.get_task(str(name))(Path("."), split=records[0].get("split") or file_split or None)
        stale = {r.get("task_version") for r in records} - {task.version}
        if stale:
            warnings.append(
                f"{file}: saved with task version(s) {sorted(map(str, stale))}, re-scored with version {task.version}"
            )
        rescored = [_reprocess(task, record, file) for record in records]
        results[task.run_name] = task.aggregate(rescored)
        n_samples[task.run_name] = len(rescored)
        versions[task.run_name] = task.version
    for group_name in registry.group_names():
        group = registry.get_group(group_name)
        if group is not None and all(m in results for m in group.members):
            results[group_name] = group().aggregate(results)
    return results, n_samples, versions, warnings


def _reprocess(task: Any, record: dict[str, Any], file: Path) -> dict[str, Any]:
    if "outputs" not in record:
        raise DataError(f"{file}: sample {record.get('id')!r} has no 'outputs' to re-score")
    processed = task.process(sample_from_record(record), record["outputs"])
    return {**record, "parsed": processed.parsed, "scores": processed.scores}
