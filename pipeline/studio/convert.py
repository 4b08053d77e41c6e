"""Detections <-> Label Studio results. Coordinates change only via `pipeline.boxes`."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np

from pipeline.boxes import (Detections, clip, ls_value_to_quad, ls_value_to_xyxy, oriented_rects,
                            quad_to_ls_value, visibly_slanted, xyxy_to_ls_value)
from pipeline.studio.client import StudioError
from pipeline.studio.project import LabelConfig


EMPTY_CONFIDENCE = 0.5   # a prediction with no box: text missed whole is the costliest error


def confidence(det: Detections) -> float:
    """A Label Studio prediction's score: the mean box score. An empty prediction gets 0.5, among
    the uncertain: as 1.0 ("certain") Label Studio's uncertainty sampling served images where
    the detector found nothing last, yet a detector that found nothing may have missed it all
    (`rank` gives them a floor score for the same reason)."""
    return float(np.mean(det.scores)) if len(det) else EMPTY_CONFIDENCE


def detections_to_results(det: Detections, width: int, height: int, config: LabelConfig) -> list[dict[str, Any]]:
    """One rectanglelabels result per box, validated against the label config (clipped to the
    image, non-empty, known label, finite); invalid boxes are dropped, not sent. A rotated DB
    quad becomes a rotated rectangle (`rotation`, degrees about its top-left corner) when it
    lies inside the image, so reviewers see and fix the real shape; otherwise its clipped box."""
    out = []
    boxes = clip(det.boxes, width, height) if len(det) else det.boxes
    rects = oriented_rects(det.quads) if det.quads is not None and len(det) else None
    slanted = visibly_slanted(rects) if rects is not None else np.zeros(len(boxes), bool)
    for i, (box, score, label) in enumerate(zip(boxes, det.scores, det.labels)):
        if not np.all(np.isfinite(box)) or box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            continue
        value = xyxy_to_ls_value(box, width, height)
        if rects is not None and slanted[i] and np.isfinite(rects[i]).all() \
                and (rects[i] >= -0.5).all() and (rects[i][:, 0] <= width + 0.5).all() and (rects[i][:, 1] <= height + 0.5).all():
            value = quad_to_ls_value(np.clip(rects[i], 0, [width, height]), width, height)
        value["rectanglelabels"] = [config.label_of(int(label))]
        out.append({
            "id": uuid.uuid4().hex[:10], "type": "rectanglelabels",
            "from_name": config.from_name, "to_name": config.to_name,
            "original_width": int(width), "original_height": int(height), "image_rotation": 0,
            "value": value, "score": round(float(score), 4) if math.isfinite(float(score)) else 0.0,
        })
    validate_results(out, config)
    return out


def validate_results(results: list[dict[str, Any]], config: LabelConfig) -> None:
    """Raise StudioError if a result would not fit the project's label config."""
    for r in results:
        if r.get("from_name") != config.from_name or r.get("to_name") != config.to_name:
            raise StudioError(f"prediction uses {r.get('from_name')}->{r.get('to_name')}, label config has "
                              f"{config.from_name}->{config.to_name}")
        v = r["value"]
        for lab in v.get("rectanglelabels", []):
            config.index_of(lab)
        if not (-1e-6 <= v["x"] <= 100 + 1e-6 and -1e-6 <= v["y"] <= 100 + 1e-6 and v["width"] > 0 and v["height"] > 0):
            raise StudioError(f"prediction box outside the image: {v}")


def _checked_xyxy(v: dict[str, Any], width: int, height: int) -> list[float]:
    """The rectangle's enclosing pixel box; StudioError for one no one can have meant: a
    non-number, a size of 0 or less, or wholly outside the image. Stored, they became inverted
    and empty boxes that `export` wrote as negative COCO/YOLO sizes (a box partly outside is
    clipped to the image)."""
    try:
        x, y, w, h = (float(v[k]) for k in ("x", "y", "width", "height"))
        rot = float(v.get("rotation", 0.0) or 0.0)
    except (KeyError, TypeError, ValueError):
        raise StudioError(f"a box without numeric x, y, width and height ({v!r:.120})") from None
    if not all(math.isfinite(t) for t in (x, y, w, h, rot)):
        raise StudioError(f"a box with a non-finite coordinate ({v!r:.120})")
    if w * width / 100.0 < 0.5 or h * height / 100.0 < 0.5:
        raise StudioError(f"a box of size {w:g}% x {h:g}% of the image (under half a pixel, or negative)")
    b = ls_value_to_xyxy(v, width, height)
    if b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0:
        raise StudioError(f"a box wholly outside the {width}x{height} image (x {x:g}%, y {y:g}%)")
    return b


def results_to_detections(results: list[dict[str, Any]], width: int, height: int, config: LabelConfig) -> Detections:
    """Rectangles of one annotation to pixel xyxy of the upright original (rotation handled by
    `ls_value_to_xyxy`), with the rotated rectangles' corners as `quads` when any is rotated
    (redact then fills the reviewed shape). Sizes come from the catalog; `original_width/height`,
    when given, must match them: percentages of an image of another size (or the other way
    round, EXIF orientation not applied) would land somewhere else without a word. A label
    outside the config's classes or such a mismatch raises StudioError naming it."""
    boxes, labels, scores, quads = [], [], [], []
    other: list[str] = []
    for r in results or []:
        if r.get("type") != "rectanglelabels" or r.get("from_name") != config.from_name:
            other.append(f"{r.get('type')} of {r.get('from_name')}" if isinstance(r, dict) else type(r).__name__)
            continue
        ow, oh = r.get("original_width"), r.get("original_height")
        if isinstance(ow, (int, float)) and isinstance(oh, (int, float)) and (round(ow), round(oh)) != (width, height):
            raise StudioError(f"a box was drawn on a {round(ow)}x{round(oh)} image, but the image is {width}x{height}")
        turned = r.get("image_rotation")
        if isinstance(turned, (int, float)) and round(float(turned)) % 360:
            raise StudioError(f"a box was drawn on the image turned by {turned:g} degrees in Label Studio; "
                              "draw it on the upright image")
        v = r.get("value") or {}
        names = v.get("rectanglelabels") or [config.classes[0]]
        boxes.append(_checked_xyxy(v, width, height))
        quads.append(ls_value_to_quad(v, width, height))
        labels.append(config.index_of(names[0]))
        scores.append(1.0)
    if not boxes and other:
        # a human's answer that is not a box of this config (a `choices` result, a renamed
        # control) was stored as "verified: no text"; only an annotation with no result says that
        raise StudioError(f"no box of the labelling config ({config.from_name}, rectanglelabels) among its "
                          f"{len(other)} result(s) ({', '.join(dict.fromkeys(other))}); not read as 'no text'")
    if not boxes:
        return Detections()
    rotated = any(abs(float((r.get("value") or {}).get("rotation", 0) or 0)) % 360 > 1e-6
                  for r in results or [] if isinstance(r, dict))
    # corners over the image's edge are clipped as the boxes are: an export held a segmentation
    # point at x = 202 on a 200 px image, outside its own clipped bbox
    return Detections(clip(np.asarray(boxes), width, height), np.asarray(scores), np.asarray(labels),
                      np.clip(np.asarray(quads, dtype=np.float64), 0, [width, height]) if rotated else None)
