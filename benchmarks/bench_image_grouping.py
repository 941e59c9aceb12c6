"""Benchmark: what grouping requests by image saves an adapter that encodes images.

A stand-in adapter costs ``ENCODE_MS`` per image encode (the vision tower) and
``ANSWER_MS`` per question (the language model), and caches the last encoded
image, as a real adapter encoding once per image within a batch would. The
harness runner (requests grouped by image) is compared, in the same run, with a
naive loop over samples in file order with no grouping (a shuffled split, as
after a resume or a shard merge).

Run: ``python benchmarks/bench_image_grouping.py``
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.adapter import Adapter, Capabilities  # noqa: E402
from bench.runner import evaluate_task  # noqa: E402
from bench.types import GenerationRequest  # noqa: E402
from tasks.pope import PopeAdversarial  # noqa: E402
from tests.conftest import write_pope_root  # noqa: E402

ENCODE_MS = 2.0
ANSWER_MS = 0.2
BATCH = 8


class CostModel(Adapter):
    name = "cost-model"
    capabilities = Capabilities(needs_images=False)

    def __init__(self) -> None:
        self.encodes = 0
        self.init_args = {}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        last = None
        for request in requests:
            if request.image.key != last:
                self.encodes += 1
                time.sleep(ENCODE_MS / 1000)
                last = request.image.key
            time.sleep(ANSWER_MS / 1000)
        return [r.sample.gold_answer or "" for r in requests]


def naive(samples: list, adapter: CostModel) -> None:
    for start in range(0, len(samples), BATCH):
        chunk = samples[start:start + BATCH]
        adapter.generate([GenerationRequest(sample=s, prompt=s.prompt, regions=()) for s in chunk])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_pope_root(Path(tmp) / "data", n_images=100)
        task = PopeAdversarial(root)
        samples = task.load_samples()
        random.Random(0).shuffle(samples)

        baseline = CostModel()
        start = time.perf_counter()
        naive(samples, baseline)
        naive_s = time.perf_counter() - start

        grouped = CostModel()
        start = time.perf_counter()
        evaluate_task(task, grouped, samples, Path(tmp) / "out", batch_size=BATCH, progress=False)
        grouped_s = time.perf_counter() - start

    print(f"{len(samples)} questions on 100 images, batch {BATCH}, shuffled order")
    print(f"naive loop:   {baseline.encodes:5d} image encodes  {naive_s:6.2f} s")
    print(f"bench runner: {grouped.encodes:5d} image encodes  {grouped_s:6.2f} s (saving every sample)")
    print(f"ratio naive/runner: encodes {baseline.encodes / grouped.encodes:.2f}x, time {naive_s / grouped_s:.2f}x")


if __name__ == "__main__":
    main()
