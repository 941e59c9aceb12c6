"""The leaderboard tables, shaped like the papers' tables, and how rows fill them.

A table has columns ``(task, metric)``; a measured row is one model and checkpoint on one data
(runs of it on several tasks merge into the row); rows fall into sections by data, and a
section is ranked on its own. The papers' rows (:mod:`bench.leaderboard.reported`) form a last,
unranked section of each table, in the papers' order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.leaderboard.reported import REPORTED
from bench.leaderboard.runs import MeasuredRun, data_identity, data_label


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    label: str


@dataclass(frozen=True)
class TableSpec:
    """``name``: the output files' stem; ``rank_by``: the labels ranked on, first present wins."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rank_by: tuple[str, ...]


def _pope_columns() -> tuple[Column, ...]:
    columns = []
    for split in ("random", "popular", "adversarial"):
        for metric, short in (("accuracy", "acc"), ("precision", "prec"), ("recall", "rec"), ("f1", "F1"),
                              ("yes_ratio", "yes")):
            columns.append(Column(f"pope-{split}", metric, f"{split} {short}"))
    columns.append(Column("pope", "mean_f1", "mean F1"))
    return tuple(columns)


TABLES: tuple[TableSpec, ...] = (
    TableSpec("coco-cls", "COCO region classification (ground-truth boxes)",
              (Column("coco-cls", "accuracy", "acc"), Column("coco-cls", "mAP", "mAP"),
               Column("coco-cls", "AP_small", "AP S"), Column("coco-cls", "AP_medium", "AP M"),
               Column("coco-cls", "AP_large", "AP L")), ("acc", "mAP")),
    TableSpec("captioning", "Region captioning (METEOR, CIDEr)",
              (Column("refcocog-cap", "meteor", "RefCOCOg METEOR"), Column("refcocog-cap", "cider", "RefCOCOg CIDEr"),
               Column("vg-cap", "meteor", "VG METEOR"), Column("vg-cap", "cider", "VG CIDEr")),
              ("RefCOCOg CIDEr", "VG CIDEr")),
    TableSpec("rec", "Referring expression comprehension on RefCOCOg (accuracy at IoU 0.5)",
              (Column("refcocog-rec", "accuracy", "val"), Column("refcocog-rec@test", "accuracy", "test")),
              ("val", "test")),
    TableSpec("pope", "POPE object hallucination (accuracy, precision, recall, F1, yes ratio)",
              _pope_columns(), ("mean F1", "adversarial F1")),
)


@dataclass
class Row:
    """One line of a table: ``values`` by column label, in percent (None: not measured/reported)."""

    model: str
    checkpoint: str
    values: dict[str, float | None]
    reported: bool = False
    source: str = ""
    fingerprint: str = ""
    harness: str = ""
    rank: int | None = None


@dataclass
class Section:
    """Rows on one data, ranked among themselves only."""

    data: str
    rows: list[Row]
    rank_by: str | None = None  # the column label ranked on; None: not ranked (the papers' rows)


@dataclass
class Table:
    spec: TableSpec
    sections: list[Section]


def _percent(value: object) -> float | None:
    return float(value) * 100 if isinstance(value, (int, float)) else None


@dataclass
class _Group:
    """Runs gathered because their data agree on every task they share (``data``: task -> identity)."""

    data: dict[str, str] = field(default_factory=dict)
    runs: list[MeasuredRun] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def accepts(self, data: dict[str, str]) -> bool:
        return all(self.data[task] == data[task] for task in self.data.keys() & data.keys())

    def add(self, data: dict[str, str], runs: Sequence[MeasuredRun]) -> None:
        self.data.update(data)
        self.runs.extend(runs)


def build_table(spec: TableSpec, runs: Sequence[MeasuredRun]) -> Table:
    """The measured rows of ``runs`` that have any of the table's columns, in data sections, ranked
    within each; then the papers' rows. A task measured twice for the same row: the run read last
    (``runs``' order) wins, with a note on stderr."""
    tasks = tuple(dict.fromkeys(c.task for c in spec.columns))
    # A row: the runs of one model and checkpoint whose data agree.
    by_model: list[tuple[tuple[str, str, str], _Group]] = []
    for run in runs:
        identity = {t: data_identity(run, t) for t in tasks if t in run.results}
        if not identity:
            continue
        who = (run.model_label, run.checkpoint, run.fingerprint)
        group = next((g for w, g in by_model if w == who and g.accepts(identity)), None)
        if group is None:
            group = _Group()
            by_model.append((who, group))
        group.add(identity, [run])
    # A section: the rows whose data agree.
    sections: list[_Group] = []
    for _, group in by_model:
        home = next((s for s in sections if s.accepts(group.data)), None)
        if home is None:
            home = _Group()
            sections.append(home)
        home.add(group.data, group.runs)
        home.rows.append(_row(spec, group.runs))
    built = [Section(data_label(s.runs, tasks), *_ranked(spec, s.rows)) for s in sections]
    built.sort(key=lambda s: s.data)
    reported = [Row(r.model, "", {c.label: r.values.get((c.task, c.metric)) for c in spec.columns},
                    reported=True, source=r.source + (f"; {r.note}" if r.note else ""))
                for r in REPORTED if r.table == spec.name]
    for row in reported:
        _derive(spec, row)
    if reported:
        built.append(Section("reported in the papers (the real datasets; not measured here)", reported))
    return Table(spec, built)


def _row(spec: TableSpec, runs: Sequence[MeasuredRun]) -> Row:
    """One model's row from its ``runs`` (one model, checkpoint and data), in order."""
    first = runs[0]
    row = Row(first.model_label, first.checkpoint, {c.label: None for c in spec.columns},
              fingerprint=first.fingerprint, harness=", ".join(dict.fromkeys(r.harness for r in runs)))
    for run in runs:
        for column in spec.columns:
            value = run.results.get(column.task, {}).get(column.metric)
            if value is None:
                continue
            if row.values[column.label] is not None:
                print(f"note: {spec.name}: {row.model} {column.label} measured again in {run.path}; using that run",
                      file=sys.stderr)
            row.values[column.label] = _percent(value)
    _derive(spec, row)
    return row


MEAN_F1_FROM = ("random F1", "popular F1", "adversarial F1")


def _derive(spec: TableSpec, row: Row) -> None:
    """POPE's mean F1 where a row has the three splits' F1 but no ``pope`` group result (the splits
    run as separate tasks, or a paper's row): the mean the ``pope`` group computes."""
    if "mean F1" in row.values and row.values["mean F1"] is None:
        parts = [row.values.get(label) for label in MEAN_F1_FROM]
        if all(part is not None for part in parts):
            row.values["mean F1"] = sum(parts) / len(parts)  # type: ignore[arg-type]


def _ranked(spec: TableSpec, rows: list[Row]) -> tuple[list[Row], str | None]:
    """Best first by the first label of ``spec.rank_by`` any row has; rows without it follow,
    unranked, by name. Ties share a rank (1, 1, 3). Returns the rows and the label ranked on."""
    key = next((label for label in spec.rank_by if any(r.values.get(label) is not None for r in rows)), None)
    scored = [r for r in rows if key is not None and r.values.get(key) is not None]
    rest = sorted((r for r in rows if r not in scored), key=lambda r: (r.model, r.checkpoint))
    scored.sort(key=lambda r: (-(r.values[key] or 0.0), r.model, r.checkpoint))
    for index, row in enumerate(scored):
        previous = scored[index - 1] if index else None
        row.rank = previous.rank if previous is not None and previous.values[key] == row.values[key] else index + 1
    return scored + rest, key
