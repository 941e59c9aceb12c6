"""Reading a run directory for the report: its samples files, and each sample's image file.

A samples record stores only the image's *key* (``file_name`` of the COCO
image, the POPE ``image`` field, the VG file name), not its path: where images
live depends on the data root and its ``paths.json``. So image paths are
found the way ``bench run`` found them: the tasks are rebuilt from
``results.json``'s config (data root, task arguments) on each record's split,
their samples loaded, and each record's sample id looked up to get the
:class:`~bench.types.ImageRef` the model read. Nothing is guessed from file
names, so a ``paths.json`` that moves images elsewhere is honoured.

Anything that stops an image from being found (data root moved, task data
missing, file deleted) becomes a warning naming the file and the fix; the
sample is still shown, marked as having no image.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import registry
from bench.errors import BenchError, DataError
from bench.results import RESULTS_FILE
from bench.store import read_records
from bench.types import ImageRef

SAMPLES_GLOB = "samples_*.jsonl"


@dataclass
class TaskRecords:
    """The records of one samples file: ``run_name`` is ``coco-cls`` or ``refcocog-rec@test``."""

    run_name: str
    task: str
    path: Path
    records: list[dict[str, Any]]


@dataclass
class RunData:
    """Everything the report reads from a run directory."""

    output_dir: Path
    results: dict[str, Any]
    tasks: list[TaskRecords]
    # (task name, sample id) -> the image file; absent when it could not be resolved.
    images: dict[tuple[str, str], Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def load_run(output_dir: Path, data_root: Path | None = None) -> RunData:
    """Read ``results.json`` (if any) and every ``samples_<task>.jsonl`` of ``output_dir``.

    ``data_root`` overrides the data root recorded in ``results.json`` (for a run
    directory copied from another machine). Raises :class:`BenchError` when there is
    nothing to report.
    """
    if not output_dir.is_dir():
        raise BenchError(f"{output_dir} is not a directory; pass the --output directory of a `bench run`")
    results_path = output_dir / RESULTS_FILE
    results: dict[str, Any] = {}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{results_path}: not valid JSON ({error.msg})") from None
    files = sorted(output_dir.glob(SAMPLES_GLOB))
    if not files:
        raise BenchError(f"{output_dir} has no samples_<task>.jsonl file; run `bench run --output {output_dir}` first")
    tasks = []
    for path in files:
        records = list(read_records(path))
        run_name = path.name[len("samples_"):-len(".jsonl")]
        task = str(records[0].get("task") or run_name.split("@")[0]) if records else run_name.split("@")[0]
        tasks.append(TaskRecords(run_name=run_name, task=task, path=path, records=records))
    data = RunData(output_dir=output_dir, results=results, tasks=tasks)
    _resolve_images(data, data_root)
    return data


def _resolve_images(data: RunData, data_root: Path | None) -> None:
    """Fill ``data.images`` through the tasks' own loaders; problems become ``data.warnings``."""
    config = data.results.get("config") or {}
    if data_root is None and config.get("data_root"):
        data_root = Path(config["data_root"])
    if data_root is None:
        data.warnings.append(
            f"{data.output_dir / RESULTS_FILE} is missing or records no data_root, so images cannot be found; "
            "pass --data-root DIR (the run's --data-root) to show them")
        return
    if not data_root.is_dir():
        data.warnings.append(
            f"data root {data_root} (from {data.output_dir / RESULTS_FILE}) is not a directory, so no image can be "
            "shown; pass --data-root DIR with the datasets the run used")
        return
    task_args = {str(k): str(v) for k, v in (config.get("task_args") or {}).items()}
    for entry in data.tasks:
        splits: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for record in entry.records:
            splits[record.get("split")].append(record)
        for split, records in splits.items():
            try:
                refs = _image_refs(entry.task, data_root, split, task_args)
            except BenchError as error:
                data.warnings.append(
                    f"{entry.run_name}: could not load the task's data to find its images ({error}); "
                    "pass --data-root DIR with the datasets the run used")
                continue
            missing: list[str] = []
            for record in records:
                ref = refs.get(str(record["id"]))
                if ref is None or ref.path is None:
                    missing.append(f"sample {record['id']} (image {record.get('image')!r}) is not in the task's data "
                                   f"under {data_root}")
                elif not ref.path.is_file():
                    missing.append(f"image file {ref.path} not found (sample {record['id']})")
                else:
                    data.images[(entry.run_name, str(record["id"]))] = ref.path
            if missing:
                more = f" (and {len(missing) - 1} more sample(s))" if len(missing) > 1 else ""
                data.warnings.append(
                    f"{entry.run_name}: {missing[0]}{more}; those samples are shown without their image. "
                    "Pass --data-root DIR with the images the run used, or fix the image directory in the "
                    "data root's paths.json")


def _image_refs(task_name: str, data_root: Path, split: str | None, task_args: dict[str, str]) -> dict[str, ImageRef]:
    """Sample id -> image of ``task_name`` on ``split``, from the task's own ``load_samples``.

    Only the ``--task-args`` this task's constructor takes are passed (a run's
    arguments may belong to another of its tasks).
    """
    mine = registry.task_args_taken(registry.get_task(task_name), task_args)
    (task,) = registry.build_tasks([task_name], data_root, split, mine)
    return {sample.id: sample.image for sample in task.load_samples()}
