"""``bench report``: the HTML gallery of a run, checked on its markup and in a real headless browser.

Run directories are made here by ``bench run``'s own code (the oracle, random
and replay baselines), either on the embedded synthetic suite or on a one-image
COCO data root written by the test, whose box and colours are known exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.cli import app
from bench.evaluate import RunConfig, run_evaluation
from bench.report import write_report
from bench.report.html import region_color
from bench.report.judge import NO_CATEGORY, coco_confusion, judge
from bench.store import read_records

SYNTHETIC_TASKS = "coco-cls,pope-adversarial,refcocog-rec,refcocog-cap"
PLAIN = (40, 90, 160)  # the hand-made image's colour
BOX = (50, 40, 110, 100)  # its one annotation, xyxy, on a 200 x 150 image
MALICIOUS = "<script>alert(1)</script>"


class Cards(HTMLParser):
    """Each card's data- attributes and its region rects' (number, x, y, width, height), in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, Any]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "article" and a.get("class") == "card":
            self.cards.append({**a, "rects": [], "no_image": False})
        elif tag == "rect" and "region" in (a.get("class") or "").split():
            self.cards[-1]["rects"].append((int(a["data-region"] or 0), *(float(a[k] or 0) for k in
                                                                           ("x", "y", "width", "height"))))
        elif tag == "div" and a.get("class") == "no-image":
            self.cards[-1]["no_image"] = True


def parse(path: Path) -> Cards:
    parser = Cards()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def records_of(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """(run name, record) of every samples file, in the report's order (files sorted by name)."""
    return [(p.name[len("samples_"):-len(".jsonl")], r) for p in sorted(run.glob("samples_*.jsonl"))
            for r in read_records(p)]


def run(output: Path, model: str, tasks: str, data_root: Path | None = None, limit: int | None = None,
        **model_args: str) -> Path:
    report = run_evaluation(RunConfig(model=model, tasks=tasks, model_args=model_args, data_root=data_root,
                                      output=output, limit=limit, progress=False))
    assert not report.failed
    return output


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random baseline on four tasks of the embedded suite: right and wrong answers, REC candidates."""
    return run(tmp_path_factory.mktemp("random-run"), "random", SYNTHETIC_TASKS, limit=6)


def write_coco_root(root: Path) -> Path:
    """A COCO data root with one plain-coloured 200 x 150 PNG and two annotations (ids 1 and 2)."""
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "val2017").mkdir(parents=True)
    Image.new("RGB", (200, 150), PLAIN).save(root / "coco" / "val2017" / "plain.png")
    x1, y1, x2, y2 = BOX
    instances = {
        "images": [{"id": 7, "file_name": "plain.png", "width": 200, "height": 150}],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [150, 10, 30, 20], "iscrowd": 0},
        ],
    }
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    return root


@pytest.fixture()
def coco_run(tmp_path: Path) -> Path:
    """Replayed answers on the hand-made root: annotation 1 right, annotation 2 a script (wrong)."""
    root = write_coco_root(tmp_path / "data")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "1", "answer": "square"}) + "\n"
                       + json.dumps({"id": "2", "answer": MALICIOUS}) + "\n")
    return run(tmp_path / "run", "replay", "coco-cls", data_root=root, path=str(answers))


def test_one_card_per_sample_with_its_regions_and_verdict(synthetic_run: Path) -> None:
    summary = write_report(synthetic_run)
    assert summary.path == synthetic_run / "report.html" and summary.warnings == [] and summary.left_out == 0
    page = parse(summary.path)
    expected = records_of(synthetic_run)
    assert len(page.cards) == len(expected) == summary.cards == 4 * 6
    verdicts = set()
    for card, (run_name, record) in zip(page.cards, expected, strict=True):
        assert (card["data-task"], card["data-id"]) == (run_name, str(record["id"]))
        assert not card["no_image"]
        # One rect per region, numbered as in the prompt, at the record's own pixel coordinates.
        boxes = [r["box"] for r in record["regions"]]
        assert card["rects"] == [pytest.approx((k, b[0], b[1], b[2] - b[0], b[3] - b[1]), abs=1e-3)
                                 for k, b in enumerate(boxes, start=1)]
        for k in range(1, len(boxes) + 1):
            assert f"<region{k}>" in record["prompt"]
        # The wrong-only filter reads data-correct: it must be each task's own verdict.
        if run_name == "coco-cls":
            want = "1" if record["scores"]["correct"] else "0"
            assert card["data-category"] == record["target"]["category"]
        elif run_name == "pope-adversarial":
            want = "1" if record["parsed"] == record["target"] else "0"
            assert card["data-category"] in record["prompt"]
        elif run_name == "refcocog-rec":
            want = "1" if record["parsed"] in record["target"] else "0"
            assert len(card["rects"]) == len(record["metadata"]["candidates"]) > 1
        else:
            want = "na"
            assert card["data-category"] == NO_CATEGORY
        assert card["data-correct"] == want
        verdicts.add(want)
    assert {"0", "1", "na"} <= verdicts  # the random baseline gets some right and some wrong


def test_a_malicious_answer_is_escaped_and_missing_images_are_named(coco_run: Path) -> None:
    (coco_run.parent / "data" / "coco" / "val2017" / "plain.png").unlink()
    summary = write_report(coco_run)
    text = summary.path.read_text(encoding="utf-8")
    assert MALICIOUS not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = parse(summary.path)
    assert page.scripts == 1  # the page's own filter script only
    assert [c["data-correct"] for c in page.cards] == ["1", "0"]
    assert all(c["no_image"] for c in page.cards)  # still rendered, marked
    assert len(summary.warnings) == 1
    assert "plain.png not found" in summary.warnings[0] and "--data-root" in summary.warnings[0]


def test_hand_written_samples_without_results_json(tmp_path: Path) -> None:
    """No results.json (so no data root) and a malformed region: a warning, and every card still rendered."""
    records = [
        {"id": "a", "task": "refcocog-rec", "prompt": "Candidates: <region1>, <region2>, <region3>.",
         "regions": [{"box": [1, 2, 30, 40]}, {"box": ["x", 0, 1, 1]}, {"box": None, "mask": [[0, 0, 10, 0, 10, 5]]}],
         "outputs": ["Region [2]"], "parsed": 2, "target": [1], "metadata": {"gt_added": True}},
        {"id": "b", "task": "refcocog-rec", "prompt": "p", "regions": [], "outputs": [], "parsed": None,
         "target": [], "metadata": {}},
    ]
    (tmp_path / "samples_refcocog-rec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = write_report(tmp_path)
    assert "records no data_root" in summary.warnings[0] and "--data-root" in summary.warnings[0]
    page = parse(summary.path)
    assert [(c["data-id"], c["data-correct"], c["no_image"]) for c in page.cards] == [("a", "0", True),
                                                                                     ("b", "0", True)]


def test_moved_data_root_is_a_warning_and_data_root_option_fixes_it(coco_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.move(str(coco_run.parent / "data"), moved)
    summary = write_report(coco_run)
    assert "is not a directory" in summary.warnings[0] and "--data-root" in summary.warnings[0]
    assert all(c["no_image"] for c in parse(summary.path).cards)
    fixed = write_report(coco_run, out=tmp_path / "fixed.html", data_root=moved)
    assert fixed.warnings == [] and not any(c["no_image"] for c in parse(fixed.path).cards)


def test_max_per_task_says_how_many_were_left_out(synthetic_run: Path, tmp_path: Path) -> None:
    summary = write_report(synthetic_run, out=tmp_path / "small.html", max_per_task=2)
    assert summary.cards == 8 and summary.left_out == 16
    text = summary.path.read_text(encoding="utf-8")
    assert text.count("the first 2 are shown, 4 left out (--max-per-task 2") == 4


def test_confusion_matrix_counts_by_hand() -> None:
    categories = [[1, "cat"], [2, "dog"], [3, "bird"]]

    def record(target: str, answer: str | None) -> dict[str, Any]:
        return {"target": {"category": target}, "parsed": {"answer": answer},
                "metadata": {"categories": categories}}

    pairs = [("cat", "cat"), ("cat", "cat"), ("cat", "dog"), ("dog", "dog"), ("dog", None), ("bird", "cat")]
    confusion = coco_confusion([record(t, a) for t, a in pairs])
    assert confusion.labels == ["cat", "dog", "bird"]  # the category file's order
    assert confusion.columns == ["cat", "dog", "bird", NO_CATEGORY]
    assert confusion.counts == [[2, 1, 0, 0],   # cat: 2 right, 1 called dog
                                [0, 1, 0, 1],   # dog: 1 right, 1 answer naming no category
                                [1, 0, 0, 0]]   # bird: called cat


def test_judge_per_task() -> None:
    assert judge("refcocog-rec", {"parsed": 2, "target": [2, 5], "metadata": {}}).correct is True
    assert judge("refcocog-rec", {"parsed": None, "target": [2], "metadata": {}}).correct is False
    pope = judge("pope-random", {"parsed": "no", "target": "yes", "prompt": "Is there a fire hydrant in the image?"})
    assert (pope.correct, pope.category) == (False, "fire hydrant")
    caption = judge("vg-cap", {"parsed": "a cat", "target": ["a red cat", "cat"]})
    assert caption.correct is None and caption.target == "a red cat\ncat"
    assert judge("my-plugin-task", {"parsed": "x", "target": "x", "scores": {"correct": 1.0}}).correct is True
    assert judge("my-plugin-task", {"parsed": "x", "target": "x", "scores": {}}).correct is None


def test_cli_report_writes_the_default_file_and_prints_it(coco_run: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(coco_run)])
    assert result.exit_code == 0, result.output
    assert f"wrote {coco_run / 'report.html'}: 2 sample(s)" in result.output
    missing = CliRunner().invoke(app, ["report", str(coco_run / "nope")])
    assert missing.exit_code == 2 and "is not a directory" in missing.output


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")


def chromium(*args: str) -> str:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", *args],
                          check=True, capture_output=True, text=True, timeout=60).stdout


@needs_chromium
def test_chromium_runs_the_wrong_only_filter(coco_run: Path) -> None:
    """The inline script, run by Chromium with the filter preset in the address: only the wrong card stays."""
    summary = write_report(coco_run)
    dom = chromium("--dump-dom", summary.path.resolve().as_uri() + "#wrong=1")
    cards = re.findall(r"<article class=\"card\"[^>]*>", dom)
    assert len(cards) == 2
    assert 'data-id="1"' in cards[0] and 'hidden=""' in cards[0]  # right: hidden
    assert 'data-id="2"' in cards[1] and 'hidden' not in cards[1]  # wrong: shown
    assert '<span id="shown-count">1 sample(s) shown</span>' in dom


@needs_chromium
def test_chromium_renders_the_box_where_it_is(coco_run: Path, tmp_path: Path) -> None:
    """The page in headless Chromium: region 1's colour outlines the known box on the plain image, and
    appears nowhere else on the image (annotation 2's card, the second one, uses region 1's colour
    too, so only the first card's image is searched)."""
    summary = write_report(coco_run)
    screenshot = tmp_path / "page.png"
    chromium("--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=1000,1400",
             f"--screenshot={screenshot}", summary.path.resolve().as_uri())
    pixels = Image.open(screenshot).convert("RGB")
    width, height = pixels.size
    data = pixels.load()

    def near(p: tuple[int, ...], colour: tuple[int, ...], tolerance: int) -> bool:
        return all(abs(a - b) <= tolerance for a, b in zip(p, colour, strict=False))

    plain = [(x, y) for y in range(height) for x in range(width) if near(data[x, y], PLAIN, 4)]
    assert plain, "the plain image does not appear in the screenshot"
    # The first card's image: plain pixels left of the page's middle (cards are 376 px wide, side by side).
    first = [(x, y) for x, y in plain if x < plain[0][0] + 370]
    left, top = min(x for x, _ in first), min(y for _, y in first)
    right, bottom = max(x for x, _ in first), max(y for _, y in first)
    scale = (right - left + 1) / 200
    assert abs((bottom - top + 1) / 150 - scale) < 0.05  # drawn at the image's aspect ratio
    ex1, ey1, ex2, ey2 = (left + BOX[0] * scale, top + BOX[1] * scale, left + BOX[2] * scale, top + BOX[3] * scale)
    colour = tuple(int(region_color(1)[i:i + 2], 16) for i in (1, 3, 5))
    boxed = [(x, y) for y in range(top, bottom + 1) for x in range(left, right + 1) if near(data[x, y], colour, 40)]
    assert len(boxed) > 100, "no box drawn in the region's colour"
    slack = 4
    outside = [(x, y) for x, y in boxed
               if not (ex1 - slack <= x <= ex2 + slack and ey1 - slack <= y <= ey2 + slack)]
    assert outside == [], f"box colour outside the expected box {ex1, ey1, ex2, ey2}: {outside[:5]}"
    for name, on_edge in (("left", lambda x, y: abs(x - ex1) <= slack), ("right", lambda x, y: abs(x - ex2) <= slack),
                          ("top", lambda x, y: abs(y - ey1) <= slack), ("bottom", lambda x, y: abs(y - ey2) <= slack)):
        assert sum(on_edge(x, y) for x, y in boxed) >= 20, f"the box's {name} edge is not drawn"
    assert re.search(r"<use href=\"#img0\"/>", summary.path.read_text(encoding="utf-8"))
