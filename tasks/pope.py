"""POPE object-hallucination probing: random, popular and adversarial splits.

Each question asks "Is there a <object> in the image?" with a yes/no label.
Answers are mapped to yes/no by the authors' rule and scored with their
metrics (:mod:`bench.metrics.pope`). Predictions are paired with labels by
``question_id``, never by file position. Both variants of the real files load:
the current one (``question_id`` from 1) and older copies that also carry
``image_id`` and number questions from 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.adapter import Capabilities
from bench.data.files import read_json_records, require_file, resolve_inside
from bench.data.layout import dataset_path
from bench.errors import DataError
from bench.metrics.pope import confusion, pope_answer, pope_metrics
from bench.registry import register_group, register_task
from bench.task import Processed, Task, TaskGroup
from bench.types import GenerationRequest, ImageRef, Output, Request, Sample

LABELS = ("yes", "no")


class PopeTask(Task):
    """One POPE split; subclasses set ``default_split`` (each split is its own task, as in the papers)."""

    version = "1"
    metrics = ("f1", "accuracy", "precision", "recall", "yes_ratio")
    annotation_keys = ("pope_questions",)
    max_new_tokens = 32

    def load_samples(self) -> list[Sample]:
        questions = require_file(
            dataset_path(self.data_root, "pope_questions", split=self.split),
            f"POPE {self.split} question file", key="pope_questions",
        )
        image_root = dataset_path(self.data_root, "pope_images")
        samples: list[Sample] = []
        seen: dict[str, int] = {}
        for line, record in read_json_records(questions):
            where = f"line {line}"
            missing = [f for f in ("question_id", "image", "text", "label") if f not in record]
            if missing:
                raise DataError(f"{questions}, {where}: missing field(s) {', '.join(missing)}")
            question_id = record["question_id"]
            if not isinstance(question_id, (int, str)) or isinstance(question_id, bool):
                raise DataError(f"{questions}, {where}: question_id must be an integer or a string")
            sample_id = str(question_id)
            if sample_id in seen:
                raise DataError(
                    f"{questions}, {where}: question_id {question_id} already used on line {seen[sample_id]}"
                )
            seen[sample_id] = line
            label = str(record["label"]).strip().lower()
            if label not in LABELS:
                raise DataError(f"{questions}, {where}: label must be 'yes' or 'no', got {record['label']!r}")
            image_name = record["image"]
            image = ImageRef(key=str(image_name), path=resolve_inside(image_root, image_name, questions, where))
            metadata: dict[str, Any] = {"line": line}
            if "image_id" in record:
                metadata["image_id"] = record["image_id"]
            samples.append(Sample(
                id=sample_id, image=image, prompt=str(record["text"]), target=label,
                gold_answer=label, metadata=metadata,
            ))
        if not samples:
            raise DataError(f"{questions}: the question file is empty")
        return samples

    def build_requests(self, sample: Sample, capabilities: Capabilities) -> list[Request]:
        return [GenerationRequest(sample=sample, prompt=sample.prompt, regions=(), max_new_tokens=self.max_new_tokens,
                                  choices=("Yes", "No"))]

    def process(self, sample: Sample, outputs: Sequence[Output]) -> Processed:
        answer = pope_answer(str(outputs[0]))
        return Processed(parsed=answer, scores={"correct": float(answer == sample.target)})

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return pope_metrics(confusion((r["parsed"], r["target"]) for r in records))


@register_task
class PopeRandom(PopeTask):
    name = "pope-random"
    default_split = "random"
    description = "POPE hallucination, random negatives (acc, precision, recall, F1, yes ratio)"


@register_task
class PopePopular(PopeTask):
    name = "pope-popular"
    default_split = "popular"
    description = "POPE hallucination, popular negatives (acc, precision, recall, F1, yes ratio)"


@register_task
class PopeAdversarial(PopeTask):
    name = "pope-adversarial"
    default_split = "adversarial"
    description = "POPE hallucination, adversarial (co-occurring) negatives (acc, precision, recall, F1, yes ratio)"


@register_group
class Pope(TaskGroup):
    name = "pope"
    description = "all three POPE splits, plus their mean F1"
    members = ("pope-random", "pope-popular", "pope-adversarial")
    metrics = ("mean_f1",)

    def aggregate(self, results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        return {"mean_f1": sum(results[m]["f1"] for m in self.members) / len(self.members)}
