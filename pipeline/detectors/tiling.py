"""One tiler for every detector: overlapping windows over a large image, each window's
detections moved into the image's frame, and the pieces merged into one set.

The window layout (`tile_starts`, `Tiler.windows`) is one rule for all detectors. Merging has
two named strategies, chosen by what a detector emits (tests/test_tiling.py shows why):

- `union` (`merge_boxes`): duplicates, boxes mostly inside another and pieces of one line cut
  by a tile edge become their union with the max score. Right for candidates that are already
  confident (PP-OCR/DB keep only boxes above their box threshold) and for merging views.
- `nms`: boxes cut by an inner tile edge are dropped (the neighbouring tile or the whole-image
  pass sees them whole), then greedy NMS per label. Right for a detector that emits low-score
  candidates (Faster R-CNN down to 0.05): a union would let a 0.06 box swallow a 0.9 word and
  hand the merged box the 0.9 score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.boxes import Detections, enclosing_rect, is_axis_aligned, oriented_rects, polygon_area, quad_frames

MERGES = ("union", "nms")
EDGE_MARGIN = 2.0   # px: a box this close to an inner tile edge was cut by it


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by >= `overlap`
    (the last tile ends at `length`)."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class Tiler:
    """Square tiles of `tile` px overlapping by `overlap` px; `merge` is `union` or `nms`."""

    tile: int
    overlap: int
    merge: str = "union"
    nms_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ValueError(f"unknown merge {self.merge!r}: use {' or '.join(MERGES)}")
        if self.tile < 1:
            raise ValueError("tile must be at least 1 px")

    def windows(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1) of every tile, row by row."""
        return [(x, y, min(x + self.tile, width), min(y + self.tile, height))
                for y in tile_starts(height, self.tile, self.overlap)
                for x in tile_starts(width, self.tile, self.overlap)]

    def slices(self, image: np.ndarray) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
        """Each window and its view of `image` (no copy)."""
        h, w = image.shape[:2]
        for x0, y0, x1, y1 in self.windows(w, h):
            yield (x0, y0, x1, y1), image[y0:y1, x0:x1]

    def detect(self, image: np.ndarray, detect: Callable[[list[np.ndarray]], list[Detections]],
               batch: int = 1) -> list[Detections]:
        """`detect` over every tile (`batch` tiles per call); per tile, its detections in the
        image's frame (with the `nms` merge, boxes cut by an inner tile edge already dropped)."""
        h, w = image.shape[:2]
        tiles = list(self.slices(image))
        out: list[Detections] = []
        for i in range(0, len(tiles), max(1, batch)):
            chunk = tiles[i:i + max(1, batch)]
            dets = detect([view for _, view in chunk])
            for (win, _), d in zip(chunk, dets):
                if self.merge == "nms":
                    d = d[~cut_by_inner_edge(d.boxes, win, w, h)]
                out.append(d.translate(win[0], win[1]))
        return out

    def combine(self, parts: Sequence[Detections]) -> Detections:
        """The parts (tiles and whole-image passes) as one set, by this tiler's merge."""
        return merge_parts(parts, self.merge, self.nms_iou)


def cut_by_inner_edge(boxes: np.ndarray, window: tuple[int, int, int, int], width: int, height: int,
                      margin: float = EDGE_MARGIN) -> np.ndarray:
    """Per box (in the tile's own frame): it touches an edge of the tile that is not an edge of
    the image, so the tile saw only part of it."""
    x0, y0, x1, y1 = window
    tw, th = x1 - x0, y1 - y0
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (((b[:, 0] <= margin) & (x0 > 0)) | ((b[:, 1] <= margin) & (y0 > 0))
            | ((b[:, 2] >= tw - margin) & (x1 < width)) | ((b[:, 3] >= th - margin) & (y1 < height)))


def touches_image_edge(boxes: np.ndarray, width: int, height: int, margin: float = EDGE_MARGIN) -> np.ndarray:
    """Per xyxy box (in the image's frame): it reaches within `margin` of the image's edge."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 0] <= margin) | (b[:, 1] <= margin) | (b[:, 2] >= width - margin) | (b[:, 3] >= height - margin)


def edge_strips(width: int, height: int, depth: int, border: int
                ) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """The strips `depth` px deep along the top, bottom, left and right edges of a width x height
    image: each (x0, y0, x1, y1) window and the px to replicate around it (`edge_border`): for
    the top and bottom strips at both ends too, none on a strip's inner side (where the image
    goes on)."""
    d = max(1, int(depth))
    wins = [(0, 0, width, min(d, height)), (0, max(0, height - d), width, height),
            (0, 0, min(d, width), height), (max(0, width - d), 0, width, height)]
    return [(win, edge_border(win, width, height, border)) for win in wins]


def edge_border(window: tuple[int, int, int, int], width: int, height: int, border: int
                ) -> tuple[int, int, int, int]:
    """The px to replicate around a window of a width x height image (top, bottom, left, right):
    `border` on each of its sides that is an edge of the image (DB sees background beyond
    text there), none where the image goes on."""
    x0, y0, x1, y1 = window
    b = max(0, int(border))
    return (b if y0 <= 0 else 0, b if y1 >= height else 0, b if x0 <= 0 else 0, b if x1 >= width else 0)


def merge_parts(parts: Sequence[Detections], merge: str = "union", nms_iou: float = 0.5) -> Detections:
    """Detections from several tiles/passes/views of one image as one set, sorted by score (a
    single non-empty part is returned as it is).
    `union`: `merge_boxes` with one group per part (labels become 0; quads kept when any part has
    them); `nms`: greedy NMS per label."""
    if merge not in MERGES:
        raise ValueError(f"unknown merge {merge!r}: use {' or '.join(MERGES)}")
    nonempty = [d for d in parts if len(d)]
    if not nonempty:
        return Detections()
    if merge == "nms":
        return Detections.concat(nonempty).nms(nms_iou)
    if len(nonempty) == 1:
        return nonempty[0]
    with_quads = any(d.quads is not None for d in nonempty)
    boxes = np.concatenate([d.boxes for d in nonempty])
    scores = np.concatenate([d.scores for d in nonempty])
    group = np.concatenate([np.full(len(d), i) for i, d in enumerate(nonempty)])
    if with_quads:
        quads = np.concatenate([d.quads_or_rects() for d in nonempty])
        b, s, q = merge_boxes(boxes, scores, group, quads=quads)
    else:
        (b, s), q = merge_boxes(boxes, scores, group), None
    order = np.argsort(-s, kind="stable")
    return Detections(b[order], s[order], np.zeros(len(order), dtype=np.int64), None if q is None else q[order])


def merge_boxes(boxes: np.ndarray, scores: np.ndarray, group: np.ndarray,
                iou: float = 0.5, contain: float = 0.8, same_line: float = 0.6,
                quads: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Merge boxes found by different passes/tiles: duplicates (IoU >= `iou`), boxes mostly inside
    another (>= `contain` of the smaller one's area), and intersecting pieces of one line cut by a
    tile edge (from different groups, vertical overlap >= `same_line` of the lower height).
    Merged boxes become their union with the max score, repeated until nothing changes; each box
    (best score first) merges into the first kept box it meets.
    With `quads` (N, 4, 2), the tests use the quads' own overlap (slanted neighbours whose
    enclosing boxes overlap are not merged) and they are returned too: a box that merged
    nothing keeps its quad, a merged one gets the minimum-area rectangle around its parts'
    corners (a slanted line found at two scales stays slanted)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    s = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
    g = np.asarray(group).reshape(-1)
    _, gidx = np.unique(g, return_inverse=True)
    gr = np.zeros((len(b), int(gidx.max()) + 1 if len(gidx) else 0), dtype=bool)   # groups of each box
    gr[np.arange(len(b)), gidx] = True
    q = None if quads is None else np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2).copy()
    aligned = None if q is None else is_axis_aligned(q)
    changed = True
    while changed:
        changed = False
        kept: list[int] = []
        for i in np.argsort(-s, kind="stable"):
            target = _first_mergeable(i, kept, b, gr, q, aligned, iou, contain, same_line) if kept else None
            if target is None:
                kept.append(int(i))
                continue
            b[target, :2] = np.minimum(b[target, :2], b[i, :2])
            b[target, 2:] = np.maximum(b[target, 2:], b[i, 2:])
            s[target] = max(s[target], s[i])
            gr[target] |= gr[i]
            if q is not None and aligned is not None:
                q[target] = enclosing_rect(np.concatenate([q[target], q[i]]))
                aligned[target] = is_axis_aligned(q[target][None])[0]
            changed = True
        b, s, gr = b[kept], s[kept], gr[kept]
        if q is not None and aligned is not None:
            q, aligned = q[kept], aligned[kept]
    if q is None:
        return b, s
    return b, s, q.reshape(-1, 4, 2)


def _first_mergeable(i: int, kept: list[int], b: np.ndarray, gr: np.ndarray, q: np.ndarray | None,
                     aligned: np.ndarray | None, iou: float, contain: float, same_line: float) -> int | None:
    """The first kept box (in `kept` order) that box `i` merges with, or None. The enclosing
    boxes are tested for all kept boxes at once; a pair with a slanted quad uses `_merge_quads`."""
    k = np.asarray(kept)
    a, o = b[i], b[k]
    ix = np.minimum(a[2], o[:, 2]) - np.maximum(a[0], o[:, 0])
    iy = np.minimum(a[3], o[:, 3]) - np.maximum(a[1], o[:, 1])
    meets = (ix > 0) & (iy > 0)
    if not meets.any():
        return None
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_o = (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1])
    disjoint = ~(gr[k] & gr[i]).any(axis=1)
    ok = ((inter / np.maximum(area_a + area_o - inter, 1e-9) >= iou)
          | (inter / np.maximum(np.minimum(area_a, area_o), 1e-9) >= contain)
          | (disjoint & (iy / np.maximum(np.minimum(a[3] - a[1], o[:, 3] - o[:, 1]), 1e-9) >= same_line)))
    slanted = np.zeros(len(k), dtype=bool) if aligned is None else ~(aligned[i] & aligned[k])
    for j in np.flatnonzero(meets & (ok | slanted)):
        if not slanted[j]:
            return int(k[j])
        if q is not None and _merge_quads(q[i], q[k[j]], bool(disjoint[j]), iou, contain, same_line):
            return int(k[j])
    return None


def _merge_quads(qa: np.ndarray, qb: np.ndarray, disjoint: bool, iou: float, contain: float, same_line: float) -> bool:
    """The merge test on two quads' oriented rectangles (`disjoint`: from different groups)."""
    import cv2

    ra, rb = oriented_rects(np.stack([qa, qb]))
    inter, _ = cv2.intersectConvexConvex(ra.astype(np.float32), rb.astype(np.float32))
    if inter <= 0:
        return False
    area_a, area_b = polygon_area(np.stack([ra, rb]))
    if inter / max(area_a + area_b - inter, 1e-9) >= iou or inter / max(min(area_a, area_b), 1e-9) >= contain:
        return True
    if disjoint:   # pieces of one line: nearly parallel and overlapping across the line
        u, v, _, _ = quad_frames(np.stack([ra, rb]))
        if abs(float(u[0] @ u[1])) < math.cos(math.radians(10)):
            return False
        pa, pb = ra @ v[0], rb @ v[0]
        overlap = min(pa.max(), pb.max()) - max(pa.min(), pb.min())
        return overlap / max(min(np.ptp(pa), np.ptp(pb)), 1e-9) >= same_line
    return False
