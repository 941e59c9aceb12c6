"""Measured runs: the results.json files a leaderboard is built from (models are never re-run).

Each file becomes a :class:`MeasuredRun`: who (model, its arguments, checkpoint, fingerprint),
on what data (the synthetic suite, or a data root with the checksums of the annotation files
each task read), with which harness, and its metrics. :func:`data_identity` is what keeps runs
on different data out of one ranking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import load_run_results


@dataclass(frozen=True)
class MeasuredRun:
    """One results.json, as a leaderboard reads it. Metrics stay fractions, as stored."""

    path: Path
    model: str
    model_args: dict[str, Any]
    fingerprint: str
    results: dict[str, dict[str, float]]
    data_root: str
    synthetic: bool
    limit: int | None
    # Per task run name: a digest of its annotation files' checksums ("" when the run predates them).
    data_checksums: dict[str, str]
    harness: str

    @property
    def checkpoint(self) -> str:
        """The weights the row was measured with: ``pretrained=`` as given, else the adapter's default."""
        pretrained = self.model_args.get("pretrained")
        return str(pretrained) if pretrained else "default"

    @property
    def model_label(self) -> str:
        """The model name with its arguments other than ``pretrained`` (``gpt4roi size=full``)."""
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.model_args.items()) if k != "pretrained")
        return f"{self.model} {extra}".strip()


def read_run(path: Path) -> MeasuredRun:
    """Parse one results.json (:func:`bench.results.load_run_results` validates it)."""
    data = load_run_results(path)
    config, versions = data["config"], data.get("versions", {})
    commit = (versions.get("git_commit") or "")[:7]
    harness = f"{versions.get('harness', '?')}" + (f" ({commit})" if commit else "")
    files = config.get("data_files") or {}
    return MeasuredRun(
        path=path, model=config["model"], model_args=dict(config.get("model_args") or {}),
        fingerprint=str(config.get("model_fingerprint") or ""),
        results={task: dict(metrics) for task, metrics in data["results"].items()},
        data_root=str(config.get("data_root", "")), synthetic=bool(config.get("synthetic_suite")),
        limit=config.get("limit"),
        data_checksums={task: _digest(entries) for task, entries in files.items()},
        harness=harness,
    )


def _digest(entries: Mapping[str, Mapping[str, str]]) -> str:
    """One checksum for a task's annotation files: SHA-256 over their sorted (key, sha256) pairs."""
    text = "\n".join(f"{key} {entry['sha256']}" for key, entry in sorted(entries.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def data_identity(run: MeasuredRun, task: str) -> str:
    """What the data of ``task`` in ``run`` was, as a comparable string: equal strings, same data.

    The synthetic suite is named by its cache folder (the suite's version and generation options);
    real data by the checksum of the annotation files the task read, or, for a run that predates
    recorded checksums, by its data root path alone. A ``--limit`` run is its own data."""
    checksum = run.data_checksums.get(task)
    if run.synthetic:
        base = f"synthetic:{Path(run.data_root).name}"
    elif checksum:
        base = f"sha256:{checksum}"
    else:
        base = f"path:{run.data_root}"
    return base if run.limit is None else f"{base}|limit:{run.limit}"


def data_label(runs: Iterable[MeasuredRun], tasks: Iterable[str]) -> str:
    """A human-readable name for the data of ``runs`` on ``tasks`` (a section's heading)."""
    runs = list(runs)
    first = runs[0]
    if first.synthetic:
        label = f"the embedded synthetic suite ({Path(first.data_root).name})"
    else:
        sums = sorted({r.data_checksums.get(t, "") for r in runs for t in tasks} - {""})
        digest = hashlib.sha256("".join(sums).encode()).hexdigest()[:12] if sums else None
        label = f"data root {first.data_root}" + (f", annotations sha256 {digest}" if digest
                                                  else ", annotation checksums not recorded")
    return label if first.limit is None else f"{label}, first {first.limit} samples per task (--limit)"
