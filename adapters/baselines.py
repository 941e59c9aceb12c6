"""Baseline adapters: they need no weights and open no images.

* ``oracle`` answers from the ground truth: proves the plumbing end to end and
  scores 100% wherever the metric allows.
* ``always-yes`` answers "Yes" to everything: the floor POPE's yes ratio exposes.
* ``random`` picks uniformly from a request's closed answer set, seeded per
  sample so the answer does not depend on order, batching or sharding.
* ``replay`` scores answers produced elsewhere, read from a JSON Lines file and
  matched to samples by id (POPE: ``question_id``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from bench.adapter import Adapter, Capabilities
from bench.data.files import read_json_records, require_file
from bench.errors import DataError
from bench.registry import register_adapter
from bench.types import GenerationRequest, LoglikelihoodRequest

NO_IMAGES = Capabilities(boxes=True, masks=True, max_regions=None, loglikelihood=True, needs_images=False)


@register_adapter
class Oracle(Adapter):
    name = "oracle"
    description = "answers from the ground truth (plumbing check; 100% where the metric allows)"
    capabilities = NO_IMAGES

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        answers = []
        for request in requests:
            if request.sample.gold_answer is None:
                raise ValueError(f"sample {request.sample.id!r} has no gold answer for the oracle")
            answers.append(request.sample.gold_answer)
        return answers

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[float]]:
        return [[0.0 if c == r.sample.gold_answer else -100.0 for c in r.continuations] for r in requests]


@register_adapter
class AlwaysYes(Adapter):
    name = "always-yes"
    description = "answers 'Yes' to every question (POPE floor: yes ratio 100%)"
    capabilities = Capabilities(boxes=True, masks=True, loglikelihood=False, needs_images=False)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return ["Yes" for _ in requests]


@register_adapter
class RandomGuess(Adapter):
    name = "random"
    description = "uniform random choice from the task's answer set, seeded per sample (--seed)"
    capabilities = NO_IMAGES

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _rng(self, request: GenerationRequest | LoglikelihoodRequest) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}\0{request.sample.id}\0{request.prompt}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [self._rng(r).choice(r.choices) if r.choices else "" for r in requests]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[list[float]]:
        results = []
        for request in requests:
            rng = self._rng(request)
            results.append([rng.random() for _ in request.continuations])
        return results

    def fingerprint_extra(self) -> str:
        return f"seed={self.seed}"


ID_FIELDS = ("question_id", "id", "sample_id")
ANSWER_FIELDS = ("text", "answer", "output", "prediction")


@register_adapter
class Replay(Adapter):
    """Answers read from ``path``: one JSON object per line with an id field
    (``question_id``, ``id`` or ``sample_id``) and an answer field (``text``,
    ``answer``, ``output`` or ``prediction``); an optional ``task`` field
    disambiguates ids shared by several tasks. LLaVA-style answer files work as they are.
    """

    name = "replay"
    description = "scores answers produced elsewhere (--model-args path=answers.jsonl), matched by sample id"
    capabilities = Capabilities(boxes=True, masks=True, loglikelihood=False, needs_images=False)

    def __init__(self, path: Path) -> None:
        self.path = require_file(path, "replay answers file")
        self.answers: dict[tuple[str | None, str], str] = {}
        for line, record in read_json_records(self.path):
            id_field = next((f for f in ID_FIELDS if f in record), None)
            answer_field = next((f for f in ANSWER_FIELDS if f in record), None)
            if id_field is None or answer_field is None:
                raise DataError(
                    f"{self.path}, line {line}: needs an id field ({', '.join(ID_FIELDS)}) "
                    f"and an answer field ({', '.join(ANSWER_FIELDS)})"
                )
            key = (record.get("task"), str(record[id_field]))
            if key in self.answers:
                raise DataError(f"{self.path}, line {line}: a second answer for id {key[1]!r}")
            self.answers[key] = str(record[answer_field])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        answers = []
        for request in requests:
            task = request.sample.task
            answer = self.answers.get((task, request.sample.id), self.answers.get((None, request.sample.id)))
            if answer is None:
                raise DataError(f"{self.path}: no answer for sample id {request.sample.id!r}")
            answers.append(answer)
        return answers

    def fingerprint_extra(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()
