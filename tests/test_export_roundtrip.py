"""export -> import keeps what the workspace knows: each image's split (an EXIF-rotated image's
upright copy has a new hash, and the hash's split moved test images into training), its original
name, the boxes' transcriptions; YOLO exports keep train/val/test apart; COCO references that
point nowhere are problems; a re-export in another format leaves no stale label file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.config import SPLITS, HarvestConfig
from pipeline.formats import LabelledImage, read_jsonl, write_jsonl
from pipeline.harvest import split_for
from pipeline.importer import import_labels
from pipeline.studio.export import export
from pipeline.workspace import Workspace
from tests.imagegen import noise_image, rotated_jpeg


def labelled_source(root: Path) -> Path:
    """One rotated photo and two plain images, labelled (with transcriptions) in boxes.jsonl."""
    rotated_jpeg(root / "images" / "rot.jpg")
    noise_image(1, (64, 48)).save(root / "images" / "a.png")
    noise_image(2, (50, 40)).save(root / "images" / "b.png")
    write_jsonl(root / "boxes.jsonl", [
        LabelledImage("images/rot.jpg", 40, 60, boxes=[[3, 5, 10, 20]], texts=("EXIT",)),
        LabelledImage("images/a.png", 64, 48, boxes=[[1, 1, 9, 9], [20, 5, 40, 15]], ignore=[False, True],
                      texts=("Sale", "###")),
        LabelledImage("images/b.png", 50, 40),
    ])
    return root / "boxes.jsonl"


def ids_by_name(ws: Workspace) -> dict[str, dict]:
    with ws.catalog() as cat:
        return {r["original_name"]: r for r in cat.images()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_split(split: str) -> str:
    return next(s for s in SPLITS if s != split)


@pytest.mark.parametrize("fmt, label_file", [("jsonl", "boxes.jsonl"), ("coco", "annotations.json")])
def test_a_round_trip_keeps_every_image_in_its_split(tmp_path: Path, fmt: str, label_file: str) -> None:
    a = Workspace.open(tmp_path / "A")
    import_labels(a, [labelled_source(tmp_path / "src")])
    export(a, tmp_path / "E", fmt)
    rot = ids_by_name(a)["rot.jpg"]
    copy = tmp_path / "E" / "images" / f"{rot['id']}.png"
    # put the rotated image where its upright copy's hash would not: the hash must not decide
    with a.catalog() as cat:
        cat.set_split(rot["id"], other_split(split_for(sha256(copy), HarvestConfig().splits)))
    export(a, tmp_path / "E", fmt)
    b = Workspace.open(tmp_path / "B")
    s = import_labels(b, [tmp_path / "E" / label_file])
    assert s.images == 3 and s.splits_from_labels == 3 and not s.problems, s.problems
    want = {r["original_name"]: r["split"] for r in ids_by_name(a).values()}
    got = ids_by_name(b)
    assert {name: r["split"] for name, r in got.items()} == want   # original names came along too
    assert got["rot.jpg"]["id"] == sha256(copy) != rot["id"]       # B holds the upright copy
    # importing the same export again changes nothing and says nothing
    again = import_labels(b, [tmp_path / "E" / label_file])
    assert again.unchanged == 3 and again.splits_from_labels == 0 and not again.problems


def test_exported_records_carry_split_name_source_and_texts(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    images = ids_by_name(ws)
    export(ws, tmp_path / "j", "jsonl")
    lines = [json.loads(x) for x in (tmp_path / "j" / "boxes.jsonl").read_text().splitlines()]
    by_name = {d["original_name"]: d for d in lines}
    for name, row in images.items():
        assert by_name[name]["split"] == row["split"]
        assert "original_source" not in by_name[name]   # the user's folders stay on this machine
    assert by_name["rot.jpg"]["texts"] == ["EXIT"] and by_name["a.png"]["texts"] == ["Sale", "###"]
    export(ws, tmp_path / "c", "coco")
    doc = json.loads((tmp_path / "c" / "annotations.json").read_text())
    entries = {im["original_name"]: im for im in doc["images"]}
    assert {n: e["split"] for n, e in entries.items()} == {n: r["split"] for n, r in images.items()}
    a_id = entries["a.png"]["id"]
    assert [x.get("utf8_string") for x in doc["annotations"] if x["image_id"] == a_id] == ["Sale", "###"]


def test_transcriptions_are_stored_and_survive_a_coco_round_trip(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    s = import_labels(ws, [labelled_source(tmp_path / "src")])
    assert s.texts == 3
    with ws.catalog() as cat:
        rows = {r["original_name"]: r for r in cat.query(
            "SELECT i.original_name, a.texts FROM annotations a JOIN images i ON i.id = a.image_id")}
    assert json.loads(rows["a.png"]["texts"]) == ["Sale", "###"] and rows["b.png"]["texts"] is None
    export(ws, tmp_path / "c", "coco")
    other = Workspace.open(tmp_path / "other")
    import_labels(other, [tmp_path / "c" / "annotations.json"])
    export(other, tmp_path / "j", "jsonl")
    texts = {d["original_name"]: d["texts"] for d in map(json.loads, (tmp_path / "j" / "boxes.jsonl").open())}
    assert texts == {"rot.jpg": ["EXIT"], "a.png": ["Sale", "###"], "b.png": []}


def test_texts_not_one_per_box_are_said_and_not_kept(ws: Workspace, tmp_path: Path) -> None:
    noise_image(1, (64, 48)).save(tmp_path / "a.png")
    write_jsonl(tmp_path / "boxes.jsonl", [{"image": "a.png", "width": 64, "height": 48,
                                            "boxes": [[1, 1, 9, 9], [20, 5, 40, 15]], "texts": ["only one"]}])
    s = import_labels(ws, [tmp_path / "boxes.jsonl"])
    assert s.images == 1 and s.texts == 0
    assert s.problems == [f"{tmp_path / 'boxes.jsonl'}:1: a.png: 1 texts for 2 boxes; the texts were not kept"]


def test_an_existing_image_keeps_its_split_and_a_bad_split_is_a_line_problem(ws: Workspace, tmp_path: Path) -> None:
    noise_image(1, (64, 48)).save(tmp_path / "a.png")
    noise_image(2, (64, 48)).save(tmp_path / "b.png")
    write_jsonl(tmp_path / "first" / "boxes.jsonl", [{"image": "../a.png", "width": 64, "height": 48}])
    import_labels(ws, [tmp_path / "first" / "boxes.jsonl"])
    (before,) = ids_by_name(ws).values()
    moved = other_split(before["split"])
    write_jsonl(tmp_path / "second" / "boxes.jsonl", [
        {"image": "../a.png", "width": 64, "height": 48, "split": moved},
        {"image": "../b.png", "width": 64, "height": 48, "split": "training"},
    ])
    s = import_labels(ws, [tmp_path / "second" / "boxes.jsonl"])
    assert ids_by_name(ws)["a.png"]["split"] == before["split"] and "b.png" not in ids_by_name(ws)
    assert s.splits_from_labels == 0 and s.images == 1
    where = tmp_path / "second" / "boxes.jsonl"
    assert sorted(s.problems) == sorted([
        f"{where}:2: split must be one of train, val, test; got 'training'",
        f"{where}:1: ../a.png: the label file says split {moved!r}, but the image was already in the workspace in "
        f"{before['split']!r} and keeps it"])


def test_older_readers_see_the_same_records(tmp_path: Path) -> None:
    """A record without the new fields writes the line it always did; one with them reads back
    through `read_jsonl` (training, evaluate --gt), which ignores what it does not use."""
    plain = LabelledImage("images/a.png", 10, 10, boxes=[[1, 1, 5, 5]])
    assert set(plain.to_json()) == {"image", "width", "height", "boxes", "texts", "ignore"}
    full = LabelledImage("images/a.png", 10, 10, boxes=[[1, 1, 5, 5]], split="val", original_name="a.png",
                         original_source="/x/a.png", texts=("hi",))
    write_jsonl(tmp_path / "boxes.jsonl", [full])
    (back,) = read_jsonl(tmp_path / "boxes.jsonl")
    assert (back.split, back.original_name, back.original_source, back.texts) == ("val", "a.png", "/x/a.png", ("hi",))
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        LabelledImage("a.png", 10, 10, split="dev")


def test_yolo_export_lists_each_split_apart(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    images = ids_by_name(ws)
    with ws.catalog() as cat:   # one image per split
        for name, split in zip(("rot.jpg", "a.png", "b.png"), SPLITS):
            cat.set_split(images[name]["id"], split)
    out = tmp_path / "y"
    export(ws, out, "yolo")
    yaml = (out / "data.yaml").read_text()
    assert "train: train.txt\nval: val.txt\ntest: test.txt\n" in yaml and "images\n" not in yaml
    # no absolute `path:`: moved or shared, the set is read where it is (as Ultralytics resolves it)
    assert "path:" not in yaml and str(tmp_path) not in yaml
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    for split in SPLITS:
        (line,) = (moved / f"{split}.txt").read_text().splitlines()
        assert (moved / line).is_file() and (moved / "labels" / (Path(line).stem + ".txt")).is_file()
    moved.rename(out)
    for name, split in zip(("rot.jpg", "a.png", "b.png"), SPLITS):
        (line,) = (out / f"{split}.txt").read_text().splitlines()
        assert line.startswith(f"./images/{images[name]['id']}.") and (out / line).is_file()
    export(ws, out, "yolo", split="val")
    assert "val: val.txt" in (out / "data.yaml").read_text() and "train:" not in (out / "data.yaml").read_text()
    assert sorted(p.name for p in out.glob("*.txt")) == ["val.txt"]


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path) -> None:
    """OUT under a file was `[Errno 20] Not a directory: '.../images'`: it names OUT and why."""
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(app, ["-w", str(ws.root), "export", str(tmp_path / "file" / "sub")])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert f"{tmp_path / 'file' / 'sub'}: cannot create or write this folder ({tmp_path / 'file'} is a file, not a folder)" in r.output


def test_yolo_import_says_it_is_not_supported(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    export(ws, tmp_path / "y", "yolo")
    for target in (tmp_path / "y" / "data.yaml", tmp_path / "y"):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "import", str(target)])
        assert r.exit_code == 2 and "YOLO import is not supported: use --format jsonl or coco exports" in \
            " ".join(r.output.split()), r.output


def test_coco_annotations_pointing_nowhere_are_problems(ws: Workspace, tmp_path: Path) -> None:
    noise_image(1, (64, 48)).save(tmp_path / "a.png")
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]},
                        {"id": 3, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "text"}]}))
    s = import_labels(ws, [path])
    assert s.images == 1 and s.boxes == 1
    assert s.problems == [f"{path}: annotation 3: image_id 99 is not in 'images'; skipped",
                          f"{path}: annotation 4: category_id 7 is not in 'categories' (1: text); skipped"]


def test_a_re_export_in_another_format_removes_the_old_label_files(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    out = tmp_path / "E"
    yolo = export(ws, out, "yolo")
    n_yolo = len([p for p in out.rglob("*") if p.is_file() and p.parent.name != "images"])
    again = export(ws, out, "jsonl")
    assert sorted(p.name for p in out.iterdir()) == ["boxes.jsonl", "images"]   # no labels/, lists, data.yaml
    # ... and says so (it reported "removed: 0" after deleting them)
    assert yolo.label_files_removed == 0 and again.label_files_removed == n_yolo > 0 and again.removed == 0
    assert export(ws, out, "coco").label_files_removed == 1
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "images"]
    # a label file textloop did not write is refused, not removed
    write_jsonl(out / "boxes.jsonl", [LabelledImage("holiday/a.png", 10, 10)])
    with pytest.raises(ValueError, match="boxes.jsonl( .*)? was not written by textloop export"):
        export(ws, out, "coco")
    assert (out / "boxes.jsonl").exists()


def test_exported_images_are_copies_and_a_missing_original_is_left_out_and_named(tmp_path: Path) -> None:
    """Export hard-linked the workspace's originals: editing an exported image edited the file
    its id names. A missing original stopped the whole export with images/ empty."""
    import os

    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    images = ids_by_name(ws)
    a, b = images["a.png"], images["b.png"]
    (tmp_path / "j" / "images").mkdir(parents=True)
    os.link(ws.abspath(a["path"]), tmp_path / "j" / "images" / f"{a['id']}.png")   # an earlier export's link
    ws.abspath(b["path"]).unlink()
    res = export(ws, tmp_path / "j", "jsonl")
    assert res.images == 2 and len(res.problems) == 1 and b["id"] in res.problems[0], res
    exported = tmp_path / "j" / "images" / f"{a['id']}.png"
    assert exported.stat().st_nlink == 1 and not os.path.samefile(exported, ws.abspath(a["path"]))
    exported.write_bytes(b"edited")   # the workspace keeps its bytes
    assert sha256(ws.abspath(a["path"])) == a["id"]
    assert {json.loads(x)["original_name"] for x in (tmp_path / "j" / "boxes.jsonl").read_text().splitlines()} == \
        {"a.png", "rot.jpg"}


def test_yolo_class_names_are_quoted_and_a_blank_class_list_is_refused(tmp_path: Path) -> None:
    import yaml

    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    export(ws, tmp_path / "y", "yolo", classes=("a: b", "#1"))   # broke data.yaml for every YAML reader
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["names"] == {0: "a: b", 1: "#1"}
    for classes in ("", " ", "text,", "text,text"):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "export", "--format", "coco", "--classes", classes,
                                     str(tmp_path / "c")])
        assert r.exit_code == 2 and "--classes must name at least one class" in " ".join(r.output.split()), r.output
        assert not (tmp_path / "c").exists()


def test_a_damaged_stored_image_is_left_out_and_named(tmp_path: Path) -> None:
    """Its bytes no longer matching its id (their sha256), it was exported as if it were fine."""
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    a, rot = ids_by_name(ws)["a.png"], ids_by_name(ws)["rot.jpg"]   # copied / written upright
    for im in (a, rot):
        ws.abspath(im["path"]).write_bytes(ws.abspath(im["path"]).read_bytes()[:-1] + b"x")
    res = export(ws, tmp_path / "E")
    assert res.images == 1 and len(res.problems) == 2
    assert all("damaged" in p for p in res.problems) and {a["id"], rot["id"]} == {p.split(";")[1].split()[1] for p in res.problems}
    assert not list((tmp_path / "E" / "images").glob(f"{a['id']}.*")) and not list((tmp_path / "E" / "images").glob(f"{rot['id']}.*"))
    assert not [p for p in (tmp_path / "E" / "images").iterdir() if p.name.startswith(".")]   # no temp file left
    b = ids_by_name(ws)["b.png"]["id"]
    assert sha256(tmp_path / "E" / "images" / f"{b}.png") == b   # the others as they were


def test_nothing_labelled_is_refused_and_nothing_written(tmp_path: Path) -> None:
    """A workspace with harvested images and no labels (or a split with none) exported "0
    images" to an empty boxes.jsonl and exited 0; `evaluate` on it said "no labelled images"."""
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [labelled_source(tmp_path / "src")])
    images = ids_by_name(ws)
    with ws.catalog() as cat:
        for name in images:
            cat.set_split(images[name]["id"], "train")
    r = CliRunner().invoke(app, ["-w", str(ws.root), "export", str(tmp_path / "e"), "--split", "val"])
    assert r.exit_code == 1 and "no labelled images in the val split to export" in " ".join(r.output.split())
    assert not (tmp_path / "e").exists()
    empty = Workspace.open(tmp_path / "empty")
    with pytest.raises(ValueError, match="no labelled images to export"):
        export(empty, tmp_path / "e2")
    assert not (tmp_path / "e2").exists()


def test_labels_of_more_classes_than_named_are_refused_and_other_categories_are_no_negatives(tmp_path: Path) -> None:
    """A `text,logo` project exported with the default `--classes text` wrote a COCO file whose
    `logo` boxes named a category it did not list (invalid), and YOLO names without it. Imported
    back, the images with only `logo` boxes became "verified: no text" (training negatives): an
    image whose annotations were all left out is no longer imported as one without text."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    noise_image(1, (64, 48)).save(src / "images" / "a.png")
    noise_image(2, (64, 48)).save(src / "images" / "b.png")
    write_jsonl(src / "boxes.jsonl", [LabelledImage("images/a.png", 64, 48, boxes=[[1, 1, 9, 9]]),
                                      LabelledImage("images/b.png", 64, 48, boxes=[[2, 2, 20, 12]])])
    ws = Workspace.open(tmp_path / "ws")
    import_labels(ws, [src / "boxes.jsonl"])
    with ws.catalog() as cat:   # b.png's box relabelled `logo` (class 1) in Label Studio and pulled
        b = ids_by_name(ws)["b.png"]["id"]
        cat.add_annotation(b, "labelstudio", boxes="[[2, 2, 20, 12]]", labels="[1]", ignore="[false]", state="submitted",
                           updated_at=1e10, pulled_at=1e10)
    for fmt in ("coco", "yolo"):
        with pytest.raises(ValueError, match=r"labels use 2 classes but --classes names 1 \(text\)"):
            export(ws, tmp_path / fmt, fmt)
        assert not (tmp_path / fmt).exists()
    export(ws, tmp_path / "coco", "coco", classes=("text", "logo"))
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["text", "logo"]
    fresh = Workspace.open(tmp_path / "fresh")
    s = import_labels(fresh, [tmp_path / "coco" / "annotations.json"], categories=["text"])
    with fresh.catalog() as cat:
        status = {r["original_name"]: r["status"] for r in cat.images()}
    assert sorted(status.values()).count("verified_empty") == 0, status
    assert any("not imported as an image without text" in p for p in s.problems), s.problems
