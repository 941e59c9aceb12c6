"""``bench check``: compare run results with a stored baseline, so that a score never moves silently.

A baseline file is JSON with sorted keys, so that a change to it reads as a
plain diff in review. It holds one entry per model, keyed by the model's name
and its ``--model-args`` (:func:`model_key`), so that several models share one
file. An entry records the per-task metrics and sample counts, plus the
provenance that makes two numbers comparable at all: the data (the synthetic
suite's directory name, which encodes its generator version and parameters),
the task versions and sample counts, the annotation files' checksums (where
``results.json`` records them), the model fingerprint (adapter version,
arguments and a checksum of its checkpoint files) and the run settings that
change answers (seed, split, task options, limit).

When the provenance differs, comparing the numbers would be meaningless, so the
check refuses to compare them and fails with a message saying that the baseline
must be updated deliberately (``--update``). Otherwise every metric's absolute
change (metrics are fractions, as in ``results.json``) must stay within the
tolerance. Everything that can go wrong with the *inputs* (an unreadable file, a
results file without a run configuration, two results of one model) is a
:class:`~bench.errors.BenchError`, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.errors import BenchError, ConfigError, DataError
from bench.results import find_results, is_number, load_run_results, read_json_object, write_json_atomic

BASELINE_FORMAT = 1
DEFAULT_TOLERANCE = 0.01
# 1.23 - 1.20 is 0.030000000000000027: a change of exactly the tolerance must pass.
FLOAT_SLACK = 1e-12
ABOUT = ("Baseline scores for `bench check`. Rewrite entries only with `bench check RESULTS --baseline FILE "
         "--update`, for a deliberate change explained in the commit message (see README, `bench check`).")

# Run settings that change a model's answers: a difference means the numbers are not comparable.
COMPARED_SETTINGS = ("seed", "split", "task_args", "limit")
# Run settings that should not change a score beyond the tolerance: a difference is only a note.
NOTED_SETTINGS = ("batch_size", "device")
# ``versions`` fields kept in an entry for the record (which code wrote it); never compared.
RECORDED_VERSIONS = ("harness", "git_commit", "python", "torch", "transformers")


# --------------------------------------------------------------------------- reading results


@dataclass(frozen=True)
class RunResults:
    """One ``results.json`` written by ``bench run``, with the file it came from for messages."""

    path: Path
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def key(self) -> str:
        return model_key(self.config["model"], self.config.get("model_args") or {})


def model_key(model: str, model_args: Mapping[str, Any]) -> str:
    """``rgpt`` or ``rgpt[k=v,k2=v2]`` (arguments sorted): one baseline entry per model and arguments,
    because the same adapter with other arguments (another checkpoint, size) is another model."""
    if not model_args:
        return model
    return f"{model}[{','.join(f'{k}={model_args[k]}' for k in sorted(model_args))}]"


def load_results(path: Path) -> RunResults:
    """Read and validate one ``results.json``; every problem names the file and what to do."""
    return RunResults(path, load_run_results(path))


def load_all_results(paths: Sequence[Path]) -> list[RunResults]:
    """Every results file under ``paths``; two results of one model are an error (which should count?)."""
    runs: list[RunResults] = []
    seen: dict[str, Path] = {}
    for path in find_results(paths):
        run = load_results(path)
        if run.key in seen:
            raise ConfigError(f"{path} and {seen[run.key]} are both results of model {run.key}; pass one of them")
        seen[run.key] = path
        runs.append(run)
    return runs


# --------------------------------------------------------------------------- baseline entries


def entry_from_results(run: RunResults) -> dict[str, Any]:
    """The baseline entry that records ``run``: metrics, sample counts, task versions and provenance."""
    config = run.config
    task_versions = run.data.get("versions", {}).get("tasks", {})
    n_samples = run.data.get("n_samples", {})
    data_files = config.get("data_files") or {}
    tasks: dict[str, Any] = {}
    for task, metrics in run.data["results"].items():
        record: dict[str, Any] = {"metrics": dict(metrics)}
        if task in task_versions:  # a group (e.g. pope's mean F1) has neither version nor count
            record["version"] = task_versions[task]
        if task in n_samples:
            record["n_samples"] = n_samples[task]
        if isinstance(data_files.get(task), dict):  # checksums of the annotation files, where recorded
            record["data_sha256"] = {key: f.get("sha256") for key, f in sorted(data_files[task].items())}
        tasks[task] = record
    versions = run.data.get("versions", {})
    return {
        "model": config["model"],
        "model_args": dict(config.get("model_args") or {}),
        "model_fingerprint": config.get("model_fingerprint"),
        "data": data_identity(config),
        "run": {name: config.get(name) for name in (*COMPARED_SETTINGS, *NOTED_SETTINGS)},
        "tasks": tasks,
        "written_from": {name: versions.get(name) for name in RECORDED_VERSIONS},
    }


def data_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the data a run scored: whether it is the synthetic suite and the data root's
    directory name (the full path differs between machines; the synthetic suite's name encodes its
    generator version and parameters)."""
    root = config.get("data_root")
    return {"synthetic_suite": bool(config.get("synthetic_suite")), "data_root_name": Path(root).name if root else None}


def load_baseline(path: Path) -> dict[str, Any]:
    """Read a baseline file written by :func:`write_baseline`."""
    if not path.is_file():
        raise DataError(f"{path}: no such baseline file; create it from a run with "
                        f"`bench check RESULTS --baseline {path} --update`")
    data = read_json_object(path, "baseline")
    if data.get("format") != BASELINE_FORMAT or not isinstance(data.get("models"), dict):
        raise DataError(f"{path}: not a baseline of format {BASELINE_FORMAT} (needs 'format' and 'models'); "
                        "rewrite it with `bench check RESULTS --baseline FILE --update`")
    for key, entry in data["models"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("tasks"), dict):
            raise DataError(f"{path}: model {key!r} has no 'tasks' object; rewrite it with --update")
        for task, record in entry["tasks"].items():
            metrics = record.get("metrics") if isinstance(record, dict) else None
            if not isinstance(metrics, dict) or not all(is_number(v) for v in metrics.values()):
                raise DataError(f"{path}: model {key!r}, task {task!r}: 'metrics' must map names to numbers; "
                                "rewrite it with --update")
    return data


def write_baseline(path: Path, baseline: Mapping[str, Any]) -> None:
    """Write with sorted keys (stable diffs), atomically (never half a file)."""
    write_json_atomic(path, baseline, sort_keys=True)


# --------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerances:
    """The largest allowed absolute change of a metric (a fraction: 0.01 is one table point)."""

    default: float = DEFAULT_TOLERANCE
    per_metric: Mapping[str, float] = field(default_factory=dict)

    def for_metric(self, metric: str) -> float:
        return self.per_metric.get(metric, self.default)


def parse_tolerances(values: Sequence[str] | None) -> Tolerances:
    """``["0.02", "cider=0.05"]``: a bare number is the default, ``METRIC=X`` one metric's own
    (CIDEr, say, which spans several hundred points and moves more)."""
    default = DEFAULT_TOLERANCE
    per_metric: dict[str, float] = {}
    for text in values or ():
        metric, sep, number = text.rpartition("=")
        metric = metric.strip()
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (sep and not metric):
            raise ConfigError(f"--tolerance {text!r}: expected a number >= 0 (e.g. 0.01, one point) or METRIC=NUMBER "
                              "(e.g. cider=0.05)")
        if sep:
            per_metric[metric] = value
        else:
            default = value
    return Tolerances(default, per_metric)


# --------------------------------------------------------------------------- comparison


@dataclass
class ModelSummary:
    """One row of the printed table."""

    key: str
    tasks: int = 0
    metrics: int = 0
    largest: float = 0.0
    largest_at: str = ""
    failures: int = 0
    compared: bool = True


@dataclass
class Comparison:
    """What :func:`compare` found: failures make the gate fail, notes do not."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summaries: list[ModelSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        rows = [[s.key, s.tasks, s.metrics, f"{100 * s.largest:.2f}" if s.compared else "-",
                 s.largest_at if s.largest else "",
                 "ok" if not s.failures else f"{s.failures} failed"] for s in self.summaries]
        return tabulate(rows, headers=["model", "tasks", "metrics", "largest change (points)", "at", "status"],
                        tablefmt="github", disable_numparse=True)


FINGERPRINT_WHY = " (the adapter's version, its arguments or its checkpoint files changed)"
UPDATE_HINT = "if that change is deliberate, update the baseline with --update and say why in the commit message"


def compare(baseline: Mapping[str, Any], runs: Sequence[RunResults], tolerances: Tolerances,
            subset: bool = False) -> Comparison:
    """Compare every run with its model's baseline entry.

    ``subset``: only the given models are checked; otherwise a baseline model
    without results fails, so that a suite that silently stops running a model
    cannot pass.
    """
    models: Mapping[str, Any] = baseline["models"]
    known_metrics = {m for entry in models.values() for record in entry["tasks"].values() for m in record["metrics"]}
    unknown = sorted(set(tolerances.per_metric) - known_metrics)
    if unknown:
        raise ConfigError(f"--tolerance names metric(s) {', '.join(unknown)} that no baseline model has; "
                          f"known: {', '.join(sorted(known_metrics))}")
    comparison = Comparison()
    given = {run.key for run in runs}
    for run in runs:
        entry = models.get(run.key)
        if entry is None:
            comparison.failures.append(
                f"{run.key}: no baseline entry ({run.path}); add it with --update if this model belongs in the "
                "baseline")
            comparison.summaries.append(ModelSummary(run.key, failures=1, compared=False))
            continue
        comparison.summaries.append(_compare_model(run, entry, tolerances, comparison))
    if not subset:
        for key in sorted(set(models) - given):
            comparison.failures.append(f"{key}: in the baseline but no results given; run it too, or pass --subset "
                                       "to check only the given models")
            comparison.summaries.append(ModelSummary(key, failures=1, compared=False))
    return comparison


def _compare_model(run: RunResults, entry: Mapping[str, Any], tolerances: Tolerances,
                   comparison: Comparison) -> ModelSummary:
    key = run.key
    summary = ModelSummary(key)
    new = entry_from_results(run)
    failures_before = len(comparison.failures)

    refusals = _provenance_differences(entry, new)
    for refusal in refusals:
        comparison.failures.append(f"{key}: {refusal}; its scores are not comparable with the baseline, so none "
                                   f"were compared; {UPDATE_HINT}")
    for name in NOTED_SETTINGS:
        if entry.get("run", {}).get(name) != new["run"].get(name):
            comparison.notes.append(f"{key}: run with {_flag(name)} {new['run'].get(name)}, the baseline with "
                                    f"{entry.get('run', {}).get(name)} (should not move a score)")
    failed = run.data.get("failures") or {}
    for task in sorted(failed):
        comparison.notes.append(f"{key}: {len(failed[task])} sample(s) of {task} failed in {run.path}, so it has no "
                                "scores; see `bench run`'s failure lines")
    if refusals:
        summary.compared = False
        summary.failures = len(comparison.failures) - failures_before
        return summary

    for task in sorted(set(new["tasks"]) - set(entry["tasks"])):
        comparison.notes.append(f"{key}: task {task} is not in the baseline (not checked); add it with --update")
    for task, old_record in sorted(entry["tasks"].items()):
        record = new["tasks"].get(task)
        if record is None:
            comparison.failures.append(f"{key}: task {task} is in the baseline but missing from {run.path}")
            continue
        problem = _task_difference(old_record, record)
        if problem:
            comparison.failures.append(f"{key} {task}: {problem}; the scores were not compared; {UPDATE_HINT}")
            continue
        summary.tasks += 1
        for metric, old in sorted(old_record["metrics"].items()):
            value = record["metrics"].get(metric)
            if value is None:
                comparison.failures.append(f"{key} {task} {metric}: in the baseline but missing from {run.path}")
                continue
            summary.metrics += 1
            difference = _difference(old, value)
            if not summary.largest_at or abs(difference) > summary.largest:
                summary.largest, summary.largest_at = abs(difference), f"{task} {metric}"
            tolerance = tolerances.for_metric(metric)
            if not abs(difference) <= tolerance + FLOAT_SLACK:  # NaN (one side NaN) fails too
                comparison.failures.append(
                    f"{key} {task} {metric}: baseline {old:.4f}, now {value:.4f}: moved {difference:+.4f} "
                    f"({100 * old:.2f} -> {100 * value:.2f}, {100 * difference:+.2f} points), beyond the tolerance "
                    f"{tolerance:g} ({100 * tolerance:.2f} points)")
        for metric in sorted(set(record["metrics"]) - set(old_record["metrics"])):
            comparison.notes.append(f"{key} {task}: metric {metric} is not in the baseline (not checked)")
    summary.failures = len(comparison.failures) - failures_before
    return summary


def provenance(entry: Mapping[str, Any]) -> dict[str, str]:
    """What must be equal for two entries' numbers to be comparable, as label -> readable value."""
    data = entry.get("data") or {}
    kind = "the synthetic suite" if data.get("synthetic_suite") else "data root"
    fields = {"data": f"{kind} {data.get('data_root_name')}",
              "model fingerprint": str(entry.get("model_fingerprint"))}
    for name in COMPARED_SETTINGS:
        fields[_flag(name)] = _value_text((entry.get("run") or {}).get(name))
    return fields


def _provenance_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why ``new`` cannot be compared with ``old`` at all (other data, another model, other settings)."""
    before, after = provenance(old), provenance(new)
    problems = []
    for label in after:
        if before[label] != after[label]:
            why = FINGERPRINT_WHY if label == "model fingerprint" else ""
            problems.append(f"{label} {after[label]}, the baseline's {before[label]}{why}")
    return problems


def _task_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    if old.get("version") != new.get("version"):
        return f"task version {new.get('version')}, the baseline's {old.get('version')} (the task changed)"
    if old.get("n_samples") != new.get("n_samples"):
        return f"{new.get('n_samples')} samples, the baseline {old.get('n_samples')} (the split changed)"
    if "data_sha256" in old and "data_sha256" in new and old["data_sha256"] != new["data_sha256"]:
        changed = sorted(k for k in {*old["data_sha256"], *new["data_sha256"]}
                         if old["data_sha256"].get(k) != new["data_sha256"].get(k))
        return f"annotation file(s) {', '.join(changed)} differ from the baseline's (checksums; the data changed)"
    return None


def _difference(old: float, new: float) -> float:
    if math.isnan(old) and math.isnan(new):
        return 0.0
    return new - old


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_text(value: Any) -> str:
    return "(none)" if value in (None, {}) else json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(
        value)


def check(paths: Sequence[Path], baseline_path: Path, tolerances: Tolerances, subset: bool = False) -> Comparison:
    """Load the results under ``paths`` and the baseline, and compare them (``bench check``)."""
    runs = load_all_results(paths)
    return compare(load_baseline(baseline_path), runs, tolerances, subset)


# --------------------------------------------------------------------------- update


def update(paths: Sequence[Path], baseline_path: Path) -> list[str]:
    """Rewrite the entries of the models under ``paths`` in ``baseline_path`` (created if missing),
    keeping every other model's entry; returns one line per change, for the person to review."""
    runs = load_all_results(paths)
    for run in runs:
        failed = run.data.get("failures") or {}
        if failed:
            raise BenchError(f"{run.path}: {sum(len(f) for f in failed.values())} sample(s) failed "
                             f"({', '.join(sorted(failed))}); rerun `bench run` until every sample finishes before "
                             "recording it as a baseline")
    empty = {"format": BASELINE_FORMAT, "models": {}}
    baseline = load_baseline(baseline_path) if baseline_path.exists() else empty
    baseline["about"] = ABOUT
    changes: list[str] = []
    for run in runs:
        new = entry_from_results(run)
        old = baseline["models"].get(run.key)
        changes += [f"{run.key}: {line}" for line in describe_changes(old, new)]
        baseline["models"][run.key] = new
    write_baseline(baseline_path, baseline)
    return changes


def describe_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What rewriting ``old`` with ``new`` changes, in the table's units; ``["unchanged"]`` if nothing."""
    if old is None:
        metrics = sum(len(record["metrics"]) for record in new["tasks"].values())
        return [f"added ({len(new['tasks'])} tasks, {metrics} metrics)"]
    before, after = provenance(old), provenance(new)
    lines = [f"{label}: {before[label]} -> {after[label]}" for label in after if before[label] != after[label]]
    for task in sorted(set(old["tasks"]) - set(new["tasks"])):
        lines.append(f"task {task} removed")
    for task, record in sorted(new["tasks"].items()):
        before = old["tasks"].get(task)
        if before is None:
            lines.append(f"task {task} added ({len(record['metrics'])} metrics)")
            continue
        problem = _task_difference(before, record)
        if problem:
            lines.append(f"{task}: {problem}")
        for metric, value in sorted(record["metrics"].items()):
            was = before["metrics"].get(metric)
            if was is None:
                lines.append(f"{task} {metric}: added ({100 * value:.2f})")
            elif _difference(was, value) != 0:
                lines.append(f"{task} {metric}: {100 * was:.2f} -> {100 * value:.2f} "
                             f"({100 * _difference(was, value):+.2f} points)")
        for metric in sorted(set(before["metrics"]) - set(record["metrics"])):
            lines.append(f"{task} {metric}: removed")
    return lines or ["unchanged"]
