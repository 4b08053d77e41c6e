"""Reading images: full-decode validation, metadata probing, and pixels for detectors.

`probe()` is the gatekeeper used by harvest (and redact): it decodes every page so truncated
files are caught, enforces a pixel limit against decompression bombs, and reports the facts
the catalog stores. `load_rgb()` gives an upright uint8 RGB array (EXIF orientation applied,
transparency over white as a labeller sees it), which is the coordinate frame of every box in
textloop; `load_views()` gives detectors every picture a viewer may show.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DEFAULT_MAX_PIXELS

# Pillow format name -> canonical file extension of stored originals.
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp", "GIF": "gif", "MPO": "jpg"}

_MODE_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "LA": 8, "PA": 8,
              "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32, "RGBX": 8, "LAB": 8, "HSV": 8}


# Pillow's bomb error quotes its internal threshold, not the limit the user configured: the
# image's own pixel count is read from it and stated against our limit (`_bomb_detail`).
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageRejected(Exception):
    """A file that is not a usable image. `reason` is short and stable (stored in the catalog)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)  # both in args: the exception crosses process boundaries
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ImageInfo:
    """Facts recorded for every harvested image. width/height are as displayed (EXIF applied)."""

    format: str
    ext: str
    width: int
    height: int
    mode: str
    bit_depth: int
    pages: int
    orientation: int


@contextmanager
def rejecting_bad_images(max_pixels: int | None = None) -> Iterator[None]:
    """Turn Pillow's many ways of failing on a bad file (and decompression-bomb warnings) into one
    ImageRejected with a stable reason: the one place that mapping lives. A bomb is reported
    against `max_pixels`, the limit the caller enforces."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageRejected:
            raise
        except UnidentifiedImageError:
            raise ImageRejected("not_an_image", "cannot identify image data") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("too_many_pixels", _bomb_detail(exc, max_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
            text = str(exc) or type(exc).__name__
            if text.startswith("image file is truncated"):   # Pillow's "(3 bytes not processed)" misleads
                text = "the file ends early (truncated: cut off while copying or downloading?)"
            raise ImageRejected("corrupt", text) from None


def allow_pixels(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb check no stricter than our `max_pixels`.

    Pillow warns above `Image.MAX_IMAGE_PIXELS` (89.5 Mpx) and fails above twice that, before
    our limit is looked at; `rejecting_bad_images` turns the warning into a reject, so a 144 Mpx
    image was refused under the documented 178,956,970 default and a raised `--max-pixels` had
    no effect. Only ever raised (never lowered: threads may be decoding), and only to a limit
    the caller enforces itself on every page (`check_pixels`)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def _too_many(pixels: str, max_pixels: int | None) -> str:
    """The one wording of a too_many_pixels reject: the image's size and the configured limit."""
    if max_pixels is None:
        return f"{pixels} pixels is more than Pillow allows"
    return f"{pixels} pixels exceeds the limit of {max_pixels:,} pixels; raise --max-pixels to accept it"


def _bomb_detail(exc: Exception, max_pixels: int | None) -> str:
    """Pillow's bomb error quotes its own threshold (which `allow_pixels` only raises, and which
    errors at twice its value): say the image's pixel count and our limit instead."""
    found = _PILLOW_PIXELS.search(str(exc))
    if found is None:  # a Pillow whose wording changed: keep its text, still quote our limit
        return f"{exc} (our limit: {max_pixels:,} pixels)" if max_pixels else str(exc)
    return _too_many(f"{int(found.group(1)):,}", max_pixels)


def check_pixels(size: tuple[int, int], max_pixels: int, page: int = 0) -> None:
    """ImageRejected('too_many_pixels') when one page is larger than the limit."""
    w, h = size
    if w * h > max_pixels:
        where = f"page {page + 1}: " if page else ""
        raise ImageRejected("too_many_pixels", where + _too_many(f"{w}x{h} = {w * h:,}", max_pixels))


def png_bit_depth(head: bytes) -> int | None:
    """Bits per sample from a PNG's IHDR (byte 24), or None when `head` is not a PNG's start.
    Pillow opens 16-bit RGB(A) PNGs as 8-bit 'RGB'/'RGBA', so the mode cannot tell."""
    if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _head(src: str | Path | BinaryIO, n: int = 32) -> bytes:
    """The first `n` bytes of a file or stream (a stream's position is left as it was)."""
    if isinstance(src, (str, Path)):
        with open(src, "rb") as fh:
            return fh.read(n)
    pos = src.tell()
    try:
        return src.read(n)
    finally:
        src.seek(pos)


def probe(src: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode every page of `src`; raise ImageRejected with a reason if it is not a valid
    image. `max_pixels` applies to every page, before it is decoded."""
    if isinstance(src, (str, Path)) and Path(src).stat().st_size == 0:
        raise ImageRejected("empty", "zero-byte file")
    allow_pixels(max_pixels)
    head = _head(src)
    with rejecting_bad_images(max_pixels):
        with Image.open(src) as im:
            fmt = im.format or ""
            if fmt not in FORMAT_EXT:
                raise ImageRejected("unsupported_format", f"format {fmt or 'unknown'} is not supported")
            w, h = im.size
            check_pixels((w, h), max_pixels)
            pages = int(getattr(im, "n_frames", 1) or 1)
            mode = im.mode
            turned = orientation(im)
            for page in range(pages):
                if pages > 1:
                    im.seek(page)
                    check_pixels(im.size, max_pixels, page)
                im.load()
    w, h, turned = _displayed(w, h, turned)
    bits = (png_bit_depth(head) if fmt == "PNG" else None) or _MODE_BITS.get(mode, 8)
    return ImageInfo(fmt, FORMAT_EXT[fmt], w, h, mode, bits, pages, turned)


def _displayed(w: int, h: int, orientation: int) -> tuple[int, int, int]:
    """Stored size and EXIF orientation -> (width, height) as displayed and the orientation (1-8)."""
    if orientation not in range(1, 9):
        orientation = 1
    return (h, w, orientation) if orientation in (5, 6, 7, 8) else (w, h, orientation)


def displayed_size(path: str | Path) -> tuple[int, int, int]:
    """(width, height) as displayed and the EXIF orientation, from the header alone (no decode):
    what a label's size is checked against. ImageRejected for a file that is not an image (a FIFO
    named by a label file blocked `evaluate --gt` for ever)."""
    from pipeline.listing import open_regular

    with open_regular(path) as fh, rejecting_bad_images(), Image.open(fh) as im:
        return _displayed(*im.size, orientation(im))


def probe_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    return probe(io.BytesIO(data), max_pixels=max_pixels)


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Numbers of any range (16-bit, float) as uint8 by their 0.5-99.5 percentile range (min-max
    when that is flat), as a viewer's auto-levels shows them. Non-finite pixels (NaN, inf: a
    float TIFF's no-data) are left out of the range and shown at its bottom: one NaN made every
    percentile NaN and the whole picture black, to the detector and the audit alike."""
    f = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(f)
    if not finite.all():
        vals = f[finite]
        f = np.where(finite, f, vals.min() if vals.size else 0.0)
    lo, hi = auto_levels_range(f)
    return np.clip((f - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).astype(np.uint8)


def auto_levels_range(values: np.ndarray) -> tuple[float, float]:
    """The range auto-levels stretches to 0-255: the 0.5-99.5 percentiles, min-max when that is
    flat (`values` finite). uint16 from a histogram (10x faster than np.percentile on a
    2048x2048 page). The one copy: `stretch_to_uint8`, the codec's 16-bit pages, `plain_view`."""
    a = np.asarray(values)
    if a.dtype == np.uint16:
        cdf = np.cumsum(np.bincount(a.ravel(), minlength=65536))
        lo, hi = float(np.searchsorted(cdf, 0.005 * cdf[-1])), float(np.searchsorted(cdf, 0.995 * cdf[-1]))
    else:
        lo, hi = float(np.percentile(a, 0.5)), float(np.percentile(a, 99.5))
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max()) or 1.0
    return lo, hi


# `plain_view`: the auto-levels stretch hides content that a plain viewer shows when it clips a
# page (this share of the image at one end of its range, not the 0.5 % it clips by design: a
# bright cell's clipped core is no page) and pixels this many levels (of 255) past that end,
# clipped to the same level as most of what lies within `PLAIN_NEAR` px of them (a label
# brighter than the range on a darker background still shows), hold a speck of this many px
PLAIN_PAGE_SHARE = 0.05
PLAIN_LEVELS = 8
PLAIN_NEAR = 2
PLAIN_MIN_SPECK = 16


def plain_view(values: np.ndarray, full_scale: float) -> np.ndarray | None:
    """A high-bit picture (uint16 grey or colour values) as a viewer shows it without auto-levels
    (value / `full_scale`: a browser, an OS preview), as uint8 RGB, when the auto-levels stretch
    (`auto_levels_range`, what the detector is shown) clips content there; else None. Black text
    under 0.5 % of a grey page (45000) with a white panel (65535) fell below the stretch's
    bottom with the page itself: one black picture to the detector and to `--verify --strict`,
    and plain in any viewer."""
    values = np.asarray(values)
    grey = values if values.ndim == 2 else values.max(axis=-1)
    lo, hi = auto_levels_range(grey)
    reach = PLAIN_LEVELS * full_scale / 255.0
    page = PLAIN_PAGE_SHARE * grey.size
    hidden = False
    for far, clipped in ((grey < lo - reach, grey <= lo), (grey > hi + reach, grey >= hi)):
        if int(far.sum()) >= PLAIN_MIN_SPECK and int(clipped.sum()) >= page:
            hidden = hidden or _hidden_specks(far, clipped)
    if not hidden:
        return None
    v = np.clip(np.rint(values.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.stack([v] * 3, axis=-1) if v.ndim == 2 else v[..., :3])


def _hidden_specks(far: np.ndarray, clipped: np.ndarray) -> bool:
    """Whether some speck of `far` pixels (at least `PLAIN_MIN_SPECK` px, 8-connected) has most of
    its ring (the pixels within `PLAIN_NEAR` px of it) `clipped` to the same end of the stretch,
    so that it vanishes into its surroundings there."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(far.astype(np.uint8), connectivity=8)
    big = np.flatnonzero(stats[:, 4] >= PLAIN_MIN_SPECK)
    big = big[big > 0]
    if not len(big):
        return False
    keep = np.zeros(n, np.float32)
    keep[big] = big
    near = np.ones((2 * PLAIN_NEAR + 1,) * 2, np.uint8)
    grown = cv2.dilate(keep[labels], near).astype(np.int64)   # each ring pixel: a speck's label
    ring = (grown > 0) & ~far
    total = np.bincount(grown[ring], minlength=n)
    hid = np.bincount(grown[ring & clipped], minlength=n)
    return bool(((total[big] > 0) & (hid[big] >= 0.5 * total[big])).any())


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")   # Pillow modes shown by auto-levels


def to_uint8_rgb(im: Image.Image, background: int = 255) -> np.ndarray:
    """Any Pillow mode (incl. 16-bit and float) to uint8 RGB, scaling high bit depths by range.

    Transparency is composited over `background` (white: what Label Studio and a browser show
    the labeller, the picture the boxes are drawn on). Dropping alpha made black text on
    transparent pixels an all-black picture: curation grouped two such images with different
    text as near duplicates and excluded one, and training saw no text where the labels were."""
    if im.mode in HIGH_BIT_MODES:
        arr = stretch_to_uint8(np.asarray(im, dtype=np.float64))
        return np.stack([arr] * 3, axis=-1)
    if has_alpha(im):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return composite(rgba[..., :3], rgba[..., 3], background)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def pixel_key(im: Image.Image) -> str:
    """What a viewer can be shown, as one id: every page (frame) at its own bit depth, alpha
    included unless it is opaque everywhere, palettes resolved, and the EXIF orientation. Two
    files share it only if they show the same pixels; page 0's RGB alone made transparent
    images with different text, or TIFFs differing on page 2, "exact duplicates"."""
    from pipeline.io import sha256_parts

    def pages() -> Iterator[bytes]:
        yield f"orientation {orientation(im)}".encode()
        for i in range(int(getattr(im, "n_frames", 1) or 1)):
            im.seek(i)
            frame = im
            if frame.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV") or (
                    frame.mode in ("L", "RGB") and "transparency" in frame.info):
                frame = frame.convert("RGBA" if has_alpha(frame) else "RGB")
            arr = np.asarray(frame)
            if frame.mode in ("RGBA", "LA") and (arr[..., -1] == 255).all():
                arr = arr[..., :-1]
            if arr.ndim == 3 and arr.shape[2] == 1 or frame.mode == "L":
                arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)   # grey = the same RGB
            yield f"{arr.dtype.str} {arr.shape}".encode()
            yield np.ascontiguousarray(arr).tobytes()
        im.seek(0)

    return sha256_parts(pages())


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Pillow's lazy image of a regular file (a FIFO is refused, not waited on). A file Pillow
    cannot open is ImageRejected with `rejecting_bad_images`' reason (Pillow's own message named
    `<_io.BufferedReader name=7>`, not the file)."""
    from pipeline.listing import open_regular

    with open_regular(path) as fh:
        with rejecting_bad_images():
            im = Image.open(fh)
        with im:
            yield im


def file_pixel_key(path: str | Path) -> str | None:
    """`pixel_key` of a file, None when it cannot be read (then it is nobody's exact duplicate)."""
    try:
        with open_image(path) as im:
            return pixel_key(im)
    except Exception:  # noqa: BLE001 - unreadable: said by whoever needed it readable
        return None


def orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, 1-8 (1 when absent, out of range or unreadable)."""
    try:
        value = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block counts as none
        return 1
    return value if value in range(1, 9) else 1


def load_rgb(path: str | Path, page: int = 0, max_side: int | None = None, background: int = 255) -> np.ndarray:
    """Upright (EXIF-transposed) uint8 RGB pixels of one page: the frame boxes refer to.
    `max_side`: shrunk (area-averaged) to at most that long side, a JPEG decoded at a reduced
    size already (a comparison at 512 px need not decode 12 megapixels). Transparency over
    `background` (`to_uint8_rgb`)."""
    with open_image(path) as im:
        if page:
            im.seek(page)
        if max_side:
            im.draft("RGB", (max_side, max_side))
        im = ImageOps.exif_transpose(im) if page == 0 else im
        rgb = to_uint8_rgb(im, background)
    if max_side and max(rgb.shape[:2]) > max_side:
        import cv2

        f = max_side / max(rgb.shape[:2])
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    return rgb


# --- what a viewer can show ----------------------------------------------------------------

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")   # Pillow modes with an alpha channel


def has_alpha(im: Image.Image) -> bool:
    """True when a Pillow image carries transparency (alpha channel, palette tRNS, colour key)."""
    return im.mode in ALPHA_MODES or "transparency" in im.info


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """An alpha plane of any integer/bool/float dtype as uint8 (255 = opaque)."""
    a = np.asarray(alpha)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind in "ui":
        return (a.astype(np.float64) * (255.0 / np.iinfo(a.dtype).max)).round().astype(np.uint8)
    return (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def composite(rgb: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    """uint8 RGB `rgb` under `alpha` (any dtype, `alpha_to_uint8`) over a plain grey level."""
    a = alpha_to_uint8(alpha).astype(np.float32)[..., None] / 255.0
    return np.rint(rgb.astype(np.float32) * a + float(background) * (1.0 - a)).astype(np.uint8)


def visible_views(rgb: np.ndarray, alpha: np.ndarray | None) -> list[np.ndarray]:
    """Every picture of an image a viewer may show, as uint8 RGB arrays of the same size.

    An opaque image has one. With transparency, text can hide in any of them: black text on
    transparent black pixels is invisible when alpha is dropped but plain over a white page;
    white text shows only over a dark one; a converter that drops alpha shows the raw colour
    channels (which may hold text under alpha 0); and the shape of the text can live in the alpha
    channel alone. So: raw colours, composited over white and over black, and alpha as dark ink
    on white. Identical views are dropped, so detection costs more only where it must. A view
    whose values span at most LOW_CONTRAST_RANGE levels is also shown stretched to the full range
    (`levels_view`), as auto-levels or a brighter screen shows it."""
    if alpha is None:
        return _with_levels([rgb])
    a8 = alpha_to_uint8(alpha)
    if a8.size == 0 or int(a8.min()) == 255:
        return _with_levels([rgb])
    candidates = [rgb, composite(rgb, a8, 255), composite(rgb, a8, 0)]
    if int(a8.max()) > int(a8.min()):
        ink = 255 - a8
        candidates.append(np.ascontiguousarray(np.stack([ink] * 3, axis=-1)))
    views: list[np.ndarray] = []
    for c in candidates:
        if not any(np.array_equal(c, v) for v in views):
            views.append(np.ascontiguousarray(c))
    return _with_levels(views)


# A picture whose values span this many levels or fewer is looked at stretched too: text at
# 245 on 255, 28 on 20 or 138 on 128 is legible to a viewer (and after auto-levels plain), yet
# blank to the detector and the audit, and came out untouched under `--verify --strict`.
LOW_CONTRAST_RANGE = 48


def levels_view(view: np.ndarray, max_range: int = LOW_CONTRAST_RANGE) -> np.ndarray | None:
    """`view` (uint8 RGB) stretched from its min-max range to 0-255, when that range is at most
    `max_range` levels (and not flat); else None. Costs a detection only on such pictures."""
    lo, hi = int(view.min()), int(view.max())
    if not 0 < hi - lo <= max_range:
        return None
    lut = np.clip(np.rint((np.arange(256, dtype=np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(lut[view])


def _with_levels(views: list[np.ndarray]) -> list[np.ndarray]:
    out = list(views)
    for v in views:
        stretched = levels_view(v)
        if stretched is not None and not any(np.array_equal(stretched, w) for w in out):
            out.append(stretched)
    return out


def views_of(im: Image.Image) -> list[np.ndarray]:
    """`visible_views` of an (already upright) Pillow image; a 16-bit one also as a plain viewer
    shows it, where auto-levels clip content (`plain_view`)."""
    if not has_alpha(im):
        views = [to_uint8_rgb(im)]
        if im.mode in HIGH_BIT_MODES and im.mode != "F":   # 16-bit (Pillow may hold it as "I")
            values = np.asarray(im)
            if values.size and values.min() >= 0 and values.max() <= 65535:
                plain = plain_view(values.astype(np.uint16, copy=False), 65535.0)
                if plain is not None:
                    views.append(plain)
        return _with_levels(views)
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    return visible_views(np.ascontiguousarray(rgba[..., :3]), rgba[..., 3])


def load_views(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    """`visible_views` of an image file's first page, upright: what detectors must look at.
    A file that cannot be read is ImageRejected with the reasons harvest and redact give
    (`empty`, `not_an_image`, `too_many_pixels`, ...); a FIFO is refused without blocking."""
    from pipeline.listing import open_regular

    with open_regular(path) as fh:   # first: a FIFO's size is 0 too, and it is no "empty" image
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageRejected("empty", "zero-byte file")
        return _views_of_file(fh, max_pixels)


def load_views_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    """`load_views` of an image held in memory (a download), with the same checks and reasons."""
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    return _views_of_file(io.BytesIO(data), max_pixels)


def _views_of_file(fh: BinaryIO, max_pixels: int) -> list[np.ndarray]:
    """The one decode of a detector's input: our pixel limit (not Pillow's), Pillow's failures as
    ImageRejected reasons, EXIF orientation applied, every view a viewer may show."""
    allow_pixels(max_pixels)
    with rejecting_bad_images(max_pixels), Image.open(fh) as im:
        check_pixels(im.size, max_pixels)
        return views_of(ImageOps.exif_transpose(im))
