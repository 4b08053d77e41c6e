"""Make data/samples/: small public-domain/CC0 images from the scikit-image wheel, some with
burned-in text (sample IDs, dates, scale bars), some without, plus their boxes.jsonl.

Deterministic: the same scikit-image version gives the same files. Run `make samples`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import skimage.data as skd
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

# (skimage.data function, licence as stated in its docstring)
SOURCES = {
    "camera": "CC0 (Lav Varshney)",
    "coins": "public domain (Brooklyn Museum)",
    "astronaut": "public domain (NASA)",
    "hubble_deep_field": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "cell": "CC0",
    "immunohistochemistry": "public domain",
    "horse": "CC0 (Andreas Preuss)",
    "clock": "public domain",
    "retina": "CC0 / public domain",
    "microaneurysms": "CC0 (Andreas Maier)",
    "text": "public domain (contains real text, no boxes given)",
}
WITH_TEXT = ["camera", "coins", "astronaut", "hubble_deep_field", "cell", "immunohistochemistry", "retina",
             "microaneurysms", "rocket", "coffee", "brick", "horse"]


def font(size: int, bold: bool = False, mono: bool = False) -> ImageFont.FreeTypeFont:
    family = "DejaVu Sans Mono" if mono else "DejaVu Sans"
    path = font_manager.findfont(font_manager.FontProperties(family=family, weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size)


def as_rgb(arr: np.ndarray, max_side: int) -> Image.Image:
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        arr = (255 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-9)).astype(np.uint8)
    im = Image.fromarray(arr).convert("RGB")
    im.thumbnail((max_side, max_side))
    return im


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, f: ImageFont.FreeTypeFont,
              fill: tuple[int, int, int], plate: tuple[int, int, int] | None = None) -> list[int]:
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=f)
    if plate is not None:
        draw.rectangle((x0 - 3, y0 - 3, x1 + 3, y1 + 3), fill=plate)
    draw.text(xy, text, font=f, fill=fill)
    return [x0, y0, x1, y1]


def overlay(im: Image.Image, rng: random.Random, name: str) -> tuple[list[list[int]], list[str]]:
    d = ImageDraw.Draw(im)
    w, h = im.size
    boxes, texts = [], []
    size = max(9, int(h * rng.uniform(0.035, 0.07)))
    sid = f"{rng.choice(['S', 'MK', 'PT', 'LAB'])}-{rng.randint(1000, 99999)}"
    t = draw_text(d, (6, 6), sid, font(size, bold=True), (255, 255, 0), plate=(0, 0, 0) if rng.random() < 0.5 else None)
    boxes.append(t), texts.append(sid)
    date = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    f = font(max(8, size - 3), mono=True)
    bx = d.textbbox((0, 0), date, font=f)
    t = draw_text(d, (w - (bx[2] - bx[0]) - 8, h - (bx[3] - bx[1]) - 10), date, f, (255, 255, 255))
    boxes.append(t), texts.append(date)
    if rng.random() < 0.7:  # scale bar + label
        bar_w = w // 6
        y = h - 18
        d.rectangle((8, y, 8 + bar_w, y + 4), fill=(255, 255, 255))
        label = f"{rng.choice([10, 20, 50, 100])} µm"
        t = draw_text(d, (8, y - size - 2), label, font(max(8, size - 4)), (255, 255, 255))
        boxes.append(t), texts.append(label)
    return boxes, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/samples"))
    ap.add_argument("--max-side", type=int, default=480)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, licence in SOURCES.items():
        im = as_rgb(getattr(skd, name)(), args.max_side)
        boxes, texts = overlay(im, rng, name) if name in WITH_TEXT else ([], [])
        fname = f"{name}.png" if name in ("cell", "text") else f"{name}.jpg"
        path = out / fname
        if fname.endswith(".jpg"):
            im.save(path, quality=90)
        else:
            im.save(path)
        if name != "text":  # `text` holds real, unlabelled text
            lines.append({"image": fname, "width": im.width, "height": im.height, "boxes": boxes, "texts": texts,
                          "ignore": [False] * len(boxes), "licence": licence})
    # A 16-bit grayscale TIFF, as microscopes write them, with a burned-in ID.
    cells = skd.cell().astype(np.float64)
    im16 = Image.fromarray((cells / cells.max() * 40000).astype(np.uint16))
    im16.thumbnail((args.max_side, args.max_side))
    arr = np.asarray(im16).copy()
    preview = Image.fromarray((arr / 256).astype(np.uint8)).convert("RGB")
    box = draw_text(ImageDraw.Draw(preview), (6, 6), "CELL-0042", font(16, bold=True), (255, 255, 255))
    ink = np.asarray(preview)[..., 0] == 255
    arr[ink] = 65535
    Image.fromarray(arr).save(out / "cell16.tif")
    lines.append({"image": "cell16.tif", "width": arr.shape[1], "height": arr.shape[0], "boxes": [box],
                  "texts": ["CELL-0042"], "ignore": [False], "licence": SOURCES["cell"]})
    with (out / "boxes.jsonl").open("w") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
    print(f"wrote {len(lines) + 1} images and boxes.jsonl to {out}")


if __name__ == "__main__":
    main()
