"""The one fake detector of the test suite: the Detector protocol, deterministic and cheap.

`boxes` is either fixed boxes for every image (default: `BOXES`) or a function `image -> Detections` (boxes that
depend on the pixels); `calls` counts the images seen, `shapes` their shapes. `fail_on=k`
interrupts on the k-th image (KeyboardInterrupt, as a user's Ctrl-C), `fail_on_black` raises
RuntimeError on an all-black image (a detector error)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.boxes import Detections


BOXES = [[5.0, 6.0, 25.0, 14.0], [40.5, 20.2, 55.0, 31.7]]   # known "text" boxes (upright frame)


class FakeDetector:
    name = "fake"

    def __init__(self, boxes: Any | Callable[[np.ndarray], Detections] = BOXES, scores: Sequence[float] | None = None,
                 version: str = "fake-1", fail_on: int | None = None, fail_on_black: bool = False,
                 name: str = "fake") -> None:
        self.name = name
        self.per_image = boxes if callable(boxes) else None
        self.boxes = np.zeros((0, 4)) if callable(boxes) else np.asarray(boxes, dtype=float).reshape(-1, 4)
        self.scores = np.full(len(self.boxes), 0.9) if scores is None else np.asarray(scores, dtype=float)
        self.version = version
        self.fail_on = fail_on
        self.fail_on_black = fail_on_black
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def detect_one(self, image: np.ndarray) -> Detections:
        if self.per_image is not None:
            return self.per_image(image)
        return Detections(self.boxes.copy(), self.scores.copy())

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for im in images:
            self.calls += 1
            if self.fail_on is not None and self.calls == self.fail_on:
                raise KeyboardInterrupt  # an interruption in the middle of a run
            if self.fail_on_black and im.max() == 0:
                raise RuntimeError("black image")
            assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
            self.shapes.append(im.shape)
            out.append(self.detect_one(im))
        return out
