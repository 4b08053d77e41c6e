"""Tiny generated images for tests (no test reads the devset or the network)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def noise_image(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def smooth_image(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A quiet photo-like RGB picture (a smooth colour field, faint noise, no text): what most
    inputs look like to redact. `noise_image` at photo size is as noisy as EM grain, which turns on
    the noisy-image audit and its closer look (seconds per image)."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = size
    field = cv2.resize(rng.uniform(40, 215, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return Image.fromarray((field + rng.normal(0, 3, (h, w, 3))).clip(0, 255).astype(np.uint8))


def em_grain(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """An (h, w, 3) uint8 grey electron-micrograph-like picture: smooth variation plus pixel noise
    of sd 35 (as `bench_redact.label_background` kind 0), noisy enough for redact's noisy-image
    audit. Drawn from `rng` in one fixed order, so a seed always gives the same picture."""
    import cv2

    a = 128 + 40 * cv2.resize(rng.normal(0, 1, (h // 10, w // 10)).astype(np.float32), (w, h),
                              interpolation=cv2.INTER_CUBIC) + rng.normal(0, 35, (h, w))
    return np.repeat(a.clip(0, 255).astype(np.uint8)[..., None], 3, 2)


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48), quality: int = 90) -> bytes:
    buf = io.BytesIO()
    noise_image(seed, size).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def synth_train_val(root: Path, cfg: "object", n_val: int) -> dict:
    """A tiny synthetic training set and a validation set of `n_val` images (seed 2) under
    `root`, as training samples: what the training tests of both architectures start from."""
    import dataclasses

    from pipeline.synth import generate
    from pipeline.train import samples_from_jsonl

    generate(root / "synth", cfg)
    generate(root / "val", dataclasses.replace(cfg, n_images=n_val, seed=2))
    return {"root": root, "train": samples_from_jsonl(root / "synth/boxes.jsonl"),
            "val": samples_from_jsonl(root / "val/boxes.jsonl")}


def rotated_jpeg(path: Path, orientation: int = 6) -> None:
    """A 60x40 stored JPEG with a white block at raw (5..20, 3..10) and an EXIF orientation tag
    (upright 40x60 for orientation 6): labels drawn on stored vs upright pixels."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[3:10, 5:20] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif)
    write(path, buf.getvalue())


def text_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (matplotlib ships it) at `size` px: the tests' one font."""
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


FAINT_WORDS = ("Patient 48213", "Specimen B-77")


def faint_page(level: int, page: int = 255, ink: int = 0, size: tuple[int, int] = (800, 600),
               cell: int | None = None, noise: float = 0.0, words: tuple[str, ...] = FAINT_WORDS,
               font: int = 22, ruled: int | None = None) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """An RGB page of `page` grey with two lines of ordinary `ink` text, and `words` (at `font`
    px) as a footer at grey `level` (244 on 255: a light-grey footer a viewer reads and DB does not see),
    on a band of grey `cell` across the page if given (a shaded table row), on 1 px lines of grey
    `ruled` every 30 px below the heading if given (ruled paper: one crosses the footer's lower
    half), with Gaussian `noise` (sd, grey levels: a scan's grain) over it all. The footer
    words' xyxy ink boxes."""
    w, h = size
    im = Image.new("RGB", size, (page,) * 3)
    d = ImageDraw.Draw(im)
    if cell is not None:
        d.rectangle([0, h - 100, w, h - 20], fill=(cell,) * 3)
    if ruled is not None:
        for y in range(h - 60, 140, -30):   # the one at h - 60 crosses the footer
            d.line([(0, y), (w, y)], fill=(ruled,) * 3)
    d.text((40, 40), "Quarterly report of the laboratory", fill=(ink,) * 3, font=text_font(30))
    d.text((40, 100), "Results are summarised below in full.", fill=(ink,) * 3, font=text_font(22))
    boxes = []
    for k, word in enumerate(words):
        at = (40 + k * (w // len(words)), h - 70)
        d.text(at, word, fill=(level,) * 3, font=text_font(font))
        boxes.append(tuple(int(v) for v in d.textbbox(at, word, font=text_font(font))))
    arr = np.asarray(im)
    if noise:
        grain = np.random.default_rng(0).normal(0, noise, arr.shape[:2])[..., None]
        arr = np.clip(np.rint(arr + grain), 0, 255).astype(np.uint8)
    return arr, boxes


def crossed_sign(size: tuple[int, int] = (1024, 768)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey wall (noise sd 6) with a light 60 px line "No. 5, Dan Ling St." and a translucent
    white "SAMPLE COPY" at 30 degrees across its start; the line's and the watermark's ink masks."""
    w, h = size
    rng = np.random.default_rng(0)
    wall = (90 + rng.normal(0, 6, (h, w, 1))).clip(0, 255).astype(np.uint8).repeat(3, 2)
    line = Image.new("L", size)
    ImageDraw.Draw(line).text((300, 330), "No. 5, Dan Ling St.", fill=255, font=text_font(60))
    mark = Image.new("L", (520, 90))
    ImageDraw.Draw(mark).text((4, 4), "SAMPLE COPY", fill=255, font=text_font(56))
    mark = mark.rotate(30, expand=True, resample=Image.BICUBIC)
    wm = Image.new("L", size)
    wm.paste(mark, (150, 250))
    a = np.asarray(line, np.float32)[..., None] / 255
    b = np.asarray(wm, np.float32)[..., None] / 255 * 0.35
    rgb = wall * (1 - a) + 235 * a
    rgb = (rgb * (1 - b) + 255 * b).round().astype(np.uint8)
    return rgb, np.asarray(line) > 127, np.asarray(wm) > 127
