"""POPE: the authors' yes/no answer rule and their metrics, exactly.

The rule (POPE's ``evaluate.py``, also used by LLaVA, Osprey and Ferret):
keep the text before the first ``.``; delete ``,``; split on single spaces;
the answer is "no" if any token is exactly ``No``, ``not`` or ``no``, else "yes".
So an empty or garbled answer counts as "yes", and "Not" or "no\\n" are missed:
that is the published behaviour, kept on purpose so numbers match the papers.

Metrics treat "yes" as the positive class. Where the authors' script would
divide by zero (no predicted or no actual positives) we return 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NEGATIVE_TOKENS = frozenset({"No", "not", "no"})


def pope_answer(text: str) -> str:
    """Map a model's raw answer to "yes" or "no" with the official rule."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if NEGATIVE_TOKENS.intersection(words) else "yes"


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def confusion(pairs: Iterable[tuple[str, str]]) -> Confusion:
    """Count ``(prediction, label)`` pairs of "yes"/"no"; positive = "yes".

    A label is positive unless it is "no", as in the authors' script.
    """
    tp = fp = tn = fn = 0
    for prediction, label in pairs:
        predicted_yes = prediction != "no"
        actual_yes = label != "no"
        if predicted_yes and actual_yes:
            tp += 1
        elif predicted_yes:
            fp += 1
        elif actual_yes:
            fn += 1
        else:
            tn += 1
    return Confusion(tp, fp, tn, fn)


def pope_metrics(counts: Confusion) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes ratio (fractions), as POPE reports them."""
    if counts.n == 0:
        raise ValueError("POPE metrics need at least one answer")
    precision = counts.tp / (counts.tp + counts.fp) if counts.tp + counts.fp else 0.0
    recall = counts.tp / (counts.tp + counts.fn) if counts.tp + counts.fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (counts.tp + counts.tn) / counts.n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (counts.tp + counts.fp) / counts.n,
    }
