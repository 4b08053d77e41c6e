"""Generated image pools with planted problems, for curation tests, the notebook and benchmarks.

Document-like pages (light paper, dark text lines at random places, some coloured stamps),
so that near-duplicate and outlier detection face images that look alike, as real scans do.
Nothing is downloaded; fonts come with matplotlib.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ("sample", "ID", "2024-03-17", "patient", "invoice", "total", "lab", "slide", "batch", "name",
         "plate", "A-1729", "date", "ref", "scan", "page", "no.", "case", "dose", "mg", "Zürich", "street")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any font is fine for test data
        return ImageFont.load_default()


KINDS = ("paper", "screenshot", "photo", "micro")


def _background(kind: str, rng: np.random.Generator, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int]]:
    """A background of one of the KINDS and an ink colour that reads on it."""
    w, h = size
    if kind == "paper":
        im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(215, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            y = int(rng.integers(0, h))
            d.line([(0, y), (w, y)], fill=tuple(int(v) for v in rng.integers(120, 200, 3)), width=1)
        ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    elif kind == "screenshot":
        dark = rng.random() < 0.5
        base = rng.integers(20, 60, 3) if dark else rng.integers(225, 256, 3)
        im = Image.new("RGB", size, tuple(int(v) for v in base))
        d = ImageDraw.Draw(im)
        bar = tuple(int(v) for v in rng.integers(0, 256, 3))
        d.rectangle([0, 0, w, int(rng.integers(h // 12, h // 5))], fill=bar)
        if rng.random() < 0.7:
            d.rectangle([0, 0, int(rng.integers(w // 8, w // 4)), h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        ink = (235, 235, 235) if dark else (20, 20, 20)
    elif kind == "photo":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = (xx * rng.random() + yy * rng.random()) / (w + h)
        arr = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
        for _ in range(int(rng.integers(2, 6))):
            cx, cy, r = rng.random() * w, rng.random() * h, 10 + rng.random() * h / 3
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            arr += blob[..., None] * (rng.integers(0, 256, 3) - arr) * 0.8
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        ink = (255, 255, 255) if arr.mean() < 128 else (0, 0, 0)
    else:  # micro: dark field with bright cells
        arr = np.zeros((h, w, 3), np.float32) + rng.integers(0, 30, 3)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        col = rng.integers(60, 256, 3)
        for _ in range(int(rng.integers(5, 20))):
            cx, cy, r = rng.random() * w, rng.random() * h, 3 + rng.random() * 12
            arr += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] * col
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        ink = (255, 255, 0)
    return im, ink


def text_page(seed: int, size: tuple[int, int] = (320, 240), n_lines: int | None = None, kind: str | None = None,
              kinds: tuple[str, ...] = KINDS) -> tuple[Image.Image, list[list[float]]]:
    """An image with text lines (paper, screenshot, photo or microscopy-like background);
    returns the image and the pixel xyxy box of every line."""
    rng = np.random.default_rng(seed)
    w, h = size
    kind = kind or kinds[int(rng.integers(0, len(kinds)))]
    im, ink = _background(kind, rng, size)
    d = ImageDraw.Draw(im)
    if rng.random() < 0.5:
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 40))
        d.rectangle([x, y, x + int(rng.integers(30, 90)), y + int(rng.integers(20, 60))],
                    outline=tuple(int(v) for v in rng.integers(0, 256, 3)), width=3)
    boxes: list[list[float]] = []
    n = int(n_lines if n_lines is not None else rng.integers(2, 7))
    tries = 0
    while len(boxes) < n and tries < 50:
        tries += 1
        fs = int(rng.integers(max(10, h // 24), max(12, h // 10)))
        font = _font(fs)
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        x0, y0 = int(rng.integers(2, max(3, w // 2))), int(rng.integers(2, max(3, h - fs - 4)))
        bb = d.textbbox((x0, y0), text, font=font)
        if bb[2] >= w - 1 or bb[3] >= h - 1:
            continue
        if any(not (bb[2] < b[0] - 2 or bb[0] > b[2] + 2 or bb[3] < b[1] - 2 or bb[1] > b[3] + 2) for b in boxes):
            continue
        d.text((x0, y0), text, fill=ink, font=font)
        boxes.append([float(v) for v in bb])
    return im, boxes


def outlier_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Something unlike every KIND: saturated high-frequency colour noise stripes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([
        128 + 127 * np.sin(xx / 1.7 + rng.random() * 6),
        128 + 127 * np.sin(yy / 1.3),
        128 + 127 * np.sin((xx - yy) / 2.1),
    ], axis=-1)
    arr += rng.normal(0, 40, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class PlantedPool:
    """Files written by `make_pool` and which ones were planted (by file name)."""

    folder: Path
    files: list[Path]
    exact: tuple[str, str]                     # original, lossless re-encoding (same pixels)
    near: tuple[str, str]                      # original, resized + recompressed copy
    outlier: str
    broken: str | None = None
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)


def make_pool(folder: Path, n: int = 24, seed: int = 0, size: tuple[int, int] = (320, 240), near_scale: float = 0.9, near_quality: int = 75,
              broken: bool = True, kinds: tuple[str, ...] = ("paper", "screenshot")) -> PlantedPool:
    """`n` distinct pages plus planted problems: an exact duplicate (PNG of a JPEG's pixels),
    a near duplicate (`near_scale` size, JPEG `near_quality`), an outlier and (optionally) a truncated file."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    boxes: dict[str, list[list[float]]] = {}
    for i in range(n):
        im, b = text_page(seed * 100_003 + i, size, kinds=kinds)
        p = folder / f"page_{i:03d}.jpg"
        p.write_bytes(jpeg(im))
        files.append(p)
        boxes[p.name] = b
    # exact duplicate: same decoded pixels, other format and bytes
    src = files[1]
    with Image.open(src) as im:
        exact = folder / "page_001_copy.png"
        exact.write_bytes(png(im.convert("RGB")))
    files.append(exact)
    boxes[exact.name] = boxes[src.name]
    # near duplicate: resized and recompressed
    src2 = files[2]
    with Image.open(src2) as im:
        small = im.convert("RGB").resize((int(im.width * near_scale), int(im.height * near_scale)), Image.Resampling.BILINEAR)
        near = folder / "page_002_small.jpg"
        near.write_bytes(jpeg(small, quality=near_quality))
    files.append(near)
    boxes[near.name] = [[v * near_scale for v in bb] for bb in boxes[src2.name]]
    out = folder / "zz_outlier.jpg"
    out.write_bytes(jpeg(outlier_image(seed + 7, size)))
    files.append(out)
    boxes[out.name] = []
    bad = None
    if broken:
        b = folder / "page_broken.jpg"
        b.write_bytes(files[3].read_bytes()[:400])
        files.append(b)
        bad = b.name
    return PlantedPool(folder, files, (src.name, exact.name), (src2.name, near.name), out.name, bad, boxes)


# --- planted label errors (label-noise tests and benchmark) -----------------------------------

ERROR_KINDS = ("drop", "shift", "add")


def inject_error(boxes: np.ndarray, width: int, height: int, kind: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, str]:
    """One labelling error in `boxes` (N, 4 pixel xyxy): `drop` a box, `shift` one by 40-70 % of
    its size (IoU with the truth falls to about 0.2-0.4), or `add` a box of typical size on a
    spot no box touches. Returns the new boxes and the kind actually applied (`add` when there
    is nothing to drop or shift)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if len(b) == 0 and kind in ("drop", "shift"):
        kind = "add"
    if kind == "drop":
        return np.delete(b, int(rng.integers(len(b))), axis=0), kind
    if kind == "shift":
        j = int(rng.integers(len(b)))
        bw, bh = b[j, 2] - b[j, 0], b[j, 3] - b[j, 1]
        dx = bw * rng.uniform(0.4, 0.7) * rng.choice([-1, 1])
        dy = bh * rng.uniform(0.4, 0.7) * rng.choice([-1, 1])
        dx = float(np.clip(dx, -b[j, 0], width - b[j, 2]))
        dy = float(np.clip(dy, -b[j, 1], height - b[j, 3]))
        if abs(dx) < 0.25 * bw and abs(dy) < 0.25 * bh:  # against an edge: push the other way
            dx = -np.sign(dx or 1) * bw * 0.5
            dx = float(np.clip(dx, -b[j, 0], width - b[j, 2]))
        b[j] += [dx, dy, dx, dy]
        return b, kind
    if kind != "add":
        raise ValueError(f"unknown error kind {kind!r}")
    if len(b):
        ws, hs = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        bw, bh = float(np.median(ws)), float(np.median(hs))
    else:
        bw, bh = width * 0.2, height * 0.05
    bw, bh = max(4.0, min(bw, width * 0.9)), max(4.0, min(bh, height * 0.9))
    for _ in range(200):
        x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
        cand = np.array([[x0, y0, x0 + bw, y0 + bh]])
        if not len(b) or not _touches(cand[0], b, margin=2.0):
            break
    return np.concatenate([b, cand]), kind


def _touches(box: np.ndarray, boxes: np.ndarray, margin: float) -> bool:
    return bool(np.any((boxes[:, 0] < box[2] + margin) & (boxes[:, 2] > box[0] - margin)
                       & (boxes[:, 1] < box[3] + margin) & (boxes[:, 3] > box[1] - margin)))
