"""One box type and every box conversion.

`Detections` holds boxes as an (N, 4) float array of pixel xyxy in the original image
(after EXIF orientation is applied), with scores and integer labels, and optionally the
(N, 4, 2) quadrilaterals a detector found (DB/PP-OCR finds rotated text); the xyxy box is then
the quad's enclosing rectangle, one view of it. `Detections` clips, translates (a tile's
detections into the image's frame) and suppresses (`nms`) itself. Vectorised helpers (IoU,
greedy one-to-one matching, the share of a box inside a mask, clipping, padding, masks) and
every other format's box convention (Label Studio percent, COCO xywh, YOLO normalised centre)
live here so there is exactly one place where coordinates change representation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def _as_boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) xyxy, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes (N,4 xyxy px), scores (N,), labels (N,) for one image; `quads` (N,4,2) or None."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    quads: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes)
        n = len(boxes)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1) if n else np.zeros((0,))
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1) if n else np.zeros((0,), dtype=np.int64)
        if len(scores) != n:
            scores = np.ones(n) if len(scores) == 0 else scores
        if len(labels) != n:
            labels = np.zeros(n, dtype=np.int64) if len(labels) == 0 else labels
        if len(scores) != n or len(labels) != n:
            raise ValueError(f"{n} boxes but {len(scores)} scores and {len(labels)} labels")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        if self.quads is not None:
            quads = np.asarray(self.quads, dtype=np.float64)
            quads = quads.reshape(-1, 4, 2) if quads.size else np.zeros((0, 4, 2))
            if len(quads) != n:
                raise ValueError(f"{n} boxes but {len(quads)} quads")
            object.__setattr__(self, "quads", quads)

    @classmethod
    def from_quads(cls, quads: Any, scores: Any = (), labels: Any = ()) -> "Detections":
        """Detections whose boxes are the enclosing rectangles of `quads` (N, 4, 2)."""
        q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
        return cls(quad_to_xyxy(q), scores, labels, q)

    def quads_or_rects(self) -> np.ndarray:
        """The quads, or each box's rectangle as a quad when the detector gave none."""
        return self.quads if self.quads is not None else xyxy_to_quad(self.boxes)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.labels[index],
                          None if self.quads is None else self.quads[index])

    def filter(self, min_score: float) -> "Detections":
        return self[self.scores >= min_score]

    def clip(self, width: int, height: int) -> "Detections":
        """Boxes clipped to a `width` x `height` image. Quads are left as they are: clipping a
        rotated rectangle's corners one by one would cut into it (masks clip when they rasterise)."""
        return Detections(clip(self.boxes, width, height), self.scores, self.labels, self.quads)

    def translate(self, dx: float, dy: float) -> "Detections":
        """Shifted by (dx, dy): a tile's or window's detections into the whole image's frame."""
        shift = np.array([dx, dy], dtype=np.float64)
        return Detections(self.boxes + np.tile(shift, 2), self.scores, self.labels,
                          None if self.quads is None else self.quads + shift)

    def nms(self, iou: float = 0.5, per_label: bool = True) -> "Detections":
        """Greedy non-maximum suppression: best score first, a box overlapping a kept one with
        IoU > `iou` is dropped (only within its label when `per_label`); sorted by score."""
        return self[nms(self.boxes, self.scores, iou, self.labels if per_label else None)]

    def sorted_by_score(self) -> "Detections":
        return self[np.argsort(-self.scores, kind="stable")]

    def to_json(self) -> dict[str, list]:
        """Plain lists (rounded to 0.01 px) for JSONL and the catalog; `quads` only when present."""
        d: dict[str, list] = {
            "boxes": boxes_json(self.boxes),
            "scores": [round(float(s), 4) for s in self.scores],
            "labels": [int(x) for x in self.labels],
        }
        if self.quads is not None:
            d["quads"] = quads_json(self.quads)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Detections":
        return cls(d.get("boxes", []), d.get("scores", []), d.get("labels", []), d.get("quads"))

    @classmethod
    def concat(cls, items: Sequence["Detections"]) -> "Detections":
        items = [d for d in items if len(d)]
        if not items:
            return cls()
        with_quads = any(d.quads is not None for d in items)
        return cls(
            np.concatenate([d.boxes for d in items]),
            np.concatenate([d.scores for d in items]),
            np.concatenate([d.labels for d in items]),
            np.concatenate([d.quads_or_rects() for d in items]) if with_quads else None,
        )


# --- vectorised helpers ------------------------------------------------------------------

def area(boxes: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape (len(a), len(b))."""
    a, b = _as_boxes(a), _as_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = _intersections(a, b)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def inside_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise share of each box of `a` that lies inside each box of `b`, shape (len(a), len(b)):
    a word inside a line-sized region is 1.0 there, where its IoU is small."""
    a, b = _as_boxes(a), _as_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    area_a = area(a)[:, None]
    return np.where(area_a > 0, _intersections(a, b) / np.maximum(area_a, 1e-12), 0.0)


def centre_inside(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Per box of `a`: its centre lies in one of the boxes of `b` (None: in none)."""
    a = _as_boxes(a)
    if b is None or not len(b) or not len(a):
        return np.zeros(len(a), bool)
    b = _as_boxes(b)
    cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    return ((cx[:, None] >= b[None, :, 0]) & (cx[:, None] <= b[None, :, 2])
            & (cy[:, None] >= b[None, :, 1]) & (cy[:, None] <= b[None, :, 3])).any(1)


def nms(boxes: Any, scores: Any, iou: float = 0.5, labels: Any = None) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first: a box whose IoU with a
    kept box (of the same label, when `labels` is given) exceeds `iou` is dropped."""
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="stable")
    if len(b) == 0:
        return order.astype(np.int64)
    over = iou_matrix(b, b) > iou
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        over &= lab[:, None] == lab[None, :]
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return np.asarray(keep, dtype=np.int64)


def greedy_match(ious: np.ndarray, scores: Any, threshold: float = 0.5,
                 eligible: np.ndarray | None = None) -> np.ndarray:
    """One-to-one greedy matching of predictions (rows of `ious`) to targets (columns): in
    descending score order (stable), each prediction takes the still-free eligible target it
    overlaps most, if that IoU >= `threshold`. Returns the matched target per prediction, -1 for none."""
    ious = np.asarray(ious, dtype=np.float64).reshape(len(np.asarray(scores).reshape(-1)), -1)
    match = np.full(len(ious), -1, dtype=np.int64)
    if ious.shape[1] == 0:
        return match
    free = np.ones(ious.shape[1], dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    for i in np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable"):
        cand = np.where(free, ious[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= threshold:
            match[i] = j
            free[j] = False
    return match


def inside_fraction(boxes: Any, mask: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """Share of each box's pixels (outward-rounded, clipped: `to_int_pixels`) inside the boolean
    (H, W) `mask`, via one integral image. A box with no pixel in the image gets `empty`: 1.0
    (nothing of it is uncovered) unless the caller must not trust such a box (legibility)."""
    b = _as_boxes(boxes)
    out = np.full(len(b), float(empty))
    if not len(b):
        return out
    h, w = mask.shape[:2]
    px = to_int_pixels(b, w, h)
    x0, y0, x1, y1 = px.T
    n = (x1 - x0) * (y1 - y0)
    ok = (x1 > x0) & (y1 > y0)
    mask = np.asarray(mask, dtype=bool)
    if int(n[ok].sum()) <= h * w // 4 and len(b) <= 256:
        # few or small boxes (a page's words): counting inside each one reads a fraction of the
        # pixels two full-image cumsums write; scoring a validation grid spent 14 of 65 s there
        inside = np.array([np.count_nonzero(mask[a:c, l:r]) if k else 0
                           for l, a, r, c, k in zip(x0, y0, x1, y1, ok)], dtype=np.int64)
    else:
        acc = np.int32 if h * w < 2**31 else np.int64     # int32 sums run ~3x faster; exact below 2^31 px
        integral = np.zeros((h + 1, w + 1), dtype=acc)
        integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=acc), axis=1, dtype=acc)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    out[ok] = inside[ok] / n[ok]
    return out


def clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    b = _as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def pad(boxes: np.ndarray, px: float = 0.0, frac_of_height: float = 0.0) -> np.ndarray:
    """Grow each box by `px` plus `frac_of_height` x its height on every side."""
    b = _as_boxes(boxes).copy()
    grow = px + frac_of_height * (b[:, 3] - b[:, 1])
    b[:, :2] -= grow[:, None]
    b[:, 2:] += grow[:, None]
    return b


def line_bridges(new: Any, old: Any, max_gap: float = 4.0) -> np.ndarray:
    """xyxy boxes spanning the horizontal gap between a box of `new` and a box of `old` that sit
    on one text line (vertical overlap >= half the lower box's height) at most `max_gap` x the
    lower box's height apart, as tall as the lower box. Covering fragments of a line leaves its middle readable to a
    person even when no OCR line there has 3 characters ("-16" between two covered parts)."""
    a, b = _as_boxes(new), _as_boxes(old)
    if not len(a) or not len(b):
        return np.zeros((0, 4))
    ha, hb = (a[:, 3] - a[:, 1])[:, None], (b[:, 3] - b[:, 1])[None, :]
    y0, y1 = np.maximum(a[:, None, 1], b[None, :, 1]), np.minimum(a[:, None, 3], b[None, :, 3])
    same_line = (y1 - y0) >= 0.5 * np.minimum(ha, hb)
    left = np.maximum(a[:, None, 0], b[None, :, 0])     # start of the right-hand box
    right = np.minimum(a[:, None, 2], b[None, :, 2])    # end of the left-hand box
    gap = left - right
    keep = same_line & (gap > 0) & (gap <= max_gap * np.minimum(ha, hb))
    i, j = np.nonzero(keep)
    shorter = np.where((ha[:, 0][i] <= hb[0][j])[:, None], a[i], b[j])   # the bridge is the shorter box's height
    return np.stack([right[i, j], shorter[:, 1], left[i, j], shorter[:, 3]], axis=1).reshape(-1, 4)


def longest_uncovered_run(box: Any, others: Any) -> np.ndarray:
    """The longest stretch of an xyxy `box`, along its long axis and at its full height (or
    width), that no box of `others` in line with it covers (overlap across the axis >= half
    the thinner one's extent); shape (4,), zero length when it is all covered.

    A detector's line box over a labelled line is covered by the line's word boxes even
    though they are much thinner (area would call it half uncovered); a word the labeller
    left out of the line is the stretch between two word boxes."""
    b = np.asarray(box, dtype=np.float64).reshape(4)
    o = _as_boxes(others)
    horizontal = (b[2] - b[0]) >= (b[3] - b[1])
    lo, hi = (0, 2) if horizontal else (1, 3)        # along the axis
    clo, chi = (1, 3) if horizontal else (0, 2)      # across it
    runs = [(b[lo], b[hi])]
    if len(o):
        across = np.minimum(o[:, chi], b[chi]) - np.maximum(o[:, clo], b[clo])
        in_line = across >= 0.5 * np.minimum(o[:, chi] - o[:, clo], b[chi] - b[clo])
        for s, e in sorted(zip(o[in_line, lo], o[in_line, hi])):
            runs = [piece for r0, r1 in runs for piece in ((r0, min(r1, s)), (max(r0, e), r1)) if piece[1] > piece[0]]
    start, end = max(runs, key=lambda r: r[1] - r[0]) if runs else (b[lo], b[lo])
    out = b.copy()
    out[lo], out[hi] = start, end
    return out


def to_int_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Outward-rounded integer xyxy (x1, y1 exclusive), clipped: the pixels a box touches."""
    b = _as_boxes(boxes)
    out = np.stack([np.floor(b[:, 0]), np.floor(b[:, 1]), np.ceil(b[:, 2]), np.ceil(b[:, 3])], axis=1)
    return clip(out, width, height).astype(np.int64)


def union_mask(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean (H, W) mask of the pixels covered by any box."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in to_int_pixels(boxes, width, height):
        mask[y0:y1, x0:x1] = True
    return mask


def boxes_json(boxes: Any) -> list:
    """(N, 4) xyxy boxes as JSON lists at 0.01 px: how sidecars, predictions and annotations store boxes."""
    return [[round(float(v), 2) for v in b] for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)]


def quads_json(quads: Any) -> list:
    """(N, 4, 2) corners as JSON lists at 0.01 px: how sidecars, predictions and annotations store quads."""
    return [[[round(float(x), 2), round(float(y), 2)] for x, y in q] for q in np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)]


def quad_to_xyxy(quads: Any) -> np.ndarray:
    """Enclosing axis-aligned boxes of (N, k, 2) polygons (e.g. PP-OCR quads)."""
    q = np.asarray(quads, dtype=np.float64)
    if q.size == 0:
        return np.zeros((0, 4))
    q = q.reshape(len(q), -1, 2)
    return np.concatenate([q.min(axis=1), q.max(axis=1)], axis=1)


def xyxy_to_quad(boxes: Any) -> np.ndarray:
    """(N, 4, 2) corners (top-left, top-right, bottom-right, bottom-left) of xyxy boxes."""
    b = _as_boxes(boxes)
    return np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)


def exif_upright(boxes: np.ndarray, orientation: int, raw_width: int, raw_height: int) -> np.ndarray:
    """Boxes drawn on the stored (raw) pixels of an image with EXIF `orientation` to the upright
    frame that `PIL.ImageOps.exif_transpose` (and so `imaging.load_rgb`) shows."""
    b = _as_boxes(boxes)
    if orientation not in (2, 3, 4, 5, 6, 7, 8) or len(b) == 0:
        return b.copy()
    nx, ny = _exif_map(b[:, [0, 2]], b[:, [1, 3]], orientation, raw_width, raw_height)
    return np.stack([nx.min(axis=1), ny.min(axis=1), nx.max(axis=1), ny.max(axis=1)], axis=1)


def exif_upright_points(points: Any, orientation: int, raw_width: int, raw_height: int) -> np.ndarray:
    """Points (..., 2) on the stored pixels to the upright frame, as `exif_upright` moves boxes
    (a rotated label's corners, where a box would lose its shape)."""
    p = np.asarray(points, dtype=np.float64).copy()
    if orientation not in (2, 3, 4, 5, 6, 7, 8) or p.size == 0:
        return p
    nx, ny = _exif_map(p[..., 0], p[..., 1], orientation, raw_width, raw_height)
    return np.stack([nx, ny], axis=-1)


def _exif_map(xs: np.ndarray, ys: np.ndarray, orientation: int, raw_width: int, raw_height: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Where raw-frame coordinates land after `ImageOps.exif_transpose` (orientation 2-8)."""
    w, h = float(raw_width), float(raw_height)
    return {
        2: (w - xs, ys), 3: (w - xs, h - ys), 4: (xs, h - ys), 5: (ys, xs),
        6: (h - ys, xs), 7: (h - ys, w - xs), 8: (ys, w - xs),
    }[orientation]


# --- other formats' box conventions ---------------------------------------------------------

def xyxy_to_xywh(boxes: Any) -> np.ndarray:
    """Pixel xyxy to COCO's [x, y, width, height]."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def xywh_to_xyxy(boxes: Any) -> np.ndarray:
    """COCO's [x, y, width, height] to pixel xyxy."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_cxcywh_norm(boxes: Any, width: int, height: int) -> np.ndarray:
    """Pixel xyxy to YOLO's centre x, centre y, width, height as fractions of the image size."""
    b = _as_boxes(boxes)
    size = np.array([width, height, width, height], dtype=np.float64)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1) / size


def cxcywh_norm_to_xyxy(boxes: Any, width: int, height: int) -> np.ndarray:
    """Inverse of `xyxy_to_cxcywh_norm`."""
    b = _as_boxes(boxes) * np.array([width, height, width, height], dtype=np.float64)
    return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)


# --- Label Studio percent <-> pixel xyxy ---------------------------------------------------

def ls_value_to_quad(value: dict[str, Any], width: int, height: int) -> np.ndarray:
    """The four pixel corners (4, 2) of a Label Studio rectangle `value` (percent x, y, width,
    height; `rotation` in degrees, clockwise on screen, about the top-left corner x, y)."""
    x = float(value["x"]) * width / 100.0
    y = float(value["y"]) * height / 100.0
    w = float(value["width"]) * width / 100.0
    h = float(value["height"]) * height / 100.0
    t = math.radians(float(value.get("rotation", 0.0) or 0.0))
    c, s = math.cos(t), math.sin(t)
    corners = np.array([(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])
    return np.stack([x + corners[:, 0] * c - corners[:, 1] * s, y + corners[:, 0] * s + corners[:, 1] * c], axis=1)


def quad_to_ls_value(quad: Any, width: int, height: int) -> dict[str, float]:
    """Inverse of `ls_value_to_quad` for a rectangle given as corners in that order (top-left,
    top-right, bottom-right, bottom-left before rotation)."""
    q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    (x0, y0), (x1, y1), (_, _), (x3, y3) = q
    w = math.hypot(x1 - x0, y1 - y0)
    h = math.hypot(x3 - x0, y3 - y0)
    rot = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 360.0
    return {"x": float(x0) * 100.0 / width, "y": float(y0) * 100.0 / height, "width": w * 100.0 / width,
            "height": h * 100.0 / height, "rotation": rot}


def ls_value_to_xyxy(value: dict[str, Any], width: int, height: int) -> list[float]:
    """A Label Studio rectangle `value` (percent x, y, width, height, rotation in degrees about
    the top-left corner) to the enclosing pixel xyxy box in an image of `width` x `height`."""
    x = float(value["x"]) * width / 100.0
    y = float(value["y"]) * height / 100.0
    w = float(value["width"]) * width / 100.0
    h = float(value["height"]) * height / 100.0
    rot = float(value.get("rotation", 0.0) or 0.0)
    if abs(rot) < 1e-9 or abs(rot - 360.0) < 1e-9:
        return [x, y, x + w, y + h]
    q = ls_value_to_quad(value, width, height)
    return [float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())]


def xyxy_to_ls_value(box: Sequence[float], width: int, height: int) -> dict[str, float]:
    """Pixel xyxy to a Label Studio rectangle `value` (percent, rotation 0)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return {
        "x": x0 * 100.0 / width,
        "y": y0 * 100.0 / height,
        "width": (x1 - x0) * 100.0 / width,
        "height": (y1 - y0) * 100.0 / height,
        "rotation": 0.0,
    }


# --- oriented rectangles (DB quads) ------------------------------------------------------------
#
# A quad is grown along its own axes and filled as an oriented rectangle: u along its long side,
# v along its short side. `grow_quads` returns the rectangle in that frame (it contains the quad
# whatever its exact shape, so a non-rectangular quad is never cut), `quads_mask` rasterises
# rectangles conservatively (every pixel whose square overlaps one is covered).

def quad_frames(quads: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per quad (N,4,2): unit long-side axis u (N,2), unit short-side axis v (N,2), and the
    extents [min, max] of its corners along u and v (N,2 each)."""
    q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    if len(q) == 0:
        z = np.zeros((0, 2))
        return z, z, z, z
    e01 = q[:, 1] - q[:, 0] + (q[:, 2] - q[:, 3])   # the two "horizontal" sides
    e03 = q[:, 3] - q[:, 0] + (q[:, 2] - q[:, 1])   # the two "vertical" sides
    l01, l03 = np.linalg.norm(e01, axis=1), np.linalg.norm(e03, axis=1)
    long_ = np.where((l01 >= l03)[:, None], e01, e03)
    flip = (long_[:, 0] < 0) | ((long_[:, 0] == 0) & (long_[:, 1] < 0))   # u points right (or down)
    long_ = np.where(flip[:, None], -long_, long_)
    n = np.linalg.norm(long_, axis=1)
    u = np.where(n[:, None] > 1e-12, long_ / np.maximum(n, 1e-12)[:, None], np.array([1.0, 0.0]))
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    pu = np.einsum("nkd,nd->nk", q, u)
    pv = np.einsum("nkd,nd->nk", q, v)
    return u, v, np.stack([pu.min(1), pu.max(1)], 1), np.stack([pv.min(1), pv.max(1)], 1)


def quad_thickness(quads: Any) -> np.ndarray:
    """Per quad (N,4,2): its extent along its own short side (a text line's height, however
    it is turned)."""
    _, _, _, ev = quad_frames(quads)
    return ev[:, 1] - ev[:, 0]


def grow_quads(quads: Any, px: float = 0.0, frac_of_height: float = 0.0) -> np.ndarray:
    """Each quad's oriented rectangle grown by `px` + `frac_of_height` x its height (extent along
    its own short side) on every side; corners (N,4,2) in the order of `xyxy_to_quad` in the
    quad's frame."""
    u, v, eu, ev = quad_frames(quads)
    if len(u) == 0:
        return np.zeros((0, 4, 2))
    g = px + frac_of_height * (ev[:, 1] - ev[:, 0])
    u0, u1 = eu[:, 0] - g, eu[:, 1] + g
    v0, v1 = ev[:, 0] - g, ev[:, 1] + g
    corners = [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
    return np.stack([a[:, None] * u + b[:, None] * v for a, b in corners], axis=1)


def quads_mask(quads: Any, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """Boolean (H, W) mask of every pixel whose unit square overlaps (with positive area) one of
    the oriented rectangles `quads` (N,4,2; non-rectangular quads count as their oriented
    rectangle, which contains them). Separating-axis test per pixel of each rectangle's window."""
    mask = np.zeros((height, width), dtype=bool) if out is None else out
    u, v, eu, ev = quad_frames(quads)
    if len(u) == 0:
        return mask
    rect = np.stack([a[:, None] * u + b[:, None] * v
                     for a, b in ((eu[:, 0], ev[:, 0]), (eu[:, 1], ev[:, 0]), (eu[:, 1], ev[:, 1]), (eu[:, 0], ev[:, 1]))], 1)
    win = to_int_pixels(quad_to_xyxy(rect), width, height)
    ru = 0.5 * (np.abs(u[:, 0]) + np.abs(u[:, 1]))   # half-extent of a pixel square along u
    rv = 0.5 * (np.abs(v[:, 0]) + np.abs(v[:, 1]))
    for i, (x0, y0, x1, y1) in enumerate(win):
        if x1 <= x0 or y1 <= y0:
            continue
        cx = np.arange(x0, x1, dtype=np.float64) + 0.5
        cy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
        cu = cx * u[i, 0] + cy * u[i, 1]
        cv = cx * v[i, 0] + cy * v[i, 1]
        hit = (cu + ru[i] > eu[i, 0]) & (cu - ru[i] < eu[i, 1]) & (cv + rv[i] > ev[i, 0]) & (cv - rv[i] < ev[i, 1])
        mask[y0:y1, x0:x1] |= hit
    return mask


def oriented_rects(quads: Any) -> np.ndarray:
    """Each quad as its oriented rectangle in canonical corner order: top-left, top-right,
    bottom-right, bottom-left of the text (long side first, pointing right or down), i.e. the
    order `ls_value_to_quad` gives, so `quad_to_ls_value` of it is a Label Studio rectangle."""
    return grow_quads(quads, 0.0, 0.0)


def enclosing_rect(points: Any) -> np.ndarray:
    """The minimum-area rectangle (4, 2), canonical order, around a set of points (merged quads)."""
    import cv2

    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    return oriented_rects(cv2.boxPoints(cv2.minAreaRect(pts))[None].astype(np.float64))[0]


def rect_along(points: Any, direction: Any, margin: float = 0.0) -> np.ndarray:
    """The rectangle (4, 2), canonical order, around `points` with its long axis along
    `direction` (a vector), grown by `margin` on every side. Rendered rotated text knows its
    direction, which a minimum-area rectangle of the ink can get wrong (a short word's ink may
    fit a tilted rectangle better)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    u = np.asarray(direction, dtype=np.float64).reshape(2)
    u = u / np.linalg.norm(u)
    v = np.array([-u[1], u[0]])
    pu, pv = pts @ u, pts @ v
    u0, u1, v0, v1 = pu.min() - margin, pu.max() + margin, pv.min() - margin, pv.max() + margin
    rect = np.stack([a * u + b * v for a, b in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))])
    return oriented_rects(rect[None])[0]


def polygon_area(polys: Any) -> np.ndarray:
    """Shoelace area of each (N, k, 2) polygon."""
    p = np.asarray(polys, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0,))
    p = p.reshape(len(p), -1, 2)
    x, y = p[..., 0], p[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


def visibly_slanted(quads: Any, share: float = 0.25) -> np.ndarray:
    """Per quad: its tilt lifts one end of its long side by more than `share` of its short side
    (and by more than half a degree). DB's quads of level text lean 1.5-3.6 degrees, most on short
    words: drawn as rotated rectangles they showed labellers level words in tilted boxes, while
    their enclosing boxes differ from them by a sliver."""
    u, _v, eu, ev = quad_frames(quads)
    if len(u) == 0:
        return np.zeros((0,), dtype=bool)
    a = np.arctan2(np.abs(u[:, 1]), np.abs(u[:, 0]))
    a = np.minimum(a, np.pi / 2 - a)                       # from the nearer axis
    lift = (eu[:, 1] - eu[:, 0]) * np.sin(a)
    return (np.degrees(a) > 0.5) & (lift > share * (ev[:, 1] - ev[:, 0]))


def is_axis_aligned(quads: Any, tol_deg: float = 0.5) -> np.ndarray:
    """Per quad: its long side is within `tol_deg` of horizontal or vertical."""
    u = quad_frames(quads)[0]
    if len(u) == 0:
        return np.zeros((0,), dtype=bool)
    a = np.degrees(np.arctan2(np.abs(u[:, 1]), np.abs(u[:, 0])))
    return (a <= tol_deg) | (a >= 90.0 - tol_deg)


def end_strips(quads: Any, length: float, width: int, height: int, covered: np.ndarray | None = None,
               square: float = 2.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rectangles that continue each quad (N,4,2) beyond its two ends along its own long
    side, as tall as it and up to `length` x its height long: (2N,4,2) in canonical corner order
    (quad i's strip after its end along +u at 2i, before its start at 2i+1), each strip's length
    (2N,) and its quad's height (2N,). A strip ends where its midline leaves the `width` x
    `height` image or, given a `covered` (H, W) mask, first meets a covered pixel (the next
    word's cover). An upright quad less than `square` x taller than wide is taken as level text:
    a cover of a letter or two is taller than wide, and its line runs left and right."""
    r = oriented_rects(quads)
    u, v, _eu, _ev = quad_frames(r)
    if len(u) == 0:
        return np.zeros((0, 4, 2)), np.zeros((0,)), np.zeros((0,))
    side_u, side_v = np.linalg.norm(r[:, 1] - r[:, 0], axis=1), np.linalg.norm(r[:, 3] - r[:, 0], axis=1)
    swap = (side_u < square * side_v) & (np.abs(u[:, 1]) > np.abs(u[:, 0]))
    u = np.where(swap[:, None], np.where((v[:, 0] < 0)[:, None], -v, v), u)
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    pu, pv = np.einsum("nkd,nd->nk", r, u), np.einsum("nkd,nd->nk", r, v)
    u0, u1, v0, v1 = pu.min(1), pu.max(1), pv.min(1), pv.max(1)
    thick = v1 - v0
    vm = 0.5 * (v0 + v1)
    strips, lengths = [], []
    for sign, start in ((1.0, u1), (-1.0, u0)):
        p = start[:, None] * u + vm[:, None] * v           # the end's midpoint
        d = sign * u
        room = np.full(len(u), np.inf)
        for k, size in ((0, width), (1, height)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(d[:, k] > 1e-12, (size - p[:, k]) / d[:, k],
                             np.where(d[:, k] < -1e-12, -p[:, k] / d[:, k], np.inf))
            room = np.minimum(room, t)
        inside = (p[:, 0] >= 0) & (p[:, 0] <= width) & (p[:, 1] >= 0) & (p[:, 1] <= height)
        n = np.where(inside, np.clip(np.minimum(length * thick, room), 0.0, None), 0.0)
        if covered is not None:
            for i in np.flatnonzero(n >= 1.0):
                s = np.arange(1.0, n[i], 1.0)     # from 1 px out: the cover's own rim pixel is covered
                xs = np.clip((p[i, 0] + s * d[i, 0]).astype(np.int64), 0, width - 1)
                ys = np.clip((p[i, 1] + s * d[i, 1]).astype(np.int64), 0, height - 1)
                hit = np.flatnonzero(covered[ys, xs])
                if len(hit):
                    n[i] = s[hit[0]]
        a, b = (start, start + n) if sign > 0 else (start - n, start)
        corners = [(a, v0), (b, v0), (b, v1), (a, v1)]
        strips.append(np.stack([x[:, None] * u + y[:, None] * v for x, y in corners], axis=1))
        lengths.append(n)
    out = np.stack(strips, axis=1).reshape(-1, 4, 2)
    return out, np.stack(lengths, axis=1).reshape(-1), np.repeat(thick, 2)


def strip_part(strip: np.ndarray, length: float, after: bool, a: float, b: float) -> np.ndarray:
    """The part of an `end_strips` strip from `a` to `b` px away from its cover (clipped to its
    `length`): a strip after a cover starts at its first corner, one before it ends there."""
    a, b = min(max(a, 0.0), length), min(max(b, 0.0), length)
    u = (strip[1] - strip[0]) / max(length, 1e-9)
    if not after:
        a, b = length - b, length - a
    return np.stack([strip[0] + a * u, strip[0] + b * u, strip[3] + b * u, strip[3] + a * u])
