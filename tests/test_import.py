"""`import`: devset JSONL and COCO labels become annotations on harvested images, idempotently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.formats import LabelledImage, write_jsonl
from pipeline.importer import import_labels
from pipeline.imaging import load_rgb
from tests.imagegen import noise_image, rotated_jpeg


def snapshot(ws) -> tuple[list, list]:
    with ws.catalog() as cat:
        return (cat.query("SELECT id, status FROM images ORDER BY id"),
                cat.query("SELECT * FROM annotations ORDER BY image_id, source"))


def annotations_by_name(ws) -> dict[str, dict]:
    with ws.catalog() as cat:
        rows = cat.query("SELECT i.original_name, i.status, a.* FROM annotations a JOIN images i ON i.id = a.image_id")
    return {r["original_name"]: r for r in rows}


def make_devset(root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        noise_image(i, (64, 48)).save(root / "images" / f"im{i}.png")
    recs = [
        LabelledImage("images/im0.png", 64, 48, boxes=[[2, 3, 20, 10], [30, 30, 70, 40]]),  # 2nd runs off the image
        LabelledImage("images/im1.png", 64, 48, boxes=[[5, 5, 15, 15], [40, 5, 60, 15]], ignore=[False, True]),
        LabelledImage("images/im2.png", 64, 48),  # labelled: no text
        LabelledImage("images/missing.png", 64, 48, boxes=[[1, 1, 5, 5]]),
    ]
    write_jsonl(root / "boxes.jsonl", recs)
    return root / "boxes.jsonl"


def test_a_dangling_link_is_named_as_the_label_file_names_it(ws, tmp_path: Path) -> None:
    """A label file's image that is a link to a missing file: the problem names the link (the
    name the user wrote) and says it dangles; it named the missing target as `not_found`. A link
    to a present image still imports as that image."""
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    noise_image(0, (64, 48)).save(root / "images" / "a.png")
    (root / "images" / "b.png").symlink_to(root / "images" / "gone.png")
    (root / "images" / "c.png").symlink_to(root / "images" / "a.png")
    write_jsonl(root / "boxes.jsonl", [LabelledImage("images/b.png", 64, 48, boxes=[[1, 1, 5, 5]]),
                                       LabelledImage("images/c.png", 64, 48, boxes=[[2, 2, 9, 9]])])
    s = import_labels(ws, [root / "boxes.jsonl"])
    assert s.with_boxes == 1 and len(s.problems) == 1, s.problems
    assert s.problems[0].startswith(f"{root / 'images' / 'b.png'}: dangling_symlink")


def test_an_image_listed_twice_names_the_record_dropped(ws, tmp_path: Path) -> None:
    """The problem named the line that is used; it names the dropped one and where the used one
    is. Two names with the same bytes are one image: it named the dropped line with the other's name."""
    root = tmp_path / "set"
    root.mkdir()
    noise_image(0, (64, 48)).save(root / "a.png")
    noise_image(0, (64, 48)).save(root / "copy.png")
    for file, second, what in (("twice.jsonl", "a.png", "is listed again"),
                               ("same.jsonl", "copy.png", "is the same image as copy.png")):
        write_jsonl(root / file, [LabelledImage("a.png", 64, 48, boxes=[[1, 1, 5, 5]]),
                                  LabelledImage(second, 64, 48, boxes=[[2, 2, 9, 9]])])
        s = import_labels(ws, [root / file])
        assert s.problems == [f"{root / file}:1: a.png {what} ({root / file}:2); "
                              "this record is dropped, the last one is used"]
    assert json.loads(annotations_by_name(ws)["a.png"]["boxes"]) == [[2, 2, 9, 9]]


def test_a_size_written_as_a_string_is_a_line_problem(tmp_path: Path) -> None:
    """`"width": "160"` was accepted, though sizes must be whole numbers (`true` was refused)."""
    from pipeline.formats.devset import read_jsonl_lines

    line = {**LabelledImage("a.png", 64, 48).to_json(), "width": "64"}
    (tmp_path / "boxes.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "width": 64.0}) + "\n")
    good, bad = read_jsonl_lines(tmp_path / "boxes.jsonl")
    assert [n for n, _ in good] == [2] and len(bad) == 1 and "'width' must be a positive whole number, got '64'" in bad[0]


def test_devset_jsonl_import_is_idempotent(ws, tmp_path: Path) -> None:
    labels = make_devset(tmp_path / "set")
    s = import_labels(ws, [labels])
    assert (s.records, s.images, s.with_boxes, s.empty, s.inserted) == (4, 3, 2, 1, 3)
    assert s.boxes == 3 and s.ignored_boxes == 1
    assert len(s.problems) == 2 and "missing.png" in s.problems[0] and "not_found" in s.problems[0]
    assert s.problems[1].endswith("boxes.jsonl:1: images/im0.png: box 1 [30, 30, 70, 40] is over the edge "
                                  "of the 64x48 image: clipped to it")
    by = annotations_by_name(ws)
    assert by["im0.png"]["source"] == "import:set/boxes.jsonl" and by["im0.png"]["state"] == "submitted"
    assert json.loads(by["im0.png"]["boxes"]) == [[2, 3, 20, 10], [30, 30, 64, 40]]  # clipped to the image
    assert json.loads(by["im1.png"]["ignore"]) == [False, True]
    assert by["im2.png"]["state"] == "empty" and json.loads(by["im2.png"]["boxes"]) == []
    assert by["im0.png"]["status"] == "labelled" and by["im2.png"]["status"] == "verified_empty"
    before = snapshot(ws)
    s2 = import_labels(ws, [labels])
    assert s2.unchanged == 3 and s2.inserted == s2.updated == 0
    assert snapshot(ws) == before  # rerun: same catalog
    # labels `curate --apply` sent back for review stay there when the same file is imported
    # again (a rerun put them back to labelled / verified_empty, and training used them)
    with ws.catalog() as cat:
        for name in ("im0.png", "im2.png"):
            cat.set_status(by[name]["image_id"], "needs_review")
    import_labels(ws, [labels])
    assert {n: r["status"] for n, r in annotations_by_name(ws).items()} == {
        "im0.png": "needs_review", "im1.png": "labelled", "im2.png": "needs_review"}
    # an edited label file updates the rows in place (and settles the review of what it changed)
    recs = [LabelledImage("images/im2.png", 64, 48, boxes=[[1, 1, 9, 9]])]
    write_jsonl(labels, recs)
    s3 = import_labels(ws, [labels])
    assert s3.updated == 1
    by = annotations_by_name(ws)
    assert by["im2.png"]["state"] == "submitted" and by["im2.png"]["status"] == "labelled"
    assert len(snapshot(ws)[1]) == 3


def test_coco_import_with_crowd_and_exif_frames(ws, tmp_path: Path) -> None:
    d = tmp_path / "coco"
    rotated_jpeg(d / "images" / "rot_raw.jpg", 6)
    rotated_jpeg(d / "images" / "rot_up.jpg", 8)
    noise_image(7, (50, 30)).save(d / "images" / "plain.png")
    up_box = [3, 40, 10, 55]  # where the block is after exif_transpose for orientation 8 (x, y, x1, y1)
    coco = {
        "images": [
            {"id": 1, "file_name": "rot_raw.jpg", "width": 60, "height": 40},   # raw frame (stored pixels)
            {"id": 2, "file_name": "rot_up.jpg", "width": 40, "height": 60},    # upright frame
            {"id": 3, "file_name": "plain.png", "width": 50, "height": 30},
            {"id": 4, "file_name": "wrong_size.png", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [5, 3, 15, 7], "category_id": 1},
            {"id": 2, "image_id": 2, "bbox": [up_box[0], up_box[1], 7, 15], "category_id": 1},
            {"id": 3, "image_id": 3, "bbox": [1, 2, 10, 5], "category_id": 1},
            {"id": 4, "image_id": 3, "bbox": [20, 2, 10, 5], "category_id": 1, "iscrowd": 1},
            {"id": 5, "image_id": 3, "bbox": [0, 20, 5, 5], "category_id": 2},
        ],
        "categories": [{"id": 1, "name": "text"}, {"id": 2, "name": "logo"}],
    }
    noise_image(8, (20, 20)).save(d / "images" / "wrong_size.png")
    ann = d / "annotations" / "instances.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(coco))
    s = import_labels(ws, [ann], categories=["text"])  # images found in the sibling ../images/
    assert s.images == 3 and s.rotated == 1
    assert len(s.problems) == 1 and "wrong_size.png" in s.problems[0] and "10x10" in s.problems[0]
    assert "added without these labels" in s.problems[0] and s.problems[0].startswith(str(ann))   # the label file first
    by = annotations_by_name(ws)
    assert by["plain.png"]["source"] == "import:annotations/instances.json"
    assert json.loads(by["plain.png"]["boxes"]) == [[1, 2, 11, 7], [20, 2, 30, 7]]  # xywh -> xyxy, logo dropped
    assert json.loads(by["plain.png"]["ignore"]) == [False, True]                 # iscrowd = don't care
    # both rotated images end up with the box over the block as the detectors see it (upright)
    with ws.catalog() as cat:
        paths = {r["original_name"]: r["path"] for r in cat.query("SELECT original_name, path FROM images")}
    for name in ("rot_raw.jpg", "rot_up.jpg"):
        x0, y0, x1, y1 = (int(round(v)) for v in json.loads(by[name]["boxes"])[0])
        up = load_rgb(ws.abspath(paths[name]))
        ys, xs = np.nonzero(up[..., 0] > 128)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), name


def test_cli_import_json(tmp_path: Path) -> None:
    labels = make_devset(tmp_path / "set")
    runner = CliRunner()
    r = runner.invoke(app, ["-w", str(tmp_path / "ws"), "--json", "import", str(tmp_path / "set")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["images"] == 3 and out["inserted"] == 3 and len(out["problems"]) == 2  # missing.png, a clipped box
    r = runner.invoke(app, ["-w", str(tmp_path / "ws"), "import", str(labels.with_suffix(".csv"))])
    assert r.exit_code == 2 and "no such label file" in r.output
    # a mistyped path into a new workspace: one line, and no empty workspace left behind
    r = runner.invoke(app, ["-w", str(tmp_path / "new"), "import", str(tmp_path / "nothere.jsonl")])
    assert r.exit_code == 2 and "nothere.jsonl: no such label file" in r.output
    assert not (tmp_path / "new").exists()


def test_devset_polygons_become_quads_that_training_reads_upright(ws, tmp_path: Path) -> None:
    """ICDAR/MSRA-style `polys` reach the catalog as quads (raw-frame ones turned upright with
    the image), so `train` shrinks the text's real shape and push shows it rotated; an
    earlier import without quads is updated in place, a rerun changes nothing."""
    from pipeline.boxes import quad_frames
    from pipeline.evaluate import workspace_ground_truth

    d = tmp_path / "set"
    rotated_jpeg(d / "images" / "rot.jpg", 6)              # stored 60x40, shown 40x60
    noise_image(3, (64, 48)).save(d / "images" / "plain.png")
    tilt = [6, 3, 20, 5, 19, 10, 5, 8]                      # a tilted quad on the stored pixels
    curved = [30, 10, 40, 8, 50, 10, 50, 16, 40, 14, 30, 16]
    recs = [LabelledImage("images/rot.jpg", 60, 40, boxes=[[5, 3, 20, 10]], polys=(tuple(tilt),)),
            LabelledImage("images/plain.png", 64, 48, boxes=[[30, 8, 50, 16], [2, 2, 12, 8]],
                          polys=(tuple(curved), ()))]
    write_jsonl(d / "boxes.jsonl", recs)
    s = import_labels(ws, [d / "boxes.jsonl"])
    assert s.images == 2 and s.rotated == 1
    gt = {Path(r.image).suffix: r for _, r in workspace_ground_truth(ws, None)}
    # the tilted quad, turned with the picture (orientation 6: raw (x, y) -> (h - y, x)), still
    # lies inside the upright box of the same label
    rot = np.asarray(gt[".jpg"].polys[0]).reshape(4, 2)
    np.testing.assert_allclose(rot, [[40 - y, x] for x, y in np.asarray(tilt).reshape(4, 2)])
    bx0, by0, bx1, by1 = gt[".jpg"].boxes[0]
    assert (rot[:, 0] >= bx0).all() and (rot[:, 0] <= bx1).all() and (rot[:, 1] >= by0).all() and (rot[:, 1] <= by1).all()
    # a longer polygon becomes its minimum-area rectangle (it holds every point); no polygon: the box
    plain = gt[".png"]
    u, v, eu, ev = quad_frames(np.asarray(plain.polys[0]).reshape(1, 4, 2))
    pts = np.asarray(curved, float).reshape(-1, 2)
    assert (pts @ u[0] >= eu[0, 0] - 1e-3).all() and (pts @ u[0] <= eu[0, 1] + 1e-3).all()
    assert (pts @ v[0] >= ev[0, 0] - 1e-3).all() and (pts @ v[0] <= ev[0, 1] + 1e-3).all()
    np.testing.assert_allclose(np.asarray(plain.polys[1]).reshape(4, 2), [[2, 2], [12, 2], [12, 8], [2, 8]])
    before = snapshot(ws)
    assert import_labels(ws, [d / "boxes.jsonl"]).unchanged == 2 and snapshot(ws) == before
    with ws.catalog() as cat:   # a row imported before quads were kept
        cat.query("UPDATE annotations SET quads = NULL")
    assert import_labels(ws, [d / "boxes.jsonl"]).updated == 2
    assert [r["quads"] for r in snapshot(ws)[1]] == [r["quads"] for r in before[1]]
    # and they leave the workspace again with `export` (rounded to 0.01 px like every box)
    from pipeline.formats import load
    from pipeline.studio.export import export

    want = sorted(tuple(round(v, 2) for v in p) for r in gt.values() for p in r.polys)
    for fmt in ("jsonl", "coco"):
        out = export(ws, tmp_path / f"export_{fmt}", fmt)
        got = sorted(tuple(round(v, 2) for v in p) for r in load(fmt, out.out) for p in r.polys)
        assert got == want, fmt


def test_a_folder_without_label_files_is_one_clear_error(ws, tmp_path: Path) -> None:
    """`import FOLDER` reads FOLDER/boxes.jsonl or FOLDER/<source>/boxes.jsonl; a folder with
    neither stops with one line naming it, and nothing is imported."""
    empty = tmp_path / "labels"
    (empty / "sub").mkdir(parents=True)
    before = snapshot(ws)
    res = CliRunner().invoke(app, ["-w", str(ws.root), "import", str(empty)])
    assert res.exit_code != 0
    assert f"{empty}: no boxes.jsonl in this folder or its sub-folders" in res.output
    assert "Traceback" not in res.output
    assert snapshot(ws) == before


def one_image_labels(folder: Path, image: Path, *lines: object) -> Path:
    """`folder/boxes.jsonl` with one line per item (dicts as JSON, strings as written), all
    about the 100x80 `image`."""
    folder.mkdir(parents=True, exist_ok=True)
    rel = Path("..") / image.name if image.parent == folder.parent else image
    text = "".join((json.dumps({"image": str(rel), "width": 100, "height": 80, "boxes": x})
                    if isinstance(x, list) else str(x)) + "\n" for x in lines)
    (folder / "boxes.jsonl").write_text(text)
    return folder / "boxes.jsonl"


def test_two_label_files_of_one_image_keep_their_own_annotations(ws, tmp_path: Path) -> None:
    """`lab/boxes.jsonl` and `bad/boxes.jsonl` both label img.png: each file has its own
    annotation (the second no longer replaces the first's boxes), a rerun of either updates only
    its own, and a devset root finds the same keys as naming its files one by one."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    lab = one_image_labels(tmp_path / "lab", tmp_path / "img.png", [[1, 1, 20, 20]])
    bad = one_image_labels(tmp_path / "bad", tmp_path / "img.png", [[30, 30, 60, 60]])
    assert import_labels(ws, [lab]).inserted == 1
    s = import_labels(ws, [bad])
    assert (s.inserted, s.updated) == (1, 0)
    rows = {r["source"]: json.loads(r["boxes"]) for r in snapshot(ws)[1]}
    assert rows == {"import:lab/boxes.jsonl": [[1, 1, 20, 20]], "import:bad/boxes.jsonl": [[30, 30, 60, 60]]}
    one_image_labels(tmp_path / "lab", tmp_path / "img.png", [[2, 2, 20, 20]])   # edit lab's file
    s = import_labels(ws, [lab])
    assert (s.inserted, s.updated, s.unchanged) == (0, 1, 0)
    rows = {r["source"]: json.loads(r["boxes"]) for r in snapshot(ws)[1]}
    assert rows == {"import:lab/boxes.jsonl": [[2, 2, 20, 20]], "import:bad/boxes.jsonl": [[30, 30, 60, 60]]}
    s = import_labels(ws, [tmp_path])   # the root: <source>/boxes.jsonl, the same keys
    assert (s.inserted, s.updated, s.unchanged) == (0, 0, 2)
    # two files that would share a key in one run: the second is reported and skipped, not merged
    other = one_image_labels(tmp_path / "elsewhere" / "lab", tmp_path / "img.png", [[5, 5, 9, 9]])
    s = import_labels(ws, [lab, other])
    assert s.unchanged == 1 and s.updated == 0 and len(s.problems) == 1
    assert s.problems[0].startswith(f"{other}: same annotation source import:lab/boxes.jsonl as {lab}")


def test_bad_boxes_are_reported_not_silently_changed(ws, tmp_path: Path) -> None:
    """A box running off the image is kept, clipped, and said so; an inverted one and one wholly
    outside are dropped and said so: each a problem naming the file, line, image and box."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    labels = one_image_labels(tmp_path / "bad", tmp_path / "img.png",
                              [[-50, -50, 2000, 2000], [10, 10, 5, 5], [1, 1, 9, 9], [200, 10, 220, 20]])
    s = import_labels(ws, [labels])
    assert s.images == 1 and s.boxes == 2
    assert sorted(s.problems) == sorted([
        f"{labels}:1: ../img.png: box 1 [10, 10, 5, 5] is empty or inverted (x1 <= x0 or y1 <= y0): dropped",
        f"{labels}:1: ../img.png: box 3 [200, 10, 220, 20] is outside the 100x80 image: dropped",
        f"{labels}:1: ../img.png: box 0 [-50, -50, 2000, 2000] is over the edge of the 100x80 image: clipped to it",
    ])
    assert json.loads(snapshot(ws)[1][0]["boxes"]) == [[0, 0, 100, 80], [1, 1, 9, 9]]


def test_a_malformed_record_is_skipped_and_the_rest_imported(tmp_path: Path) -> None:
    """A box with 3 numbers (or a line that is not JSON) is one problem line naming file:line;
    the other records import and the exit is 0. Only bad records: nothing imported, exit 1. A
    file that is not JSONL at all stops the command with one line naming it."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    noise_image(2, (100, 80)).save(tmp_path / "img2.png")
    labels = one_image_labels(tmp_path / "bad", tmp_path / "img.png", [[1, 2, 3]], "{not json",
                              json.dumps({"image": "../img2.png", "width": 100, "height": 80,
                                          "boxes": [[1, 1, 9, 9]]}))
    runner, ws = CliRunner(), str(tmp_path / "ws")
    r = runner.invoke(app, ["-w", ws, "--json", "import", str(labels)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["records"], out["images"], out["inserted"]) == (3, 1, 1)
    assert out["problems"] == [f"{labels}:1: box 0 has 3 numbers, expected 4 (x0, y0, x1, y1)",
                               f"{labels}:2: not valid JSON (Expecting property name enclosed in double quotes "
                               f"at column 2)"]
    only_bad = one_image_labels(tmp_path / "worse", tmp_path / "img.png", [[1, 2, 3]], [[1, [2], 3, 4]])
    r = runner.invoke(app, ["-w", ws, "--json", "import", str(only_bad)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert json.loads(r.stdout)["problems"][1] == \
        f"{only_bad}:2: box 0 holds something that is not a number: [1, [2], 3, 4]"
    not_jsonl = tmp_path / "coco_like.jsonl"
    not_jsonl.write_text('{\n  "images": []\n}\n')
    r = runner.invoke(app, ["-w", ws, "import", str(not_jsonl)])
    assert r.exit_code == 2 and f"{not_jsonl}: not a devset JSONL file" in r.output and "Traceback" not in r.output


def test_labels_stored_under_the_old_file_name_key_are_updated_not_duplicated(ws, tmp_path: Path) -> None:
    """Imports before keys named the folder stored `import:boxes.jsonl`: re-importing that file
    takes the old row over (its boxes updated), so an image does not carry two copies."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    lab = one_image_labels(tmp_path / "lab", tmp_path / "img.png", [[1, 1, 20, 20]])
    import_labels(ws, [lab])
    with ws.catalog() as cat, cat.transaction() as tx:   # as an older textloop stored it
        tx.execute("UPDATE annotations SET source = 'import:boxes.jsonl'")
    one_image_labels(tmp_path / "lab", tmp_path / "img.png", [[3, 3, 20, 20]])
    s = import_labels(ws, [lab])
    assert (s.inserted, s.updated) == (0, 1)
    rows = {r["source"]: json.loads(r["boxes"]) for r in snapshot(ws)[1]}
    assert rows == {"import:lab/boxes.jsonl": [[3, 3, 20, 20]]}


def test_status_follows_what_the_label_files_now_say(ws, tmp_path: Path) -> None:
    """A file edited to say "no text" makes its image verified_empty (it stayed `labelled`),
    unless another label file gives it boxes; labels of an image curate excluded are stored and
    said to be unused; a `polys` list of the wrong length is a bad record, not silently dropped."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    lab = one_image_labels(tmp_path / "lab", tmp_path / "img.png", [[1, 1, 20, 20]])
    import_labels(ws, [lab])
    status = lambda: annotations_by_name(ws)["img.png"]["status"]  # noqa: E731
    assert status() == "labelled"
    one_image_labels(tmp_path / "lab", tmp_path / "img.png", [])
    assert import_labels(ws, [lab]).updated == 1 and status() == "verified_empty"
    other = one_image_labels(tmp_path / "other", tmp_path / "img.png", [[5, 5, 30, 30]])
    import_labels(ws, [other])
    assert import_labels(ws, [lab]).unchanged == 1 and status() == "labelled"   # other's boxes stay visible
    with ws.catalog() as cat:
        cat.set_status(next(iter(r["id"] for r in cat.images())), "excluded")
    one_image_labels(tmp_path / "lab", tmp_path / "img.png", [[2, 2, 20, 20]])
    s = import_labels(ws, [lab])
    assert s.excluded == 1 and status() == "excluded"
    assert any("1 of these images are excluded" in p for p in s.problems)
    bad = one_image_labels(tmp_path / "polys", tmp_path / "img.png",
                           json.dumps({"image": "../img.png", "width": 100, "height": 80, "boxes": [[1, 1, 9, 9], [20, 20, 30, 30]],
                                       "polys": [[1, 1, 9, 1, 9, 9, 1, 9]]}))
    s = import_labels(ws, [bad])
    assert s.inserted == 0 and any("2 boxes but 1 polys" in p for p in s.problems), s.problems


def test_an_ambiguous_exif_frame_is_said_not_guessed_silently(ws, tmp_path: Path) -> None:
    """Orientation 3 (upside down) keeps the size in both frames: import takes the labels as
    upright and says so, naming --frame raw; --frame raw turns them."""
    rotated_jpeg(tmp_path / "flip.jpg", 3)
    (tmp_path / "set").mkdir()
    write_jsonl(tmp_path / "set" / "boxes.jsonl", [LabelledImage("../flip.jpg", 60, 40, boxes=[[5, 3, 20, 10]])])
    s = import_labels(ws, [tmp_path / "set" / "boxes.jsonl"])
    assert any("EXIF orientation 3" in p and "--frame raw" in p for p in s.problems), s.problems
    assert json.loads(annotations_by_name(ws)["flip.jpg"]["boxes"]) == [[5, 3, 20, 10]]
    s = import_labels(ws, [tmp_path / "set" / "boxes.jsonl"], frame="raw")
    assert s.rotated == 1 and not s.problems
    assert json.loads(annotations_by_name(ws)["flip.jpg"]["boxes"]) == [[40, 30, 55, 37]]


def test_importing_an_export_back_adds_no_second_copy_of_rotated_images(ws, tmp_path: Path) -> None:
    """export writes an EXIF-rotated image upright (new bytes, named by the original's id);
    importing that export back (fix labels elsewhere, bring them home) labels the original
    instead of harvesting the upright copy as a new image in a split of its own."""
    from pipeline.studio.export import export

    rotated_jpeg(tmp_path / "src" / "rot.jpg", 6)
    noise_image(2, (64, 48)).save(tmp_path / "src" / "plain.png")
    square = Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    exif = square.getexif()
    exif[0x0112] = 6
    square.save(tmp_path / "src" / "sq.jpg", quality=95, exif=exif)
    write_jsonl(tmp_path / "src" / "boxes.jsonl", [LabelledImage("rot.jpg", 40, 60, boxes=[[3, 5, 10, 20]]),
                                                   LabelledImage("plain.png", 64, 48, boxes=[[1, 1, 9, 9]]),
                                                   LabelledImage("sq.jpg", 48, 48, boxes=[[2, 2, 30, 9]])])
    first = import_labels(ws, [tmp_path / "src" / "boxes.jsonl"])
    assert len(first.problems) == 1 and "keeps the size 48x48" in first.problems[0]   # square: the frame is a guess
    export(ws, tmp_path / "out", "jsonl")
    s = import_labels(ws, [tmp_path / "out" / "boxes.jsonl"])
    # the export's copies are upright by construction: no guess, no problem line
    assert s.images == 3 and s.inserted == 3 and not s.problems, s.problems
    with ws.catalog() as cat:
        assert len(cat.images()) == 3
        sources = sorted(r["source"] for r in cat.query("SELECT source FROM annotations"))
    assert sources == ["import:out/boxes.jsonl"] * 3 + ["import:src/boxes.jsonl"] * 3


def test_a_fifo_given_as_a_label_file_is_refused_without_blocking(ws, tmp_path) -> None:
    """`textloop import labels.jsonl` where labels.jsonl is a FIFO hung for ever."""
    import os

    from pipeline.evaluate import load_ground_truth

    fifo = tmp_path / "labels.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a label file .*FIFO"):
        import_labels(ws, [fifo])
    with pytest.raises(ValueError, match="--gt .*FIFO"):
        load_ground_truth(gt=fifo)


@pytest.mark.parametrize("splits", ["nan,0.5,0.5", "0.5,nan,0.5"])
def test_split_ratios_refuse_nan(splits) -> None:
    from pipeline.config import SplitRatios

    with pytest.raises(ValueError, match="split ratios"):
        SplitRatios.parse(splits)


def test_harvest_refuses_an_endless_timeout() -> None:
    from pipeline.config import HarvestConfig

    with pytest.raises(ValueError, match="finite"):
        HarvestConfig(timeout_s=float("inf"))


def test_flags_and_fields_that_would_change_labels_are_refused(ws, tmp_path: Path) -> None:
    """`"ignore": ["false"]` (bool("false") is True), `"no"`, a null image or a width of 200.7
    made don't-care boxes, a file "None" or a truncated size without a word."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    rec = {"image": "../img.png", "width": 100, "height": 80, "boxes": [[1, 1, 9, 9]]}
    lines = [json.dumps({**rec, "ignore": ["false"]}), json.dumps({**rec, "ignore": "no"}),
             json.dumps({**rec, "image": None}), json.dumps({**rec, "width": 100.7}),
             "[" * 100_000 + "]" * 100_000]
    labels = one_image_labels(tmp_path / "bad", tmp_path / "img.png", *lines)
    s = import_labels(ws, [labels])
    assert s.images == 0 and len(s.problems) == 5, s.problems
    assert "'ignore' must be a list of true/false" in s.problems[0] and "'ignore' must be" in s.problems[1]
    assert "'image' must be a file name, got None" in s.problems[2] and "'width' must be" in s.problems[3]
    assert s.problems[4] == f"{labels}:5: JSON nested too deeply"
    ok = one_image_labels(tmp_path / "ok", tmp_path / "img.png", json.dumps({**rec, "ignore": [False]}))
    assert import_labels(ws, [ok]).boxes == 1


def test_a_label_whose_boxes_are_all_unusable_is_not_a_verified_empty_image(ws, tmp_path: Path) -> None:
    """Every box outside the image or inverted: the record is named and not stored. It became
    `verified_empty` (a human's word that there is no text), which training and export then used."""
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    labels = one_image_labels(tmp_path / "bad", tmp_path / "img.png", [[300, 300, 400, 400], [50, 50, 40, 40]])
    s = import_labels(ws, [labels])
    assert s.empty == 0 and s.boxes == 0
    assert any("none of its 2 box(es) is usable" in p for p in s.problems), s.problems
    with ws.catalog() as cat:
        assert [r["status"] for r in cat.images()] == ["new"]


def test_an_empty_label_file_is_said_and_a_bom_is_read(tmp_path: Path) -> None:
    noise_image(1, (100, 80)).save(tmp_path / "img.png")
    (tmp_path / "empty.jsonl").write_text("\n")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "import", str(tmp_path / "empty.jsonl")])
    assert r.exit_code == 1 and "no label records in" in r.output, r.output
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "import", str(tmp_path / "empty.jsonl")])
    assert r.exit_code == 1 and json.loads(r.stdout)["problems"] == [f"no label records in {tmp_path / 'empty.jsonl'}"]
    bom = tmp_path / "bom.jsonl"   # Windows editors write one; line 1 was "not valid JSON"
    bom.write_text("\ufeff" + json.dumps({"image": "img.png", "width": 100, "height": 80, "boxes": [[1, 1, 9, 9]]}) + "\n",
                   encoding="utf-8")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "import", str(bom)])
    assert r.exit_code == 0 and json.loads(r.stdout)["boxes"] == 1, r.output
