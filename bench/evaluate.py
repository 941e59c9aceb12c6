"""``bench run`` end to end: build the adapter, run each task, write ``results.json``."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import registry
from bench.errors import ConfigError
from bench.results import RESULTS_FILE, versions, write_json_atomic
from bench.runner import TaskOutcome, evaluate_task


@dataclass
class RunConfig:
    model: str
    tasks: str
    model_args: dict[str, str] = field(default_factory=dict)
    data_root: Path | None = None
    output: Path = Path("outputs")
    limit: int | None = None
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0
    split: str | None = None
    task_args: dict[str, str] = field(default_factory=dict)
    progress: bool = True


@dataclass
class RunReport:
    results: dict[str, Any]
    outcomes: list[TaskOutcome]

    @property
    def failed(self) -> bool:
        return any(o.failures for o in self.outcomes)


def resolve_data_root(data_root: Path | None) -> Path:
    """The given data root, or the embedded synthetic suite (generated on first use)."""
    if data_root is not None:
        if not data_root.is_dir():
            raise ConfigError(f"--data-root {data_root} is not a directory")
        return data_root.resolve()
    from bench.synthetic import default_suite_dir

    return default_suite_dir()


def data_files(tasks: list[Any], data_root: Path) -> dict[str, dict[str, dict[str, str]]]:
    """Per task run name, each annotation file it read: its path (relative to the data root when
    inside it) and SHA-256. Why: a leaderboard must not rank runs on different data together, and a
    path alone does not say the file under it is the same."""
    from bench.data.files import sha256_file

    hashed: dict[Path, str] = {}
    out: dict[str, dict[str, dict[str, str]]] = {}
    for task in tasks:
        files = {}
        for key, path in task.annotation_files().items():
            if path not in hashed:
                hashed[path] = sha256_file(path)
            shown = path.relative_to(data_root) if path.is_relative_to(data_root) else path
            files[key] = {"path": str(shown), "sha256": hashed[path]}
        out[task.run_name] = files
    return out


def run_evaluation(config: RunConfig) -> RunReport:
    """Run ``config.model`` on every task of ``config.tasks`` and save everything under ``config.output``."""
    if config.limit is not None and config.limit <= 0:
        raise ConfigError("--limit must be a positive number of samples")
    if config.batch_size <= 0:
        raise ConfigError("--batch-size must be positive")
    task_names, group_names = registry.expand_tasks(config.tasks)
    data_root = resolve_data_root(config.data_root)
    tasks = registry.build_tasks(task_names, data_root, config.split, config.task_args)
    random.seed(config.seed)
    adapter = registry.build_adapter(
        config.model, config.model_args, device=config.device, seed=config.seed, batch_size=config.batch_size
    )

    outcomes: list[TaskOutcome] = []
    for name, task in zip(task_names, tasks, strict=True):
        samples = [dataclasses.replace(s, task=name) for s in task.load_samples()]
        if config.limit is not None:
            samples = samples[: config.limit]
        outcomes.append(evaluate_task(task, adapter, samples, config.output, config.batch_size, config.progress))

    metrics = {o.name: o.metrics for o in outcomes if o.metrics is not None}
    for group_name in group_names:
        group = registry.get_group(group_name)
        assert group is not None
        if all(member in metrics for member in group.members):
            metrics[group_name] = group().aggregate(metrics)

    results: dict[str, Any] = {
        "results": metrics,
        "n_samples": {o.name: o.n_samples for o in outcomes},
        "config": {
            "model": config.model,
            "model_args": config.model_args,
            "model_fingerprint": adapter.fingerprint(),
            "tasks": task_names,
            "groups": group_names,
            "limit": config.limit,
            "seed": config.seed,
            "split": config.split,
            "task_args": config.task_args,
            "batch_size": config.batch_size,
            "device": config.device,
            "data_root": str(data_root),
            "synthetic_suite": config.data_root is None,
            "data_files": data_files(tasks, data_root),
        },
        "versions": versions({task.run_name: task.version for task in tasks}),
        "failures": {
            o.name: [{"id": f.sample_id, "reason": f.reason} for f in o.failures] for o in outcomes if o.failures
        },
    }
    write_json_atomic(config.output / RESULTS_FILE, results)
    return RunReport(results=results, outcomes=outcomes)
