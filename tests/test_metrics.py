"""The detection metrics (`pipeline.evaluate`) on hand-made cases whose values are worked out in the comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.boxes import Detections
from pipeline.evaluate import (METRIC_KEYS, average_precision, coverage_counts, evaluate, evaluate_by_source,
                               json_safe, match_image)
from pipeline.formats import LabelledImage


def gt(w: int, h: int, boxes, ignore=None, source: str = "") -> LabelledImage:
    return LabelledImage(image="x.png", width=w, height=h, boxes=np.array(boxes, float).reshape(-1, 4),
                         ignore=[] if ignore is None else ignore, source=source)


def det(boxes, scores=None) -> Detections:
    boxes = np.array(boxes, float).reshape(-1, 4)
    return Detections(boxes, np.ones(len(boxes)) if scores is None else scores)


NAN = math.nan
# (id, ground truth, predictions, pad_px, expected metrics)
CASES = [
    ("perfect",
     gt(100, 50, [[10, 10, 30, 20]]), det([[10, 10, 30, 20]], [0.9]), 0.0,
     dict(precision=1, recall=1, f1=1, ap50=1, text_coverage=1, fully_covered=1, over_redaction=0)),
    # one hit, one miss, one false positive on a 40x10 image: FP covers 100 px outside GT
    ("miss_and_false_positive",
     gt(40, 10, [[0, 0, 10, 10], [20, 0, 30, 10]]), det([[0, 0, 10, 10], [30, 0, 40, 10]], [0.9, 0.8]), 0.0,
     dict(precision=0.5, recall=0.5, f1=0.5, ap50=0.5, text_coverage=0.5, fully_covered=0.5, over_redaction=0.25)),
    # the false positive scores higher than the hit: recall 1 only at precision 1/2
    ("fp_ranked_first",
     gt(40, 10, [[0, 0, 10, 10]]), det([[30, 0, 40, 10], [0, 0, 10, 10]], [0.9, 0.8]), 0.0,
     dict(precision=0.5, recall=1, f1=2 / 3, ap50=0.5, text_coverage=1, fully_covered=1, over_redaction=0.25)),
    # a prediction on an ignore box is not a false positive; the ignore box is no GT text and
    # redacting it is not over-redaction
    ("ignore_box_predicted",
     gt(40, 10, [[0, 0, 10, 10], [20, 0, 30, 10]], ignore=[False, True]),
     det([[0, 0, 10, 10], [20, 0, 30, 10]], [0.9, 0.8]), 0.0,
     dict(precision=1, recall=1, f1=1, ap50=1, text_coverage=1, fully_covered=1, over_redaction=0,
          n_gt=1, n_pred=2)),
    # an ignore box left alone is not a miss
    ("ignore_box_missed",
     gt(40, 10, [[0, 0, 10, 10], [20, 0, 30, 10]], ignore=[False, True]), det([[0, 0, 10, 10]]), 0.0,
     dict(precision=1, recall=1, f1=1, text_coverage=1, fully_covered=1, n_gt=1)),
    # one line box over three word boxes (200 + 250 + 250 = 700 GT px): IoU with each word <= 250/1176,
    # so F1 = 0, but every text pixel is covered; over-redaction = (84*14 - 700) / 3000
    ("line_box_over_words",
     gt(100, 30, [[10, 10, 30, 20], [35, 10, 60, 20], [65, 10, 90, 20]]), det([[8, 8, 92, 22]]), 0.0,
     dict(precision=0, recall=0, f1=0, ap50=0, text_coverage=1, fully_covered=1, over_redaction=(1176 - 700) / 3000)),
    # 90 % of the box covered: not fully covered ...
    ("partial_cover",
     gt(100, 50, [[10, 10, 30, 20]]), det([[10, 10, 28, 20]]), 0.0,
     dict(precision=1, recall=1, text_coverage=0.9, fully_covered=0, over_redaction=0)),
    # ... but with 2 px of padding it is, and the padding outside the GT is over-redaction
    ("partial_cover_padded",
     gt(100, 50, [[10, 10, 30, 20]]), det([[10, 10, 28, 20]]), 2.0,
     dict(precision=1, recall=1, text_coverage=1, fully_covered=1, over_redaction=(22 * 14 - 200) / 5000)),
    # 95 % exactly counts as fully covered
    ("ninety_five_percent",
     gt(100, 50, [[10, 10, 30, 20]]), det([[10, 10, 29, 20]]), 0.0,
     dict(text_coverage=0.95, fully_covered=1)),
    # two predictions on one GT box: the second is a false positive
    ("duplicate_prediction",
     gt(100, 50, [[10, 10, 30, 20]]), det([[10, 10, 30, 20], [11, 10, 30, 20]], [0.9, 0.8]), 0.0,
     dict(precision=0.5, recall=1, ap50=1, text_coverage=1)),
    # overlapping GT boxes: pixels are counted once (GT union = 150 px, prediction covers 100)
    ("overlapping_gt_pixels_once",
     gt(100, 50, [[0, 0, 10, 10], [5, 0, 15, 10]]), det([[0, 0, 10, 10]]), 0.0,
     dict(text_coverage=100 / 150, fully_covered=0.5)),
    # an image without text and without predictions: box metrics undefined, nothing over-redacted
    ("negative_clean",
     gt(40, 10, []), det([]), 0.0,
     dict(precision=NAN, recall=NAN, f1=NAN, ap50=NAN, text_coverage=NAN, fully_covered=NAN, over_redaction=0,
          n_gt=0, n_pred=0)),
    ("negative_with_false_positive",
     gt(40, 10, []), det([[0, 0, 10, 10]]), 0.0,
     dict(precision=0, recall=NAN, text_coverage=NAN, over_redaction=0.25)),
    ("nothing_predicted",
     gt(40, 10, [[0, 0, 10, 10]]), det([]), 0.0,
     dict(precision=NAN, recall=0, ap50=0, text_coverage=0, fully_covered=0, over_redaction=0)),
]


@pytest.mark.parametrize("name,g,d,pad_px,expected", CASES, ids=[c[0] for c in CASES])
def test_metric_cases(name, g, d, pad_px, expected) -> None:
    got = evaluate([g], [d], pad_px=pad_px)
    assert set(METRIC_KEYS) <= set(got.as_dict())
    for key, want in expected.items():
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(getattr(got, key)), f"{name}.{key}: {getattr(got, key)} != nan"
        else:
            assert getattr(got, key) == pytest.approx(want), f"{name}.{key}: {getattr(got, key)} != {want}"


def test_greedy_matching_follows_scores() -> None:
    # the high-scoring prediction overlaps both GT boxes and takes the better one (G2, IoU 0.667);
    # the second prediction's best box is then taken and G1 is too far (IoU 0.33): a false positive
    g = gt(40, 10, [[0, 0, 10, 10], [5, 0, 15, 10]])
    m = match_image(g, det([[3, 0, 13, 10], [5, 0, 15, 10]], [0.9, 0.5]))
    assert m.tp.tolist() == [True, False] and m.ignored.tolist() == [False, False]
    # the same boxes with the scores swapped: the exact box wins G2, the other one gets G1 (IoU 0.54)
    m = match_image(g, det([[3, 0, 13, 10], [5, 0, 15, 10]], [0.5, 0.9]))
    assert m.tp.tolist() == [True, True]


def test_average_precision_all_point_interpolation() -> None:
    # hits at ranks 1 and 3 of 3 with 2 GT: (R, P) = (.5, 1), (.5, .5), (1, 2/3) -> .5*1 + .5*2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    # ranking by score, not by input order
    assert average_precision(np.array([0.7, 0.8, 0.9]), np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.9]), np.array([True]), 4) == pytest.approx(0.25)


def test_set_metrics_sum_pixels_and_boxes_over_images() -> None:
    # image A: 100 GT px fully covered; image B: 300 GT px, none covered -> coverage 100/400, not the mean 0.5
    a = gt(20, 10, [[0, 0, 10, 10]], source="s1")
    b = gt(40, 10, [[0, 0, 30, 10]], source="s2")
    preds = [det([[0, 0, 10, 10]]), det([])]
    got = evaluate([a, b], preds)
    assert got.text_coverage == pytest.approx(0.25)
    assert got.recall == pytest.approx(0.5) and got.n_images == 2 and got.n_gt == 2
    by = evaluate_by_source([a, b], preds)
    assert list(by) == ["s1", "s2"]
    assert by["s1"].text_coverage == 1 and by["s2"].text_coverage == 0
    assert by["s1"].n_gt + by["s2"].n_gt == got.n_gt


def test_selection_scores_each_source_from_one_scoring_of_its_images() -> None:
    """Validation sums each image's pixel counts per source instead of drawing every mask
    twice: the per-source coverage must be what `evaluate` gives that source's images alone
    (pixels pooled within the source, not a mean of images), and a text-free source has none."""
    from pipeline.evaluate import evaluate_with_counts
    from pipeline.train.select import coverage_by_source

    gts = [gt(20, 10, [[0, 0, 10, 10]], source="s1"), gt(40, 10, [[0, 0, 30, 10]], source="s1"),
           gt(40, 10, [[0, 0, 20, 10]], source="s2"), gt(30, 10, [], source="neg")]
    preds = [det([[0, 0, 10, 10]]), det([]), det([[0, 0, 10, 10], [25, 0, 40, 10]]), det([[0, 0, 5, 5]])]
    metrics, counts = evaluate_with_counts(gts, preds)
    assert metrics == evaluate(gts, preds) and len(counts) == 4
    got = coverage_by_source(gts, preds, counts)
    assert got == coverage_by_source(gts, preds)
    assert got == pytest.approx({"s1": 100 / 400, "s2": 0.5})
    assert got["s1"] == pytest.approx(evaluate(gts[:2], preds[:2]).text_coverage)


def test_coverage_counts_accepts_plain_arrays() -> None:
    c = coverage_counts(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 5, 10], [30, 0, 40, 10]]), 40, 10)
    assert (c.text_px, c.covered_px, c.n_boxes, c.n_fully, c.outside_px, c.image_px) == (100, 50, 1, 0, 100, 400)


def test_json_safe_and_length_check() -> None:
    got = evaluate([gt(40, 10, [])], [det([])])
    text = json.dumps(json_safe(got), allow_nan=False)
    assert json.loads(text)["recall"] is None
    with pytest.raises(ValueError, match="2 ground-truth images but 1 predictions"):
        evaluate([gt(4, 4, []), gt(4, 4, [])], [det([])])


def make_text_set(root) -> None:
    """A two-source devset: one image with rendered text (word boxes from the ink), one flat negative."""
    from PIL import Image

    from pipeline.formats import write_jsonl
    from tests.test_ppocr import render

    arr, box = render("Slide 12", (360, 160), (40, 60), px=26)
    (root / "text" / "images").mkdir(parents=True)
    Image.fromarray(arr).save(root / "text" / "images" / "t.png")
    write_jsonl(root / "text" / "boxes.jsonl", [LabelledImage("images/t.png", 360, 160, boxes=[box])])
    (root / "neg" / "images").mkdir(parents=True)
    Image.new("RGB", (200, 120), (90, 90, 90)).save(root / "neg" / "images" / "n.png")
    write_jsonl(root / "neg" / "boxes.jsonl", [LabelledImage("images/n.png", 200, 120)])


def test_cli_evaluate_devset_gt_and_workspace(tmp_path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    make_text_set(tmp_path / "set")
    runner = CliRunner()
    ws = str(tmp_path / "ws")
    r = runner.invoke(app, ["-w", ws, "--json", "evaluate", "-d", "ppocr", "--set", str(tmp_path / "set"),
                            "--sweep", "0.3,0.99", "--out", str(tmp_path / "report.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert json.loads((tmp_path / "report.json").read_text()) == rep
    assert set(rep["by_source"]) == {"neg", "text"} and rep["model_version"] == "ppocr-v4-det"
    assert rep["by_source"]["text"]["text_coverage"] > 0.9 and rep["by_source"]["text"]["recall"] == 1.0
    assert rep["by_source"]["neg"]["over_redaction"] == 0 and rep["by_source"]["neg"]["recall"] is None
    assert rep["overall"]["n_images"] == 2 and rep["sweep"]["0.99"]["n_pred"] == 0
    # --gt with one boxes.jsonl
    r = runner.invoke(app, ["-w", ws, "--json", "evaluate", "-d", "ppocr", "--gt", str(tmp_path / "set/text/boxes.jsonl")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overall"]["f1"] == 1.0
    for bad in ("1.5", "0.3,x"):   # thresholds are scores in [0, 1]
        r = runner.invoke(app, ["-w", ws, "evaluate", "-d", "ppocr", "--gt", str(tmp_path / "set/text/boxes.jsonl"),
                                "--sweep", bad])
        assert r.exit_code == 2 and "--sweep" in r.output and "Traceback" not in r.output, r.output
    # the workspace: labels imported, evaluated per annotation source
    r = runner.invoke(app, ["-w", ws, "evaluate", "-d", "ppocr", "--split", "all"])
    assert r.exit_code == 2 and "no workspace here" in r.output     # the labels are a workspace's
    assert runner.invoke(app, ["-w", ws, "init"]).exit_code == 0
    r = runner.invoke(app, ["-w", ws, "evaluate", "-d", "ppocr", "--split", "all"])
    assert r.exit_code == 1 and "no labelled images" in r.output
    assert runner.invoke(app, ["-w", ws, "import", str(tmp_path / "set")]).exit_code == 0
    r = runner.invoke(app, ["-w", ws, "--json", "evaluate", "-d", "ppocr", "--split", "all"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["overall"]["n_images"] == 2 and rep["overall"]["recall"] == 1.0
    assert set(rep["by_source"]) == {"import:neg/boxes.jsonl", "import:text/boxes.jsonl"}
    # 25 bad label lines: "25 unreadable" of 1 image read and scored, and 20 lines with no word
    # about the other 5; label records and unreadable images are counted apart, the cut is said
    good = (tmp_path / "set/text/boxes.jsonl").read_text().splitlines()[0]
    many = tmp_path / "set/text/many.jsonl"
    many.write_text("\n".join([good, *(f"bad line {i}" for i in range(25))]) + "\n")
    r = runner.invoke(app, ["-w", ws, "evaluate", "-d", "ppocr", "--gt", str(many)])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and text.count("skipped ") == 20 and "... and 5 more (every one in --json)" in text, text
    assert "1 images in" in text and "0 unreadable; 25 label record(s) skipped" in text
    r = runner.invoke(app, ["-w", ws, "--json", "evaluate", "-d", "ppocr", "--gt", str(many)])
    assert json.loads(r.stdout)["unreadable"] == 0 and len(json.loads(r.stdout)["errors"]) == 25


def test_metrics_is_one_typed_record_with_the_json_keys_of_before() -> None:
    """evaluate() returns Metrics; as_dict() has the keys the --json reports always had (tp/fp/fn
    included), and from_dict() reads them back, also from JSON where NaN became None."""
    from pipeline.evaluate import Metrics

    got = evaluate([gt(40, 10, [(0, 0, 10, 10)])], [det([(0, 0, 10, 10)], np.array([0.9]))])
    assert isinstance(got, Metrics)
    assert list(got.as_dict()) == ["precision", "recall", "f1", "ap50", "text_coverage", "fully_covered",
                                   "over_redaction", "n_images", "n_gt", "n_pred", "tp", "fp", "fn"]
    assert Metrics.from_dict(got.as_dict()) == got
    empty = Metrics.from_dict(json.loads(json.dumps(json_safe(evaluate([gt(4, 4, [])], [det([])])))))
    assert math.isnan(empty.recall) and empty.n_images == 1


def test_evaluate_detector_library_call_is_the_cli_report(tmp_path) -> None:
    """`evaluate_detector` is `textloop evaluate`'s whole job: metrics at the threshold overall and
    per source, AP50 over every candidate, the sweep, the report file; as_dict() has the --json keys."""
    from PIL import Image

    from pipeline.evaluate import EvalReport, evaluate_detector, load_ground_truth

    class Fixed:
        name, version = "fixed", "fixed-1"

        def detect(self, images):
            return [Detections(np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float), np.array([0.9, 0.2]))
                    for _ in images]

    items = []
    for src in ("a", "b"):
        p = tmp_path / f"{src}.png"
        Image.new("RGB", (40, 10), "white").save(p)
        items.append((p, gt(40, 10, [(0, 0, 10, 10), (20, 0, 30, 10)], source=src)))
    out = tmp_path / "report.json"
    rep = evaluate_detector(Fixed(), items, threshold=0.5, sweep=[0.1], where="two", out=out)
    assert isinstance(rep, EvalReport) and rep.n_images == 2
    assert rep.overall.recall == pytest.approx(0.5) and rep.overall.ap50 > 0.5     # AP sees the 0.2 box too
    assert rep.sweep["0.1"].recall == pytest.approx(1.0) and set(rep.by_source) == {"a", "b"}
    d = rep.as_dict()
    assert list(d) == ["detector", "model_version", "ground_truth", "threshold", "iou_threshold", "pad_px", "overall",
                       "by_source", "sweep", "errors", "seconds", "images_per_s", "unreadable", "label_changes"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(d))
    with pytest.raises(ValueError, match="not both"):
        load_ground_truth(gt=out, devset=tmp_path)


def test_label_files_are_checked_against_their_images_frames(tmp_path) -> None:
    """A label file drawn on an EXIF-rotated JPEG's stored pixels is turned upright (as `import`
    does); a record whose size fits neither frame is left out with the reason (it used to be
    scored in the wrong frame: coverage 0 on a rotated photo, over-redaction 4x too low on a
    mis-sized one); --split with --gt, and a folder given as --gt, exit 2 with one line."""
    from PIL import Image
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.evaluate import load_ground_truth
    from pipeline.formats import write_jsonl

    exif = Image.Exif()
    exif[0x0112] = 6                       # stored 90x60, shown 60x90
    Image.new("RGB", (90, 60), "white").save(tmp_path / "rot.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 30), "white").save(tmp_path / "plain.png")
    write_jsonl(tmp_path / "boxes.jsonl", [
        LabelledImage("rot.jpg", 90, 60, boxes=[[10, 5, 30, 15]]),       # drawn on the stored pixels
        LabelledImage("plain.png", 80, 60, boxes=[[1, 1, 9, 9]]),        # wrong size: fits no frame
    ])
    truth = load_ground_truth(gt=tmp_path / "boxes.jsonl")
    [(path, rec)] = truth.items
    assert path.name == "rot.jpg" and (rec.width, rec.height) == (60, 90)
    np.testing.assert_allclose(rec.boxes, [[45, 10, 55, 30]])           # orientation 6: x' = H - y, y' = x
    assert truth.skipped == (f"{tmp_path / 'plain.png'}: labelled as 80x60 but the image is 40x30",)
    runner = CliRunner()
    for args, message in ((["--gt", str(tmp_path / "boxes.jsonl"), "--split", "val"], "--split chooses"),
                          (["--gt", str(tmp_path)], "is a folder; give its boxes.jsonl, or --set")):
        res = runner.invoke(app, ["-w", str(tmp_path / "ws"), "evaluate", "--detector", "ppocr", *args])
        assert res.exit_code == 2 and message in res.output, res.output


def test_evaluate_skips_bad_label_lines_samples_sources_and_checks_options_first(tmp_path) -> None:
    """From a user's walkthrough: `--gt` stopped at the first bad line (import skips it and goes
    on); `--limit 10` took the first 10 files, all of one source; `--iou 0` counted boxes that do
    not overlap as matches; `--sweep ''` was accepted; `--out FOLDER` ended in a traceback after
    the whole detection pass."""
    from PIL import Image
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pathlib import Path

    from pipeline.evaluate import load_ground_truth, spread

    Image.new("RGB", (40, 30), "white").save(tmp_path / "a.png")
    lines = [json.dumps(LabelledImage("a.png", 40, 30, boxes=[[1, 1, 9, 9]]).to_json()), "{not json", ""]
    (tmp_path / "boxes.jsonl").write_text("\n".join(lines))
    truth = load_ground_truth(gt=tmp_path / "boxes.jsonl")
    assert len(truth.items) == 1 and truth.skipped == (f"{tmp_path / 'boxes.jsonl'}:2: not valid JSON "
                                                       "(Expecting property name enclosed in double quotes at column 2)",)
    # a devset root (--set) too: one bad box in one source no longer stops the whole evaluation
    (tmp_path / "set" / "forms").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(tmp_path / "set" / "forms" / "a.png")
    bad_box = json.dumps({**LabelledImage("b.png", 40, 30).to_json(), "boxes": [[1, 2, 3]]})
    (tmp_path / "set" / "forms" / "boxes.jsonl").write_text(lines[0] + "\n" + bad_box + "\n")
    truth = load_ground_truth(devset=tmp_path / "set")
    assert [p.name for p, _ in truth.items] == ["a.png"]
    assert truth.skipped == (f"{tmp_path / 'set' / 'forms' / 'boxes.jsonl'}:2: box 0 has 3 numbers, expected 4 "
                             "(x0, y0, x1, y1)",)
    # an image listed twice was scored twice; `import` uses its last record and says so: evaluate too
    again = json.dumps(LabelledImage("a.png", 40, 30, boxes=[[2, 2, 8, 8]]).to_json())
    (tmp_path / "twice.jsonl").write_text(lines[0] + "\n" + again + "\n")
    truth = load_ground_truth(gt=tmp_path / "twice.jsonl")
    assert len(truth.items) == 1 and truth.items[0][1].boxes.tolist() == [[2, 2, 8, 8]]
    assert truth.skipped == (f"{tmp_path / 'twice.jsonl'}:1: a.png is listed again on line 2; this record is dropped, "
                             "the last one is used",)
    items = [(Path(f"{s}{i}"), LabelledImage(f"{s}{i}.png", 4, 4, source=s)) for s in "ab" for i in range(5)]
    assert [p.name for p, _ in spread(items, 4)] == ["a0", "b0", "a1", "b1"]
    runner = CliRunner()
    for args, message in ((["--iou", "0"], "--iou must be above 0"), (["--sweep", ""], "bad --sweep"),
                          (["--out", str(tmp_path)], "is a folder")):
        res = runner.invoke(app, ["-w", str(tmp_path / "ws"), "evaluate", "--detector", "ppocr",
                                  "--gt", str(tmp_path / "boxes.jsonl"), *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_evaluate_drops_and_clips_ground_truth_boxes_as_import_does(tmp_path) -> None:
    """Empty, inverted and outside ground-truth boxes were scored as text no detector could find
    (recall 0.2 on a file with one real box), with no word; import drops or clips them and says
    so. evaluate now does the same, names each change, and scores what is left."""
    from PIL import Image
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.evaluate import load_ground_truth

    Image.new("RGB", (180, 120), "white").save(tmp_path / "img.png")
    rec = LabelledImage("img.png", 180, 120, boxes=[[16, 34, 128, 47], [0, 0, 0, 0], [50, 50, 20, 20],
                                                    [170, 100, 500, 500], [300, 300, 400, 400]],
                        texts=("HELLO", "", "", "edge", ""))
    (tmp_path / "gt.jsonl").write_text(json.dumps(rec.to_json()) + "\n")
    truth = load_ground_truth(gt=tmp_path / "gt.jsonl")
    (_, kept), = truth.items
    np.testing.assert_allclose(kept.boxes, [[16, 34, 128, 47], [170, 100, 180, 120]])
    assert kept.texts == ("HELLO", "edge") and truth.skipped == ()
    assert [c.split(": ", 2)[2] for c in truth.changed] == [
        "boxes 1 [0, 0, 0, 0], 2 [50, 50, 20, 20] are empty or inverted (x1 <= x0 or y1 <= y0): dropped",
        "box 4 [300, 300, 400, 400] is outside the 180x120 image: dropped",
        "box 3 [170, 100, 500, 500] is over the edge of the 180x120 image: clipped to it"]
    # a record with no usable box is left out, not scored as an image without text
    (tmp_path / "none.jsonl").write_text(json.dumps(LabelledImage("img.png", 180, 120, boxes=[[5, 5, 1, 1]]).to_json()))
    res = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "evaluate", "-d", "ppocr",
                                   "--gt", str(tmp_path / "gt.jsonl")])
    report = json.loads(res.stdout)
    assert res.exit_code == 0 and report["overall"]["n_gt"] == 2 and len(report["label_changes"]) == 3
    res = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "evaluate", "-d", "ppocr", "--gt", str(tmp_path / "none.jsonl")])
    assert res.exit_code == 1 and "none of its 1 box(es) is usable" in res.output
