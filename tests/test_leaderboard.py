"""``bench leaderboard``: results.json files into the papers' tables, data never mixed in a ranking."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from bench.errors import DataError
from bench.leaderboard import write_leaderboards
from bench.leaderboard.reported import REPORTED
from bench.leaderboard.runs import read_run
from bench.leaderboard.tables import TABLES, build_table
from bench.results import find_results
from tests.plugin_utils import run_bench

SHARED_DOC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "reference-models.md"
SPEC = {spec.name: spec for spec in TABLES}


def write_run(directory: Path, model: str, results: dict, *, synthetic: bool = True,
              data_root: str = "/d/synthetic-1-x", sha: str | None = None, limit: int | None = None,
              pretrained: str | None = None, commit: str = "abcdef0123") -> Path:
    """A results.json as bench run writes it, with only the fields a leaderboard reads."""
    files = {task: {"annotations": {"path": "a.json", "sha256": sha}} for task in results} if sha else {}
    record = {
        "results": results,
        "n_samples": {task: 10 for task in results},
        "config": {"model": model, "model_args": {"pretrained": pretrained} if pretrained else {},
                   "model_fingerprint": f"fp-{model}-{pretrained}", "data_root": data_root,
                   "synthetic_suite": synthetic, "limit": limit, "data_files": files},
        "versions": {"harness": "0.1.0", "git_commit": commit},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(record))
    return directory


def pope(f1: float) -> dict:
    return {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": f1, "yes_ratio": 0.5}


def table(name: str, root: Path):
    return build_table(SPEC[name], [read_run(p) for p in find_results([root])])


def test_rows_are_ranked_within_one_data_and_values_are_percent(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "alpha", {"coco-cls": {"accuracy": 0.50, "mAP": 0.4}})
    write_run(tmp_path / "b", "beta", {"coco-cls": {"accuracy": 0.75, "mAP": 0.6}})
    write_run(tmp_path / "c", "gamma", {"coco-cls": {"accuracy": 0.75, "mAP": 0.1}})
    write_run(tmp_path / "d", "delta", {"coco-cls": {"accuracy": 0.25}})
    built = table("coco-cls", tmp_path)
    measured = built.sections[0]
    assert measured.rank_by == "acc"
    assert [(r.model, r.rank, r.values["acc"]) for r in measured.rows] == [
        ("beta", 1, 75.0), ("gamma", 1, 75.0), ("alpha", 3, 50.0), ("delta", 4, 25.0)]  # ties share a rank
    assert measured.rows[0].values["mAP"] == pytest.approx(60.0)
    assert measured.rows[3].values["mAP"] is None
    assert len(built.sections) == 2 and built.sections[1].rank_by is None  # then the papers' rows


def test_different_data_never_share_a_ranking(tmp_path: Path) -> None:
    write_run(tmp_path / "synthetic", "alpha", {"pope-adversarial": pope(0.9)})
    write_run(tmp_path / "limited", "beta", {"pope-adversarial": pope(0.95)}, limit=5)
    write_run(tmp_path / "real1", "gamma", {"pope-adversarial": pope(0.8)}, synthetic=False, data_root="/real",
              sha="1" * 64)
    write_run(tmp_path / "real2", "delta", {"pope-adversarial": pope(0.7)}, synthetic=False, data_root="/real",
              sha="1" * 64)
    write_run(tmp_path / "real3", "eps", {"pope-adversarial": pope(0.99)}, synthetic=False, data_root="/real",
              sha="2" * 64)  # same path, other file contents
    built = table("pope", tmp_path)
    measured = [s for s in built.sections if s.rank_by is not None]
    groups = sorted(sorted(r.model for r in s.rows) for s in measured)
    assert groups == [["alpha"], ["beta"], ["delta", "gamma"], ["eps"]]
    real = next(s for s in measured if len(s.rows) == 2)
    assert [(r.model, r.rank) for r in real.rows] == [("gamma", 1), ("delta", 2)]
    assert "data root /real" in real.data and "annotations sha256" in real.data
    assert any("first 5 samples" in s.data for s in measured)


def test_runs_of_one_model_on_several_tasks_merge_into_one_row(tmp_path: Path) -> None:
    write_run(tmp_path / "r", "rgpt", {"pope-random": pope(0.8), "pope-popular": pope(0.7)})
    write_run(tmp_path / "s", "rgpt", {"pope-adversarial": pope(0.6)})
    write_run(tmp_path / "t", "rgpt", {"pope-adversarial": pope(0.5)}, pretrained="/ckpt/other")
    built = table("pope", tmp_path)
    rows = built.sections[0].rows
    assert [(r.model, r.checkpoint) for r in rows] == [("rgpt", "default"), ("rgpt", "/ckpt/other")]
    merged = rows[0]
    assert merged.values["random F1"] == pytest.approx(80.0) and merged.values["adversarial F1"] == pytest.approx(60.0)
    assert merged.values["mean F1"] == pytest.approx(70.0)  # (80 + 70 + 60) / 3, derived without the group
    assert built.sections[0].rank_by == "mean F1"
    assert rows[1].rank is None  # no mean F1: listed after the ranked rows, unranked


def test_the_group_mean_f1_is_used_when_present(tmp_path: Path) -> None:
    write_run(tmp_path / "r", "m", {"pope-random": pope(0.8), "pope-popular": pope(0.7),
                                    "pope-adversarial": pope(0.6), "pope": {"mean_f1": 0.71}})
    assert table("pope", tmp_path).sections[0].rows[0].values["mean F1"] == pytest.approx(71.0)


def test_rec_val_and_test_come_from_their_run_names(tmp_path: Path) -> None:
    write_run(tmp_path / "val", "m", {"refcocog-rec": {"accuracy": 0.8}})
    write_run(tmp_path / "test", "m", {"refcocog-rec@test": {"accuracy": 0.7}})
    row = table("rec", tmp_path).sections[0].rows[0]
    assert (row.values["val"], row.values["test"]) == (pytest.approx(80.0), pytest.approx(70.0))


def test_reported_rows_are_marked_unranked_and_sourced(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "alpha", {"refcocog-cap": {"meteor": 0.3, "cider": 3.5}})
    built = table("captioning", tmp_path)
    assert built.sections[0].rows[0].values["RefCOCOg CIDEr"] == pytest.approx(350.0)  # CIDEr x100, as papers
    reported = built.sections[-1]
    assert reported.rank_by is None and all(r.reported and r.rank is None for r in reported.rows)
    rgpt = next(r for r in reported.rows if r.model == "RGPT")
    assert (rgpt.values["RefCOCOg METEOR"], rgpt.values["RefCOCOg CIDEr"], rgpt.values["VG CIDEr"]) == (
        16.9, 109.9, 145.6)
    assert all("RegionGPT paper" in r.source for r in reported.rows)


@pytest.mark.skipif(not SHARED_DOC.is_file(), reason=f"{SHARED_DOC} absent (the papers' facts live in ../shared)")
def test_every_reported_number_is_in_the_reference_document() -> None:
    """Each published value, as printed, appears in the document the rows were copied from."""
    text = SHARED_DOC.read_text()
    numbers = set(re.findall(r"\d+\.\d+", text))
    for row in REPORTED:
        for key, value in row.values.items():
            assert any(float(n) == value for n in numbers), (row.model, key, value)
    assert "GPT4RoI 64.01 acc" in text and any(r.model == "GPT4RoI" and r.values == {("coco-cls", "accuracy"): 64.01}
                                               for r in REPORTED)


def test_outputs_markdown_csv_and_a_self_contained_escaped_html(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "a", "<script>alert(1)</script>", {"coco-cls": {"accuracy": 0.5}})
    write_run(tmp_path / "runs" / "b", "beta", {"coco-cls": {"accuracy": 0.25}})
    written = write_leaderboards([tmp_path / "runs"], tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == sorted([f"{t.name}{s}" for t in TABLES for s in (".md", ".csv")] + ["index.html"])
    md = (tmp_path / "out" / "coco-cls.md").read_text()
    assert re.search(r"\|\s*1\s*\|\s*<script>alert\(1\)</script>\s*\|\s*default\s*\|\s*50\.00", md)
    assert "0.1.0 (abcdef0)" in md and "from 2 results.json" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "coco-cls.csv").read_text())))
    measured = [r for r in rows if r["kind"] == "measured"]
    assert [(r["model"], r["rank"], r["acc"]) for r in measured] == [
        ("<script>alert(1)</script>", "1", "50.0000"), ("beta", "2", "25.0000")]
    assert {r["kind"] for r in rows} == {"measured", "reported"}
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from the network
    assert page.count('class="sortable"') >= len(TABLES)
    # bar widths are proportional within a chart: 0.5 -> the full 10em, 0.25 -> 5em
    assert 'style="width:10.00em"' in page and 'style="width:5.00em"' in page


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    with pytest.raises(DataError, match="broken/results.json"):
        write_leaderboards([tmp_path / "broken"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results.json"):
        find_results([tmp_path / "empty"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"results": {}}')
    with pytest.raises(DataError, match="is it a results.json written by bench run"):
        read_run(tmp_path / "other" / "results.json")


def test_cli_on_real_runs_records_data_checksums(tmp_path: Path) -> None:
    """End to end: two bench runs, then bench leaderboard; results.json carries each annotation file's SHA-256."""
    import hashlib

    for model in ("random", "always-yes"):
        result = run_bench("run", "--model", model, "--task", "pope-adversarial", "--limit", "20", "--output",
                           str(tmp_path / model), "--no-progress")
        assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "random" / "results.json").read_text())["config"]
    entry = config["data_files"]["pope-adversarial"]["pope_questions"]
    assert entry["path"] == "pope/coco_pope_adversarial.json"
    assert entry["sha256"] == hashlib.sha256((Path(config["data_root"]) / entry["path"]).read_bytes()).hexdigest()
    result = run_bench("leaderboard", str(tmp_path / "random"), str(tmp_path / "always-yes"), "--out",
                       str(tmp_path / "lb"))
    assert result.returncode == 0, result.stderr
    rows = [r for r in csv.DictReader(io.StringIO((tmp_path / "lb" / "pope.csv").read_text()))
            if r["kind"] == "measured"]
    assert {r["model"] for r in rows} == {"random", "always-yes"} and len({r["data"] for r in rows}) == 1
    assert next(r for r in rows if r["model"] == "always-yes")["adversarial yes"] == "100.0000"
    bad = run_bench("leaderboard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "lb2"))
    assert bad.returncode == 2 and "nowhere: no such file or directory" in bad.stderr
