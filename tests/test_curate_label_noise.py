"""Label-noise detection with cleanlab.object_detection on a generated labelled set with planted errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.boxes import Detections
from pipeline.catalog import dumps
from pipeline.curate.label_noise import (LabelNoiseConfig, NoiseItem, apply_label_actions, find_label_noise,
                                         score_label_noise)
from pipeline.curate.testdata import inject_error, text_page


def _labelled_set(n: int = 20, seed: int = 0):
    """(image_id, true boxes, predictions) for generated pages; predictions = a good detector:
    the true boxes jittered by a pixel or two, confident scores, plus a weak false positive now and then."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        _, boxes = text_page(1000 + i, n_lines=int(rng.integers(3, 7)))
        b = np.asarray(boxes, float)
        pred = b + rng.normal(0, 1.0, b.shape)
        scores = rng.uniform(0.85, 0.99, len(b))
        if rng.random() < 0.3:  # a weak detection where there is no text
            pred = np.concatenate([pred, [[5, 5, 40, 15]]])
            scores = np.concatenate([scores, [0.35]])
        out.append((f"img{i:02d}", b, Detections(pred, scores)))
    return out


def _planted(seed: int = 0):
    data = _labelled_set(seed=seed)
    rng = np.random.default_rng(seed + 1)
    planted = {}
    items = []
    for k, (iid, b, det) in enumerate(data):
        given = b
        kind = {3: "drop", 8: "shift", 13: "add"}.get(k)
        if kind:
            given, applied = inject_error(b, 320, 240, kind, rng)
            planted[iid] = applied
        items.append(NoiseItem(iid, given, det))
    return items, planted


def test_planted_errors_rank_at_the_top() -> None:
    items, planted = _planted()
    report = score_label_noise(items, LabelNoiseConfig(method="coverage"))
    top = list(report.images["image_id"][: len(planted)])
    assert set(top) == set(planted), (top, planted)
    assert report.images["is_label_issue"].sum() >= len(planted)
    # every planted image names the right kind of issue on some box
    expect = {"drop": "overlooked_text", "shift": "bad_location", "add": "spurious_box"}
    im = report.images.set_index("image_id")
    for iid, kind in planted.items():
        assert expect[kind] in im.loc[iid, "issues"], (iid, kind, im.loc[iid, "issues"])


def test_cleanlab_ranking_finds_dropped_and_shifted_boxes() -> None:
    # cleanlab alone cannot see a box drawn where no prediction is (its bad-location score is
    # 1.0 then): that is why the default ranking is the coverage score
    items, planted = _planted()
    report = score_label_noise(items, LabelNoiseConfig(method="cleanlab"))
    top = set(report.images["image_id"][:3])
    assert {i for i, k in planted.items() if k in ("drop", "shift")} <= top


def test_results_are_keyed_by_image_not_position() -> None:
    items, planted = _planted()
    cfg = LabelNoiseConfig(method="coverage")
    a = score_label_noise(items, cfg).images.set_index("image_id")["label_score"]
    b = score_label_noise(items[::-1], cfg).images.set_index("image_id")["label_score"]
    assert np.allclose(a.sort_index().values, b.sort_index().values)
    with pytest.raises(ValueError, match="listed twice"):
        score_label_noise([items[0], items[0]], cfg)
    with pytest.raises(ValueError, match="needs a reader"):
        score_label_noise(items)


def test_cleanlab_score_matches_cleanlab_api() -> None:
    from cleanlab.object_detection.rank import get_label_quality_scores

    items, _ = _planted()
    labels = [{"bboxes": np.asarray(it.given, np.float32), "labels": np.zeros(len(it.given), int)} for it in items]
    preds = [[np.concatenate([it.prediction.boxes, it.prediction.scores[:, None]], 1).astype(np.float32)]
             for it in items]
    ref = get_label_quality_scores(labels, preds, aggregation_weights={"overlooked": .5, "badloc": .5, "swap": 0},
                                   verbose=False)
    got = score_label_noise(items, LabelNoiseConfig(method="coverage", min_pred_score=0.0)).images.set_index("image_id")
    assert np.allclose(got.loc[[it.image_id for it in items], "label_quality_score"].values, ref, atol=1e-5)


def test_a_word_inside_a_dont_care_region_is_not_overlooked_text() -> None:
    """ICDAR marks illegible lines `###` (don't-care); a predicted word inside such a line-sized
    region overlaps it by IoU ~0.1, and used to count as text the labeller overlooked."""
    given = np.array([[10, 10, 60, 30], [80, 40, 300, 70]], float)      # a word; a long don't-care line
    pred = Detections(np.array([[10, 10, 60, 30], [100, 45, 130, 65]], float), np.array([0.95, 0.9]))
    def reads_text(it, boxes):  # everything reads as a confident word
        return [("word", 0.99)] * len(boxes)

    for method in ("reading", "coverage", "cleanlab"):
        im = score_label_noise([NoiseItem("a", given, pred, ignore=np.array([False, True]))],
                               LabelNoiseConfig(method=method), reader=reads_text).images.iloc[0]
        assert "overlooked_text" not in im["issues"] and not im["is_label_issue"], (method, im.to_dict())


def _add_image(tx, iid: str, path: str = "images/x.jpg", status: str = "labelled") -> None:
    tx.execute("INSERT INTO images(id, path, source, original_name, bytes, width, height, format, mode, bit_depth,"
               " split, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (iid, path, "gen", f"{iid}.jpg", 1, 320, 240, "JPEG", "RGB", 8, "train", status, time.time()))


def test_catalog_uses_only_out_of_sample_predictions_and_apply_sets_status(ws) -> None:
    items, planted = _planted()
    t0 = time.time()
    with ws.catalog() as cat, cat.transaction() as tx:
        for k, it in enumerate(items):
            _add_image(tx, it.image_id)
            # prediction made at pre-annotation time, the label a minute later
            tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at)"
                       " VALUES (?,?,?,?,?,?)", (it.image_id, "m1", dumps(it.prediction.to_json()["boxes"]),
                                                 dumps(it.prediction.to_json()["scores"]),
                                                 dumps(it.prediction.to_json()["labels"]), t0))
            tx.execute("INSERT INTO annotations(image_id, source, ls_annotation_id, boxes, labels, updated_at, pulled_at)"
                       " VALUES (?,?,?,?,?,?,?)", (it.image_id, "labelstudio", k, dumps(np.round(it.given, 2).tolist()),
                                                   dumps([0] * len(it.given)), t0 + 60, t0 + 60))
        # a later model trained on these labels must not be used (it has seen them)
        tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at)"
                   " VALUES (?,?,?,?,?,?)", (items[3].image_id, "m2", "[]", "[]", "[]", t0 + 3600))
        # a labelled image without any earlier prediction is skipped, not misaligned
        _add_image(tx, "late")
        tx.execute("INSERT INTO annotations(image_id, source, ls_annotation_id, boxes, labels, updated_at, pulled_at)"
                   " VALUES (?,?,?,?,?,?,?)", ("late", "labelstudio", 999, "[[1,1,20,20]]", "[0]", t0 + 60, t0 + 60))
    report = find_label_noise(ws, LabelNoiseConfig(method="coverage"))  # boxes only: these images have no pixels
    assert ("late", "no stored prediction; `textloop predict --detector ppocr` makes one") in report.skipped
    assert set(report.images["model_version"]) == {"m1"}
    assert set(report.images["image_id"][:3]) == set(planted)
    changed = apply_label_actions(ws, report, "review", worst=2)
    assert len(changed) == 2 and set(changed["image_id"]) <= set(planted)
    with ws.catalog() as cat:
        st = {r["id"]: r["status"] for r in cat.images()}
    assert sum(v == "needs_review" for v in st.values()) == 2
    # idempotent: a rerun changes nothing more for the same worst two
    assert len(apply_label_actions(ws, report, "review", worst=2)) == 0
    # N is at most N of the suspects: a large N never sends labels the score trusts to review
    flagged = set(report.images.loc[report.images["is_label_issue"], "image_id"])
    assert len(flagged) < len(report.images) - 1
    apply_label_actions(ws, report, "review", worst=len(report.images))
    with ws.catalog() as cat:
        assert {r["id"] for r in cat.images() if r["status"] == "needs_review"} == flagged


def test_reading_tells_missed_words_from_wrong_labels() -> None:
    """Boxes alone flag every word the detector missed; the reading score asks what is inside:
    a label the detector missed but that reads as a word is fine, a label on background or
    off its word is not, and an unlabelled detection is overlooked text only if it reads."""
    word, missed, background = [10, 10, 80, 30], [10, 50, 80, 70], [200, 150, 270, 170]
    ruling, dropped = [0, 100, 300, 104], [150, 10, 230, 30]
    texts = {tuple(word): ("sample", 0.98), tuple(missed): ("A-1729", 0.95), tuple(background): ("", 0.0),
             tuple(ruling): ("", 0.0), tuple(dropped): ("INVOICE", 0.93)}

    def reader(it, boxes):
        return [texts[tuple(int(v) for v in b)] for b in boxes]

    det = Detections(np.array([word, ruling], float), np.array([0.95, 0.9]))
    items = [NoiseItem("clean_missed", np.array([word, missed], float), det),   # the detector missed a word
             NoiseItem("added", np.array([word, background], float), det),      # a box drawn on background
             NoiseItem("dropped", np.array([word], float),                      # the labeller left a word out
                       Detections(np.array([word, dropped], float), np.array([0.95, 0.9])))]
    cov = score_label_noise(items, LabelNoiseConfig(method="coverage")).images.set_index("image_id")
    assert cov.loc["clean_missed", "is_label_issue"]            # boxes alone: the missed word looks wrong
    rep = score_label_noise(items, LabelNoiseConfig(), reader=reader)
    im = rep.images.set_index("image_id")
    assert not im.loc["clean_missed", "is_label_issue"] and im.loc["clean_missed", "issues"] == ""
    assert im.loc["added", "is_label_issue"] and "spurious_box" in im.loc["added", "issues"]
    assert im.loc["dropped", "is_label_issue"] and "overlooked_text" in im.loc["dropped", "issues"]
    assert im.loc["clean_missed", "label_score"] > max(im.loc["added", "label_score"], im.loc["dropped", "label_score"])
    b = rep.boxes
    read = b[(b.image_id == "dropped") & (b.source == "predicted") & (b.issue == "overlooked_text")]
    assert list(read["read_text"]) == ["INVOICE"] and read["read_score"].iloc[0] == pytest.approx(0.93)


def _page_files(tmp_path, n: int = 12):
    """Generated pages on disk with their true line boxes, and a good detector's predictions."""
    from pipeline.curate.testdata import png

    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        im, boxes = text_page(2000 + i, size=(480, 360), n_lines=4, kinds=("paper", "screenshot"))
        path = tmp_path / f"page{i:02d}.png"
        path.write_bytes(png(im.convert("RGB")))
        b = np.asarray(boxes, float)
        out.append((f"page{i:02d}", path, b, Detections(b + rng.normal(0, 1.0, b.shape), rng.uniform(0.85, 0.99, len(b)))))
    return out


def test_reading_score_with_the_real_recogniser_finds_planted_errors(tmp_path) -> None:
    """The PP-OCR recogniser on real pixels: a shifted box, a box on background and a dropped
    line rank above every clean page, also above a clean page whose line the detector missed;
    an image that cannot be read is skipped with its name, the others are scored."""
    from pipeline.curate.label_noise import image_reader

    pages = _page_files(tmp_path)
    rng = np.random.default_rng(3)
    items, planted = [], {}
    for k, (iid, path, b, det) in enumerate(pages):
        given = b
        kind = {2: "drop", 5: "shift", 9: "add"}.get(k)
        if kind:
            given, planted[iid] = inject_error(b, 480, 360, kind, rng)
        if k == 7:  # clean labels, but the detector missed one line
            det = det[np.arange(len(det)) != 1]
        items.append(NoiseItem(iid, given, det, path=str(path)))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    items.append(NoiseItem("broken", pages[0][2], pages[0][3], path=str(bad)))
    seen = []
    rep = score_label_noise(items, LabelNoiseConfig(), reader=image_reader(threads=1),
                            progress=lambda done, total: seen.append((done, total)))
    assert [iid for iid, _ in rep.skipped] == ["broken"] and "broken.png" in rep.skipped[0][1]
    assert seen[-1] == (len(items), len(items))
    ranked = list(rep.images["image_id"])
    assert set(ranked[:3]) == set(planted), (ranked[:5], planted)
    assert ranked.index("page07") >= 3
    assert rep.images.set_index("image_id").loc[list(planted), "is_label_issue"].all()
    assert (rep.images["is_label_issue"] == (rep.images["issues"] != "")).all()  # a flagged image names its boxes
    clean = rep.boxes[(rep.boxes.source == "given") & rep.boxes.image_id.isin(["page00", "page01"])]
    assert (clean["read_score"] > 0.5).mean() >= 0.75  # real words read as words
    from pipeline.curate.report import label_issues_html

    assert "spurious box reads nothing" in label_issues_html(rep.images, rep.boxes)  # the evidence, for the reviewer


def test_label_noise_options_are_range_checked() -> None:
    with pytest.raises(ValueError, match="read_pred_score"):
        LabelNoiseConfig(read_pred_score=1.5)
    with pytest.raises(ValueError, match="read_min_chars"):
        LabelNoiseConfig(read_min_chars=0)
    with pytest.raises(ValueError, match="unknown label-noise method"):
        LabelNoiseConfig(method="ocr")


def test_which_stored_predictions_count_as_out_of_sample(ws) -> None:
    """Stock ppocr never trained on anything here, so its prediction made after `import` is
    usable; a workspace model registered after the label may have fitted it (unless the image
    is in test, which training never reads); an unregistered bundle's data is unknown."""
    from pipeline.curate.label_noise import catalog_items

    t0 = time.time()
    box = dumps([[10, 10, 60, 30]])
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO models(version, kind, path, metrics, created_at, promoted) VALUES (?,?,?,?,?,0)",
                   ("db-x", "db", "models/db-x/bundle.zip", "{}", t0 + 50))
        rows = {"stock_after": ("ppocr-v4-det", t0, t0 + 100, "train"), "tuned_after": ("db-x", t0, t0 + 100, "train"),
                "tuned_test": ("db-x", t0, t0 + 100, "test"), "labelled_later": ("db-x", t0 + 200, t0 + 300, "val"),
                "unknown": ("someone-elses", t0, t0 + 100, "train"), "none": (None, t0, 0, "train")}
        for k, (iid, (version, labelled, predicted, split)) in enumerate(rows.items()):
            _add_image(tx, iid)
            tx.execute("UPDATE images SET split = ? WHERE id = ?", (split, iid))
            tx.execute("INSERT INTO annotations(image_id, source, ls_annotation_id, boxes, labels, updated_at, pulled_at)"
                       " VALUES (?,?,?,?,?,?,?)", (iid, "labelstudio", k, box, "[0]", labelled, labelled))
            if version:
                tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at)"
                           " VALUES (?,?,?,?,?,?)", (iid, version, box, "[0.9]", "[0]", predicted))
    items, skipped = catalog_items(ws)
    assert {it.image_id: it.model_version for it in items} == {
        "stock_after": "ppocr-v4-det", "tuned_test": "db-x", "labelled_later": "db-x"}
    why = dict(skipped)
    assert why["none"].startswith("no stored prediction") and "predict --detector ppocr" in why["none"]
    assert why["tuned_after"].startswith("no out-of-sample prediction") and "unknown" in why


def test_import_predict_curate_finds_a_planted_label_error(tmp_path) -> None:
    """The user's path for a dataset labelled elsewhere: `import` it, `predict --detector ppocr`
    (after the labels: stock never trained on them), `curate`: every image is scored and the
    one with a box drawn on background ranks first."""
    import json as _json

    from typer.testing import CliRunner

    from pipeline.cli.app import app

    folder = tmp_path / "set" / "gen"
    (folder / "images").mkdir(parents=True)
    from pipeline.curate.testdata import png

    rng = np.random.default_rng(5)
    lines = []
    for i in range(5):
        im, boxes = text_page(3000 + i, size=(480, 360), n_lines=3, kinds=("paper",))
        (folder / "images" / f"p{i}.png").write_bytes(png(im.convert("RGB")))
        b = np.asarray(boxes, float)
        if i == 3:
            b, _ = inject_error(b, 480, 360, "add", rng)
        lines.append(_json.dumps({"image": f"images/p{i}.png", "width": 480, "height": 360, "boxes": b.round(1).tolist()}))
    (folder / "boxes.jsonl").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    w = ["--workspace", str(tmp_path / "ws")]
    r = runner.invoke(app, w + ["import", str(tmp_path / "set")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, w + ["curate", "--skip-duplicates"])   # no prediction yet: says what to run
    assert r.exit_code == 0 and "not scored 5 labelled image(s), e.g. p" in r.output, r.output
    assert "predict --detector ppocr" in r.output
    r = runner.invoke(app, w + ["predict", "--detector", "ppocr"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, w + ["--json", "curate", "--skip-duplicates"])
    assert r.exit_code == 0, r.output
    noise = _json.loads(r.stdout)["label_noise"]
    assert noise["labelled_images"] == 5 and noise["skipped"] == 0 and noise["method"] == "reading"
    import pandas as pd

    from pipeline.io import sha256_file

    top = pd.read_parquet(tmp_path / "ws" / "reports" / "label_issues.parquet").iloc[0]
    assert top["image_id"] == sha256_file(folder / "images" / "p3.png") and "spurious_box" in top["issues"], top.to_dict()


def test_a_label_confirmed_after_review_is_not_sent_back_again(ws) -> None:
    """A label curation sent back, which the reviewer re-submitted unchanged, was flagged and
    reopened again every round. A label submitted after the request is the reviewer's answer;
    one nobody touched since is sent back again once it is out of review."""
    import pandas as pd

    from pipeline.curate.label_noise import LabelNoiseReport

    t0 = time.time() - 3600
    with ws.catalog() as cat, cat.transaction() as tx:
        for iid in ("answered", "ignored"):
            _add_image(tx, iid)
            tx.execute("INSERT INTO annotations(image_id, source, ls_annotation_id, boxes, labels, updated_at, pulled_at)"
                       " VALUES (?,?,?,?,?,?,?)", (iid, "labelstudio", 1 if iid == "answered" else 2, "[[1,1,20,20]]",
                                                   "[0]", t0, t0))
    report = LabelNoiseReport(pd.DataFrame({"image_id": ["answered", "ignored"], "label_score": [0.1, 0.2],
                                            "is_label_issue": [True, True], "issues": ["spurious_box", "spurious_box"]}),
                              pd.DataFrame(columns=["image_id", "issue"]))
    assert set(apply_label_actions(ws, report, "review")["image_id"]) == {"answered", "ignored"}
    with ws.catalog() as cat:   # the reviewer re-submits one (pull stores it, labelled again); the other is
        cat.add_annotation("answered", "labelstudio", ls_annotation_id=3, boxes="[[1,1,20,20]]", labels="[0]",
                           updated_at=time.time() + 1, pulled_at=time.time() + 1)
        for iid in ("answered", "ignored"):   # taken out of review some other way
            cat.set_status(iid, "labelled")
    assert list(apply_label_actions(ws, report, "review")["image_id"]) == ["ignored"]
    with ws.catalog() as cat:
        assert {r["id"]: r["status"] for r in cat.images()} == {"answered": "labelled", "ignored": "needs_review"}
