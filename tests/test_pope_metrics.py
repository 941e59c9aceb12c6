"""POPE's answer rule and metrics, pinned against hand-computed cases."""

import pytest

from bench.metrics.pope import Confusion, confusion, pope_answer, pope_metrics


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("Yes, there is a snowboard in the image.", "yes"),
        ("No, there is no car in the image.", "no"),  # "No," loses its comma, then matches "No"
        ("There is not a car.", "no"),
        # Edge cases of the official rule, kept on purpose:
        ("", "yes"),  # empty output counts as yes
        ("Not at all", "yes"),  # "Not" is not in the list
        ("no\n", "yes"),  # the token is "no\n", not "no"
        ("NO", "yes"),
        ("None of them", "yes"),
        ("I see a dog. No car.", "yes"),  # only the first sentence counts
        ("There is no.", "no"),
        ("Yes. No.", "yes"),
        ("no, no", "no"),
        ("not", "no"),
        ("Nope", "yes"),
        ("yes no", "no"),
        ("no  car", "no"),  # double space yields an empty token, "no" still present
        ("no.", "no"),
        ("It is not there", "no"),
        ("cannot", "yes"),
    ],
)
def test_official_answer_rule(raw: str, expected: str) -> None:
    assert pope_answer(raw) == expected


def test_confusion_counts_positive_is_yes() -> None:
    pairs = [("yes", "yes"), ("yes", "no"), ("no", "no"), ("no", "yes"), ("yes", "yes")]
    assert confusion(pairs) == Confusion(tp=2, fp=1, tn=1, fn=1)


def test_metrics_hand_computed() -> None:
    # 10 answers: TP=4, FP=1, TN=3, FN=2.
    metrics = pope_metrics(Confusion(tp=4, fp=1, tn=3, fn=2))
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["precision"] == pytest.approx(4 / 5)
    assert metrics["recall"] == pytest.approx(4 / 6)
    p, r = 4 / 5, 4 / 6
    assert metrics["f1"] == pytest.approx(2 * p * r / (p + r))  # = 0.727272...
    assert metrics["f1"] == pytest.approx(8 / 11)
    assert metrics["yes_ratio"] == pytest.approx(5 / 10)  # predicted yes, not labels


def test_always_yes_on_balanced_split() -> None:
    metrics = pope_metrics(confusion([("yes", "yes")] * 3 + [("yes", "no")] * 3))
    assert metrics == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0}
    )


def test_always_no_has_zero_precision_instead_of_dividing_by_zero() -> None:
    metrics = pope_metrics(confusion([("no", "yes"), ("no", "no")]))
    assert metrics == pytest.approx({"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0})


def test_metrics_need_answers() -> None:
    with pytest.raises(ValueError):
        pope_metrics(Confusion(0, 0, 0, 0))
