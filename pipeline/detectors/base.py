"""The detector protocol every backend implements.

Images go in as upright uint8 RGB arrays (H, W, 3) -- see `pipeline.imaging.load_rgb` --
and one `Detections` per image comes out, boxes in pixel xyxy of that array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.boxes import Detections


@runtime_checkable
class Detector(Protocol):
    """`name` is the backend (ppocr, fasterrcnn); `version` is what predictions are stored under.
    Optional `parallel_calls`: how many `detect` calls may run at once in one process (see
    `parallel_calls`)."""

    name: str
    version: str

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        ...


def parallel_calls(detector: object) -> int:
    """How many threads may call `detector.detect` at once: its `parallel_calls` (a detector that
    shares only a thread-safe session between calls, each on its own cores), else 1 (calls are
    serialised: torch models set process-wide thread counts and use every core for one image)."""
    return max(1, int(getattr(detector, "parallel_calls", 1)))


def merge_views(dets: Sequence[Detections]) -> Detections:
    """One image's detections from several views as one set: duplicates and overlapping pieces
    become their union (max score), so what is covered is at least what any view found."""
    dets = [d for d in dets if len(d)]
    if not dets:
        return Detections()
    if len(dets) == 1:
        return dets[0]
    from pipeline.detectors.tiling import merge_boxes

    boxes = np.concatenate([d.boxes for d in dets])
    scores = np.concatenate([d.scores for d in dets])
    group = np.concatenate([np.full(len(d), i) for i, d in enumerate(dets)])
    b, s = merge_boxes(boxes, scores, group)
    order = np.argsort(-s, kind="stable")
    return Detections(b[order], s[order], np.zeros(len(order), dtype=np.int64))


def detect_visible(detector: Detector, views_per_image: Sequence[Sequence[np.ndarray]]) -> list[Detections]:
    """Detections per image over every view a viewer may show of it (`imaging.visible_views`):
    one detector call for all views, merged per image. An opaque image has one view."""
    flat = [v for views in views_per_image for v in views]
    dets = detector.detect(flat) if flat else []
    if len(dets) != len(flat):
        raise RuntimeError(f"detector returned {len(dets)} results for {len(flat)} images")
    out: list[Detections] = []
    i = 0
    for views in views_per_image:
        out.append(merge_views(dets[i:i + len(views)]))
        i += len(views)
    return out
