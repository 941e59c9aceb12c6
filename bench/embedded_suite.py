"""The embedded suite: every baseline adapter and both tiny reference models on every built-in task.

``python -m bench.embedded_suite OUT`` runs it into ``OUT/<model>/`` (one
``bench run`` output directory per model), and
``bench check OUT --baseline leaderboards/baselines/embedded.json`` compares it
with the committed baseline. CI and a person run this same module, so the two
cannot drift apart in models, tasks, batch size or seed.

Why each choice:

* the synthetic suite (no ``--data-root``) is generated deterministically and
  the tiny models' checkpoints are committed, so the whole suite runs anywhere
  without downloads, and every score is a function of the code alone;
* ``replay`` is left out: it scores an answers file, not code;
* every task is cut to its first :data:`LIMIT` samples (``--limit``), so that a
  gate CI runs on every change stays short on a busy machine too: on 2 CPU
  cores the full splits took 2.7 minutes when the machine was quiet and 22
  when other jobs shared it (the tiny models slow down tenfold); 100 samples
  took 43 s and 8 to 11 minutes (the tiny models' full-split scores are held
  to their minimums by ``tests/test_embedded_checkpoints.py``). A hundred
  samples still run every task's code path and scorer, and one changed answer
  moves an accuracy by one point (the default tolerance), so two already fail;
* the task list is fixed here rather than read from the registry, so that an
  installed plugin's task never enters the gate; ``tests/test_check.py`` checks
  that it covers every built-in task;
* ``OUT`` must be new or empty: ``bench run`` reuses saved answers whose cache
  key matches, and a gate must answer afresh (an adapter's code can change
  without its version).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.errors import BenchError, ConfigError

MODELS = ("always-yes", "oracle", "random", "rgpt", "gpt4roi")
TASKS = ("coco-cls", "pope", "refcocog-rec", "refcocog-cap", "vg-cap")
BATCH_SIZE = 8
SEED = 0
LIMIT = 100
BASELINE = Path(__file__).resolve().parent.parent / "leaderboards" / "baselines" / "embedded.json"


def run_suite(out: Path, models: Sequence[str] = MODELS, progress: bool = False) -> dict[str, float]:
    """Run ``models`` on :data:`TASKS` into ``out/<model>``; returns seconds per model.

    Raises :class:`BenchError` if ``out`` holds files or a model had failed samples.
    """
    from bench.evaluate import RunConfig, run_evaluation

    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not in the embedded suite; choose from {', '.join(MODELS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} is not an empty directory; the suite must answer afresh, so choose a new one")
    seconds: dict[str, float] = {}
    for model in models:
        start = time.monotonic()
        config = RunConfig(model=model, tasks=",".join(TASKS), output=out / model, limit=LIMIT,
                           batch_size=BATCH_SIZE, seed=SEED, device="cpu", progress=progress)
        report = run_evaluation(config)
        seconds[model] = time.monotonic() - start
        if report.failed:
            total = sum(len(o.failures) for o in report.outcomes)
            raise BenchError(f"{model}: {total} sample(s) failed; see {out / model} (samples_<task>.jsonl, "
                             "results.json 'failures')")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedded_suite",
        description="Run the embedded suite (baseline adapters and tiny reference models on every built-in task) "
                    f"into OUT/<model>; then: bench check OUT --baseline {BASELINE.relative_to(BASELINE.parents[2])}",
    )
    parser.add_argument("out", type=Path, help="a new or empty directory")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma separated subset of {','.join(MODELS)}")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        seconds = run_suite(args.out, models, progress=args.progress)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for model, taken in seconds.items():
        print(f"{model}: {taken:.0f} s")
    print(f"ran the embedded suite into {args.out} in {sum(seconds.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
