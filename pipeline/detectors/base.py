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
    """`name` is the backend (ppocr, fasterrcnn); `version` is what predictions are stored under."""

    name: str
    version: str

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        ...
