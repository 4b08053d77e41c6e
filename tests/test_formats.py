"""Round trips through every label format adapter: save -> load gives the records back
(in the style of labelformat's round-trip tests), plus the registry's contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.formats import FORMATS, LabelledImage, get_format, load, save


def _records() -> list[LabelledImage]:
    return [
        LabelledImage(image="images/a.png", width=64, height=48,
                      boxes=[[1.5, 2.25, 30.0, 12.75], [10, 20, 60, 47]], ignore=[False, True]),
        LabelledImage(image="images/b.png", width=40, height=40, boxes=np.zeros((0, 4))),   # verified empty
        LabelledImage(image="images/c.png", width=32, height=80, boxes=[[0, 0, 32, 80], [4, 4, 8, 9]],
                      labels=(0, 1)),
        LabelledImage(image="images/d.png", width=64, height=64, boxes=[[4, 10, 40, 30], [50, 2, 60, 8]],
                      polys=((4.5, 20.0, 38.0, 10.0, 40.0, 19.5, 6.0, 30.0), ())),   # a tilted quad, a plain box
    ]


def _write_images(root, records) -> None:
    for r in records:
        p = root / r.image
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (r.width, r.height), "white").save(p)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_save_then_load_gives_the_records_back(tmp_path, name):
    records = _records()
    _write_images(tmp_path, records)
    target = save(name, records, tmp_path, classes=("text", "stamp"))
    assert target.exists()
    back = sorted(load(name, target), key=lambda r: r.image)
    assert [(r.image, r.width, r.height) for r in back] == [(r.image, r.width, r.height) for r in records]
    for got, want in zip(back, records):
        if name == "yolo":   # YOLO has no don't-care flag (such boxes are left out), nor polygons
            np.testing.assert_allclose(got.boxes, want.boxes[~want.ignore], atol=1e-3)
            assert got.class_ids() == [c for c, i in zip(want.class_ids(), want.ignore) if not i]
            continue
        np.testing.assert_allclose(got.boxes, want.boxes, atol=0.006)
        assert got.class_ids() == want.class_ids()
        assert got.ignore.tolist() == want.ignore.tolist()
        assert got.polys == want.polys


def test_yolo_load_passes_over_hidden_files_in_images(tmp_path):
    """A file manager's `.DS_Store` (or a killed copy's temp file) in `images/` is no image: the
    reader leaves it out instead of failing to open it."""
    records = _records()
    _write_images(tmp_path, records)
    target = save("yolo", records, tmp_path)
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "images" / ".a.png.1234.tmp").write_bytes(b"partial")
    assert sorted(r.image for r in load("yolo", target)) == sorted(r.image for r in records)


def test_split_every_holds_out_every_kth_image_of_each_source_and_halves_alternate():
    """The benchmarks' fixed splits: per source by name, disjoint, nothing lost; a source of one
    image stays on the training side; `split_halves` is the k = 2 case."""
    from pipeline.formats import split_every, split_halves

    recs = [(Path(f"{src}/{i}.jpg"), LabelledImage(f"{i:02d}.jpg", 10, 10, source=src))
            for src, n in (("icdar2015", 20), ("sroie", 6), ("negatives", 1)) for i in range(n)]
    for every, n_val in ((4, {"icdar2015": 5, "sroie": 1}), (2, {"icdar2015": 10, "sroie": 3})):
        rest, picked = split_every(recs[::-1], every)
        assert sorted(str(p) for p, _ in rest + picked) == sorted(str(p) for p, _ in recs)
        assert not {p for p, _ in rest} & {p for p, _ in picked}
        assert {s: sum(r.source == s for _, r in picked) for s in ("icdar2015", "sroie", "negatives")} == \
            {**n_val, "negatives": 0}
    first, second = split_halves(recs)
    assert [r.image for _, r in second if r.source == "sroie"] == ["01.jpg", "03.jpg", "05.jpg"]
    assert (first, second) == split_every(recs, 2)
    with pytest.raises(ValueError):
        split_every(recs, 1)


def test_coco_document_follows_coco_conventions(tmp_path):
    target = get_format("coco").save(_records(), tmp_path)
    doc = json.loads(target.read_text())
    assert [c["id"] for c in doc["categories"]] == [1]
    first = doc["annotations"][0]
    assert first["bbox"] == [1.5, 2.25, 28.5, 10.5] and first["category_id"] == 1 and first["iscrowd"] == 0
    assert doc["annotations"][1]["iscrowd"] == 1
    assert [a["category_id"] for a in doc["annotations"][2:4]] == [1, 2]
    tilted, plain = doc["annotations"][4:]
    assert tilted["segmentation"] == [[4.5, 20.0, 38.0, 10.0, 40.0, 19.5, 6.0, 30.0]] and "segmentation" not in plain


def test_coco_load_keeps_only_named_categories(tmp_path):
    records = _records()
    target = save("coco", records, tmp_path, classes=("text", "stamp"))
    back = load("coco", target, categories=("stamp",))
    # images holding only other categories are left out, not read as images without text
    assert [(r.image, len(r.boxes)) for r in back] == [("images/b.png", 0), ("images/c.png", 1)]


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="jsonl, coco, yolo"):
        get_format("voc")


@pytest.mark.parametrize("boxes, message", [
    ([[1, 2, 3]], "box 0 has 3 numbers, expected 4"),
    ([[0, 0, 5, 5], [1, 2, 3, [4]]], "box 1 holds something that is not a number"),
    ([[0, 0, 5, 5], [[1, 2, 3, 4], [1, 2, 3]]], "box 1 has 2 numbers, expected 4"),
    ("0 0 5 5", "'boxes' must be a list of [x0, y0, x1, y1], got str"),
    ([[True, True, 5, 5]], "box 0 holds something that is not a number"),   # float(True) was 1.0
])
def test_read_jsonl_names_the_line_and_the_bad_box(tmp_path, boxes, message):
    """Not numpy's "setting an array element with a sequence": the file, line and box at fault."""
    path = tmp_path / "boxes.jsonl"
    good = {"image": "a.png", "width": 10, "height": 10, "boxes": [[0, 0, 5, 5]]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "boxes": boxes}) + "\n")
    with pytest.raises(ValueError) as err:
        load("jsonl", path)
    assert str(err.value).startswith(f"{path}:2: {message}")


def test_coco_load_can_skip_a_malformed_annotation(tmp_path):
    """With a `problems` list, a bad bbox is one line there and the rest of the file loads;
    without it, the file is refused as before."""
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 7, "image_id": 1, "bbox": [1, 2, 3]}, {"id": 8, "image_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "text"}]}))
    problems: list[str] = []
    recs = get_format("coco").load(path, problems=problems)
    assert [r.image for r in recs] == ["a.png"] and recs[0].boxes.tolist() == [[1, 1, 5, 5]]
    assert problems == [f"{path}: annotation 7 (a.png): bbox must be [x, y, w, h], got [1, 2, 3]",
                        f"{path}: images[1] lacks file_name, width or height"]  # the JSON path (jq .images[1]), 0-based
    with pytest.raises(ValueError, match="annotation 7 "):
        load("coco", path)


def test_a_label_studio_json_export_is_named_as_such_not_just_not_coco(tmp_path):
    """A user's first try is Label Studio's own JSON export; the error said only "not COCO JSON"."""
    path = tmp_path / "project-1-at-2026.json"
    path.write_text(json.dumps([{"id": 1, "data": {"image": "/data/upload/1/ab12-a.png"},
                                 "annotations": [{"result": []}]}]))
    with pytest.raises(ValueError) as err:
        load("coco", path)
    assert str(err.value).startswith(f"{path}: a Label Studio JSON export") and "export the project as COCO" in str(err.value)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="not COCO JSON"):
        load("coco", path)


def test_coco_images_that_share_an_id_are_skipped_not_given_each_others_boxes(tmp_path):
    """One annotation of image id 1 became a box on both images that had id 1, silently."""
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20},
                   {"id": 1, "file_name": "b.png", "width": 20, "height": 20},
                   {"id": 2, "file_name": "c.png", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 4, 4]}, {"id": 2, "image_id": 2, "bbox": [2, 2, 4, 4]}],
        "categories": [{"id": 1, "name": "text"}]}))
    problems: list[str] = []
    recs = get_format("coco").load(path, problems=problems)
    assert [(r.image, r.boxes.tolist()) for r in recs] == [("c.png", [[2, 2, 6, 6]])]
    assert problems == [f"{path}: image id 1 is given to 2 images (a.png, b.png): their annotations cannot be "
                        "told apart; skipped"]
    with pytest.raises(ValueError, match="image id 1 is given to 2 images"):
        load("coco", path)


@pytest.mark.parametrize("polys, message", [
    ([[40, 40, 100, 40, 100, 80]], "poly 0 is not a polygon of at least 4 finite points"),
    ([[1, 1, 9, 1, 9, 9, 1]], "poly 0 is not a polygon of at least 4 finite points"),
    ([[1, 1, 9, 1, 9, 9, 1, True]], "poly 0 is not a list of numbers"),
    ([[1, 1, 9, 1, 9, "x", 1, 9]], "poly 0 holds something that is not a number"),
])
def test_a_polygon_of_fewer_than_4_points_is_a_bad_record(tmp_path, polys, message):
    """A 3-point `polys` entry was stored as its minimum-area rectangle, reaching outside its box
    (y 12 for a box from y 40), and training took that as text."""
    path = tmp_path / "boxes.jsonl"
    good = {"image": "a.png", "width": 120, "height": 100, "boxes": [[40, 40, 100, 80]]}
    path.write_text(json.dumps({**good, "polys": [[40, 40, 100, 40, 100, 80, 40, 80]]}) + "\n"
                    + json.dumps({**good, "polys": polys}) + "\n" + json.dumps({**good, "polys": [[]]}) + "\n")
    with pytest.raises(ValueError) as err:
        load("jsonl", path)
    assert f"{path}:2:" in str(err.value) and message in str(err.value), str(err.value)
