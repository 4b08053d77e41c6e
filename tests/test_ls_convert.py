"""Label Studio percent <-> pixel conversion (pipeline.boxes): exact round trips, rotation, EXIF."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.boxes import Detections, ls_value_to_quad, ls_value_to_xyxy, quad_to_ls_value, xyxy_to_ls_value
from pipeline.imaging import load_rgb, probe
from pipeline.studio.client import StudioError
from pipeline.studio.convert import detections_to_results, results_to_detections
from pipeline.studio.project import render_label_config


@pytest.mark.parametrize("size", [(640, 480), (37, 1013), (1, 1), (4000, 3)])
def test_xyxy_percent_round_trip_is_exact(size):
    w, h = size
    rng = np.random.default_rng(w * 7 + h)
    for _ in range(200):
        a, b = sorted(rng.uniform(0, w, 2))
        c, d = sorted(rng.uniform(0, h, 2))
        box = [a, c, b, d]
        v = xyxy_to_ls_value(box, w, h)
        assert all(0 <= v[k] <= 100 for k in ("x", "y", "width", "height"))
        np.testing.assert_allclose(ls_value_to_xyxy(v, w, h), box, rtol=0, atol=1e-9 * max(w, h))


def test_percent_is_relative_to_each_axis():
    v = xyxy_to_ls_value([10, 20, 110, 60], 200, 400)
    assert v == pytest.approx({"x": 5.0, "y": 5.0, "width": 50.0, "height": 10.0, "rotation": 0.0})


@pytest.mark.parametrize("rotation", [0, 15, 45, 90, 137.5, 180, 270, 359])
def test_rotated_rectangle_round_trip_via_corners(rotation):
    w, h = 800, 600
    v = {"x": 40.0, "y": 30.0, "width": 20.0, "height": 5.0, "rotation": float(rotation)}
    quad = ls_value_to_quad(v, w, h)
    back = quad_to_ls_value(quad, w, h)
    for k in ("x", "y", "width", "height"):
        assert back[k] == pytest.approx(v[k], abs=1e-9)
    assert math.isclose(back["rotation"] % 360, rotation % 360, abs_tol=1e-9) or \
        math.isclose(abs(back["rotation"] % 360 - rotation % 360), 360, abs_tol=1e-9)
    # the enclosing box is the bounding box of those corners, and contains the unrotated origin
    x0, y0, x1, y1 = ls_value_to_xyxy(v, w, h)
    np.testing.assert_allclose([x0, y0, x1, y1], [*quad.min(0), *quad.max(0)], atol=1e-9)
    assert x0 <= 320 + 1e-9 <= x1 + 1e-9 and y0 <= 180 + 1e-9 <= y1 + 1e-9


def test_rotation_is_clockwise_about_the_top_left_corner():
    # 90 degrees clockwise on screen (y down): the box hangs down-left of its anchor
    v = {"x": 50.0, "y": 10.0, "width": 20.0, "height": 10.0, "rotation": 90.0}
    np.testing.assert_allclose(ls_value_to_xyxy(v, 100, 100), [40.0, 10.0, 50.0, 30.0], atol=1e-9)


def _oriented_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """Store `upright` so that a viewer applying EXIF `orientation` shows it upright again."""
    inverse = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
               2: Image.Transpose.FLIP_LEFT_RIGHT, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 7: Image.Transpose.TRANSVERSE}[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=100, exif=exif.tobytes(), subsampling=0)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8, 5, 7])
def test_exif_oriented_image_boxes_live_in_the_upright_frame(tmp_path, orientation):
    """Browsers (and so Label Studio) show the image upright; boxes are percent of the upright size."""
    upright = Image.new("RGB", (120, 80), "black")
    upright.paste((255, 255, 255), (30, 10, 70, 30))  # the "text": x 30..70, y 10..30 upright
    p = tmp_path / f"o{orientation}.jpg"
    p.write_bytes(_oriented_jpeg(upright, orientation))
    info = probe(p)
    assert (info.width, info.height, info.orientation) == (120, 80, orientation)
    rgb = load_rgb(p)
    ys, xs = np.nonzero(rgb[..., 0] > 128)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_allclose(box, [30, 10, 70, 30], atol=1)
    cfg = render_label_config()
    results = detections_to_results(Detections([box], [0.8], [0]), info.width, info.height, cfg)
    assert results[0]["original_width"] == 120 and results[0]["original_height"] == 80
    back = results_to_detections(results, info.width, info.height, cfg)
    np.testing.assert_allclose(back.boxes[0], box, atol=1e-9)


def test_results_keep_labels_and_drop_degenerate_boxes():
    cfg = render_label_config(["text", "logo"])
    det = Detections([[0, 0, 10, 10], [5, 5, 5, 9], [-20, -5, 300, 50]], [0.9, 0.5, 0.7], [1, 0, 0])
    res = detections_to_results(det, 200, 100, cfg)
    assert len(res) == 2  # the zero-width box is not sent
    assert res[0]["value"]["rectanglelabels"] == ["logo"]
    assert res[1]["value"]["x"] == 0 and res[1]["value"]["width"] == pytest.approx(100)  # clipped to the image
    back = results_to_detections(res, 200, 100, cfg)
    assert list(back.labels) == [1, 0]
    np.testing.assert_allclose(back.boxes, [[0, 0, 10, 10], [0, 0, 200, 50]], atol=1e-9)


@pytest.mark.parametrize("value, problem", [
    ({"x": 10, "y": 10, "width": 0, "height": 0}, "a box of size 0% x 0%"),
    ({"x": 50, "y": 50, "width": -20, "height": -10}, "a box of size -20% x -10%"),
    ({"x": 150, "y": 150, "width": 20, "height": 10}, "wholly outside the 200x100 image"),
    ({"x": "a", "y": 0, "width": 5, "height": 5}, "without numeric x, y, width and height"),
    ({"x": float("nan"), "y": 0, "width": 5, "height": 5}, "non-finite"),
])
def test_a_rectangle_no_one_can_have_meant_is_refused_by_name(value, problem):
    """Zero-size, inverted and off-image boxes were stored, and `export` then wrote COCO and YOLO
    boxes of negative size; each now makes the annotation a named problem (pull skips it)."""
    cfg = render_label_config(["text"])
    good = {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rectanglelabels": ["text"]}}
    bad = dict(good, value=dict(value, rectanglelabels=["text"]))
    assert len(results_to_detections([good], 200, 100, cfg)) == 1
    with pytest.raises(StudioError, match=re.escape(problem)):
        results_to_detections([good, bad], 200, 100, cfg)


def test_a_box_drawn_on_the_image_turned_in_the_browser_is_refused():
    cfg = render_label_config(["text"])
    r = {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "image_rotation": 90,
         "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rectanglelabels": ["text"]}}
    with pytest.raises(StudioError, match="turned by 90 degrees"):
        results_to_detections([r], 200, 100, cfg)
    assert len(results_to_detections([dict(r, image_rotation=360)], 200, 100, cfg)) == 1


def test_an_annotation_without_a_box_of_the_config_is_not_read_as_no_text():
    """A `choices` answer (or boxes of a renamed control) came out as no boxes, and pull stored
    the image as verified text-free; only an annotation with no result says that. Other results
    next to real boxes are left aside as before."""
    cfg = render_label_config(["text"])
    box = {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
           "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rectanglelabels": ["text"]}}
    choice = {"type": "choices", "from_name": "foo", "to_name": "image", "value": {"choices": ["x"]}}
    renamed = dict(box, from_name="label2")
    for results in ([choice], [renamed]):
        with pytest.raises(StudioError, match="no box of the labelling config"):
            results_to_detections(results, 200, 100, cfg)
    assert len(results_to_detections([choice, box], 200, 100, cfg)) == 1
    assert len(results_to_detections([], 200, 100, cfg)) == 0


def test_a_rotated_rectangle_over_the_edge_keeps_its_corners_in_the_image():
    """The box was clipped and its corners were not: a COCO export held the point (202.4, 57.4)
    on a 200 px image, outside its own bbox."""
    cfg = render_label_config(["text"])
    r = {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 200,
         "original_height": 150, "value": {"x": 80, "y": 10, "width": 30, "height": 10, "rotation": 45,
                                           "rectanglelabels": ["text"]}}
    det = results_to_detections([r], 200, 150, cfg)
    q = det.quads[0]
    assert q[:, 0].max() <= 200 and q[:, 0].min() >= 0 and q[:, 1].max() <= 150
    np.testing.assert_allclose([q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()], det.boxes[0], atol=1e-6)
