"""The task API: from dataset files to a score.

A task (1) loads the complete split as :class:`Sample` objects in a canonical
order, (2) turns each sample into requests for an adapter, (3) parses the raw
outputs of one sample into a prediction and per-sample scores, and (4)
aggregates the per-sample records of the whole split into metrics.

Aggregation only sees saved records (plain JSON), which is what lets
``bench score`` re-score a samples file without the model, and why results do
not depend on the order in which samples were run or on how they were sharded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.adapter import Capabilities
from bench.errors import ConfigError
from bench.types import Output, Request, Sample


@dataclass
class Processed:
    """One sample's parsed prediction and its per-sample scores."""

    parsed: Any
    scores: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """Base class for tasks. Subclasses set ``name``, ``version`` and ``metrics``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Bump when prompts, parsing or scoring change: old predictions are then not reused.
    version: ClassVar[str] = "1"
    # Metric names in display order; the first is the headline metric.
    metrics: ClassVar[tuple[str, ...]] = ()
    # Dataset splits the task can evaluate (``--split``); empty when it has one fixed split.
    splits: ClassVar[tuple[str, ...]] = ()
    default_split: ClassVar[str | None] = None
    # The ``paths.json`` keys of the annotation files the task reads (not image folders): their
    # checksums go into results.json, so a leaderboard can tell runs on different data apart.
    annotation_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_root: Path, split: str | None = None) -> None:
        self.data_root = data_root
        if split is not None and split != self.default_split and split not in self.splits:
            choices = ", ".join(self.splits) if self.splits else "none: it has one fixed split"
            raise ConfigError(
                f"task {self.name!r} has no split {split!r} (splits: {choices}); "
                "drop --split or run this task separately"
            )
        self.split = split if split is not None else self.default_split

    @property
    def run_name(self) -> str:
        """Name of this task on this split in results and file names: ``refcocog-rec@test``.

        The default split keeps the plain task name.
        """
        if self.split is None or self.split == self.default_split:
            return self.name
        return f"{self.name}@{self.split}"

    def annotation_files(self) -> dict[str, Path]:
        """The annotation files this task reads on its split, by ``paths.json`` key (those that exist:
        an optional file such as VG's split list may be absent)."""
        from bench.data.layout import dataset_path

        found = {key: dataset_path(self.data_root, key, split=str(self.split)) for key in self.annotation_keys}
        return {key: path for key, path in found.items() if path.is_file()}

    @abstractmethod
    def load_samples(self) -> list[Sample]:
        """The complete evaluation split, in a deterministic order."""

    @abstractmethod
    def build_requests(self, sample: Sample, capabilities: Capabilities) -> list[Request]:
        """The requests that answer ``sample`` for a model with ``capabilities``."""

    @abstractmethod
    def process(self, sample: Sample, outputs: Sequence[Output]) -> Processed:
        """Parse the adapter's outputs for ``sample`` (one per request) and score them."""

    @abstractmethod
    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Metrics over the split from saved records (``parsed``, ``target``, ``scores``...).

        Metrics are fractions in [0, 1]; tables multiply by 100.
        """


class TaskGroup:
    """Several tasks run together with extra metrics over their results (e.g. POPE's mean F1)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    members: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()

    def aggregate(self, results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Group metrics from the members' metrics."""
        return {}
