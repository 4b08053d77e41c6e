"""bench_detect's microscopy breakdowns: coverage per overlay kind, and over readable overlays only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.boxes import Detections
from pipeline.formats import LabelledImage

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
    from matplotlib import font_manager

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 32)
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
                       (["--db-minutes", "0"], "positive")):
        r = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w"), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and word in r.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "w").exists()
