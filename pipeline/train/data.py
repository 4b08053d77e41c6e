"""Training data shared by both architectures: samples, polygons, augmentation.

A `Sample` is an image path, its ground truth (`LabelledImage`: boxes, don't-care flags and,
for rotated text, polygons) and a stable key. Augmentation is a pure function of its random
generator, so a batch is a pure function of (seed, step) and `--resume` replays exactly.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pipeline.boxes import area, clip
from pipeline.formats import LabelledImage, read_jsonl

log = logging.getLogger("pipeline.train")


@dataclass(frozen=True)
class Sample:
    """One training/validation image: where its pixels are, its ground truth, a stable key."""

    path: Path
    gt: LabelledImage
    key: str


def samples_from_jsonl(path: str | Path, prefix: str = "") -> list[Sample]:
    """Records of a devset-format boxes.jsonl (e.g. a synth folder) as samples."""
    path = Path(path)
    return [Sample(path.parent / r.image, r, f"{prefix}{r.image}") for r in read_jsonl(path)]


def samples_from_devset(records: Sequence[tuple[Path, LabelledImage]]) -> list[Sample]:
    return [Sample(p, r, f"{r.source}/{r.image}") for p, r in records]


def workspace_samples(ws: Any, split: str) -> list[Sample]:
    """Human-labelled workspace images of a split (the latest submitted/empty annotation per image,
    as `evaluate.workspace_ground_truth` reads them), keyed by image id."""
    from pipeline.evaluate import workspace_ground_truth

    return [Sample(path, gt, path.stem) for path, gt in workspace_ground_truth(ws, split)]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast/brightness, channel swaps, grey, inversion, noise, blur and JPEG artefacts."""
    f = img.astype(np.float32)
    if rng.random() < 0.8:
        f = (f - f.mean()) * rng.uniform(0.6, 1.4) + f.mean() + rng.uniform(-40, 40)
    if rng.random() < 0.3:
        f = f[..., rng.permutation(3)]
    if rng.random() < 0.15:
        f = np.repeat(f.mean(axis=-1, keepdims=True), 3, axis=-1)
    if rng.random() < 0.1:
        f = 255 - f
    if rng.random() < 0.3:
        f = f + rng.normal(0, rng.uniform(2, 12), f.shape)
    img = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)))))
    if rng.random() < 0.3:
        img = _jpeg(img, int(rng.integers(25, 90)))
    return img


def augment(img: np.ndarray, gt: LabelledImage, rng: np.random.Generator, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Faster R-CNN: scaled/cropped/photometrically jittered pixels and the matching (N, 4)
    boxes (care boxes only). Don't-care regions and mostly cut-off text are blanked, since this
    loss has no mask."""
    img = img.copy()
    boxes = gt.boxes.astype(np.float64)
    if gt.ignore.any():  # don't-care regions: blank them, so they teach neither text nor background
        fill = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        for x0, y0, x1, y1 in boxes[gt.ignore].astype(int):
            img[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = fill
        boxes = boxes[~gt.ignore]
    h, w = img.shape[:2]
    side = cfg.model.train_max_side
    fit = side / max(h, w)
    jitter = rng.uniform(*cfg.scale_jitter) if cfg.augment else 1.0
    # large images: half the time keep (near) native scale and crop, so small text keeps its pixels
    base = fit if (fit >= 1.0 or not cfg.augment or rng.random() < 0.5) else rng.uniform(fit, 1.0)
    s = float(np.clip(base * jitter, 0.05, 3.0))
    nh, nw = max(8, int(round(h * s))), max(8, int(round(w * s)))
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR if s > 1 else Image.BOX))
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h])
    limit = cfg.crop if cfg.crop and cfg.augment else int(side * 1.25)
    crop_w, crop_h = min(nw, limit), min(nh, limit)
    if (crop_w, crop_h) != (nw, nh):
        if len(boxes) and rng.random() < 0.7:  # most crops around some text, the rest anywhere
            bx = boxes[int(rng.integers(len(boxes)))]
            cx, cy = (bx[0] + bx[2]) / 2 + rng.uniform(-0.4, 0.4) * crop_w, (bx[1] + bx[3]) / 2 + rng.uniform(-0.4, 0.4) * crop_h
            x0 = int(np.clip(cx - crop_w / 2, 0, nw - crop_w))
            y0 = int(np.clip(cy - crop_h / 2, 0, nh - crop_h))
        else:
            x0, y0 = int(rng.integers(0, nw - crop_w + 1)), int(rng.integers(0, nh - crop_h + 1))
        img = img[y0:y0 + crop_h, x0:x0 + crop_w]
        full = boxes.copy()
        boxes = clip(boxes - np.array([x0, y0, x0, y0]), crop_w, crop_h)
        vis = area(boxes)
        orig = np.maximum(area(full), 1e-6)
        partial = (vis > 0) & (vis < 0.4 * orig)
        if partial.any():  # mostly cut-off text: blank the visible sliver rather than call it background
            fill = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            img = img.copy()
            for bx0, by0, bx1, by1 in boxes[partial]:
                img[int(by0):int(math.ceil(by1)), int(bx0):int(math.ceil(bx1))] = fill
        boxes = boxes[vis >= 0.4 * orig]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
    boxes = boxes[keep]
    if cfg.augment:
        img = photometric(img, rng)
    return np.ascontiguousarray(img), boxes.reshape(-1, 4)


def inference_scale(h: int, w: int, min_side: int = 736, max_upscale: float = 4.0) -> float:
    """The scale `ppocr`'s first pass runs an image at (short side up to `min_side`)."""
    return float(min(max(1.0, min_side / max(1, min(w, h))), max_upscale))


def warp_crop(img: np.ndarray, polys: Sequence[np.ndarray], ignore: np.ndarray, rng: np.random.Generator,
              crop: int, scale: float, angle: float, around_text: float = 0.7
              ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """A `crop` x `crop` view of `img` at `scale`, rotated by `angle` degrees, centred on some
    text most of the time: one affine warp for crop, scale and rotation. Polygons follow; text
    mostly outside the crop (< 40 % of its area visible) becomes don't-care, not background."""
    import cv2
    import pyclipper

    h, w = img.shape[:2]
    care = [i for i in range(len(polys)) if not ignore[i]]
    if care and rng.random() < around_text:
        p = polys[care[int(rng.integers(len(care)))]]
        c = p.mean(axis=0) + rng.uniform(-0.35, 0.35, 2) * crop / scale
    else:
        c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * scale
    m = np.zeros((2, 3))
    m[:, :2] = rot
    m[:, 2] = np.array([crop / 2, crop / 2]) - rot @ c
    # keep the crop inside the image when it fits (no flat padding where there are pixels)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64) @ m[:, :2].T + m[:, 2]
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    for k in range(2):
        if hi[k] - lo[k] >= crop:
            if lo[k] > 0:
                m[k, 2] -= lo[k]
            elif hi[k] < crop:
                m[k, 2] += crop - hi[k]
    fill = tuple(float(v) for v in img.reshape(-1, 3).mean(axis=0))
    interp = cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA
    out = cv2.warpAffine(img, m, (crop, crop), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    window = [(0, 0), (crop, 0), (crop, crop), (0, crop)]
    new_polys, new_ignore = [], []
    for p, ig in zip(polys, ignore):
        q = p @ m[:, :2].T + m[:, 2]
        lo_q, hi_q = q.min(axis=0), q.max(axis=0)
        if (hi_q < 0).any() or (lo_q > crop).any():
            continue
        area = abs(_area(q))
        if area <= 0:
            continue
        if (lo_q < 0).any() or (hi_q > crop).any():
            pc = pyclipper.Pyclipper()
            pc.AddPath(pyclipper.scale_to_clipper(window), pyclipper.PT_CLIP, True)
            pc.AddPath(pyclipper.scale_to_clipper(q.tolist()), pyclipper.PT_SUBJECT, True)
            inside = pyclipper.scale_from_clipper(pc.Execute(pyclipper.CT_INTERSECTION))
            visible = sum(abs(_area(np.asarray(x))) for x in inside if len(x) >= 3)
            if visible <= 0:
                continue
            ig = bool(ig) or visible < 0.4 * area
        new_polys.append(q)
        new_ignore.append(bool(ig))
    return out, new_polys, np.asarray(new_ignore, dtype=bool)


def _area(poly: np.ndarray) -> float:
    """Signed shoelace area of a (k, 2) polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def draw_images(rng: np.random.Generator, synth: Sequence[Sample], human: Sequence[Sample], cfg: Any,
                ) -> Iterator[tuple[Sample, np.ndarray]]:
    """(sample, upright RGB) draws for one batch, both architectures: a human-labelled image with
    probability `cfg.human_fraction` (when there are any), else a synthetic one. An unreadable
    image is logged and another drawn; more than 10 x `cfg.batch_size` draws is a TrainingError.
    Only `rng` decides what is drawn, so a batch is a pure function of (seed, step)."""
    from pipeline.imaging import load_rgb
    from pipeline.train.engine import TrainingError

    for _ in range(cfg.batch_size * 10):
        use_human = bool(human) and (not synth or rng.random() < cfg.human_fraction)
        pool = human if use_human else synth
        s = pool[int(rng.integers(len(pool)))]
        try:
            img = load_rgb(s.path)
        except Exception as exc:  # a bad image is logged and skipped; the batch draws another
            log.warning("%s: skipped (%s)", s.path, exc)
            continue
        yield s, img
    raise TrainingError("could not load any training image (see the warnings above)")
