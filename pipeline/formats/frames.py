"""Which frame a label was drawn in, and its boxes in the upright one.

A label file records the image size it was drawn at. For an EXIF-rotated photo that is either
the displayed (upright) size or the stored (raw) one; boxes in the raw frame are turned upright
here. `import` stores labels this way, and `evaluate --gt` scores against them the same way:
one rule, so a label that fits neither frame is the same error everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.boxes import enclosing_rect, exif_upright, exif_upright_points
from pipeline.formats.devset import LabelledImage


def to_upright(label: LabelledImage, width: int, height: int, orientation: int, frame: str = "auto"
               ) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Boxes and quads (`label_quads`) in the upright frame of a catalog image (width/height as
    displayed) and whether they were rotated from the raw frame. Raises ValueError when the
    label's size fits neither frame."""
    raw_w, raw_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    size = (label.width, label.height)
    quads = label_quads(label)
    if frame == "upright" or (frame == "auto" and size == (width, height)):
        if size != (width, height):
            raise ValueError(f"labelled as {size[0]}x{size[1]} but the upright image is {width}x{height}")
        return label.boxes.copy(), quads, False
    if frame == "raw" or (frame == "auto" and orientation != 1 and size == (raw_w, raw_h)):
        if size != (raw_w, raw_h):
            raise ValueError(f"labelled as {size[0]}x{size[1]} but the stored image is {raw_w}x{raw_h}")
        up = exif_upright_points(quads, orientation, raw_w, raw_h) if quads is not None else None
        return exif_upright(label.boxes, orientation, raw_w, raw_h), up, orientation != 1
    raise ValueError(f"labelled as {size[0]}x{size[1]} but the image is {width}x{height}")


def ambiguous_frame(width: int, height: int, orientation: int) -> bool:
    """An EXIF-rotated image whose stored and displayed sizes are the same (orientations 2-4,
    or any rotation of a square): a label's size cannot say which frame it was drawn in."""
    return orientation != 1 and (orientation in (2, 3, 4) or width == height)


def fit_to_image(path: Path, label: LabelledImage) -> LabelledImage:
    """`label` in the upright frame of the image file at `path`: rotated when its size is the
    stored frame's, as `import --frame auto` does. ValueError "labelled as WxH but the image is
    W'xH'" for a size that fits neither frame."""
    from pipeline.imaging import displayed_size

    width, height, orientation = displayed_size(path)
    boxes, quads, rotated = to_upright(label, width, height, orientation)
    if not rotated:
        return label
    polys = tuple(tuple(float(v) for v in q.ravel()) for q in quads) if quads is not None else ()
    return dataclasses.replace(label, width=width, height=height, boxes=boxes, polys=polys)


def label_quads(label: LabelledImage) -> np.ndarray | None:
    """(N, 4, 2) corners per box from the record's `polys` (ICDAR and MSRA quadrilaterals,
    rotated synthetic text), or None when it has none. A 4-point polygon is kept as drawn, a
    longer one (curved text) becomes its minimum-area rectangle, and a box without a polygon is
    its own rectangle. The catalog's `quads` column carries them, so training shrinks the text's
    real shape."""
    if len(label.polys) != len(label.boxes) or not any(label.polys):
        return None
    return np.stack([p if len(p) == 4 else enclosing_rect(p) for p in label.polygons()])
