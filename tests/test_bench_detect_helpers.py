"""bench_detect's helpers: microscopy breakdowns, the trade-off curve and the matched-over-redaction verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.boxes import Detections
from pipeline.formats import LabelledImage
from tests.imagegen import text_font

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_detect.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_detect", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_coverage_by_kind_scores_each_kind_on_its_own_boxes() -> None:
    mod = _bench()
    rec = LabelledImage("a.png", 100, 50, boxes=np.array([[0, 0, 20, 10], [50, 20, 90, 40], [0, 30, 10, 40]]))
    kinds = [["sample_id", "watermark", "sample_id"]]
    found = Detections(np.array([[0, 0, 20, 10], [50, 20, 70, 40]]))     # one ID and half the watermark
    cov = mod.coverage_by_kind([(Path("a.png"), rec)], kinds, [found])
    assert cov["watermark"] == 0.5
    assert cov["sample_id"] == 200 / 300


def test_legible_only_drops_text_nobody_can_read(tmp_path: Path) -> None:
    font = text_font(32)
    img = Image.new("RGB", (640, 200), (128, 128, 128))
    d = ImageDraw.Draw(img)
    boxes = []
    for xy, text, ink in (((20, 20), "SAMPLE 4711", (10, 10, 10)), ((20, 110), "DO NOT COPY", (129, 129, 129)),
                          ((560, 20), "B", (10, 10, 10))):
        d.text(xy, text, font=font, fill=ink)
        boxes.append(d.textbbox(xy, text, font=font))
    img.save(tmp_path / "m.png")
    rec = LabelledImage("m.png", 640, 200, boxes=np.array(boxes, float), texts=("SAMPLE 4711", "DO NOT COPY", "B"))
    (out,) = _bench().legible_only([(tmp_path / "m.png", rec)])
    # readable text stays, the watermark one grey level off the background becomes don't-care,
    # and a one-letter label (which the reader cannot judge) stays
    assert out.ignore.tolist() == [False, True, False]


def test_out_of_range_recipe_options_stop_before_any_work(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, word in ((["--db-interpolate", "0,1"], "interpolate"), (["--db-teacher-ignore", "2"], "teacher_ignore"),
                       (["--db-minutes", "0"], "positive"), (["--unclip-grid", "0.5,1.6"], "unclip-grid"),
                        (["--thresh-grid", "0,0.3"], "thresh-grid"), (["--db-human-fraction", "1.5"], "human-fraction"),
                        (["--db-val-every", "1"], "val-every")):
        r = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w"), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and word in r.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "w").exists()


def test_the_trade_off_curve_reuses_each_map_and_widens_with_unclip(tmp_path: Path) -> None:
    """Real stock ppocr on a generated page: the curve runs the network once per image (maps
    cached), and a larger unclip ratio covers more text and more background."""
    from pipeline.detectors.ppocr import PPOCRDetector

    font = text_font(28)
    img = Image.new("RGB", (480, 160), (250, 250, 250))
    d = ImageDraw.Draw(img)
    boxes = [d.textbbox((20, 30), "SAMPLE 4711-B", font=font), d.textbbox((20, 100), "2026-11-29 18:51", font=font)]
    for xy, text in (((20, 30), "SAMPLE 4711-B"), ((20, 100), "2026-11-29 18:51")):
        d.text(xy, text, font=font, fill=(10, 10, 10))
    img.save(tmp_path / "p.png")
    rec = LabelledImage("p.png", 480, 160, boxes=np.array(boxes, float), source="forms")
    det = PPOCRDetector(threads=1)
    calls = []
    forward = det.forward_maps
    det.forward_maps = lambda x: calls.append(1) or forward(x)
    det.cache_maps(True)
    curve, counts = _bench().trade_off_curve(det, [(tmp_path / "p.png", rec)], 0.3, [1.2, 1.6, 2.4], [0.2, 0.3])
    assert counts.shape == (6, 1, 4) and counts[:, 0, 1].min() == counts[:, 0, 1].max()   # text pixels: the labels'
    assert len(calls) == 1 and [(p["thresh"], p["unclip_ratio"]) for p in curve] == [
        (0.2, 1.2), (0.2, 1.6), (0.2, 2.4), (0.3, 1.2), (0.3, 1.6), (0.3, 2.4)]
    cov = [p["forms"]["text_coverage"] for p in curve]
    over = [p["all"]["over_redaction"] for p in curve]
    assert cov[3] < cov[5] and over[3] < over[5] and cov[5] > 0.9
    # judged against itself at its default point (thresh 0.3, unclip 1.6): no difference, and none
    # in any resample
    own = _bench().image_counts([(tmp_path / "p.png", rec)], _bench().run_detector(det, [(tmp_path / "p.png", rec)], 0.3))
    np.testing.assert_array_equal(own, counts[4])
    m = _bench().matched(curve, {"forms": curve[4]["forms"]}, (own, counts, ["forms"]))
    assert m["forms"]["delta"] == pytest.approx(0.0) and m["forms"]["interval"] == pytest.approx((0.0, 0.0))


def test_a_model_is_judged_at_stock_over_redaction_and_against_the_goals() -> None:
    mod = _bench()
    curve = [{"thresh": 0.3, "unclip_ratio": u, "all": {"text_coverage": c, "over_redaction": o},
              "scene": {"text_coverage": c - 0.1, "over_redaction": o / 2}}
             for u, c, o in ((1.4, 0.90, 0.02), (1.6, 0.94, 0.04), (2.0, 0.97, 0.06))]
    stock = {"all": {"text_coverage": 0.91, "over_redaction": 0.03},
             "scene": {"text_coverage": 0.85, "over_redaction": 0.02},
             "negatives": {"text_coverage": float("nan"), "over_redaction": 0.0}}
    m = mod.matched(curve, stock)
    assert set(m) == {"all", "scene"}                                  # text-free images: no coverage to match
    assert m["all"]["coverage"] == pytest.approx(0.92) and m["all"]["delta"] == pytest.approx(0.01)
    assert m["scene"]["delta"] == pytest.approx(0.84 - 0.85)            # read at over 0.02 on the scene curve
    q = {"curve": curve, "matched": m, "synthetic_microscopy": {"text_coverage": 0.98},
         "devset_half_b_by_source": {"negatives_skimage": {"over_redaction": 0.004}}}
    g = mod.goals(q)
    assert g["coverage >= 0.96 at over-redaction <= 0.05 (half B, best grid point)"]["value"] == 0.94
    assert not g["coverage >= 0.96 at over-redaction <= 0.05 (half B, best grid point)"]["ok"]
    assert g["synthetic microscopy coverage >= 0.97"]["ok"] and g["negatives over-redaction <= 0.005"]["ok"]
    ahead = g["ahead of stock on every source at stock's over-redaction"]
    assert not ahead["ok"] and ahead["at"] == "worst: scene"


def test_the_matched_verdict_says_when_image_sampling_alone_could_flip_it() -> None:
    """A model better on every image is ahead whichever images are drawn; one that gains a lot on
    one image and loses a little on the others is not, though its pooled difference is positive."""
    from pipeline.train.select import matched_interval

    rng = np.random.default_rng(1)
    text = rng.integers(2000, 4000, 20).astype(float)
    image = np.full(20, 100_000.0)
    stock = np.stack([0.85 * text, text, 0.02 * image, image], axis=1)
    overs = (0.015, 0.02, 0.025)                    # the model's grid: over-redaction around stock's
    better = np.stack([np.stack([(0.80 + 4 * (o - 0.015) + 0.08) * text, text, o * image, image], axis=1)
                       for o in overs])
    lo, hi = matched_interval(stock, better, seed=0)
    assert 0 < lo < hi                                                   # ahead in every resample
    text_m = text.copy()
    text_m[0] *= 8                                                       # one image holds a third of the text
    stock_mixed = np.stack([0.85 * text_m, text_m, 0.02 * image, image], axis=1)
    mixed = np.stack([np.stack([(0.80 + 4 * (o - 0.015)) * text_m, text_m, o * image, image], axis=1) for o in overs])
    mixed[:, 0, 0] = text_m[0]                                           # the model covers it all, stock 0.85
    # ... and every other image 0.03 less than stock: ahead pooled, behind in a draw without image 0
    pooled_delta = mixed[1, :, 0].sum() / text_m.sum() - 0.85
    lo, hi = matched_interval(stock_mixed, mixed, seed=0)
    assert pooled_delta > 0.02 and lo < 0 < hi
    assert matched_interval(stock, better[:, :, :] * [1, 1, 10, 1]) is None   # the curve never gets that tight
    with pytest.raises(ValueError, match="same images"):
        matched_interval(stock, better[:, :5])


def test_matched_carries_the_interval_into_the_goal_table() -> None:
    mod = _bench()
    text, image = np.full(6, 1000.0), np.full(6, 10_000.0)
    stock_c = np.stack([0.9 * text, text, 0.02 * image, image], axis=1)
    curve_c = np.stack([np.stack([c * text, text, o * image, image], axis=1) for c, o in ((0.85, 0.01), (0.95, 0.03))])
    curve = [{"thresh": 0.3, "unclip_ratio": u, "all": mod.pooled(c), "scene": mod.pooled(c)}
             for u, c in zip((1.4, 1.8), curve_c)]
    stock = {"all": mod.pooled(stock_c), "scene": mod.pooled(stock_c)}
    m = mod.matched(curve, stock, (stock_c, curve_c, ["scene"] * 6))
    assert m["scene"]["delta"] == pytest.approx(0.0) and m["scene"]["interval"] == pytest.approx((0.0, 0.0))
    q = {"curve": curve, "matched": m, "synthetic_microscopy": {"text_coverage": 0.5}, "devset_half_b_by_source": {}}
    assert "95 % interval" in mod.goals(q)["ahead of stock on every source at stock's over-redaction"]["at"]
