"""Visual Genome region loader: split-file forms, image sizes from headers, and errors naming file and id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench.data.vg import SKIP_EMPTY_PHRASE, SKIP_ZERO_AREA, load_vg_regions, read_split_ids
from bench.errors import ConfigError, DataError
from bench.registry import build_tasks
from tasks.captioning import VisualGenomeCaptioning


def region(region_id: int, image_id: int, phrase: str, x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {"region_id": region_id, "image_id": image_id, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}


def entries() -> list[dict[str, Any]]:
    """Three images (sizes in ``SIZES``); image 2 has a box partly outside, image 3 a duplicate box."""
    return [
        {"id": 1, "regions": [region(11, 1, "a red  square\n", 10, 10, 20, 20), region(12, 1, "sky", 0, 0, 100, 30)]},
        {"id": 2, "regions": [region(21, 2, "a tall tree", 30, 5, 50, 40)]},
        {"id": 3, "regions": [region(31, 3, "man on a bench", 1, 1, 10, 10),
                              region(32, 3, "bench under a man", 1, 1, 10, 10)]},
    ]


SIZES = {1: (100, 80), 2: (60, 40), 3: (50, 50)}


def write_vg(root: Path, data: list[dict[str, Any]] | None = None, *, image_data: bool = True,
             split: Any = None, split_name: str = "test") -> Path:
    (root / "vg" / "images").mkdir(parents=True, exist_ok=True)
    (root / "vg" / "region_descriptions.json").write_text(json.dumps(entries() if data is None else data))
    if image_data:
        records = [{"image_id": i, "width": w, "height": h, "url": None} for i, (w, h) in SIZES.items()]
        (root / "vg" / "image_data.json").write_text(json.dumps(records))
    if split is not None:
        (root / "vg" / f"{split_name}.json").write_text(json.dumps(split))
    return root


def load(root: Path, split: str | None = "test", image_data: bool = True):
    vg = root / "vg"
    return load_vg_regions(vg / "region_descriptions.json", vg / "images",
                           split_path=vg / f"{split}.json" if split else None,
                           image_data_path=vg / "image_data.json" if image_data else None)


def test_list_split_file_selects_images_clips_boxes_and_keeps_each_phrase(tmp_path: Path) -> None:
    data = load(write_vg(tmp_path, split=[3, 2]))
    # Images in region-file order; duplicate boxes stay separate regions with their own phrase (as GRiT).
    assert list(data.images) == [2, 3]
    assert [(r.region_id, r.phrase) for r in data.regions] == [
        (21, "a tall tree"), (31, "man on a bench"), (32, "bench under a man")]
    assert data.regions[0].region.box == (30.0, 5.0, 60.0, 40.0)  # x2 = 80 clipped to the 60 px width
    assert data.regions[0].region.mask is None
    assert data.images[2].key == "2.jpg" and data.images[2].path == (tmp_path / "vg/images/2.jpg").resolve()
    assert not data.skipped


def test_coco_style_split_file_gives_the_same_selection(tmp_path: Path) -> None:
    grit = {"images": [{"id": 2, "file_name": "2.jpg", "width": 60, "height": 40}, {"id": 3}],
            "annotations": [], "categories": []}
    from_coco = load(write_vg(tmp_path / "coco", split=grit))
    from_list = load(write_vg(tmp_path / "list", split=[2, 3]))
    assert [(r.region_id, r.phrase, r.region) for r in from_coco.regions] == \
           [(r.region_id, r.phrase, r.region) for r in from_list.regions]
    assert read_split_ids(tmp_path / "coco" / "vg" / "test.json") == [2, 3]


def test_no_split_file_means_every_image_and_whitespace_is_collapsed(tmp_path: Path) -> None:
    data = load(write_vg(tmp_path), split=None)
    assert list(data.images) == [1, 2, 3] and len(data.regions) == 5
    assert data.regions[0].phrase == "a red square"


def test_missing_image_data_reads_sizes_from_image_headers(tmp_path: Path) -> None:
    root = write_vg(tmp_path, split=[1, 2])
    Image.new("RGB", (40, 25)).save(root / "vg/images/1.png")  # smaller than image_data.json would say
    (root / "vg/images/VG_100K_2").mkdir()
    Image.new("RGB", (60, 40)).save(root / "vg/images/VG_100K_2/2.jpg")
    data = load(root, image_data=False)
    assert data.images[1].key == "1.png" and data.images[2].key == "VG_100K_2/2.jpg"
    boxes = {r.region_id: r.region.box for r in data.regions}
    assert boxes[11] == (10.0, 10.0, 30.0, 25.0)  # y2 = 30 clipped to the header's 25 px height
    assert boxes[12] == (0.0, 0.0, 40.0, 25.0)
    # image_data.json present but empty of these ids: an error, not a silent fallback.
    (root / "vg" / "image_data.json").write_text("[]")
    with pytest.raises(DataError, match=r"image_data\.json: image 1 has no size record"):
        load(root)


def test_missing_image_data_and_missing_image_is_an_error_naming_the_image(tmp_path: Path) -> None:
    root = write_vg(tmp_path, image_data=False, split=[2])
    with pytest.raises(DataError, match=r"region_descriptions\.json, image 2: no image_data\.json"):
        load(root, image_data=False)


def test_image_level_image_id_key_and_image_data_id_key_are_accepted(tmp_path: Path) -> None:
    data = [{"image_id": 2, "regions": [region(21, 2, "a tall tree", 30, 5, 10, 10)]}]
    root = write_vg(tmp_path, data, image_data=False, split=[2])
    (root / "vg" / "image_data.json").write_text(json.dumps([{"id": 2, "width": 60, "height": 40}]))
    assert [r.region_id for r in load(root).regions] == [21]


def test_zero_area_boxes_and_empty_phrases_are_skipped_and_counted(tmp_path: Path) -> None:
    data = entries()
    data[0]["regions"] += [region(13, 1, "nothing", 5, 5, 0, 10), region(14, 1, "  ", 5, 5, 10, 10),
                           region(15, 1, "a line", 5, 5, 10, -1)]
    loaded = load(write_vg(tmp_path, data, split=[1]))
    assert [r.region_id for r in loaded.regions] == [11, 12]
    assert loaded.skipped == {SKIP_ZERO_AREA: 2, SKIP_EMPTY_PHRASE: 1}


def test_region_entirely_outside_the_image_is_an_error(tmp_path: Path) -> None:
    data = entries()
    data[1]["regions"].append(region(22, 2, "far away", 70, 5, 10, 10))  # image 2 is 60 px wide
    with pytest.raises(DataError, match=r"region_descriptions\.json, image 2, region 22: .*no area inside the 60x40"):
        load(write_vg(tmp_path, data, split=[2]))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d[0]["regions"][1].update(region_id=11), r"image 1, region 11: region id appears twice"),
    (lambda d: d[2]["regions"][1].update(region_id=21), r"image 3, region 21: region id appears twice"),
    (lambda d: d.append({"id": 1, "regions": []}), r"image 1: the image appears twice"),
    (lambda d: d[0]["regions"][0].pop("phrase"), r"image 1, region 11: 'phrase' must be a string"),
    (lambda d: d[0]["regions"][0].pop("width"), r"image 1, region 11: 'width' must be a finite number"),
    (lambda d: d[0]["regions"][0].update(x=float("nan")), r"image 1, region 11: 'x' must be a finite number"),
    (lambda d: d[0]["regions"][1].pop("region_id"), r"image 1, regions\[1\]: missing field 'region_id'"),
    (lambda d: d[0]["regions"][0].update(image_id=2), r"image 1, region 11: the region says image_id 2"),
    (lambda d: d[1].pop("id"), r"entry 1: missing field 'id' \(or 'image_id'\)"),
    (lambda d: d[1].update(regions=None), r"image 2: 'regions' must be a list"),
])
def test_duplicate_and_missing_fields_name_the_file_and_the_id(tmp_path: Path, change: Any, message: str) -> None:
    data = entries()
    change(data)
    with pytest.raises(DataError, match=r"region_descriptions\.json, " + message):
        load(write_vg(tmp_path, data), split=None)


def test_split_file_errors_name_the_file_and_the_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"test\.json: image 9 is not in .*region_descriptions\.json"):
        load(write_vg(tmp_path / "a", split=[2, 9]))
    with pytest.raises(DataError, match=r"test\.json: image 2 is listed twice"):
        load(write_vg(tmp_path / "b", split={"images": [{"id": 2}, {"id": 2}]}))
    with pytest.raises(DataError, match=r"test\.json: a split file is a JSON list"):
        load(write_vg(tmp_path / "c", split={"ids": [2]}))
    with pytest.raises(DataError, match=r"test\.json, item 0: image id must be an integer"):
        load(write_vg(tmp_path / "d", split=["2"]))


def test_image_path_escape_is_refused(tmp_path: Path) -> None:
    # Image file names are built from the image id, so a traversal can only come from a non-integer id.
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (60, 40)).save(outside)
    data = [{"id": "../../../secret", "regions": [region(1, 1, "x", 0, 0, 5, 5)]}]
    with pytest.raises(DataError, match=r"region_descriptions\.json, entry 0: 'id' must be an integer"):
        load(write_vg(tmp_path / "root", data), split=None)


def test_task_warns_without_split_file_and_subsamples_deterministically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_vg(tmp_path)
    samples = VisualGenomeCaptioning(root).load_samples()
    assert "no split file" in capsys.readouterr().err
    assert [s.id for s in samples] == ["11", "12", "21", "31", "32"]
    first = samples[0]
    assert first.target == ["a red square"] and first.gold_answer == "a red square"
    assert first.prompt == "Give a short description of <region1>."
    assert first.metadata == {"region_id": 11, "image_id": 1}
    (task,) = build_tasks(["vg-cap"], root, None, {"max_regions_per_image": "1"})
    kept = [s.id for s in task.load_samples()]
    assert len(kept) == 3 and kept == [s.id for s in task.load_samples()]
    assert {s.metadata["image_id"] for s in samples if s.id in kept} == {1, 2, 3}
    with pytest.raises(ConfigError, match="max_regions_per_image"):
        VisualGenomeCaptioning(root, max_regions_per_image=0)


def test_task_reports_skipped_regions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = entries()
    data[0]["regions"].append(region(13, 1, "nothing", 5, 5, 0, 10))
    root = write_vg(tmp_path, data, split=[1], split_name="val")
    samples = VisualGenomeCaptioning(root, split="val").load_samples()
    assert [s.id for s in samples] == ["11", "12"]
    err = capsys.readouterr().err
    assert "skipped 1 region(s) (1 with zero-area box)" in err and "no split file" not in err
