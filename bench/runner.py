"""Run one adapter over tasks: batching by image, saving as it goes, resuming.

The flow for each task:

1. load the complete split (or the first ``limit`` samples) and build every
   sample's requests and cache key;
2. reuse finished records from ``samples_<task>.jsonl`` whose key matches;
3. answer the rest in batches of about ``batch_size`` requests, grouped by image,
   appending every finished sample to the samples file at once;
4. when every sample has a record, aggregate metrics over the whole split.

A batch that raises is retried one sample at a time, so one bad sample fails
alone; failures are reported with their reason and make the run exit non-zero,
while everything that finished stays saved.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.adapter import Adapter
from bench.cache import cache_key
from bench.errors import BenchError
from bench.regions import Region
from bench.store import SampleStore, samples_path
from bench.task import Task
from bench.types import GenerationRequest, ImageRef, LoglikelihoodRequest, Output, Request, Sample


@dataclass
class Failure:
    sample_id: str
    reason: str


@dataclass
class TaskOutcome:
    """What happened to one task: metrics only when every sample finished."""

    name: str
    version: str
    n_samples: int
    n_reused: int = 0
    metrics: dict[str, float] | None = None
    failures: list[Failure] = field(default_factory=list)


@dataclass
class _Pending:
    sample: Sample
    requests: list[Request]
    key: str


def evaluate_task(
    task: Task,
    adapter: Adapter,
    samples: Sequence[Sample],
    output_dir: Path,
    batch_size: int = 8,
    progress: bool = True,
) -> TaskOutcome:
    """Answer, save and score ``samples`` of ``task`` with ``adapter``."""
    outcome = TaskOutcome(name=task.run_name, version=task.version, n_samples=len(samples))
    fingerprint = adapter.fingerprint()
    pending: dict[str, _Pending] = {}
    for sample in samples:
        if sample.id in pending:
            raise BenchError(f"task {task.run_name!r}: sample id {sample.id!r} occurs twice in the split")
        try:
            requests = task.build_requests(sample, adapter.capabilities)
        except BenchError as error:
            outcome.failures.append(Failure(sample.id, str(error)))
            continue
        key = cache_key(fingerprint, task.run_name, task.version, requests)
        pending[sample.id] = _Pending(sample, requests, key)

    with SampleStore(samples_path(output_dir, task.run_name)) as store:
        records = store.reusable({sid: p.key for sid, p in pending.items()})
        outcome.n_reused = len(records)
        todo = [p for sid, p in pending.items() if sid not in records]
        bar = _progress_bar(task.run_name, len(samples), len(records) + len(outcome.failures), progress)
        for batch in _batches_by_image(todo, batch_size):
            for item, result in _answer(adapter, batch):
                if isinstance(result, Failure):
                    outcome.failures.append(result)
                else:
                    try:
                        record = _record(task, item, result)
                    except Exception as error:  # a parser bug must not lose the other samples
                        outcome.failures.append(Failure(item.sample.id, _reason(error)))
                    else:
                        store.append(record)
                        records[item.sample.id] = record
                bar.update(1)
        bar.close()

    if not outcome.failures:
        ordered = [records[s.id] for s in samples]
        outcome.metrics = task.aggregate(ordered)
    return outcome


def _batches_by_image(todo: list[_Pending], batch_size: int) -> list[list[_Pending]]:
    """Group samples by image (images in order of first appearance), then cut batches.

    A batch holds at most ``batch_size`` requests (one sample larger than that
    goes alone). An image whose requests fit in one batch is never split across
    two, so an adapter can encode each image once per batch.
    """
    by_image: dict[str, list[_Pending]] = defaultdict(list)
    for item in todo:
        by_image[item.sample.image.key].append(item)
    batches: list[list[_Pending]] = []
    current: list[_Pending] = []
    size = 0
    for items in by_image.values():
        group_size = sum(len(item.requests) for item in items)
        if current and size + group_size > batch_size and group_size <= batch_size:
            batches.append(current)
            current, size = [], 0
        for item in items:
            if current and size + len(item.requests) > batch_size:
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += len(item.requests)
    if current:
        batches.append(current)
    return batches


def _answer(adapter: Adapter, batch: list[_Pending]) -> list[tuple[_Pending, list[Output] | Failure]]:
    """Run a batch; if it raises, run its samples one by one to isolate the failure."""
    try:
        return list(zip(batch, _call_adapter(adapter, batch), strict=True))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if len(batch) == 1:
            return [(batch[0], Failure(batch[0].sample.id, _reason(error)))]
    return [pair for item in batch for pair in _answer(adapter, [item])]


def _call_adapter(adapter: Adapter, batch: list[_Pending]) -> list[list[Output]]:
    """One ``generate`` and one ``loglikelihood`` call for the whole batch, outputs split back per sample."""
    flat = [(i, j, r) for i, item in enumerate(batch) for j, r in enumerate(item.requests)]
    outputs: list[list[Output | None]] = [[None] * len(item.requests) for item in batch]
    for kind, call in (("generate", adapter.generate), ("loglikelihood", adapter.loglikelihood)):
        chosen = [(i, j, r) for i, j, r in flat if r.kind == kind]
        if not chosen:
            continue
        answers = call([r for _, _, r in chosen])  # type: ignore[arg-type]
        if len(answers) != len(chosen):
            raise RuntimeError(
                f"adapter {adapter.name!r} returned {len(answers)} answers to {len(chosen)} {kind} requests"
            )
        for (i, j, request), answer in zip(chosen, answers, strict=True):
            _check_output(adapter, request, answer)
            outputs[i][j] = answer
    return outputs  # type: ignore[return-value]


def _check_output(adapter: Adapter, request: Request, answer: Any) -> None:
    if isinstance(request, GenerationRequest) and not isinstance(answer, str):
        raise RuntimeError(f"adapter {adapter.name!r} returned {type(answer).__name__} for a generation request")
    if isinstance(request, LoglikelihoodRequest) and (
        not isinstance(answer, (list, tuple)) or len(answer) != len(request.continuations)
    ):
        raise RuntimeError(
            f"adapter {adapter.name!r} must return {len(request.continuations)} scores for a likelihood request"
        )


def _record(task: Task, item: _Pending, outputs: list[Output]) -> dict[str, Any]:
    sample = item.sample
    processed = task.process(sample, outputs)
    return {
        "id": sample.id,
        "task": task.name,
        "split": task.split,
        "task_version": task.version,
        "image": sample.image.key,
        "prompt": sample.prompt,
        "regions": [region.to_json() for region in sample.regions],
        "requests": [_request_summary(r) for r in item.requests],
        "outputs": [list(o) if isinstance(o, tuple) else o for o in outputs],
        "parsed": processed.parsed,
        "target": sample.target,
        "scores": processed.scores,
        "gold_answer": sample.gold_answer,
        "metadata": sample.metadata,
        "cache_key": item.key,
    }


def _request_summary(request: Request) -> dict[str, Any]:
    summary: dict[str, Any] = {"kind": request.kind, "prompt": request.prompt}
    if isinstance(request, LoglikelihoodRequest):
        summary["continuations"] = list(request.continuations)
    return summary


def sample_from_record(record: dict[str, Any]) -> Sample:
    """Rebuild the parts of a sample that parsing and scoring use, from a saved record."""
    return Sample(
        id=str(record["id"]),
        image=ImageRef(key=str(record.get("image", ""))),
        prompt=record.get("prompt", ""),
        target=record.get("target"),
        regions=tuple(Region.from_json(r) for r in record.get("regions", [])),
        gold_answer=record.get("gold_answer"),
        metadata=record.get("metadata") or {},
    )


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(name: str, total: int, done: int, enabled: bool) -> Any:
    """tqdm bar with rate and ETA; on a non-terminal (CI, job logs) it prints every 30 s."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=done, desc=name, unit="sample", file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.1 if interactive else 30.0)
