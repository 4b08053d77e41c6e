"""Detections <-> Label Studio results. Coordinates change only via `pipeline.boxes`."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np

from pipeline.boxes import Detections, clip, ls_value_to_xyxy, xyxy_to_ls_value
from pipeline.studio.client import StudioError
from pipeline.studio.project import LabelConfig


def detections_to_results(det: Detections, width: int, height: int, config: LabelConfig) -> list[dict[str, Any]]:
    """One rectanglelabels result per box, validated against the label config (clipped to the
    image, non-empty, known label, finite); invalid boxes are dropped, not sent."""
    out = []
    boxes = clip(det.boxes, width, height) if len(det) else det.boxes
    for box, score, label in zip(boxes, det.scores, det.labels):
        if not np.all(np.isfinite(box)) or box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            continue
        value = xyxy_to_ls_value(box, width, height)
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


def results_to_detections(results: list[dict[str, Any]], width: int, height: int, config: LabelConfig) -> Detections:
    """Rectangles of one annotation to pixel xyxy of the upright original (rotation handled by
    `ls_value_to_xyxy`). Sizes come from the catalog; `original_width/height` only as a check."""
    boxes, labels, scores = [], [], []
    for r in results or []:
        if r.get("type") != "rectanglelabels" or r.get("from_name") != config.from_name:
            continue
        v = r.get("value") or {}
        names = v.get("rectanglelabels") or [config.classes[0]]
        boxes.append(ls_value_to_xyxy(v, width, height))
        labels.append(config.index_of(names[0]))
        scores.append(1.0)
    if not boxes:
        return Detections()
    return Detections(clip(np.asarray(boxes), width, height), np.asarray(scores), np.asarray(labels))
