"""Rows the papers published, to print beside measured rows (never ranked with them).

Source: ../shared/docs/reference-models.md, "What the papers report": the RegionGPT paper
(Guo et al., CVPR 2024) tables, which also carry the other models' rows it compares against
(GPT4RoI's own paper reports no number on these benchmarks in this form). Values are as printed
there, in percent (CIDEr x100). A value the paper does not give is absent, not zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RGPT_PAPER = "RegionGPT paper (CVPR 2024)"


@dataclass(frozen=True)
class ReportedRow:
    """One published row: ``values`` keyed by ``(task, metric)`` as in results.json, in percent."""

    table: str
    model: str
    source: str
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    note: str = ""


def _cls(model: str, note: str = "", **values: float) -> ReportedRow:
    return ReportedRow("coco-cls", model, f"{RGPT_PAPER}, COCO-2017 val region classification",
                       {("coco-cls", k): v for k, v in values.items()}, note)


def _cap(model: str, refcocog: tuple[float, float] | None, vg: tuple[float, float] | None) -> ReportedRow:
    values: dict[tuple[str, str], float] = {}
    for task, pair in (("refcocog-cap", refcocog), ("vg-cap", vg)):
        if pair is not None:
            values[(task, "meteor")], values[(task, "cider")] = pair
    return ReportedRow("captioning", model, f"{RGPT_PAPER}, region captioning", values)


def _rec(model: str, val: float, test: float, note: str = "") -> ReportedRow:
    return ReportedRow("rec", model, f"{RGPT_PAPER}, REC on RefCOCOg",
                       {("refcocog-rec", "accuracy"): val, ("refcocog-rec@test", "accuracy"): test}, note)


_POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def _pope(model: str, **splits: tuple[float, float, float, float, float]) -> ReportedRow:
    values = {(f"pope-{split}", metric): value
              for split, numbers in splits.items() for metric, value in zip(_POPE_METRICS, numbers, strict=True)}
    return ReportedRow("pope", model, f"{RGPT_PAPER}, Table 8 (POPE)", values)


REPORTED: tuple[ReportedRow, ...] = (
    _cls("CLIP ViT-L crop", mAP=58.9),
    _cls("RegionCLIP", mAP=58.3),
    _cls("LLaVA", accuracy=40.04),
    _cls("Shikra", accuracy=53.91),
    _cls("GPT4RoI", accuracy=64.01),
    _cls("PVIT", accuracy=64.53),
    _cls("ASM", mAP=69.3),
    _cls("RGPT (OpenAI ViT-L-336)", "the text also says 80.86 acc", accuracy=80.61, mAP=70.0,
         AP_small=55.7, AP_medium=75.5, AP_large=81.5),
    _cap("GRiT", (15.2, 71.6), (17.1, 142.0)),
    _cap("SLR", (15.9, 66.2), None),
    _cap("Kosmos-2", (14.1, 62.3), None),
    _cap("RGPT", (16.9, 109.9), (17.0, 145.6)),
    _rec("MDETR", 81.64, 80.89),
    _rec("Shikra", 82.27, 82.19),
    _rec("Kosmos-2", 60.57, 61.65),
    _rec("MiniGPT-v2", 84.44, 84.66),
    _rec("RGPT", 86.44, 86.96, "Co-DETR proposals, ground-truth box added when no proposal has IoU >= 0.5"),
    _pope("RGPT", random=(87.80, 97.75, 78.13, 86.85, 41.20), popular=(87.20, 95.44, 78.13, 85.92, 40.93),
          adversarial=(85.67, 91.99, 78.13, 84.50, 42.47)),
    _pope("Shikra", adversarial=(83.10, 85.60, 79.60, 82.49, 46.50)),
    _pope("InstructBLIP", adversarial=(72.10, 65.13, 95.13, 77.32, 73.03)),
    _pope("LLaVA", adversarial=(73.33, 69.02, 84.67, 66.32, 61.33)),
)
