"""Synthetic text overlays with exact, tight boxes: training data before any human label exists.

Each overlay (a sample ID, a timestamp, a scale-bar label, an instrument line, a corner label,
a watermark, a multi-line block...) is rendered string by string into its own mask, so the
box of a line (or word) is the bounding box of the ink that was actually drawn -- nothing
looser, nothing missed. Placements whose boxes (or plates/scale bars) would touch another
string are rejected and retried, so every ink pixel lies in exactly one box.

Everything is deterministic from a seed: image `i` of a run uses `np.random.default_rng([seed, i])`.
Backgrounds are procedural (gradients, textures, noise, fluorescence/bright-field cells, paper)
unless a folder of text-free images is given (or the workspace supplies some, see
`workspace_backgrounds`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pipeline.catalog import ImageStatus
from pipeline.config import check_number
from pipeline.formats import LabelledImage, write_jsonl
from pipeline.io import atomic_write_bytes, atomic_write_text, sha256_json
from pipeline.listing import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SYNTH_FORMAT_VERSION = 2   # 2: rotated units carry their rotated rectangle (`polys`)

# Fonts shipped with matplotlib (mpl-data/fonts/ttf): no download, several families and styles.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)

BACKGROUND_KINDS = ("gradient", "texture", "fluorescence", "brightfield", "em", "paper", "patches")
OVERLAY_KINDS = ("sample_id", "timestamp", "scale_bar", "instrument", "corner_label", "watermark", "block", "words")


MAX_WIDTH = 8192   # a 100,000 px wide image ran for minutes and could fill the memory


@dataclass(frozen=True)
class SynthConfig:
    """What `generate` makes. Sizes are pixels; fractions are probabilities per overlay."""

    n_images: int = 200
    seed: int = 0
    width: tuple[int, int] = (512, 1024)        # image width range; height from a random aspect
    granularity: str = "line"                   # "line" or "word": one box per line or per word
    overlays: tuple[int, int] = (2, 9)          # overlays per image (min, max)
    min_text_px: float = 7.0                    # smallest ink height of a capital
    max_text_frac: float = 0.15                 # largest text height as a fraction of image height
    p_plate: float = 0.25                       # solid / semi-transparent plate behind the text
    p_low_contrast: float = 0.15
    p_rotate: float = 0.25                      # small rotation (up to `max_angle` degrees)
    max_angle: float = 6.0
    p_shadow: float = 0.1
    p_empty: float = 0.05                       # images with no text at all (hard negatives)
    kinds: tuple[str, ...] = OVERLAY_KINDS
    scale_bars: bool = True                     # draw the bar itself (not text: never boxed)
    real_background_fraction: float = 0.8       # share of images on given backgrounds (if any)
    background_kinds: tuple[str, ...] = BACKGROUND_KINDS  # procedural background styles to draw from

    def __post_init__(self) -> None:
        if self.granularity not in ("line", "word"):
            raise ValueError(f"granularity must be 'line' or 'word', got {self.granularity!r}")
        bad_bg = set(self.background_kinds) - set(BACKGROUND_KINDS)
        if bad_bg or not self.background_kinds:
            raise ValueError(f"background kinds must be among {', '.join(BACKGROUND_KINDS)}, got {sorted(bad_bg)}")
        unknown = set(self.kinds) - set(OVERLAY_KINDS)
        if unknown:
            raise ValueError(f"unknown overlay kinds {sorted(unknown)}; known: {', '.join(OVERLAY_KINDS)}")
        if self.n_images < 0:
            raise ValueError(f"the number of images must be >= 0, got {self.n_images}")
        if self.width[0] < 32 or self.width[1] < self.width[0] or self.width[1] > MAX_WIDTH:
            raise ValueError(f"width must be a MIN,MAX range with 32 <= MIN <= MAX <= {MAX_WIDTH}, "
                             f"got {self.width[0]},{self.width[1]}")
        check_number("seed", self.seed, 0, 2**32 - 1, integer=True)   # numpy refuses a negative seed mid-run

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class Rendered:
    """One synthetic image: pixels, boxes (xyxy, exclusive end), texts, kinds, and the ink map.

    `ink` is an int32 (H, W) map: 0 = no text ink, i = ink of box i-1 (what tests check);
    `marks` is a bool map of non-text marks (plates, scale bars), which are not boxed;
    `polys` has one entry per box: the rotated rectangle around a rotated unit's ink (8 floats,
    x0 y0 ... x3 y3), () for upright text, whose box is its shape. Training shrinks text kernels
    from these, so a 30-degree watermark does not teach that the background around it is text."""

    image: np.ndarray
    boxes: np.ndarray
    texts: list[str]
    kinds: list[str]
    ink: np.ndarray
    marks: np.ndarray
    background: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0, 3), np.uint8))
    polys: list[tuple[float, ...]] = field(default_factory=list)
    background_path: str = ""      # the real background it was painted on ("" = procedural)
    unusable: str = ""             # a real background that was drawn and could not be used


# --- fonts ------------------------------------------------------------------------------------

def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def available_fonts() -> tuple[str, ...]:
    """Paths of the usable fonts (those from FONT_FILES that exist and carry µ ° ± ×)."""
    from fontTools.ttLib import TTFont

    out = []
    for name in FONT_FILES:
        path = font_dir() / name
        if not path.exists():
            continue
        try:
            cmap = TTFont(str(path), lazy=True).getBestCmap() or {}
        except Exception:  # a broken font file is skipped, not fatal
            continue
        if all(ord(c) in cmap for c in "Aa0µ°±×"):
            out.append(str(path))
    if not out:
        raise RuntimeError(f"{font_dir()}: no usable TrueType fonts found (matplotlib's mpl-data fonts)")
    return tuple(out)


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


# --- texts ------------------------------------------------------------------------------------

_WORDS = ("sample", "slide", "control", "treated", "batch", "lot", "patient", "donor", "tissue", "liver",
          "kidney", "brain", "section", "stain", "DAPI", "GFP", "HE", "region", "field", "well", "plate",
          "total", "date", "name", "page", "invoice", "amount", "cash", "item", "qty", "price", "street",
          "station", "open", "exit", "hotel", "road", "north", "report", "figure", "lab", "project",
          "confidential", "copy", "draft", "study", "visit", "scan", "series", "image", "frame", "cell")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNITS = ("µm", "nm", "mm", "µm", "µm")


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, n))


def _letters(rng: np.random.Generator, n: int) -> str:
    return "".join(chr(65 + int(d)) for d in rng.integers(0, 26, n))


def _sample_id(rng: np.random.Generator) -> list[str]:
    forms = [
        lambda: f"{_letters(rng, 2)}-{_digits(rng, 4)}-{_letters(rng, 1)}",
        lambda: f"Sample {_digits(rng, int(rng.integers(1, 4)))}{_letters(rng, 1)}",
        lambda: f"ID: {_letters(rng, 3)}{_digits(rng, 5)}",
        lambda: f"Specimen #{_digits(rng, 4)}",
        lambda: f"{_pick(rng, _WORDS).capitalize()} {_digits(rng, 2)}/{_digits(rng, 3)}",
        lambda: f"Pt {_digits(rng, 3)}  Slide {_digits(rng, 1)}.{_digits(rng, 1)}",
    ]
    return [_pick(rng, forms)()]


def _timestamp(rng: np.random.Generator) -> list[str]:
    y, mo, d = 2000 + int(rng.integers(0, 27)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = (int(v) for v in rng.integers(0, [24, 60, 60]))
    forms = [
        f"{y}-{mo:02d}-{d:02d} {hh:02d}:{mm:02d}:{ss:02d}",
        f"{d:02d}/{mo:02d}/{y}",
        f"{_MONTHS[mo - 1]} {d} {y}  {hh:02d}:{mm:02d}",
        f"{y}.{mo:02d}.{d:02d}",
        f"Acquired {d:02d}.{mo:02d}.{y % 100:02d} {hh}:{mm:02d}",
    ]
    return [_pick(rng, forms)]


def _instrument(rng: np.random.Generator) -> list[str]:
    forms = [
        lambda: f"Mag = {rng.uniform(0.5, 50):.2f} K X   EHT = {rng.uniform(1, 30):.2f} kV",
        lambda: f"WD = {rng.uniform(2, 15):.1f} mm   Signal A = SE2",
        lambda: f"{_pick(rng, (10, 20, 40, 63, 100))}× / {rng.uniform(0.25, 1.4):.2f} NA",
        lambda: f"Exposure {int(rng.integers(5, 2000))} ms   Gain {rng.uniform(0, 12):.1f}",
        lambda: f"T = {rng.uniform(20, 40):.1f} °C   Z = {rng.uniform(0, 100):.1f} µm ± {rng.uniform(0.1, 2):.1f}",
        lambda: f"HV {rng.uniform(5, 30):.1f} kV  Spot {rng.uniform(1, 6):.1f}  {_digits(rng, 3)} nm/px",
        lambda: f"Ch{int(rng.integers(1, 5))} {_pick(rng, ('DAPI', 'FITC', 'TRITC', 'Cy5'))}  λ {int(rng.integers(400, 700))} nm",
    ]
    return [_pick(rng, forms)()]


def _corner(rng: np.random.Generator) -> list[str]:
    return [_pick(rng, ("A", "B", "C", "D", "a", "b", "(c)", "(d)", "1", "2", "Fig. 3", "i", "ii", "E'", "F"))]


def _watermark(rng: np.random.Generator) -> list[str]:
    return [_pick(rng, ("CONFIDENTIAL", "DRAFT", "© Lab 2024", "DO NOT COPY", "PREVIEW", "SAMPLE", "© University"))]


def _words_line(rng: np.random.Generator, n: int) -> str:
    parts = []
    for _ in range(n):
        r = rng.random()
        w = _pick(rng, _WORDS)
        parts.append(w.upper() if r < 0.2 else w.capitalize() if r < 0.5 else _digits(rng, int(rng.integers(1, 6))) if r < 0.7 else w)
    return " ".join(parts)


def _block(rng: np.random.Generator) -> list[str]:
    return [_words_line(rng, int(rng.integers(1, 6))) for _ in range(int(rng.integers(2, 5)))]


def _words(rng: np.random.Generator) -> list[str]:
    return [_words_line(rng, int(rng.integers(1, 5)))]


def _scale_label(rng: np.random.Generator) -> list[str]:
    return [f"{_pick(rng, (1, 2, 5, 10, 20, 50, 100, 200, 500))} {_pick(rng, _UNITS)}"]


_TEXTS: dict[str, Callable[[np.random.Generator], list[str]]] = {
    "sample_id": _sample_id, "timestamp": _timestamp, "scale_bar": _scale_label, "instrument": _instrument,
    "corner_label": _corner, "watermark": _watermark, "block": _block, "words": _words,
}


# --- backgrounds ------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gw, gh = max(2, w // cells), max(2, h // cells)
    out = []
    for _ in range(channels):
        small = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
        out.append(np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0)
    return np.stack(out, axis=-1)


def _blobs(rng: np.random.Generator, w: int, h: int, n: int, rmin: float, rmax: float, fill: bool) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    dr = ImageDraw.Draw(im)
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(rmin, rmax), rng.uniform(rmin, rmax)
        val = int(rng.integers(120, 256))
        if fill:
            dr.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=val)
        else:
            dr.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=val, width=max(1, int(rx / 8)))
    im = im.filter(ImageFilter.GaussianBlur(max(1.0, rmin / 3)))
    return np.asarray(im, dtype=np.float32) / 255.0


def procedural_background(rng: np.random.Generator, w: int, h: int, kinds: Sequence[str] = BACKGROUND_KINDS) -> np.ndarray:
    """A text-free background: gradient, texture, fluorescence, bright-field, EM-like grain, paper, patches."""
    kind = _pick(rng, tuple(kinds))
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == "gradient":
        t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
        img = c1 * (1 - t) + c2 * t + np.zeros((h, w, 1))
    elif kind == "texture":
        n = _smooth_noise(rng, w, h, int(rng.integers(8, 80)), 3) * 0.6 + _smooth_noise(rng, w, h, 4, 3) * 0.4
        img = c1 * (1 - n) + c2 * n
    elif kind == "fluorescence":
        img = np.full((h, w, 3), rng.uniform(0, 25), dtype=np.float32)
        for ch in rng.permutation(3)[: int(rng.integers(1, 4))]:
            r = rng.uniform(4, max(6, min(w, h) / 12))
            img[..., ch] += 255 * _blobs(rng, w, h, int(rng.integers(10, 80)), r * 0.5, r, fill=True)
    elif kind == "brightfield":
        base = rng.uniform(170, 240)
        tint = rng.uniform(-20, 20, 3)
        r = rng.uniform(6, max(8, min(w, h) / 10))
        cells = _blobs(rng, w, h, int(rng.integers(15, 100)), r * 0.5, r, fill=rng.random() < 0.5)
        img = base + tint - cells[..., None] * rng.uniform(40, 140, 3) + np.zeros((h, w, 3))
    elif kind == "em":
        g = _smooth_noise(rng, w, h, int(rng.integers(2, 12)), 1) * 0.7 + _smooth_noise(rng, w, h, 40, 1) * 0.3
        img = np.repeat(g * 255, 3, axis=-1)
    elif kind == "paper":
        img = np.full((h, w, 3), rng.uniform(215, 255), dtype=np.float32) + rng.uniform(-10, 5, 3)
    else:  # patches: photo-like blurred coloured polygons
        im = Image.new("RGB", (w, h), tuple(int(v) for v in c1))
        dr = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(5, 25))):
            pts = [(float(rng.uniform(-w * 0.2, w * 1.2)), float(rng.uniform(-h * 0.2, h * 1.2))) for _ in range(int(rng.integers(3, 7)))]
            dr.polygon(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img = np.asarray(im.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6)))), dtype=np.float32)
    img = img + rng.normal(0, rng.uniform(0, 8), (h, w, 1 if rng.random() < 0.5 else 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _fit_background(src: np.ndarray, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random crop of `src` resized to (w, h) (upscaled if needed)."""
    sh, sw = src.shape[:2]
    scale = max(w / sw, h / sh, rng.uniform(0.5, 1.0) if sw > w and sh > h else 0)
    cw, ch = min(sw, int(round(w / scale))), min(sh, int(round(h / scale)))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    crop = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw])
    return np.asarray(crop.resize((w, h), Image.BILINEAR), dtype=np.uint8)


# --- rendering --------------------------------------------------------------------------------

def _luma(rgb: np.ndarray) -> float:
    return float(np.dot(np.asarray(rgb, dtype=np.float64)[..., :3], [0.299, 0.587, 0.114]).mean())


_BRIGHT = ((255, 255, 255), (255, 255, 0), (0, 255, 0), (0, 255, 255), (255, 200, 0))
_DARK = ((0, 0, 0), (30, 30, 30), (200, 0, 0), (0, 0, 160), (90, 0, 90))


def _text_colour(rng: np.random.Generator, bg_mean: np.ndarray, low_contrast: bool) -> np.ndarray:
    bl = _luma(bg_mean)
    if low_contrast:
        delta = rng.uniform(25, 55) * (1 if bl < 128 else -1)
        return np.clip(bg_mean + delta, 0, 255)
    pool = _BRIGHT if bl < 110 else _DARK if bl > 150 else (_BRIGHT + _DARK)
    col = np.array(_pick(rng, pool), dtype=np.float64)
    if abs(_luma(col) - bl) < 60:  # a mid-grey background: take black or white, whichever is farther
        col = np.array((0, 0, 0) if bl > 128 else (255, 255, 255), dtype=np.float64)
    return col


@dataclass
class _Overlay:
    units: list[np.ndarray]          # per unit: float ink coverage (0..1) on the overlay canvas
    shadows: list[np.ndarray | None]  # per unit: coverage of its drop shadow (part of its ink)
    texts: list[str]
    plate: np.ndarray | None         # float alpha mask of the plate on the canvas
    bar: np.ndarray | None           # bool mask of a scale bar


def _render_overlay(rng: np.random.Generator, kind: str, lines: list[str], font_path: str, size: int,
                    granularity: str, angle: float, plate: bool, shadow: bool, bar_len: int) -> _Overlay:
    """Render one overlay on its own canvas: one anti-aliased coverage mask per unit (line or
    word), the same rotation for all, so each unit's ink is known exactly."""
    font = _font(font_path, size)
    asc, desc = font.getmetrics()
    line_h = asc + desc
    gap = int(max(2, round(line_h * rng.uniform(0.25, 0.6))))
    widths = [int(math.ceil(font.getlength(line))) + 2 for line in lines]
    margin = int(max(4, size * 0.4))
    bar_h = max(2, size // 5) if bar_len else 0
    bar_gap = int(max(3, size * 0.3)) if bar_len else 0
    cw = max(widths + [bar_len]) + 2 * margin
    ch = len(lines) * line_h + (len(lines) - 1) * gap + 2 * margin + bar_h + bar_gap
    shift = max(1, size // 14)
    units: list[np.ndarray] = []
    texts: list[str] = []
    y = margin
    for line, lw in zip(lines, widths):
        x_line = margin + (cw - 2 * margin - lw) // 2 if bar_len else margin
        masks = []
        pos = 0
        for word in line.split(" "):
            if word:
                m = Image.new("L", (cw, ch), 0)
                ImageDraw.Draw(m).text((x_line + font.getlength(line[:pos]), y), word, font=font, fill=255)
                arr = np.asarray(m, dtype=np.float32) / 255.0
                if arr.any():
                    masks.append((arr, word))
            pos += len(word) + 1
        if granularity == "word":
            units.extend(m for m, _ in masks)
            texts.extend(w for _, w in masks)
        elif masks:
            units.append(np.maximum.reduce([m for m, _ in masks]))
            texts.append(line)
        y += line_h + gap
    shadows: list[np.ndarray | None] = [
        np.roll(np.roll(u, shift, axis=0), shift, axis=1) if shadow else None for u in units]
    bar = None
    if bar_len:
        bar = np.zeros((ch, cw), dtype=bool)
        by = ch - margin - bar_h
        bx = (cw - bar_len) // 2
        bar[by:by + bar_h, bx:bx + bar_len] = True
    plate_mask = None
    if plate and units:
        ink = np.maximum.reduce(units) > 0
        ys, xs = np.nonzero(ink if bar is None else ink | bar)
        p = int(max(2, size * 0.25)) + (shift if shadow else 0)
        plate_mask = np.zeros((ch, cw), dtype=np.float32)
        plate_mask[max(0, ys.min() - p):ys.max() + p + 1, max(0, xs.min() - p):xs.max() + p + 1] = 1.0
    if abs(angle) > 1e-3:
        def rot(a: np.ndarray) -> np.ndarray:
            im = Image.fromarray(np.rint(a.astype(np.float32) * 255).astype(np.uint8))
            return np.asarray(im.rotate(angle, resample=Image.BILINEAR, expand=True), dtype=np.float32) / 255.0
        units = [rot(u) for u in units]
        shadows = [rot(s) if s is not None else None for s in shadows]
        bar = rot(bar) > 0.5 if bar is not None else None
        plate_mask = rot(plate_mask) if plate_mask is not None else None
    return _Overlay(units, shadows, texts, plate_mask, bar)


def _ink(ov: _Overlay, k: int) -> np.ndarray:
    """Bool ink of unit k: any pixel its glyphs or its shadow touch."""
    s = ov.shadows[k]
    return (ov.units[k] > 0) | (s > 0) if s is not None else ov.units[k] > 0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _place(rng: np.random.Generator, kind: str, cw: int, ch: int, w: int, h: int) -> tuple[int, int] | None:
    if cw > w or ch > h:
        return None
    if kind in ("corner_label", "scale_bar", "timestamp", "sample_id") and rng.random() < 0.7:
        # near a corner or an edge, where burned-in labels live
        x = _pick(rng, (0, w - cw)) + int(rng.integers(-min(20, w - cw), min(20, w - cw) + 1)) if w > cw else 0
        y = _pick(rng, (0, h - ch)) + int(rng.integers(-min(20, h - ch), min(20, h - ch) + 1)) if h > ch else 0
        return int(np.clip(x, 0, w - cw)), int(np.clip(y, 0, h - ch))
    return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))


def render_overlays(background: np.ndarray, rng: np.random.Generator, cfg: SynthConfig = SynthConfig(),
                    n_overlays: int | None = None) -> Rendered:
    """Draw random overlays onto a copy of `background` (uint8 RGB) and return pixels + exact boxes."""
    h, w = background.shape[:2]
    img = background.astype(np.float32).copy()
    ink_map = np.zeros((h, w), dtype=np.int32)
    marks = np.zeros((h, w), dtype=bool)
    fonts = available_fonts()
    boxes: list[tuple[int, int, int, int]] = []
    texts: list[str] = []
    kinds: list[str] = []
    polys: list[tuple[float, ...]] = []
    occupied: list[tuple[int, int, int, int]] = []
    if n_overlays is None:
        n_overlays = 0 if rng.random() < cfg.p_empty else int(rng.integers(cfg.overlays[0], cfg.overlays[1] + 1))
    max_text = max(cfg.min_text_px + 1, cfg.max_text_frac * h)
    for _ in range(n_overlays):
        kind = _pick(rng, cfg.kinds)
        lines = _TEXTS[kind](rng)
        # ink height of a capital ~ 0.73 x font size; log-uniform sizes favour small text
        lo, hi = math.log(cfg.min_text_px), math.log(max_text if kind == "watermark" else max(cfg.min_text_px + 1, max_text * 0.7))
        cap = math.exp(rng.uniform(lo if kind != "watermark" else (lo + hi) / 2, hi))
        size = max(6, int(round(cap / 0.73)))
        font_path = _pick(rng, fonts)
        angle = float(rng.uniform(-cfg.max_angle, cfg.max_angle)) if rng.random() < cfg.p_rotate else 0.0
        if kind == "watermark":
            angle = float(rng.uniform(-30, 30)) if rng.random() < 0.5 else angle
        plate = rng.random() < cfg.p_plate and kind != "watermark"
        shadow = rng.random() < cfg.p_shadow and kind != "watermark"
        bar_len = int(rng.integers(max(20, size * 2), max(21, size * 8))) if kind == "scale_bar" and cfg.scale_bars else 0
        low = rng.random() < cfg.p_low_contrast
        alpha = float(rng.uniform(0.15, 0.4)) if kind == "watermark" else (float(rng.uniform(0.6, 1.0)) if rng.random() < 0.15 else 1.0)
        plate_alpha = float(rng.uniform(0.45, 1.0))
        for attempt in range(6):
            if attempt == 3:  # rotated multi-unit overlays may overlap themselves: fall back to upright
                angle = 0.0
            ov = _render_overlay(rng, kind, lines, font_path, size, cfg.granularity, angle, plate, shadow, bar_len)
            if not ov.units:
                break
            inks = [_ink(ov, k) for k in range(len(ov.units))]
            unit_boxes = [_bbox(m) for m in inks]
            if any(_overlaps(a, b) for i, a in enumerate(unit_boxes) for b in unit_boxes[i + 1:]):
                continue
            # crop the canvas to what is drawn so it can be placed near edges
            extent = list(unit_boxes)
            if ov.plate is not None:
                extent.append(_bbox(ov.plate > 0))
            if ov.bar is not None:
                extent.append(_bbox(ov.bar))
            ex0, ey0 = min(b[0] for b in extent), min(b[1] for b in extent)
            ex1, ey1 = max(b[2] for b in extent), max(b[3] for b in extent)
            pos = _place(rng, kind, ex1 - ex0, ey1 - ey0, w, h)
            if pos is None:
                size = max(6, int(size * 0.7))
                continue
            dx, dy = pos[0] - ex0, pos[1] - ey0
            placed = [(b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy) for b in unit_boxes]
            footprint = (ex0 + dx, ey0 + dy, ex1 + dx, ey1 + dy)
            if any(_overlaps(footprint, o, gap=2) for o in occupied):
                continue
            # composite: plate, bar, then text ink
            sl = (slice(ey0 + dy, ey1 + dy), slice(ex0 + dx, ex1 + dx))
            csl = (slice(ey0, ey1), slice(ex0, ex1))
            region = img[sl]
            bg_mean = region.reshape(-1, 3).mean(axis=0)
            text_col = _text_colour(rng, bg_mean, low)
            if ov.plate is not None:
                plate_col = np.array((0, 0, 0) if _luma(text_col) > 128 else (255, 255, 255), dtype=np.float32)
                if low:
                    plate_col = np.clip(text_col + (-50 if _luma(text_col) > 128 else 50), 0, 255)
                a = ov.plate[csl][..., None] * plate_alpha
                region[:] = region * (1 - a) + plate_col * a
                marks[sl] |= ov.plate[csl] > 0
            if ov.bar is not None:
                b = ov.bar[csl]
                region[b] = text_col
                marks[sl] |= b
            shadow_col = np.array((0, 0, 0) if _luma(text_col) > 100 else (255, 255, 255), dtype=np.float32)
            for k, u in enumerate(ov.units):
                if ov.shadows[k] is not None:
                    a = ov.shadows[k][csl][..., None] * alpha
                    region[:] = region * (1 - a) + shadow_col * a
                a = u[csl][..., None] * alpha
                region[:] = region * (1 - a) + text_col * a
                ink_map[sl][inks[k][csl]] = len(boxes) + k + 1
            boxes.extend(placed)
            polys.extend(_rotated_rect(m, angle, dx, dy) for m in inks)
            texts.extend(ov.texts)
            kinds.extend([kind] * len(ov.units))
            occupied.append(footprint)
            break
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return Rendered(out, arr, texts, kinds, ink_map, marks & (ink_map == 0), background, polys)


def _rotated_rect(ink: np.ndarray, angle: float, dx: int, dy: int) -> tuple[float, ...]:
    """The rectangle along the text's direction around a unit's ink pixels (image coordinates,
    pixel squares, not centres), or () for upright text. PIL's rotate(angle) turns the canvas
    counter-clockwise as seen, so the baseline runs along (cos a, -sin a) with y down."""
    if abs(angle) <= 1e-3:
        return ()
    from pipeline.boxes import rect_along

    a = math.radians(angle)
    u = (math.cos(a), -math.sin(a))
    ys, xs = np.nonzero(ink)
    half = 0.5 * (abs(u[0]) + abs(u[1]))      # a pixel square's half-extent along u (and v)
    rect = rect_along(np.stack([xs + dx + 0.5, ys + dy + 0.5], 1), u, margin=half)
    return tuple(round(float(c), 2) for c in rect.reshape(-1))


# --- image sets -------------------------------------------------------------------------------

def _image_size(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    w = int(rng.integers(cfg.width[0], cfg.width[1] + 1))
    aspect = _pick(rng, (4 / 3, 4 / 3, 1.0, 3 / 2, 16 / 9, 3 / 4))
    return w, max(32, int(round(w / aspect)))


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: " + ("a file; --backgrounds takes a folder of images" if folder.exists()
                                                 else "backgrounds folder not found"))
    from pipeline.listing import Listed, iter_image_files

    # the shared listing rule: FIFOs, links out of the folder and hidden files are left out, and
    # named in the log as every other stage names them (they went in silence)
    found = []
    for e in iter_image_files(folder, IMAGE_EXTENSIONS):
        if isinstance(e, Listed):
            found.append(e.path)
        else:
            log.warning("%s: background skipped (%s: %s)", e.path, e.reason, e.detail)
    return sorted(found)


def synth_image(index: int, cfg: SynthConfig, backgrounds: Sequence[Path] = ()) -> Rendered:
    """Image `index` of a run: deterministic from (cfg.seed, index)."""
    from pipeline.imaging import load_rgb

    rng = np.random.default_rng([cfg.seed, index])
    w, h = _image_size(rng, cfg)
    bg, used, bad = None, "", ""
    if backgrounds and rng.random() < cfg.real_background_fraction:
        path = backgrounds[int(rng.integers(len(backgrounds)))]
        try:
            bg, used = _fit_background(load_rgb(path), rng, w, h), str(path)
        except Exception as exc:  # a bad background is logged and replaced, the run goes on
            log.warning("%s: unusable background (%s); using a procedural one", path, exc)
            bad = str(path)
    if bg is None:
        bg = procedural_background(rng, w, h, cfg.background_kinds)
    return replace(render_overlays(bg, rng, cfg), background_path=used, unusable=bad)


def workspace_backgrounds(ws: Any, detector: Any = None, max_images: int = 200, threshold: float = 0.3) -> list[Path]:
    """Workspace images that are known or predicted to be text-free.

    Human-verified empty images come first; the rest must yield no detection above `threshold`
    from `detector` (default: the workspace's current detector). Images that may carry
    unlabelled text are never used as backgrounds."""
    from pipeline.imaging import load_rgb

    with ws.catalog() as cat:
        rows = cat.images(include_excluded=False)
        empty_ann = cat.images_annotated_empty()
    verified = [ws.abspath(r["path"]) for r in rows if r["status"] == ImageStatus.VERIFIED_EMPTY or r["id"] in empty_ann]
    rest = [r for r in rows if not (r["status"] == ImageStatus.VERIFIED_EMPTY or r["id"] in empty_ann)][:max_images]
    out = list(verified)
    if rest:
        if detector is None:
            from pipeline.bundle import resolve_detector
            from pipeline.detectors import load_detector

            detector = load_detector(resolve_detector("current", ws))
        for r in rest:
            path = ws.abspath(r["path"])
            try:
                det = detector.detect([load_rgb(path)])[0]
            except Exception as exc:
                log.warning("%s: skipped as background (%s)", path, exc)
                continue
            if not len(det.filter(threshold)):
                out.append(path)
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _fingerprint(cfg: SynthConfig, backgrounds: Sequence[Path]) -> str:
    """What a set is made from. Backgrounds count by name, size and modification time: replacing
    a folder's images under the same names left the set "up to date" on the old ones."""
    def stamp(p: Path) -> Any:
        try:
            st = os.stat(p)
        except OSError:
            return str(p)
        return [str(p), st.st_size, st.st_mtime_ns]

    payload = {"version": SYNTH_FORMAT_VERSION, "config": cfg.to_json(), "fonts": [Path(f).name for f in available_fonts()],
               "backgrounds": [stamp(Path(p)) for p in backgrounds]}
    return sha256_json(payload)


@dataclass(frozen=True)
class SynthSummary:
    """A synthetic set on disk; `as_dict()` is the `--json` payload of `textloop synth`."""

    images: int
    boxes: int
    kinds: dict[str, int]          # overlay kind -> images carrying it
    backgrounds: int               # real background images given
    out: str
    skipped: bool                  # already there with the same config: nothing written
    on_real_backgrounds: int = 0   # images painted on one of them
    unusable_backgrounds: int = 0  # given backgrounds that could not be read (procedural instead)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def generate(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), backgrounds: Sequence[Path] = (),
             progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write `out_dir/images/NNNNNN.png` and `out_dir/boxes.jsonl` (devset format).

    Idempotent: a finished run with the same config, fonts and backgrounds is left untouched;
    otherwise images are (re)written atomically and boxes.jsonl is replaced last. While it runs
    the folder holds `INCOMPLETE` (its config) and neither the old manifest nor the old labels:
    an interrupted run left new images beside the old boxes.jsonl, which training then read as
    their labels, and a rerun with the old options took the mixed folder as finished."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    fp = _fingerprint(cfg, backgrounds)
    if manifest_path.exists() and (out_dir / "boxes.jsonl").exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("fingerprint") == fp and all((out_dir / r).exists() for r in old.get("images", [])):
            done = old.get("summary", {})
            return SynthSummary(images=done.get("images", 0), boxes=done.get("boxes", 0), kinds=done.get("kinds", {}),
                                backgrounds=done.get("backgrounds", 0), out=str(out_dir), skipped=True,
                                on_real_backgrounds=done.get("on_real_backgrounds", 0),
                                unusable_backgrounds=done.get("unusable_backgrounds", 0))
    marker = out_dir / INCOMPLETE
    atomic_write_text(marker, json.dumps({"fingerprint": fp, "config": cfg.to_json()}, indent=2))
    for stale in (manifest_path, out_dir / "boxes.jsonl"):
        stale.unlink(missing_ok=True)
    records: list[dict[str, Any]] = []
    n_boxes = 0
    kinds: dict[str, int] = {}
    on_real, unusable = 0, set()
    for i in range(cfg.n_images):
        r = synth_image(i, cfg, backgrounds)
        on_real += bool(r.background_path)
        if r.unusable:
            unusable.add(r.unusable)
        name = f"images/{i:06d}.png"
        atomic_write_bytes(out_dir / name, _png_bytes(r.image))
        rec = LabelledImage(image=name, width=r.image.shape[1], height=r.image.shape[0], boxes=r.boxes,
                            texts=tuple(r.texts), polys=tuple(r.polys) if any(r.polys) else (),
                            source="synth").to_json()
        rec["kinds"] = list(r.kinds)
        records.append(rec)
        n_boxes += len(r.boxes)
        for k in r.kinds:
            kinds[k] = kinds.get(k, 0) + 1
        if progress:
            progress(i + 1, cfg.n_images)
    write_jsonl(out_dir / "boxes.jsonl", records)
    keep = {r["image"] for r in records}
    for old in (out_dir / "images").glob("[0-9]*.png"):   # a smaller set made over a larger one left them
        if f"images/{old.name}" not in keep and old.stem.isdigit():
            old.unlink(missing_ok=True)
    summary = {"images": cfg.n_images, "boxes": n_boxes, "kinds": kinds, "backgrounds": len(backgrounds),
               "on_real_backgrounds": on_real, "unusable_backgrounds": len(unusable)}
    atomic_write_text(manifest_path, json.dumps({"fingerprint": fp, "config": cfg.to_json(), "summary": summary,
                                                 "images": [r["image"] for r in records]}, indent=2))
    marker.unlink()
    return SynthSummary(**summary, out=str(out_dir), skipped=False)


INCOMPLETE = "INCOMPLETE"   # in a synthetic set's folder while `generate` writes it


def check_complete(out_dir: str | Path, finishing: SynthConfig | None = None) -> None:
    """ValueError when `generate` was interrupted in `out_dir` (its images and labels do not
    belong together until it is run again), unless it was a `generate` of `finishing`, which
    the caller runs again to finish it (train's own set, cut short by Ctrl-C)."""
    marker = Path(out_dir) / INCOMPLETE
    if not marker.exists():
        return
    if finishing is not None:
        try:
            then = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            then = None
        if isinstance(then, dict) and then.get("fingerprint") == _fingerprint(finishing, ()):
            return
    raise ValueError(f"synthetic set {Path(out_dir)} is incomplete (its generation was interrupted); run "
                     f"`textloop synth` with the same options to finish it, or delete the folder")
