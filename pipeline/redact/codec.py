"""Decoding inputs and encoding clean outputs for redaction.

Decoding yields every page as an *upright* native pixel array (EXIF / TIFF orientation
applied, so detector boxes land on the right pixels) plus the few facts needed to write the
same kind of file back: format, bit depth, colour kind, ICC profile, resolution.

Encoding always builds a fresh image from the arrays and passes only the ICC profile (and
the resolution): no EXIF (whose thumbnail is the unredacted image), GPS, XMP, IPTC, comments,
PNG text chunks, MPO secondary pictures, TIFF sub-IFDs or private tags are carried over, and
no orientation tag is written because the pixels are already upright.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pipeline.config import DEFAULT_MAX_PIXELS
from pipeline.imaging import (ImageRejected, auto_levels_range, check_pixels, plain_view, rejecting_bad_images,
                              stretch_to_uint8, to_uint8_rgb, visible_views)

# tifffile logs what it dislikes in a file ("<TiffFile 'Unnamed binary stream'> contains no pages")
# without naming it; a file it cannot read is reported here as one line that does
logging.getLogger("tifffile").setLevel(logging.ERROR)

SUPPORTED = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".jif": "JPEG", ".png": "PNG",
              ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP", ".gif": "GIF"}


@dataclass
class Page:
    """One upright page. kind: rgb | gray | cmyk; `inverted` = TIFF min-is-white."""

    array: np.ndarray
    kind: str
    inverted: bool = False
    extrasamples: tuple[int, ...] = ()
    key: Any = None       # PNG tRNS colour key (RGB tuple or grey value): pixels of this value are transparent
    icc: bytes | None = None   # this page's own ICC profile, scrubbed (TIFF pages each carry one;
    #                            b"": none); None: the document's

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return 1 if self.array.ndim == 2 else int(self.array.shape[2])

    @property
    def colour_channels(self) -> int:
        """Channels before the extra ones (alpha, then any others)."""
        return {"rgb": 3, "gray": 1, "cmyk": 4}.get(self.kind, 3)


# ICC tags that carry colour (kept as they are); `desc` and `cprt` are required, so they stay
# with their text emptied. Every other tag goes: names, descriptions, device makers and
# models, colorant names, calibration dates, vendor data (an image's ICC profile can name the
# patient or the instrument it came from, and it was copied byte for byte).
_ICC_COLOUR_TAGS = frozenset(t.encode("ascii") for t in (
    "rXYZ", "gXYZ", "bXYZ", "wtpt", "bkpt", "lumi", "rTRC", "gTRC", "bTRC", "kTRC", "chad", "chrm",
    "A2B0", "A2B1", "A2B2", "B2A0", "B2A1", "B2A2", "A2B3", "B2A3", "gamt", "pre0", "pre1", "pre2",
    "D2B0", "D2B1", "D2B2", "D2B3", "B2D0", "B2D1", "B2D2", "B2D3", "meas", "view", "cicp", "ciis",
    "rig0", "rig2", "tech", "bfd ", "resp"))
_ICC_TEXT_TAGS = (b"desc", b"cprt")


# header bytes a colour transform reads (version, device class, colour space, PCS, the 'acsp'
# signature, rendering intent, PCS illuminant); the rest -- CMM, platform, device maker and
# model, creator, date, flags, reserved bytes -- is zeroed
_ICC_HEADER_KEEP = ((8, 24), (36, 40), (64, 80))
# bytes a tag of these types needs: everything after them is slack that can carry any text
_PARA_PARAMS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


# types of a fixed size in the kept tags: XYZ (one XYZNumber: wtpt, bkpt, lumi, r/g/bXYZ), sf32
# (chad's 3x3 matrix), sig (tech), measurement, viewingConditions, cicp
_ICC_FIXED_SIZE = {b"XYZ ": 20, b"sf32": 44, b"sig ": 12, b"meas": 36, b"view": 36, b"cicp": 12}


def _icc_tag_size(tag: bytes) -> int:
    """How many of a colour tag's bytes its type uses (its declared size for the LUT types, not
    parsed here): an oversized tag kept whatever was written after its data (a leak hunt hid
    "PATIENT JONES 4711" after `wtpt`'s white point, and it was copied into the output)."""
    import struct

    kind = tag[:4]
    if kind in _ICC_FIXED_SIZE:
        return min(len(tag), _ICC_FIXED_SIZE[kind])
    if kind == b"curv" and len(tag) >= 12:
        return min(len(tag), 12 + 2 * struct.unpack_from(">I", tag, 8)[0])
    if kind == b"para" and len(tag) >= 12:
        return min(len(tag), 12 + 4 * _PARA_PARAMS.get(struct.unpack_from(">H", tag, 8)[0], 7))
    if kind == b"chrm" and len(tag) >= 12:      # channels x (x, y)
        return min(len(tag), 12 + 8 * struct.unpack_from(">H", tag, 8)[0])
    return len(tag)


def scrub_icc(data: bytes | None) -> bytes | None:
    """The ICC profile rebuilt from its colour alone: the header fields a colour transform reads,
    the tags in `_ICC_COLOUR_TAGS` (each cut to the bytes its type uses), and the required
    description and copyright with no text. Nothing else of the old bytes is copied -- not the
    header's maker, model, creator and date fields, not unlisted tags, not bytes between or
    after tags (a profile can name the patient or the instrument it came from). None when it is
    not a parseable profile: then no profile is written rather than unknown bytes."""
    import struct

    if not data or len(data) < 132 or data[36:40] != b"acsp":
        return None
    n = struct.unpack_from(">I", data, 128)[0]
    if n > 1000 or 132 + 12 * n > len(data):
        return None
    entries = [struct.unpack_from(">4sII", data, 132 + 12 * i) for i in range(n)]
    if any(off < 132 + 12 * n or off + size > len(data) or size < 8 for _, off, size in entries):
        return None
    kept = [e for e in entries if e[0] in _ICC_COLOUR_TAGS or e[0] in _ICC_TEXT_TAGS]
    header = bytearray(128)
    for a, b in _ICC_HEADER_KEEP:
        header[a:b] = data[a:b]
    blobs: list[bytes] = []
    where: dict[tuple[int, int], int] = {}     # tags sharing their data (rTRC = gTRC = bTRC) still do
    table: list[tuple[bytes, int, int]] = []
    start = 132 + 12 * len(kept)
    for sig, off, size in kept:
        if sig in _ICC_COLOUR_TAGS:
            tag = data[off:off + size]
            tag = tag[:4] + bytes(4) + tag[8:_icc_tag_size(tag)]
        elif data[off:off + 4] == b"mluc":      # no records, of the standard record size
            tag = b"mluc" + bytes(4) + struct.pack(">II", 0, 12)
        else:                                   # desc / text: the type, and no characters
            tag = data[off:off + 4] + bytes(size - 4)
        at = where.get((off, size)) if sig in _ICC_COLOUR_TAGS else None
        if at is None:
            at = start + sum(len(b) for b in blobs)
            blobs.append(tag + bytes(-len(tag) % 4))
            if sig in _ICC_COLOUR_TAGS:
                where[(off, size)] = at
        table.append((sig, at, len(tag)))
    body = b"".join(blobs)
    struct.pack_into(">I", header, 0, start + len(body))
    return bytes(header) + struct.pack(">I", len(kept)) + b"".join(struct.pack(">4sII", *t) for t in table) + body


@dataclass
class Document:
    """A decoded input: its pages and what is needed to write it back the same way."""

    format: str                       # JPEG | PNG | TIFF | BMP | WEBP
    pages: list[Page]
    mode: str = ""                    # Pillow mode of the source (informational)
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    orientation: int = 1
    subsampling: int = -1             # JPEG chroma subsampling of the source (0=4:4:4, 1=4:2:2, 2=4:2:0)
    lossless: bool = False            # WebP: the source was lossless
    compressed: bool = False          # TIFF: the source was compressed (output: deflate)
    resolution: dict[str, Any] = field(default_factory=dict)  # TIFF resolution tags

    @property
    def bit_depth(self) -> int:
        dt = self.pages[0].array.dtype
        return 1 if dt == np.bool_ else dt.itemsize * 8

    def page_icc(self, i: int) -> bytes | None:
        """The ICC profile a viewer renders page `i` with: its own (a TIFF page's), else the file's."""
        own = self.pages[i].icc
        return (own if own is not None else self.icc_profile) or None

    def with_arrays(self, arrays: list[np.ndarray]) -> "Document":
        return replace(self, pages=[replace(p, array=a) for p, a in zip(self.pages, arrays)])


# --- orientation ---------------------------------------------------------------------------

def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1-8) to an (H, W[, C]) array, like ImageOps.exif_transpose."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, -1)
    elif orientation == 7:
        arr = np.rot90(arr.swapaxes(0, 1), 2)
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    return np.ascontiguousarray(arr)


# --- decoding ------------------------------------------------------------------------------

def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Document:
    """Decode every page of an image file's bytes; ImageRejected (with a reason) if unusable."""
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    from pipeline.imaging import allow_pixels

    allow_pixels(max_pixels)  # our limit (checked on every page below), not Pillow's stricter default
    with rejecting_bad_images(max_pixels):
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _decode_tiff(data, max_pixels)
        return _decode_pillow(data, max_pixels)


def _pillow_page(im: Image.Image) -> Page:
    """A Pillow image (already upright) to a native array page, normalising awkward modes."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
    elif mode in ("I;16B", "I;16L", "I;16N"):
        return Page(np.asarray(im).astype(np.uint16), "gray")
    elif mode in ("YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        im = im.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    elif mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return Page(arr.astype(np.uint16), "gray")
        return Page(arr.astype(np.int32), "gray")
    if im.mode == "CMYK":
        return Page(np.asarray(im).copy(), "cmyk")
    arr = np.asarray(im).copy()
    kind = "gray" if im.mode in ("1", "L", "LA", "I;16", "F") else "rgb"
    return Page(arr, kind)


def _decode_pillow(data: bytes, max_pixels: int) -> Document:
    with Image.open(io.BytesIO(data)) as im:
        fmt = "JPEG" if im.format == "MPO" else (im.format or "")
        if fmt not in SUPPORTED:
            raise ImageRejected("unsupported_format", f"format {im.format or 'unknown'} is not supported by redact")
        check_pixels(im.size, max_pixels)
        if fmt == "WEBP" and int(getattr(im, "n_frames", 1) or 1) > 1:
            raise ImageRejected("unsupported_format", "animated WebP is not supported by redact")
        doc = Document(format=fmt, pages=[], mode=im.mode, icc_profile=scrub_icc(im.info.get("icc_profile")))
        dpi = im.info.get("dpi")
        if dpi and all(float(v) > 0 for v in dpi):
            doc.dpi = (float(dpi[0]), float(dpi[1]))
        if fmt == "JPEG":
            from PIL import JpegImagePlugin

            doc.subsampling = JpegImagePlugin.get_sampling(im)
        if fmt == "WEBP":
            doc.lossless = _webp_is_lossless(data)
        doc.orientation = int(im.getexif().get(0x0112, 1) or 1)
        if fmt == "PNG" and data[24:25] == b"\x10" and data[25:26] in (b"\x02", b"\x04", b"\x06"):
            doc.pages.append(_decode_png16_color(data, doc.orientation))  # Pillow would truncate to 8 bits
            return doc
        if fmt == "PNG" and int(getattr(im, "n_frames", 1) or 1) > 1:
            raise ImageRejected("unsupported_format", "animated PNG is not supported by redact")
        im.load()  # first picture only: MPO/extra pictures are dropped on purpose
        upright = ImageOps.exif_transpose(im)
        page = _pillow_page(upright)
        if fmt == "PNG" and im.mode not in ("P", "PA") and "A" not in im.mode and im.info.get("transparency") is not None:
            page.key = im.info["transparency"]   # a colour key: what a viewer shows is not the raw colours
        doc.pages.append(page)
        return doc


def _webp_is_lossless(data: bytes) -> bool:
    """Whether a WebP's image chunk is VP8L, walking the RIFF chunks (an extended file puts
    ICCP, ANIM... before it, so the first 40 bytes do not tell)."""
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag in (b"VP8L", b"VP8 "):
            return tag == b"VP8L"
        pos += 8 + size + (size & 1)
    return False


def _decode_png16_color(data: bytes, orientation: int) -> Page:
    """16-bit RGB(A) and grey+alpha PNG through OpenCV (ships with rapidocr), which keeps all 16
    bits (Pillow gives 8). OpenCV gives grey+alpha as BGRA: it becomes grey+alpha again (written
    back as such, not as a twice-as-large RGBA). A tRNS colour key comes as RGBA, written back so."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise ImageRejected("corrupt", "cannot decode 16-bit colour PNG")
    if data[25:26] == b"\x04" and arr.shape[2] == 4:   # IHDR colour type 4: grey + alpha
        return Page(orient(np.ascontiguousarray(arr[..., [0, 3]]), orientation), "gray")
    arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., [2, 1, 0]]
    return Page(orient(np.ascontiguousarray(arr), orientation), "rgb")


def _encode_png16_color(page: Page, icc: bytes | None, dpi: tuple[float, float] | None = None) -> bytes:
    """A fresh 16-bit RGB(A) PNG (IHDR, IDAT, IEND) plus iCCP and pHYs chunks for the source's
    ICC profile and resolution, when it had them."""
    import cv2
    import struct
    import zlib

    a = page.array

    def chunk(body: bytes) -> bytes:
        return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    if a.shape[2] == 2:   # grey + alpha: OpenCV writes 1, 3 or 4 channels, so the rows are written here
        h, w = a.shape[:2]
        rows = np.zeros((h, 1 + w * 4), np.uint8)   # filter byte 0, then big-endian samples
        rows[:, 1:] = np.ascontiguousarray(a).astype(">u2").view(np.uint8).reshape(h, w * 4)
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR" + struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
               + chunk(b"IDAT" + zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND"))
    else:
        bgr = a[..., [2, 1, 0, 3]] if a.shape[2] == 4 else a[..., [2, 1, 0]]
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise OSError("cannot encode 16-bit colour PNG")
        png = buf.tobytes()

    extra = chunk(b"iCCP" + b"icc\x00\x00" + zlib.compress(icc)) if icc else b""
    if dpi:
        extra += chunk(b"pHYs" + struct.pack(">IIB", *(int(round(d / 0.0254)) for d in dpi), 1))
    return png[:33] + extra + png[33:]


def _decode_tiff(data: bytes, max_pixels: int) -> Document:
    """TIFF through tifffile (keeps 16-bit RGB, which Pillow truncates); Pillow as fallback."""
    import tifffile

    try:
        tf = tifffile.TiffFile(io.BytesIO(data))
    except Exception as exc:  # tifffile raises a variety of errors on garbage
        raise ImageRejected("corrupt", f"unreadable TIFF ({exc})") from None
    with tf:
        if not tf.pages:
            raise ImageRejected("corrupt", "TIFF has no pages")
        first = tf.pages[0]
        icc = first.tags.get(34675)
        doc = Document(format="TIFF", pages=[], icc_profile=scrub_icc(bytes(icc.value)) if icc is not None else None)
        for name in ("XResolution", "YResolution", "ResolutionUnit"):
            tag = first.tags.get(name)
            if tag is not None:
                doc.resolution[name] = tag.value
        try:
            for page in tf.pages:
                doc.pages.append(_tifffile_page(page, max_pixels))
                own = page.tags.get(34675)   # each page has its own profile, or none
                doc.pages[-1].icc = (scrub_icc(bytes(own.value)) if own is not None else None) or b""
                doc.compressed = doc.compressed or int(page.compression) != 1
            ori = first.tags.get(274)
            doc.orientation = int(ori.value) if ori is not None else 1
            doc.mode = f"{doc.pages[0].kind}{doc.bit_depth}"
            return doc
        except ImageRejected:
            raise
        except Exception as exc:
            reason = str(exc)
            high_depth_color = any(
                p.bitspersample > 8 and p.samplesperpixel > 1 for p in tf.pages  # type: ignore[union-attr]
            )
    # tifffile cannot decode this one (e.g. LZW/JPEG without imagecodecs): let Pillow try, unless
    # that would silently lose bit depth
    if high_depth_color:
        raise ImageRejected("unsupported_format", f"16-bit colour TIFF with this compression: {reason} "
                                                  "(pip install imagecodecs)")
    pdoc = Document(format="TIFF", pages=[], icc_profile=doc.icc_profile, resolution=doc.resolution, compressed=True)
    with Image.open(io.BytesIO(data)) as im:
        pdoc.mode = im.mode
        n = int(getattr(im, "n_frames", 1) or 1)
        for i in range(n):
            im.seek(i)
            check_pixels(im.size, max_pixels, i)
            im.load()
            if i == 0:
                pdoc.orientation = int(im.getexif().get(0x0112, 1) or 1)
            page = _pillow_page(im)
            page.array = orient(page.array, pdoc.orientation)
            page.icc = scrub_icc(im.info.get("icc_profile")) or b""
            pdoc.pages.append(page)
    return pdoc


def _tifffile_page(page: Any, max_pixels: int) -> Page:
    import tifffile

    PH = tifffile.PHOTOMETRIC
    check_pixels((page.imagewidth, page.imagelength), max_pixels, page.index)
    photometric = PH(page.photometric)
    if photometric not in (PH.MINISBLACK, PH.MINISWHITE, PH.RGB, PH.SEPARATED, PH.PALETTE):
        raise ValueError(f"photometric {photometric.name} not handled by tifffile path")
    arr = page.asarray()
    spp = int(page.samplesperpixel)
    if spp > 1 and arr.ndim == 3 and arr.shape[0] == spp and arr.shape[-1] != spp:
        arr = np.moveaxis(arr, 0, -1)  # planar -> contiguous
    if arr.ndim not in (2, 3):
        raise ValueError(f"unexpected page shape {arr.shape}")
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    if photometric == PH.PALETTE:
        cmap = np.asarray(page.colormap)  # (3, 2**bits) uint16
        rgb = cmap[:, arr].transpose(1, 2, 0)
        arr = (rgb // 257).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
        kind, extras = "rgb", ()
    elif photometric == PH.SEPARATED:
        kind = "cmyk"
    elif photometric == PH.RGB:
        kind = "rgb"
    else:
        kind = "gray"
    ori = page.tags.get(274)
    arr = orient(arr, int(ori.value) if ori is not None else 1)
    return Page(np.ascontiguousarray(arr), kind, inverted=photometric == PH.MINISWHITE, extrasamples=extras)


# --- pixels for the detector ---------------------------------------------------------------

def detector_rgb(page: Page) -> np.ndarray:
    """Upright uint8 RGB of a page, as `pipeline.imaging.load_rgb` would give (same scaling)."""
    a = page.array
    if a.dtype == np.bool_:
        g = a if a.ndim == 2 else a[..., 0]
        g = (~g if page.inverted else g).astype(np.uint8) * 255
        return np.stack([g] * 3, axis=-1)
    if page.kind == "cmyk":
        c = a[..., :4]
        if c.dtype != np.uint8:
            c = (c.astype(np.float64) / np.iinfo(c.dtype).max * 255).round().astype(np.uint8)
        return np.asarray(Image.frombytes("CMYK", (page.width, page.height), np.ascontiguousarray(c).tobytes()).convert("RGB"))
    g = _colour_values(page)
    if g.dtype == np.uint8:
        return np.ascontiguousarray(np.stack([g] * 3, axis=-1) if g.ndim == 2 else g)
    if g.dtype == np.uint16:
        # the same auto-levels range as imaging.to_uint8_rgb, through a lookup table
        lo, hi = auto_levels_range(g)
        lut = np.clip((np.arange(65536, dtype=np.float64) - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).astype(np.uint8)
        v = lut[g]
        return np.ascontiguousarray(np.stack([v] * 3, axis=-1) if v.ndim == 2 else v)
    if g.ndim == 2:
        return to_uint8_rgb(Image.fromarray(np.ascontiguousarray(g).astype(np.float32), mode="F"))
    return stretch_to_uint8(g)  # high bit depth colour: one range for all channels


def _colour_values(page: Page) -> np.ndarray:
    """The page's grey or colour values (no alpha or extra bands), inverted where the file is."""
    a = page.array
    g = a if a.ndim == 2 else (a[..., 0] if page.kind == "gray" else a[..., :3])
    if page.inverted:
        g = (np.iinfo(g.dtype).max - g) if g.dtype.kind in "ui" else (g.max() - g)
    return g


def plain_rgb(page: Page) -> np.ndarray | None:
    """A 16-bit grey or RGB page as a viewer shows it without auto-levels, where the detector's
    stretch clips content that shows there (`imaging.plain_view`); else None."""
    if page.array.dtype != np.uint16 or page.kind == "cmyk":
        return None
    return plain_view(_colour_values(page), 65535.0)


def page_alpha(page: Page) -> np.ndarray | None:
    """The page's alpha plane (any dtype), or None when it has none.

    RGB(A) with 4+ channels, grey with 2+, CMYK with 5+: the first extra channel is alpha
    (TIFF ExtraSamples 1 = associated, 2 = unassociated; 0 = unspecified is treated as alpha
    too, since a viewer may)."""
    base = page.colour_channels
    if page.key is not None:     # tRNS colour key: transparent where the pixel is the key
        a = page.array
        key = np.asarray(page.key, dtype=a.dtype)
        opaque = (a != key).any(axis=-1) if a.ndim == 3 else (a != key)
        return opaque.astype(np.uint8) * 255
    if page.array.ndim != 3 or page.channels <= base:
        return None
    return page.array[..., base]


def opaque_where(page: Page, array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`array` (the page redacted) with no pixel under `mask` equal to the page's tRNS colour
    key: such a pixel is transparent, so a black fill on a black key came out as a see-through
    hole. Those pixels move one level off the key in their first channel (or grey value; a
    1-bit page's take the other value)."""
    if page.key is None or not mask.any():
        return array
    key = np.asarray(page.key, dtype=array.dtype)
    hit = mask & ((array == key).all(axis=-1) if array.ndim == 3 else (array == key))
    if not hit.any():
        return array
    out = array.copy()
    first = out[..., 0] if out.ndim == 3 else out
    if array.dtype == np.bool_:       # 1-bit: the only opaque value is the other one
        first[hit] = not bool(key.flat[0])
    else:
        top = np.iinfo(array.dtype).max
        first[hit] = key.flat[0] + 1 if int(key.flat[0]) < top else key.flat[0] - 1
    return out


@lru_cache(maxsize=64)
def _icc_transform(icc: bytes, mode: str) -> Any:
    """A transform from the profile to sRGB when it changes what a colour-managed viewer shows
    enough to reveal text the raw values hide (a tone curve stretching some 8 levels to more
    than 24, or running backwards); None for ordinary profiles (sRGB, Display P3, Adobe RGB:
    looking at them twice would double the cost of many photos) or one that does not load."""
    from PIL import ImageCms

    try:
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        tf = ImageCms.buildTransform(prof, ImageCms.createProfile("sRGB"), mode, "RGB")
    except Exception:   # noqa: BLE001 - lcms refuses odd profiles: nothing a viewer would render either
        return None
    ramp = np.arange(256, dtype=np.uint8)
    rows = [np.stack([ramp] * 3, axis=-1)] + [np.stack([ramp if c == k else np.zeros_like(ramp) for c in range(3)], axis=-1)
                                              for k in range(3)] if mode == "RGB" else [ramp]
    for row in rows:
        im = Image.fromarray(np.ascontiguousarray(row[None]), mode)
        out = np.asarray(ImageCms.applyTransform(im, tf), dtype=np.int32)[0]
        steps = out[8:] - out[:-8]
        if np.abs(steps).max() > 24 or (steps < -8).any():
            return tf
    return None


def profile_view(rgb: np.ndarray, icc: bytes | None, gray: bool) -> np.ndarray | None:
    """`rgb` as a colour-managed viewer shows it through the image's ICC profile, when that
    differs enough to matter (`_icc_transform`); else None. From a walkthrough: text at 244 on
    250 with a profile stretching 238..250 to full range was blank to the detector and read by
    OCR at 0.96 in Chrome's rendering."""
    if not icc:
        return None
    tf = _icc_transform(icc, "L" if gray else "RGB")
    if tf is None:
        return None
    from PIL import ImageCms

    src = Image.fromarray(np.ascontiguousarray(rgb[..., 0] if gray else rgb), "L" if gray else "RGB")
    return np.asarray(ImageCms.applyTransform(src, tf).convert("RGB"))


def detector_views(page: Page, icc: bytes | None = None) -> list[np.ndarray]:
    """Every picture a viewer may show of this page (see `imaging.visible_views`): a 16-bit page
    also without auto-levels where they clip content (`plain_rgb`), and with an ICC profile that
    changes it enough, the colour-managed picture (`profile_view`). A TIFF's
    associated alpha (ExtraSamples 1) stores colours multiplied by alpha: viewers divide it out,
    so the straight colours are looked at too (text at alpha 4 of 255 was blank to the detector
    and plain after Pillow's convert("RGB")). Extra channels after the alpha are shown by tools
    that show channels (Fiji's slices): each is looked at as a grey picture."""
    alpha = page_alpha(page)
    rgb = detector_rgb(page)
    views = visible_views(rgb, alpha)
    more: list[np.ndarray] = []
    plain = plain_rgb(page)
    if plain is not None:   # text past the auto-levels range, plain in a browser
        more += visible_views(plain, alpha)
    managed = profile_view(rgb, icc, page.kind == "gray")
    if managed is not None:
        more += visible_views(managed, alpha)
    if alpha is not None and page.extrasamples[:1] == (1,):
        more += visible_views(detector_rgb(replace(page, array=_unpremultiplied(page, alpha))), alpha)
    base = page.colour_channels
    if page.array.ndim == 3 and page.key is None:
        # an unspecified extra sample (TIFF ExtraSamples 0: GDAL's and libtiff's bands) is taken
        # as alpha, and shown as a band of its own too: 1000 vs 1010 in it, alpha 4 and 4 when
        # scaled as alpha, is a plain word stretched as Fiji or QGIS show a band
        first = base if page.extrasamples[:1] == (0,) else base + 1
        for c in range(first, page.channels):
            more.append(detector_rgb(Page(np.ascontiguousarray(page.array[..., c]), "gray")))
    for v in more:
        if not any(np.array_equal(v, w) for w in views):
            views.append(v)
    return views


def _unpremultiplied(page: Page, alpha: np.ndarray) -> np.ndarray:
    """The page's colour channels divided by its (associated) alpha, as a viewer shows them."""
    base = page.colour_channels
    top = float(np.iinfo(page.array.dtype).max) if page.array.dtype.kind in "ui" else 1.0
    a = alpha.astype(np.float64)[..., None] / top
    colour = page.array[..., :base].astype(np.float64) / np.maximum(a, 1.0 / top)
    return np.clip(np.rint(colour) if page.array.dtype.kind in "ui" else colour, 0, top).astype(page.array.dtype)


# --- encoding ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodeOptions:
    jpeg_quality: int = 95
    webp_quality: int = 95


def _pillow_image(page: Page) -> Image.Image:
    a = np.ascontiguousarray(page.array)
    if a.dtype == np.bool_:
        return Image.fromarray(a if a.ndim == 2 else a[..., 0])
    h, w = a.shape[:2]
    if page.kind == "cmyk":
        return Image.frombytes("CMYK", (w, h), a.astype(np.uint8).tobytes())
    if a.ndim == 2:
        if a.dtype == np.uint8:
            return Image.frombytes("L", (w, h), a.tobytes())
        if a.dtype == np.uint16:
            return Image.frombytes("I;16", (w, h), a.astype("<u2").tobytes())
        if a.dtype == np.float32:
            return Image.frombytes("F", (w, h), a.tobytes())
        return Image.fromarray(a.astype(np.int32))
    mode = {2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[2]]
    return Image.frombytes(mode, (w, h), a.astype(np.uint8).tobytes())


def encode(doc: Document, opts: EncodeOptions = EncodeOptions()) -> bytes:
    """A fresh file of the document's format from its pages, carrying only ICC + resolution."""
    if doc.format == "TIFF":
        return _encode_tiff(doc)
    if doc.format == "PNG" and doc.pages[0].array.dtype == np.uint16 and doc.pages[0].array.ndim == 3:
        return _encode_png16_color(doc.pages[0], doc.icc_profile, doc.dpi)
    im = _pillow_image(doc.pages[0])
    buf = io.BytesIO()
    kw: dict[str, Any] = {}
    if doc.icc_profile and doc.format in ("JPEG", "PNG", "WEBP"):
        kw["icc_profile"] = doc.icc_profile
    if doc.dpi and doc.format in ("JPEG", "PNG", "BMP"):
        kw["dpi"] = doc.dpi
    if doc.format == "JPEG":
        if im.mode not in ("L", "RGB", "CMYK"):
            im = im.convert("RGB")
        kw["quality"] = opts.jpeg_quality
        if doc.subsampling in (0, 1, 2) and im.mode == "RGB":
            kw["subsampling"] = doc.subsampling
        im.save(buf, format="JPEG", **kw)
    elif doc.format == "PNG":
        if doc.pages[0].key is not None:
            kw["transparency"] = doc.pages[0].key
        im.save(buf, format="PNG", **kw)
    elif doc.format == "BMP":
        if im.mode not in ("1", "L", "P", "RGB", "RGBA"):
            im = im.convert("RGB")
        im.save(buf, format="BMP", **{k: v for k, v in kw.items() if k == "dpi"})
    elif doc.format == "WEBP":
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        if doc.lossless:
            im.save(buf, format="WEBP", lossless=True, exact=True, quality=100, **kw)
        else:
            im.save(buf, format="WEBP", quality=opts.webp_quality, **kw)
    else:
        raise ImageRejected("unsupported_format", f"cannot write {doc.format}")
    return buf.getvalue()


def _encode_tiff(doc: Document) -> bytes:
    import tifffile

    buf = io.BytesIO()
    total = sum(p.array.nbytes for p in doc.pages)
    with tifffile.TiffWriter(buf, bigtiff=total > 3_500_000_000) as tw:
        for i, p in enumerate(doc.pages):
            kw: dict[str, Any] = {}
            if p.kind == "cmyk":
                kw["photometric"] = "separated"
            elif p.kind == "rgb" and p.channels >= 3:
                kw["photometric"] = "rgb"
            else:
                kw["photometric"] = "miniswhite" if p.inverted else "minisblack"
            if p.channels > (4 if p.kind == "cmyk" else 3 if p.kind == "rgb" else 1):
                kw["extrasamples"] = p.extrasamples or (2,) * (p.channels - (3 if p.kind == "rgb" else 1))
                kw["planarconfig"] = "contig"
            if doc.page_icc(i):
                kw["iccprofile"] = doc.page_icc(i)
            if doc.resolution.get("XResolution") and doc.resolution.get("YResolution"):
                kw["resolution"] = (doc.resolution["XResolution"], doc.resolution["YResolution"])
                if "ResolutionUnit" in doc.resolution:
                    kw["resolutionunit"] = int(doc.resolution["ResolutionUnit"])
            tw.write(
                np.ascontiguousarray(p.array),
                compression="zlib" if doc.compressed and p.array.dtype != np.bool_ else None,
                software=False, metadata=None, description=None, datetime=None,
                **kw,
            )
    return buf.getvalue()
