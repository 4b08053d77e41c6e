"""Batch inference: streaming with bad images, catalog upserts, and the `predict` command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.boxes import Detections
from pipeline.cli.app import app
from pipeline.harvest import harvest
from pipeline.predict import load_predictions, predict_paths, predict_workspace
from tests import fakes
from tests.imagegen import noise_image, write
from tests.test_ppocr import render


def _by_pixels(im):
    """One box whose size depends on the pixels, plus a low-score box and a box running off the image."""
    h, w = im.shape[:2]
    k = float(im.mean()) / 255.0
    return Detections([[2, 2, 2 + 10 * k + 1, 8], [0, 0, 4, 4], [w - 5, h - 5, w + 20, h + 20]], [0.9, 0.1, 0.8])


def FakeDetector(version: str = "fake-1") -> fakes.FakeDetector:
    """The shared fake, deterministic per image (`_by_pixels`); raises on an all-black image."""
    return fakes.FakeDetector(_by_pixels, version=version, fail_on_black=True)


def make_images(folder: Path) -> list[Path]:
    paths = []
    for i in range(3):
        p = folder / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        noise_image(i, (40, 30)).save(p)
        paths.append(p)
    return paths


def test_predict_paths_streams_past_bad_images(tmp_path: Path) -> None:
    good = make_images(tmp_path)
    bad = write(tmp_path / "bad.jpg", b"not an image")
    black = tmp_path / "black.png"
    Image.new("RGB", (20, 20)).save(black)
    paths = [good[0], bad, black, good[1], good[2]]
    got = list(predict_paths(FakeDetector(), paths, threshold=0.5, batch_size=2))
    assert [p for p, _ in got] == paths  # input order, one result each
    assert isinstance(got[1][1], Exception) and isinstance(got[2][1], Exception)
    for _, det in (got[0], got[3], got[4]):
        assert isinstance(det, Detections)
        assert len(det) == 2 and det.scores.min() >= 0.5  # the 0.1 box is thresholded away
        assert det.boxes[:, 2].max() <= 40 and det.boxes[:, 3].max() <= 30  # clipped to the image


def test_variants_of_a_detector_share_one_decode_and_keep_their_own_failures(tmp_path: Path, monkeypatch, caplog) -> None:
    """A threshold grid runs 18 variants over the same validation images: each image is decoded
    once for all of them, each variant gets what running it alone gives, and one variant's
    failure on an image is that variant's error only."""
    import pipeline.predict as predict
    from pipeline.predict import detect_set, detect_sets

    good = make_images(tmp_path)
    black = tmp_path / "black.png"
    Image.new("RGB", (20, 20)).save(black)
    items = [(good[0], "a"), (write(tmp_path / "bad.jpg", b"not an image"), "b"), (black, "c"), (good[1], "d")]
    decoded: list[Path] = []
    real = predict.load_views
    monkeypatch.setattr(predict, "load_views", lambda p, *a: decoded.append(Path(p)) or real(p, *a))
    robust = fakes.FakeDetector(_by_pixels)                   # finds boxes on the black image too
    variants = [FakeDetector(), robust]
    with caplog.at_level(logging.INFO, logger="pipeline.predict"):
        sets = detect_sets(variants, items, threshold=0.5, batch_size=3)
    assert sum("bad.jpg" in r.getMessage() for r in caplog.records) == 1   # unreadable: said once
    assert sorted(decoded) == sorted(p for p, _ in items)     # once each, not once per variant
    assert sets[0].ok == [0, 3] and sets[1].ok == [0, 2, 3]
    assert all(len(s.errors) == n for s, n in zip(sets, (2, 1)))
    assert "bad.jpg" in sets[1].errors[0]
    for variant, got in zip((FakeDetector(), fakes.FakeDetector(_by_pixels)), sets):
        alone = detect_set(variant, items, threshold=0.5, batch_size=3)
        assert alone.ok == got.ok
        assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(alone.detections, got.detections))


def test_a_threshold_sweep_names_an_unreadable_validation_image_once(tmp_path: Path, caplog) -> None:
    """18 grid points over a validation split with one broken file: one warning, and every
    point is scored on the images that could be read."""
    from pipeline.formats import LabelledImage
    from pipeline.train.select import sweep

    class Tunable(fakes.FakeDetector):
        def retuned(self, **params):
            return self

    good = make_images(tmp_path)
    bad = write(tmp_path / "bad.jpg", b"not an image")
    items = [(p, LabelledImage(image=p.name, width=40, height=30, boxes=np.array([[2.0, 2, 12, 8]]), ignore=[]))
             for p in [good[0], bad, good[1]]]
    grid = [{"thresh": 0.3, "box_thresh": 0.3, "unclip_ratio": u} for u in (1.2, 1.4, 1.6)]
    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        points = sweep(Tunable(_by_pixels), items, grid)
    assert len(points) == 3 and all(p.metrics["n_images"] == 2 for p in points)
    assert sum("bad.jpg" in r.getMessage() for r in caplog.records) == 1


def test_predict_workspace_upserts_idempotently(ws, tmp_path: Path) -> None:
    make_images(tmp_path / "src")
    harvest(ws, [str(tmp_path / "src")])
    det = FakeDetector()
    first = predict_workspace(ws, det, threshold=0.5)
    assert len(first) == 3
    with ws.catalog() as cat:
        rows1 = cat.query("SELECT image_id, model_version, boxes, scores FROM predictions ORDER BY image_id")
    assert len(rows1) == 3 and {r["model_version"] for r in rows1} == {"fake-1"}
    again = predict_workspace(ws, FakeDetector(), threshold=0.5)
    with ws.catalog() as cat:
        rows2 = cat.query("SELECT image_id, model_version, boxes, scores FROM predictions ORDER BY image_id")
        stored = load_predictions(cat, "fake-1")
    assert rows2 == rows1  # rerun: same catalog
    assert set(again) == set(stored) == set(first)
    for k in first:
        np.testing.assert_allclose(stored[k].boxes, first[k].boxes, atol=0.01)
    # another model version gets its own rows; skip_existing reuses stored rows without detecting
    predict_workspace(ws, FakeDetector("fake-2"), image_ids=list(first)[:1], threshold=0.5)
    lazy = FakeDetector()
    reused = predict_workspace(ws, lazy, threshold=0.5, skip_existing=True)
    assert lazy.calls == 0 and set(reused) == set(first)
    with ws.catalog() as cat:
        assert cat.scalar("SELECT COUNT(*) FROM predictions") == 4
    # rows stored at 0.5 lack the weak boxes a 0.05 run needs: they are recomputed, not reused
    weak = FakeDetector()
    low = predict_workspace(ws, weak, threshold=0.05, skip_existing=True)
    assert weak.calls > 0 and all(len(d) == 3 for d in low.values())
    again = FakeDetector()
    high = predict_workspace(ws, again, threshold=0.5, skip_existing=True)  # 0.05 rows serve a 0.5 run
    assert again.calls == 0 and all(len(d) == 2 for d in high.values())


def test_predict_workspace_reports_unknown_ids(ws) -> None:
    errors: list = []
    assert predict_workspace(ws, FakeDetector(), image_ids=["0" * 64], errors=errors) == {}
    assert errors == [("0" * 64, "not in the catalog")]


def test_cli_predict_ppocr_writes_jsonl_and_stores_workspace_images(tmp_path: Path) -> None:
    src = tmp_path / "in"
    arr, box = render("Lot 7734-B", (360, 160), (30, 60))
    (src / "sub").mkdir(parents=True)
    Image.fromarray(arr).save(src / "sub" / "text.png")
    write(src / "broken.png", b"\x89PNG\r\n\x1a\n garbage")
    wsdir = str(tmp_path / "ws")
    runner = CliRunner()
    out = tmp_path / "preds.jsonl"
    r = runner.invoke(app, ["-w", wsdir, "--json", "predict", str(src), "--detector", "ppocr", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["images"] == 1 and len(summary["errors"]) == 1 and "broken.png" in summary["errors"][0]
    assert summary["stored_in_catalog"] == 0  # not a workspace image yet
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["image"] == "sub/text.png" and (rec["width"], rec["height"]) == (360, 160)
    assert rec["model_version"] == "ppocr-v4-det" and len(rec["boxes"]) == len(rec["scores"]) == len(rec["labels"]) >= 1
    # once harvested, the same command stores its predictions in the catalog
    r = runner.invoke(app, ["-w", wsdir, "harvest", str(src)])
    r = runner.invoke(app, ["-w", wsdir, "--json", "predict", str(src / "sub"), "-d", "ppocr"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stored_in_catalog"] == 1
    # and without IMAGES it predicts the workspace images
    r = runner.invoke(app, ["-w", wsdir, "--json", "predict", "-d", "ppocr", "--skip-existing"])
    assert r.exit_code == 0, r.output
    resumed = json.loads(r.stdout)
    # the stored row was reused: nothing stored, no speed (a no-op rerun said 20,995 images/s)
    assert resumed["images"] == 1 and resumed["reused"] == 1 and resumed["stored_in_catalog"] == 0
    assert resumed["images_per_s"] is None


def test_predict_files_library_call_writes_jsonl_and_stores_workspace_images(ws, tmp_path: Path) -> None:
    """What `textloop predict FILES` does, as one call: JSONL out, catalog rows for the files that
    are workspace images, a typed summary with the CLI's --json keys."""
    from pipeline.predict import PredictSummary, predict_files, predict_workspace_images

    files = make_images(tmp_path / "src")
    harvest(ws, [str(files[0])])                       # one of the three is a workspace image
    write(tmp_path / "src" / "bad.jpg", b"not an image")
    out = tmp_path / "preds.jsonl"
    s = predict_files(FakeDetector(), [str(tmp_path / "src")], workspace=ws, out=out, threshold=0.5)
    assert isinstance(s, PredictSummary)
    assert (s.images, s.boxes, s.stored_in_catalog, len(s.errors)) == (3, 6, 1, 1)
    assert list(s.as_dict()) == ["model_version", "images", "boxes", "errors", "stored_in_catalog", "threshold",
                                 "out", "seconds", "images_per_s", "reused"]
    assert len(out.read_text().splitlines()) == 3
    w = predict_workspace_images(ws, FakeDetector("fake-2"), threshold=0.5)
    assert (w.images, w.stored_in_catalog, w.model_version) == (1, 1, "fake-2")


def test_predict_and_store_commits_in_batches_and_resumes(ws, tmp_path: Path) -> None:
    """The one loop under `predict_workspace` and `predict_files`: rows are stored `commit_every`
    at a time and the rest when the run stops, so a run stopped half-way keeps every finished
    image and `skip_existing` resumes from there; a failing image is yielded with its error and
    stops nothing."""
    from pipeline.predict import predict_and_store

    src = tmp_path / "src"
    make_images(src)
    for i in range(3, 5):
        noise_image(i, (40, 30)).save(src / f"img{i}.png")
    Image.new("RGB", (20, 20)).save(src / "black.png")          # the fake raises on it
    harvest(ws, [str(src)])
    with ws.catalog() as cat:
        by_path = {ws.abspath(r["path"]): r["id"] for r in cat.images()}
    paths = sorted(by_path)
    with ws.catalog() as cat:
        stream = predict_and_store(cat, FakeDetector(), paths, by_path, threshold=0.5, batch_size=1, commit_every=2)
        seen = [next(stream) for _ in range(3)]             # stopped after three of six images
        stream.close()
        ok = sum(p.ok for p in seen)
        assert ok >= 2 and all(p.ok or isinstance(p.result, Exception) for p in seen)
        when = "SELECT image_id, created_at FROM predictions"
        before = {r["image_id"]: r["created_at"] for r in cat.query(when)}
    assert len(before) == ok        # the batch not yet committed is stored when the run stops (Ctrl-C too)
    errors: list = []
    out = predict_workspace(ws, FakeDetector(), threshold=0.5, skip_existing=True, errors=errors, commit_every=2)
    assert len(out) == len(paths) - 1 and len(errors) == 1  # the black image: reported, skipped
    with ws.catalog() as cat:
        after = {r["image_id"]: r["created_at"] for r in cat.query(when)}
    assert len(after) == len(paths) - 1
    assert all(after[k] == t for k, t in before.items())    # resumed: the stored rows were not redone


@pytest.mark.parametrize("args, allowed", [
    (["--split", "nosuch"], "train, val, test"),
    (["--status", "bogus"], "new, pushed, labelled, verified_empty, skipped, needs_review, excluded"),
])
def test_predict_refuses_an_unknown_split_or_status_before_any_work(tmp_path: Path, args, allowed) -> None:
    """A typo used to match no image and print "0 images", exit 0: it is one line naming the
    values a workspace image can have, exit 2, and no workspace folder is created."""
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "predict", *args])
    assert r.exit_code == 2, r.output
    assert allowed in r.output and r.output.count("error:") == 1
    assert not (tmp_path / "ws").exists()


def _hostile_tree(tmp_path: Path) -> Path:
    """An input tree with a link to a file of the tree listed before it (sorted names), and every
    kind of entry the listing rule skips, plus an empty and a garbage file."""
    src = tmp_path / "in"
    (src / "sub dir").mkdir(parents=True)
    noise_image(0, (40, 30)).save(src / "a.png")
    noise_image(1, (40, 30)).save(src / "sub dir" / "nested.png")
    (src / "sub dir" / "inlink.png").symlink_to("nested.png")       # "inlink" sorts before "nested"
    noise_image(2, (40, 30)).save(tmp_path / "outside.png")
    (src / "out.png").symlink_to(tmp_path / "outside.png")
    (src / "gone.png").symlink_to("nowhere.png")
    os.mkfifo(src / "pipe.png")
    write(src / "empty.png", b"")
    write(src / "bad.png", b"not an image")
    return src


def test_predict_gives_a_linked_file_and_its_target_a_row_each_like_redact(tmp_path: Path) -> None:
    """A link to a file of the tree used to hide the file itself (deduplicated by resolved path):
    each listed path is its own row, as `redact` writes both."""
    from pipeline.predict import predict_files
    from pipeline.redact.run import plan_input

    src = _hostile_tree(tmp_path)
    out = tmp_path / "preds.jsonl"
    s = predict_files(FakeDetector(), [str(src)], out=out, threshold=0.5)
    rows = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert rows == ["a.png", "sub dir/inlink.png", "sub dir/nested.png"]
    assert s.images == 3
    planned = {it.rel for it in plan_input(str(src), tmp_path / "redacted").items}
    assert planned - {"bad.png", "empty.png"} == set(rows)      # those two fail at decoding in both


def test_predict_json_lists_every_skipped_entry_with_its_reason(tmp_path: Path, fake) -> None:
    """Entries the listing skips used to be WARNING lines only (missing from `errors` and from
    the count), and an empty file read as Pillow's UnidentifiedImageError: every entry left out
    is in --json `errors` as `path: reason: detail`, the reasons redact gives."""
    src = _hostile_tree(tmp_path)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "predict", str(src), "--no-store"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    reasons = {Path(e.split(": ", 1)[0]).name: e.split(": ")[1] for e in summary["errors"]}
    assert reasons == {"gone.png": "dangling_symlink", "out.png": "outside_tree", "pipe.png": "not_a_regular_file",
                       "empty.png": "empty", "bad.png": "not_an_image"}
    assert summary["images"] == 3
    assert "WARNING" not in r.stderr
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "predict", str(src), "--no-store"])
    assert "5 errors" in " ".join(r.stdout.split())               # the count matches the lines
    # without a workspace at -w, predicting files creates none (stock ppocr stands for `current`),
    # and -q ("errors only") still names each skipped entry on stderr
    assert not (tmp_path / "ws").exists()
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "predict", str(src), "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0 and r.stdout == "" and not (tmp_path / "ws").exists()
    assert sorted(line.split(": ")[1] for line in r.stderr.splitlines() if line.startswith("skipped ")) == sorted(reasons.values())
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "predict", str(src), "--split", "val"])
    assert r.exit_code == 2 and "workspace images" in r.stderr       # was silently ignored


def test_predict_names_files_of_several_inputs_by_their_folders(tmp_path: Path, fake) -> None:
    """Two cameras' `x.jpg` gave two JSONL records named alike: with several inputs, names are
    relative to the folder that holds them all."""
    for name in ("camA", "camB"):
        (tmp_path / name).mkdir()
        noise_image(len(name), (40, 30)).save(tmp_path / name / "x.png")
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "camA"), str(tmp_path / "camB"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(l)["image"] for l in out.read_text().splitlines()) == ["camA/x.png", "camB/x.png"]
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "camA" / "x.png"), str(tmp_path / "camB" / "x.png"),
                                 "--out", str(out)])
    assert sorted(json.loads(l)["image"] for l in out.read_text().splitlines()) == ["camA/x.png", "camB/x.png"]
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "camA"), "--out", str(out)])
    assert [json.loads(l)["image"] for l in out.read_text().splitlines()] == ["x.png"]   # one input: as before


def test_predict_checks_its_output_and_options_before_any_work(tmp_path: Path, fake) -> None:
    """`predict --out somefolder` ran every detection and then failed; the library accepted a
    threshold of 5 (no box kept, every image "done")."""
    from pipeline.predict import predict_files

    make_images(tmp_path / "in")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "is a folder" in r.output and fake.calls == 0, r.output
    for bad in (5.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="threshold must be a number from 0 to 1"):
            predict_files(fake, [tmp_path / "in"], threshold=bad)
    with pytest.raises(ValueError, match="batch_size"):
        list(predict_paths(fake, [tmp_path / "in" / "img0.png"], batch_size=0))
    assert fake.calls == 0
    # a detector option given twice kept the last value silently (box_thresh 0.5, then 0.99: no box)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "-o", "box_thresh=0.5", "-o", "box-thresh=0.99"])
    assert r.exit_code == 2 and "detector option box_thresh given twice" in r.output and fake.calls == 0, r.output
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "-o", "=1"])    # no name: it was "unknown option(s): "
    assert r.exit_code == 2 and "detector option '=1': expected key=value" in r.output, r.output


def test_a_fifo_is_not_an_empty_image(tmp_path: Path) -> None:
    """The library reported a FIFO as `empty: zero-byte file` (its size is 0); it is not a file."""
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    from pipeline.predict import image_error

    [(path, err)] = list(predict_paths(FakeDetector(), [fifo]))
    assert image_error(err).startswith("not_a_regular_file: is a FIFO")
    # a dangling link or a missing file a label file names: the listing's reasons, not
    # "FileNotFoundError: [Errno 2] No such file or directory: ..." (evaluate --gt printed that)
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    [(_, err), (_, err2)] = list(predict_paths(FakeDetector(), [tmp_path / "gone.png", tmp_path / "missing.png"]))
    assert image_error(err).startswith("dangling_symlink: symlink to ")
    assert image_error(err2) == "not_found: no such file or folder"


def test_predict_has_the_max_pixels_option_its_message_names(tmp_path: Path, fake) -> None:
    """`predict big.png` said "raise --max-pixels to accept it", and predict had no such option."""
    Image.new("RGB", (300, 200), "white").save(tmp_path / "big.png")
    r = CliRunner().invoke(app, ["--json", "predict", str(tmp_path / "big.png"), "--max-pixels", "10000"])
    assert r.exit_code == 1 and "raise --max-pixels" in json.loads(r.stdout)["errors"][0], r.output
    r = CliRunner().invoke(app, ["--json", "predict", str(tmp_path / "big.png"), "--max-pixels", "60000"])
    assert r.exit_code == 0 and json.loads(r.stdout)["images"] == 1, r.output


def test_an_out_file_that_cannot_be_written_is_named_as_given(tmp_path: Path) -> None:
    """The refusal named textloop's own probe file (`cannot write /x/.p.jsonl.check`)."""
    from pipeline.io import UnwritableError, check_writable

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UnwritableError) as err:
        check_writable(tmp_path / "afile" / "p.jsonl")
    assert err.value.strerror.startswith(f"cannot write {tmp_path / 'afile' / 'p.jsonl'} (") and ".check" not in str(err.value)
