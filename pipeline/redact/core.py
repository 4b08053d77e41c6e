"""Pure pixel operations of redaction: padding boxes and covering them in a pixel array.

Works on the native array of a page (uint8 or uint16, gray (H, W) or (H, W, C)), so a 16-bit
microscopy TIFF is redacted at 16 bits and a lossless output holds exactly the fill value in
every covered pixel. Nothing here reads or writes files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline import boxes as bx

STYLES = ("fill", "blur", "pixelate")
SHAPES = ("polygon", "box")

@dataclass(frozen=True)
class Pad:
    """Growth of every box on each side: `px` pixels plus `frac` x the box height."""

    px: float = 0.0
    frac: float = 0.0

    MAX_PX: ClassVar[float] = 10_000.0    # more than any image is wide: a typo, not a margin
    MAX_FRAC: ClassVar[float] = 10.0      # 1000 % of the box height

    def __post_init__(self) -> None:
        for value, top, unit in ((self.px, self.MAX_PX, "px"), (self.frac * 100, self.MAX_FRAC * 100, "%")):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= top):
                raise ValueError(f"--pad {self}: the {unit} part must be 0 to {top:g}{unit}")

    @classmethod
    def parse(cls, text: str) -> "Pad":
        """`4`, `4px`, `15%`, `2px+15%` or `2,15%` (pixels and/or percent of the box height; each
        at most once: `5%+`, `+5%` and `2px+3px` are refused, not read as something else)."""
        bad = f"bad --pad {text!r}: use e.g. 4, 4px, 15% or 2px+15%"
        term = r"\s*(\d+(?:\.\d+)?)\s*(px|%)?\s*"
        m = re.fullmatch(term + r"(?:[+,]" + term + r")?", str(text))
        if not m:
            raise ValueError(bad)
        px = frac = 0.0
        units = [m.group(2) or "px"] + ([m.group(4) or "px"] if m.group(3) else [])
        if len(set(units)) != len(units):
            raise ValueError(bad)
        for number, unit in zip((m.group(1), m.group(3)), units):
            if unit == "%":
                frac = float(number) / 100.0
            else:
                px = float(number)
        return cls(px, frac)

    def __str__(self) -> str:
        parts = []
        if self.px or not self.frac:
            parts.append(f"{self.px:g}px")
        if self.frac:
            parts.append(f"{self.frac * 100:g}%")
        return "+".join(parts)


def parse_color(text: str) -> tuple[int, int, int]:
    """A CSS colour name (`black`, `white`, `magenta`, ...: Pillow's table), `#rrggbb`, `#rgb` or
    `r,g,b` (0-255) to an RGB triple."""
    from PIL import ImageColor

    t = str(text).strip().lower()
    if t in ImageColor.colormap:
        return ImageColor.getrgb(t)[:3]
    m = re.fullmatch(r"#?([0-9a-f]{6}|[0-9a-f]{3})", t)
    if m:
        h = m.group(1)
        if len(h) == 3:
            h = "".join(c * 2 for c in h)
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    parts = [p.strip() for p in t.split(",")]
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    raise ValueError(f"bad --color {text!r}: use a CSS colour name (black, white, magenta, ...), #rrggbb or r,g,b")


def redaction_boxes(boxes: np.ndarray, width: int, height: int, pad: Pad) -> np.ndarray:
    """Padded, clipped, outward-rounded integer xyxy boxes: exactly the pixels that get covered."""
    b = bx.pad(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), pad.px, pad.frac)
    ib = bx.to_int_pixels(b, width, height)
    keep = (ib[:, 2] > ib[:, 0]) & (ib[:, 3] > ib[:, 1])
    return ib[keep]


@dataclass(frozen=True, eq=False)
class Cover:
    """What gets covered on one page: `mask` is exactly the covered pixels; `boxes` the integer
    xyxy window of each shape (blur/pixelate work per window); `polygons` the grown oriented
    rectangles (N,4,2) for shapes that came from quads (NaN rows for shapes that are boxes),
    or None when every shape is a box."""

    mask: np.ndarray
    boxes: np.ndarray
    polygons: np.ndarray | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def shapes(self) -> np.ndarray:
        """Every shape as a rectangle (N,4,2): its grown quad, or its window for a box."""
        rects = bx.xyxy_to_quad(np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4))
        if self.polygons is not None and len(self.polygons):
            has = np.isfinite(self.polygons).all(axis=(1, 2))
            rects[has] = self.polygons[has]
        return rects


def cover_shapes(boxes: np.ndarray, quads: np.ndarray | None, width: int, height: int, pad: Pad,
                 shape: str = "polygon") -> Cover:
    """The pixels covered for detections: with `shape="polygon"` each quad is grown along its own
    axes (`pad.px` + `pad.frac` x its height along its short side) and rasterised conservatively
    (`boxes.quads_mask`: every pixel the grown rectangle overlaps); detections without quads
    (boxes from Faster R-CNN or reviewers) and `shape="box"` use the padded enclosing boxes."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if shape == "box" or quads is None or len(b) == 0:
        ib = redaction_boxes(b, width, height, pad)
        return Cover(bx.union_mask(ib, width, height), ib, None)
    q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    has_quad = np.isfinite(q).all(axis=(1, 2))
    grown = np.full_like(q, np.nan)
    grown[has_quad] = bx.grow_quads(q[has_quad], pad.px, pad.frac)
    mask = bx.quads_mask(grown[has_quad], width, height)
    box_ib = redaction_boxes(b[~has_quad], width, height, pad)
    for x0, y0, x1, y1 in box_ib:
        mask[y0:y1, x0:x1] = True
    win = bx.to_int_pixels(bx.quad_to_xyxy(grown[has_quad]), width, height) if has_quad.any() else np.zeros((0, 4), np.int64)
    keep = (win[:, 2] > win[:, 0]) & (win[:, 3] > win[:, 1])
    return Cover(mask, np.concatenate([win[keep], box_ib]).astype(np.int64),
                 np.concatenate([grown[has_quad][keep], np.full((len(box_ib), 4, 2), np.nan)]))


def fill_value(color: tuple[int, int, int], dtype: np.dtype, channels: int, kind: str = "rgb",
               inverted: bool = False) -> np.ndarray:
    """The value written into covered pixels for an array of this dtype/channel layout.

    kind: "rgb" (channels 3 or 4 = RGB(A)), "gray" (1 or 2 = L(A), ITU-R 601 luma),
    "cmyk". Alpha is set opaque so a covered region cannot be made see-through.
    `inverted` is for min-is-white TIFFs, where 0 is white.
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        luma = (color[0] * 299 + color[1] * 587 + color[2] * 114) / 1000.0
        on = luma >= 128
        return np.array([not on if inverted else on] * max(channels, 1), dtype=bool)
    vmax = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
    scale = vmax / 255.0
    r, g, b = color
    if kind == "cmyk":
        c, m, y = 255 - r, 255 - g, 255 - b
        k = min(c, m, y)
        vals = [c - k, m - k, y - k, k] + [255] * (channels - 4)
    elif kind == "gray" or channels in (1, 2):
        luma = (r * 299 + g * 587 + b * 114) / 1000.0
        if inverted:
            luma = 255.0 - luma
        vals = [luma] + [255] * (channels - 1)
    else:
        vals = [r, g, b][:channels] + [255] * max(0, channels - 3)
    out = np.array([round(v * scale) if dtype.kind in "ui" else v * scale for v in vals], dtype=np.float64)
    return out.astype(dtype)


def _box_blur_axis(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean over a window of 2r+1 along `axis` with edge replication (float64)."""
    if r <= 0 or a.shape[axis] == 0:
        return a
    pad_width = [(0, 0)] * a.ndim
    pad_width[axis] = (r + 1, r)
    p = np.pad(a, pad_width, mode="edge")
    c = np.cumsum(p, axis=axis)
    n = a.shape[axis]
    hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / (2 * r + 1)


def _blur(region: np.ndarray, radius: int) -> np.ndarray:
    f = region.astype(np.float64)
    for _ in range(3):  # three box blurs approximate a Gaussian
        f = _box_blur_axis(_box_blur_axis(f, radius, 0), radius, 1)
    return f


def _pixelate(region: np.ndarray, block: int) -> np.ndarray:
    f = region.astype(np.float64)
    h, w = f.shape[:2]
    out = np.empty_like(f)
    for y in range(0, h, block):
        for x in range(0, w, block):
            blk = f[y:y + block, x:x + block]
            out[y:y + block, x:x + block] = blk.mean(axis=(0, 1))
    return out


def _cast_like(f: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        return f >= 0.5
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(f), info.min, info.max).astype(dtype)
    return f.astype(dtype)


def apply_redaction(
    arr: np.ndarray,
    int_boxes: np.ndarray,
    style: str = "fill",
    value: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of `arr` with every integer xyxy box covered, or with exactly the pixels of `mask`
    (a `Cover.mask`; `int_boxes` are then the shapes' windows, used by blur/pixelate).

    fill: exactly `value` (see `fill_value`) -- irreversible, the default.
    blur / pixelate: reversible obfuscation (strength grows with box height), only on request.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)}")
    out = np.array(arr, copy=True)
    if len(int_boxes) == 0:
        return out
    h, w = out.shape[:2]
    if style == "fill":
        if value is None:
            raise ValueError("fill needs a value")
        if mask is None:
            mask = bx.union_mask(int_boxes, w, h)
        out[mask] = value if out.ndim == 3 else value[0]
        return out
    for x0, y0, x1, y1 in int_boxes:
        region = out[y0:y1, x0:x1]
        if region.size == 0:
            continue
        bh = y1 - y0
        if style == "blur":
            f = _blur(region, max(2, bh // 3))
        else:
            f = _pixelate(region, max(4, bh // 3))
        f = _cast_like(f, out.dtype)
        if mask is None:
            out[y0:y1, x0:x1] = f
        else:
            m = mask[y0:y1, x0:x1]
            out[y0:y1, x0:x1][m] = f[m]
    return out
