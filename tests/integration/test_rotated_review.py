"""Rotated text through a real Label Studio: a stored prediction with a rotated quad reaches the
task as a rotated rectangle, a reviewer's rotated rectangle comes back with `pull` as a quad in the
catalog, and `redact --from-review` fills that rotated shape, not its bounding box."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.boxes import Detections, ls_value_to_quad
from pipeline.cli.app import app
from pipeline.config import HarvestConfig
from pipeline.harvest import harvest
from pipeline.predict import store_predictions
from pipeline.redact.run import RedactConfig
from tests.test_quads_catalog import rotated_quad, same_corners
from tests.conftest import live_review_setup
from tests.fakes import FakeDetector

pytestmark = pytest.mark.integration

W, H = 320, 240
PRED_QUAD = rotated_quad(160, 120, 180, 30, 30)          # what the detector found, 30 deg slant
# the reviewer's rectangle, as Label Studio stores it: percent x/y/width/height, degrees clockwise
# about its top-left corner
REVIEWED = {"x": 25.0, "y": 30.0, "width": 50.0, "height": 10.0, "rotation": 20.0}


def UnsureRotated() -> FakeDetector:
    """One slanted line in every image, scored inside the review band (the image is held)."""
    return FakeDetector(lambda im: Detections.from_quads(PRED_QUAD[None], [0.35]), name="unsure-rot",
                        version="unsure-rot-1")


def reviewed_corners() -> np.ndarray:
    """REVIEWED's corners computed here from the documented convention (not via pipeline.boxes)."""
    x, y = REVIEWED["x"] * W / 100, REVIEWED["y"] * H / 100
    w, h = REVIEWED["width"] * W / 100, REVIEWED["height"] * H / 100
    t = math.radians(REVIEWED["rotation"])
    u, v = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    tl = np.array([x, y])
    return np.array([tl, tl + w * u, tl + w * u + h * v, tl + h * v])


def test_rotated_prediction_review_pull_and_redact(live_studio, tmp_path, monkeypatch):
    from pipeline.studio.pull import pull
    from pipeline.studio.push import push_images

    det = UnsureRotated()
    ws, studio, project_id = live_review_setup(live_studio, monkeypatch, det, "ws_rotated_review", "rotated review")
    ws_root = ws.root

    src = tmp_path / "in"
    src.mkdir()
    a = np.random.default_rng(5).integers(1, 255, (H, W, 3), dtype=np.uint8)   # no pixel is 0 (the fill)
    Image.fromarray(a).save(src / "slanted.png")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        image_id = cat.images()[0]["id"]
        store_predictions(cat, "rot-v1", [(image_id, Detections.from_quads(PRED_QUAD[None], [0.9]))], min_score=0.3)

    # 1. push sends the stored quad as a rotated rectangle
    summary = push_images(ws, None, model_version="rot-v1", client=studio)
    assert summary.tasks_created == 1
    [task] = list(studio.sdk.tasks.list(project=project_id, fields="all", page_size=100))
    preds = [p if isinstance(p, dict) else p.dict() for p in studio.sdk.predictions.list(task=task.id)]
    [pred] = [p for p in preds if p["model_version"] == "rot-v1"]
    [r] = pred["result"]
    assert abs(float(r["value"]["rotation"])) % 360 > 1.0
    assert (r["original_width"], r["original_height"]) == (W, H)
    assert same_corners(ls_value_to_quad(r["value"], W, H), PRED_QUAD, 0.5)

    # 2. redact --review holds the image (uncertain score), queues it for review
    out = tmp_path / "out"

    def run(*args):
        res = CliRunner().invoke(app, ["-w", str(ws_root), "--json", "redact", str(src), str(out), *args],
                                 catch_exceptions=False)
        return res.exit_code, json.loads(res.stdout)

    code, s = run("--review")
    # its task exists (step 1): no second one; the held image's boxes go to it as another prediction
    assert code == 0 and s["held_for_review"] == 1, s.get("review")
    assert (s["review"]["pushed"], s["review"]["already_in_label_studio"]) == (0, 1), s["review"]
    assert not (out / "slanted.png").exists()

    # 3. a reviewer replaces it with a rotated rectangle of their own; pull stores its quad
    result = [{"id": "r0", "type": "rectanglelabels", "from_name": r["from_name"], "to_name": r["to_name"],
               "original_width": W, "original_height": H, "image_rotation": 0,
               "value": {**REVIEWED, "rectanglelabels": ["text"]}}]
    studio.sdk.annotations.create(id=task.id, result=result, was_cancelled=False)
    assert pull(ws, studio).new == 1
    expected = reviewed_corners()
    with ws.catalog() as cat:
        row = cat.query("SELECT boxes, quads FROM annotations WHERE image_id = ?", (image_id,))[0]
    quads = np.asarray(json.loads(row["quads"]))
    assert quads.shape == (1, 4, 2)
    assert same_corners(quads[0], expected, 0.5)
    np.testing.assert_allclose(json.loads(row["boxes"])[0], [*expected.min(0), *expected.max(0)], atol=0.5)

    # 4. --from-review fills the rotated rectangle (grown by the padding), not its bounding box
    code, s = run("--from-review")
    assert code == 0 and s["redacted"] == 1
    b = np.asarray(Image.open(out / "slanted.png").convert("RGB"))
    pad = RedactConfig().pad
    w, h = REVIEWED["width"] * W / 100, REVIEWED["height"] * H / 100
    grow = pad.px + pad.frac * h
    t = math.radians(REVIEWED["rotation"])
    ys, xs = np.mgrid[0:H, 0:W] + 0.5                             # pixel centres
    dx, dy = xs - expected[0, 0], ys - expected[0, 1]
    pu = dx * math.cos(t) + dy * math.sin(t)                      # along the rectangle's long side
    pv = -dx * math.sin(t) + dy * math.cos(t)                     # along its short side
    inside = (pu >= 0) & (pu <= w) & (pv >= 0) & (pv <= h)
    far = (pu < -grow - 1) | (pu > w + grow + 1) | (pv < -grow - 1) | (pv > h + grow + 1)
    filled = (b == 0).all(axis=-1)
    assert filled[inside].all()                                   # the reviewed shape is covered
    assert (b[far] == a[far]).all()                               # nothing beyond it (+ padding) changed
    x0, y0 = np.floor(expected.min(0)).astype(int)
    x1, y1 = np.ceil(expected.max(0)).astype(int)
    bbox_filled = filled[y0:y1, x0:x1].mean()
    assert bbox_filled < 0.6, bbox_filled                        # the enclosing box is not blacked out
