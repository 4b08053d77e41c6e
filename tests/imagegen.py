"""Tiny generated images for tests (no test reads the devset or the network)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48), quality: int = 90) -> bytes:
    buf = io.BytesIO()
    noise_image(seed, size).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
