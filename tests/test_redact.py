"""redact: pixel-exact coverage, clean metadata, formats, resume, failures (fake detector with
known boxes), and one end-to-end run with the real ppocr detector."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, PngImagePlugin
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.redact import codec
from pipeline.redact.core import Pad, apply_redaction, fill_value, parse_color, redaction_boxes
from pipeline.redact.run import Item, RedactConfig, Redactor, plan, run_local
from tests.fakes import BOXES, FakeDetector

W, H = 64, 40
from pipeline.redact.codec import scrub_icc  # noqa: E402
from tests.imagegen import text_font

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def rgb_noise(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, (h, w, 3), dtype=np.uint8)


def covered_mask(boxes, w: int, h: int, pad: Pad) -> np.ndarray:
    from pipeline.boxes import union_mask

    return union_mask(redaction_boxes(np.asarray(boxes), w, h, pad), w, h)


def gt_mask(boxes, w: int, h: int) -> np.ndarray:
    from pipeline.boxes import union_mask

    return union_mask(np.asarray(boxes), w, h)


def redact_one(src: Path, out: Path, det=None, **cfg) -> "object":
    item = Item(str(src), src.name, str(out), str(out.parent / "audit" / f"{src.name}.json"))
    return Redactor(det or FakeDetector(), RedactConfig(**cfg)).process(item)


def sha_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- metadata builders -----------------------------------------------------------------------

def exif_with_gps_and_thumbnail(thumb: bytes, orientation: int = 1) -> bytes:
    """Raw EXIF (TIFF little-endian): IFD0 (orientation, GPS pointer) -> IFD1 with a JPEG thumbnail."""
    ifd0_off = 8
    n0 = 2
    gps_off = ifd0_off + 2 + n0 * 12 + 4
    ngps = 2
    rat_off = gps_off + 2 + ngps * 12 + 4
    ifd1_off = rat_off + 24
    n1 = 2
    thumb_off = ifd1_off + 2 + n1 * 12 + 4
    b = bytearray(b"II*\x00" + struct.pack("<I", ifd0_off))
    b += struct.pack("<H", n0)
    b += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    b += struct.pack("<HHII", 0x8825, 4, 1, gps_off)
    b += struct.pack("<I", ifd1_off)
    b += struct.pack("<H", ngps)
    b += struct.pack("<HHI", 0x0001, 2, 2) + b"N\x00\x00\x00"
    b += struct.pack("<HHII", 0x0002, 5, 3, rat_off)
    b += struct.pack("<I", 0)
    b += struct.pack("<6I", 48, 1, 51, 1, 3000, 100)
    b += struct.pack("<H", n1)
    b += struct.pack("<HHII", 0x0201, 4, 1, thumb_off)
    b += struct.pack("<HHII", 0x0202, 4, 1, len(thumb))
    b += struct.pack("<I", 0)
    b += thumb
    return b"Exif\x00\x00" + bytes(b)


def insert_jpeg_segments(jpeg: bytes, segments: list[tuple[int, bytes]]) -> bytes:
    assert jpeg[:2] == b"\xff\xd8"
    extra = b"".join(b"\xff" + bytes([m]) + struct.pack(">H", len(p) + 2) + p for m, p in segments)
    return jpeg[:2] + extra + jpeg[2:]


def jpeg_markers(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, first bytes of payload) of every segment before the scan."""
    assert data[:2] == b"\xff\xd8"
    i, out = 2, []
    while i < len(data):
        assert data[i] == 0xFF
        m = data[i + 1]
        if m == 0xDA:
            break
        n = struct.unpack(">H", data[i + 2:i + 4])[0]
        out.append((m, data[i + 4:i + 4 + 16]))
        i += 2 + n
    return out


def png_chunks(data: bytes) -> list[bytes]:
    i, out = 8, []
    while i < len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        out.append(data[i + 4:i + 8])
        i += 12 + n
    return out


def secret_jpeg(path: Path, seed: int = 1) -> Path:
    """A JPEG with EXIF (GPS + a thumbnail), XMP, IPTC, a comment and an ICC profile."""
    buf = io.BytesIO()
    Image.fromarray(rgb_noise(seed)).save(buf, format="JPEG", quality=92, icc_profile=ICC)
    tb = io.BytesIO()
    Image.fromarray(rgb_noise(seed + 100, 16, 10)).save(tb, format="JPEG", quality=80)
    xmp = (b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF>"
           b"<rdf:Description dc:creator='Dr Secret'/></rdf:RDF></x:xmpmeta>")
    iptc_rec = b"\x1c\x02\x78" + struct.pack(">H", 14) + b"patient 12345!"
    iptc = b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc_rec)) + iptc_rec
    data = insert_jpeg_segments(buf.getvalue(), [
        (0xE1, exif_with_gps_and_thumbnail(tb.getvalue())), (0xE1, xmp), (0xED, iptc), (0xFE, b"secret comment"),
    ])
    path.write_bytes(data)
    return path


# --- pure core ---------------------------------------------------------------------------------

def test_pad_and_color_parsing():
    assert Pad.parse("4") == Pad(4, 0) and Pad.parse("15%") == Pad(0, 0.15)
    assert Pad.parse("2px+15%") == Pad(2, 0.15) and Pad.parse(str(Pad(2, 0.15))) == Pad(2, 0.15)
    with pytest.raises(ValueError):
        Pad.parse("lots")
    assert Pad.parse("2,15%") == Pad(2, 0.15) and Pad.parse("10% + 2px") == Pad(2, 0.10)
    for typo in ("5%+", "+5%", "5px+", "2px+3px", "1e9"):     # were read as something, silently
        with pytest.raises(ValueError, match="bad --pad"):
            Pad.parse(typo)
    for huge, says in (("100000%", "the % part must be 0 to 1000%"), ("99999", "the px part must be 0 to 10000px")):
        with pytest.raises(ValueError, match=says):               # said "non-negative" of Pad(px=0.0, frac=1000.0)
            Pad.parse(huge)
    assert parse_color("white") == (255, 255, 255) and parse_color("#f00") == (255, 0, 0)
    assert parse_color("1,2,3") == (1, 2, 3)
    # any CSS name, as a user types it (magenta is the fill a colour-counting script looks for)
    assert parse_color(" Magenta ") == (255, 0, 255) and parse_color("grey") == parse_color("gray") == (128, 128, 128)
    for bad in ("300,0,0", "magneta", "#ff00f", "hsl(0, 100%, 50%)"):
        with pytest.raises(ValueError, match="bad --color"):
            parse_color(bad)


def test_fill_value_per_layout():
    assert fill_value((255, 255, 255), np.dtype(np.uint16), 1, "gray").tolist() == [65535]
    assert fill_value((0, 0, 0), np.dtype(np.uint16), 1, "gray", inverted=True).tolist() == [65535]
    assert fill_value((10, 20, 30), np.dtype(np.uint8), 4, "rgb").tolist() == [10, 20, 30, 255]  # opaque alpha
    assert fill_value((255, 255, 255), np.dtype(np.bool_), 1).tolist() == [True]


def test_padding_grows_boxes_by_px_and_height_fraction():
    ib = redaction_boxes(np.array([[10, 10, 20, 30]]), 100, 100, Pad(1, 0.1))   # grow 1 + 2 = 3 px
    assert ib.tolist() == [[7, 7, 23, 33]]
    ib = redaction_boxes(np.array([[0, 0, 5, 5]]), 4, 4, Pad(10, 0))              # clipped
    assert ib.tolist() == [[0, 0, 4, 4]]


@pytest.mark.parametrize("style", ["blur", "pixelate"])
def test_blur_and_pixelate_change_only_the_boxes(style):
    a = rgb_noise(3)
    ib = np.array([[10, 5, 40, 30]])
    out = apply_redaction(a, ib, style)
    inside = np.zeros(a.shape[:2], bool)
    inside[5:30, 10:40] = True
    assert (out[~inside] == a[~inside]).all()
    assert out[inside].std() < a[inside].std() * 0.6


# --- every ground-truth pixel covered, everything else unchanged (lossless formats) --------------

def _write(path: Path, arr: np.ndarray, fmt: str, **kw) -> Path:
    if kw.pop("srgb_icc", False):
        from PIL import ImageCms

        kw["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if fmt == "TIFF":
        tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 else "minisblack", **kw)
    else:
        Image.fromarray(arr).save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize("name,fmt,kw,color", [
    ("a.png", "PNG", {}, (0, 0, 0)),
    ("a.bmp", "BMP", {}, (0, 0, 0)),
    ("a.webp", "WEBP", {"lossless": True}, (0, 0, 0)),
    ("a.webp", "WEBP", {"lossless": True, "srgb_icc": True}, (0, 0, 0)),   # ICCP before VP8L: still lossless
    ("a.tif", "TIFF", {}, (255, 0, 0)),
    ("a.png", "PNG", {}, (12, 200, 99)),
])
def test_gt_pixels_get_fill_colour_and_the_rest_is_unchanged(tmp_path, name, fmt, kw, color):
    a = rgb_noise(7)
    src = _write(tmp_path / name, a, fmt, **kw)
    out = tmp_path / "out" / name
    pad = Pad(1, 0.1)
    res = redact_one(src, out, color=color, pad=pad)
    assert res.status == "redacted", res.detail
    b = np.asarray(Image.open(out).convert("RGB")) if fmt != "TIFF" else tifffile.imread(out)
    assert b.shape == a.shape and b.dtype == a.dtype
    gt = gt_mask(BOXES, W, H)
    cov = covered_mask(BOXES, W, H, pad)
    assert (b[gt] == np.array(color, dtype=np.uint8)).all()          # every GT pixel is the fill colour
    assert (b[cov] == np.array(color, dtype=np.uint8)).all()
    assert (b[~cov] == a[~cov]).all()                                 # nothing outside boxes+pad changed


def test_an_animated_png_is_refused_not_cut_to_its_first_frame(tmp_path):
    """Like animated WebP and GIF: a frame after the first could hold text no one covers."""
    frames = [Image.fromarray(rgb_noise(s)) for s in (1, 2)]
    src = tmp_path / "anim.png"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    res = redact_one(src, tmp_path / "out" / "anim.png")
    assert res.status != "redacted" and "animated PNG" in str(res.detail)
    assert not (tmp_path / "out" / "anim.png").exists()


def test_jpeg_output_covers_boxes_and_keeps_size(tmp_path):
    src = tmp_path / "a.jpg"
    Image.fromarray(rgb_noise(8, 200, 120)).save(src, quality=95)
    out = tmp_path / "out" / "a.jpg"
    boxes = [[20, 20, 80, 40]]
    assert redact_one(src, out, det=FakeDetector(boxes)).status == "redacted"
    im = Image.open(out)
    assert im.format == "JPEG" and im.size == (200, 120)
    b = np.asarray(im.convert("RGB")).astype(int)
    assert b[24:40, 24:80].max() <= 12                                # black within JPEG noise (whole 8x8 blocks)


@pytest.mark.parametrize("name,fmt", [("a.jpg", "JPEG"), ("a.webp", "WEBP")])
def test_quality_option_reaches_the_lossy_encoder(tmp_path, name, fmt):
    """`--quality` is documented for JPEG and WebP: a lower quality gives a smaller file."""
    src = tmp_path / name
    Image.fromarray(rgb_noise(8, 200, 120)).save(src, format=fmt, quality=90)
    sizes = {}
    for q in (30, 95):
        out = tmp_path / f"q{q}" / name
        assert redact_one(src, out, jpeg_quality=q).status == "redacted"
        assert Image.open(out).format == fmt
        sizes[q] = out.stat().st_size
    assert sizes[30] < 0.8 * sizes[95]


def test_exif_orientation_is_applied_before_detection_and_output_is_upright(tmp_path):
    upright = rgb_noise(9)                                            # H x W as displayed
    raw = np.rot90(upright, 1)                                        # stored sideways, orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "rot.png"
    Image.fromarray(np.ascontiguousarray(raw)).save(src, exif=exif.tobytes())
    det = FakeDetector()
    out = tmp_path / "out" / "rot.png"
    assert redact_one(src, out, det=det, pad=Pad(0, 0)).status == "redacted"
    assert det.shapes == [(H, W, 3)]                                  # the detector saw the upright image
    im = Image.open(out)
    assert im.size == (W, H) and im.getexif().get(0x0112) is None     # upright pixels, no orientation tag
    b = np.asarray(im)
    cov = covered_mask(BOXES, W, H, Pad(0, 0))
    assert (b[cov] == 0).all() and (b[~cov] == upright[~cov]).all()


# --- nothing of the original leaks ------------------------------------------------------------------

def test_jpeg_metadata_is_stripped_and_icc_kept(tmp_path):
    src = secret_jpeg(tmp_path / "secret.jpg")
    before = Image.open(src)
    assert before.getexif().get_ifd(0x8825) and "comment" in before.info          # the fixture has it all
    out = tmp_path / "out" / "secret.jpg"
    assert redact_one(src, out).status == "redacted"
    data = out.read_bytes()
    markers = jpeg_markers(data)
    assert not [m for m, _ in markers if m in (0xE1, 0xED, 0xFE)]                  # no EXIF/XMP, IPTC, comment
    assert all(m in (0xE0, 0xE2, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDD) for m, _ in markers), markers
    assert data.count(b"\xff\xd8") == 1                                            # no embedded thumbnail
    for secret in (b"Exif", b"Dr Secret", b"patient 12345", b"secret comment", b"8BIM", b"xap/1.0"):
        assert secret not in data
    im = Image.open(out)
    assert im.info.get("icc_profile") == scrub_icc(ICC) and not im.getexif()   # its colour, not its words


def icc_with_words(words: str) -> bytes:
    """sRGB with `words` in its copyright (a `text` tag), a device-model description (`desc`)
    and a private tag: as a scanner or a lab's colour pipeline may write them."""
    import struct

    base = bytearray(ICC)
    n = struct.unpack_from(">I", base, 128)[0]
    entries = [list(struct.unpack_from(">4sII", base, 132 + 12 * i)) for i in range(n)]
    text = b"text" + bytes(4) + words.encode() + b"\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(words) + 1) + words.encode() + b"\x00" + bytes(4 + 4 + 2 + 1 + 67)
    shift = 12 * 2                                  # two more table entries: every offset moves
    body = bytes(base[132 + 12 * n:])
    blobs, end = [], len(base) + shift
    for sig, blob in ((b"dmdd", desc), (b"zzzz", text), (b"cprt", text)):
        end += (-end) % 4
        blobs.append((sig, end, blob))
        end += len(blob)
    table = [[sig, off + shift, size] for sig, off, size in entries if sig != b"cprt"]
    table += [[sig, off, len(blob)] for sig, off, blob in blobs]
    out = bytearray(base[:128]) + struct.pack(">I", len(table))
    for e in table:
        out += struct.pack(">4sII", *e)
    out += body
    for _, off, blob in blobs:
        out += bytes(off - len(out)) + blob
    struct.pack_into(">I", out, 0, len(out))
    return bytes(out)


def test_words_in_an_icc_profile_never_reach_the_output(tmp_path):
    """From a walkthrough: an ICC profile's copyright read "Patient SMITH MRN 00998877" in every
    output, byte for byte. The output's profile keeps the colour and none of the words."""
    profile = icc_with_words("Patient SMITH MRN 00998877")
    assert ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.copyright == "Patient SMITH MRN 00998877"
    red = np.zeros((40, 64, 3), np.uint8) + np.array([200, 30, 60], np.uint8)
    for name, kw in (("a.jpg", {"quality": 95}), ("a.png", {}), ("a.tif", {}), ("a.webp", {"lossless": True})):
        src = tmp_path / "in" / name
        src.parent.mkdir(exist_ok=True)
        Image.fromarray(red).save(src, icc_profile=profile, **kw)
        assert b"SMITH" in Image.open(src).info["icc_profile"]     # (PNG compresses it)
        out = tmp_path / "out" / name
        assert redact_one(src, out).status == "redacted"
        data = out.read_bytes()
        assert b"SMITH" not in data and b"00998877" not in data and b"sRGB built-in" not in data, name
        kept = Image.open(out).info["icc_profile"]
        assert b"SMITH" not in kept and b"00998877" not in kept, name
        p = ImageCms.ImageCmsProfile(io.BytesIO(kept))
        assert not p.profile.copyright and not p.profile.profile_description, name
        to_srgb = ImageCms.buildTransform(p, ImageCms.createProfile("sRGB"), "RGB", "RGB")
        assert ImageCms.applyTransform(Image.fromarray(red), to_srgb).getpixel((0, 0)) == (200, 30, 60), name


def icc_with_hidden_words(words: str) -> bytes:
    """`icc_with_words`, and `words` also where a walkthrough found them kept: in the header's
    CMM, maker, model, creator and reserved fields, after the last tag, and in the slack of
    oversized colour tags (a curve, rTRC, and a white point, wtpt: a leak hunt's)."""
    base = bytearray(icc_with_words(words))
    w = words.encode()
    for off, size in ((4, 4), (48, 8), (80, 4), (100, 28)):
        base[off:off + size] = (w * 8)[:size]
    n = struct.unpack_from(">I", base, 128)[0]
    for i in range(n):
        sig, off, size = struct.unpack_from(">4sII", base, 132 + 12 * i)
        if sig in (b"rTRC", b"wtpt"):
            base += bytes(-len(base) % 4)
            struct.pack_into(">4sII", base, 132 + 12 * i, sig, len(base), size + 4 + len(w))
            base += base[off:off + size] + bytes(4) + w
    base += b"TRAILING " + w
    struct.pack_into(">I", base, 0, len(base))
    return bytes(base)


def test_icc_header_fields_trailing_bytes_and_tag_slack_never_reach_the_output(tmp_path):
    """From a walkthrough: the scrubbed profile still carried words in its header fields, after
    its last tag and inside an oversized curve. It is rebuilt from its colour alone, and
    colour-manages exactly as the original."""
    from pipeline.redact.codec import scrub_icc

    profile = icc_with_hidden_words("MRN12345SMITH")
    src_p = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    kept = scrub_icc(profile)
    assert kept is not None and b"MRN" not in kept and b"SMITH" not in kept and b"TRAILING" not in kept
    pix = Image.fromarray(rgb_noise(3, 32, 16))
    to_lab = [ImageCms.buildTransform(p, ImageCms.createProfile("LAB"), "RGB", "LAB")
              for p in (src_p, ImageCms.ImageCmsProfile(io.BytesIO(kept)))]
    assert ImageCms.applyTransform(pix, to_lab[0]).tobytes() == ImageCms.applyTransform(pix, to_lab[1]).tobytes()
    assert scrub_icc(kept) == kept                    # scrubbing is stable: nothing more to remove
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    pix.save(src, icc_profile=profile, quality=95)
    out = tmp_path / "out" / "a.jpg"
    assert redact_one(src, out).status == "redacted"
    assert b"MRN12345" not in out.read_bytes() and b"SMITH" not in out.read_bytes()


def test_png_text_chunks_and_exif_are_stripped_and_icc_kept(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Dr Secret")
    info.add_text("Comment", "patient 12345", zip=True)
    info.add_itxt("Description", "sample ID 42", lang="en")
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    src = tmp_path / "t.png"
    Image.fromarray(rgb_noise(11)).save(src, pnginfo=info, icc_profile=ICC, exif=exif.tobytes())
    assert {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP"} <= set(png_chunks(src.read_bytes()))
    out = tmp_path / "out" / "t.png"
    assert redact_one(src, out).status == "redacted"
    data = out.read_bytes()
    chunks = set(png_chunks(data))
    assert not chunks & {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
    assert b"iCCP" in chunks and Image.open(out).info["icc_profile"] == scrub_icc(ICC)
    for secret in (b"Dr Secret", b"SecretCam", b"sample ID"):
        assert secret not in data


def test_tiff_private_tags_dropped_icc_and_resolution_kept(tmp_path):
    src = tmp_path / "m.tif"
    tifffile.imwrite(src, rgb_noise(12), photometric="rgb", iccprofile=ICC, resolution=(300, 300),
                     description="patient 12345", software="SecretScope", metadata=None)
    out = tmp_path / "out" / "m.tif"
    assert redact_one(src, out).status == "redacted"
    data = out.read_bytes()
    assert b"patient 12345" not in data and b"SecretScope" not in data
    with tifffile.TiffFile(out) as tf:
        p = tf.pages[0]
        assert bytes(p.tags[34675].value) == scrub_icc(ICC) and p.tags["XResolution"].value == (300, 1)


# --- bit depth and pages ----------------------------------------------------------------------------

def test_16bit_gray_tiff_keeps_bit_depth(tmp_path):
    a = np.random.default_rng(13).integers(1000, 65535, (H, W), dtype=np.uint16)
    src = tmp_path / "g16.tif"
    tifffile.imwrite(src, a, photometric="minisblack", compression="zlib")
    out = tmp_path / "out" / "g16.tif"
    res = redact_one(src, out, color=(255, 255, 255))
    assert res.status == "redacted"
    b = tifffile.imread(out)
    assert b.dtype == np.uint16 and b.shape == a.shape
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    assert (b[cov] == 65535).all() and (b[~cov] == a[~cov]).all()


def test_16bit_rgb_tiff_and_16bit_png_keep_bit_depth(tmp_path):
    a = np.random.default_rng(14).integers(0, 65535, (H, W, 3), dtype=np.uint16)
    src = tmp_path / "c16.tif"
    tifffile.imwrite(src, a, photometric="rgb")
    assert redact_one(src, tmp_path / "out" / "c16.tif").status == "redacted"
    b = tifffile.imread(tmp_path / "out" / "c16.tif")
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    assert b.dtype == np.uint16 and (b[cov] == 0).all() and (b[~cov] == a[~cov]).all()
    g = a[..., 0]
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert redact_one(tmp_path / "g16.png", tmp_path / "out" / "g16.png").status == "redacted"
    im = Image.open(tmp_path / "out" / "g16.png")
    assert im.mode == "I;16" and (np.asarray(im)[~cov] == g[~cov]).all()


def test_three_page_tiff_every_page_redacted(tmp_path):
    pages = [np.random.default_rng(20 + i).integers(1, 255, (H, W), dtype=np.uint8) for i in range(3)]
    src = tmp_path / "stack.tif"
    with tifffile.TiffWriter(src) as tw:
        for p in pages:
            tw.write(p, photometric="minisblack")
    det = FakeDetector()
    out = tmp_path / "out" / "stack.tif"
    res = redact_one(src, out, det=det)
    assert res.status == "redacted" and res.pages == 3 and det.calls == 3
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 3
        for p, a in zip(tf.pages, pages):
            b = p.asarray()
            assert b.dtype == np.uint8 and (b[cov] == 0).all() and (b[~cov] == a[~cov]).all()
    sc = json.loads((out.parent / "audit" / "stack.tif.json").read_text())
    assert [len(p["redacted"]) for p in sc["pages"]] == [2, 2, 2]


def test_rgba_png_covered_region_is_opaque(tmp_path):
    a = np.dstack([rgb_noise(15), np.full((H, W), 40, np.uint8)])      # mostly transparent
    src = tmp_path / "t.png"
    Image.fromarray(a, "RGBA").save(src)
    assert redact_one(src, tmp_path / "out" / "t.png").status == "redacted"
    b = np.asarray(Image.open(tmp_path / "out" / "t.png"))
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    assert (b[cov] == [0, 0, 0, 255]).all() and (b[~cov] == a[~cov]).all()


# --- CLI: tree, resume, force, failures, dry run, archive ---------------------------------------------

def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb_noise(30)).save(root / "a.png")
    Image.fromarray(rgb_noise(31)).save(root / "b.jpg", quality=90)
    Image.fromarray(rgb_noise(32)).save(root / "sub" / "c.bmp")
    tifffile.imwrite(root / "sub" / "deeper" / "d.tif", np.random.default_rng(33).integers(0, 65535, (H, W), dtype=np.uint16),
                     photometric="minisblack")
    Image.fromarray(rgb_noise(34)).save(root / "sub" / "e.webp", quality=80)
    (root / "notes.txt").write_text("not an image")
    return root


def cli(tmp_path: Path, *args: str):
    return CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", *args], catch_exceptions=False)


def test_cli_tree_mirrored_with_sidecars_manifest_and_summary(tmp_path, fake):
    src = make_tree(tmp_path / "in")
    before = sha_tree(src)
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert sorted(sha_tree(tmp_path / "out")) == ["a.png", "b.jpg", "sub/c.bmp", "sub/deeper/d.tif", "sub/e.webp"]
    audit = tmp_path / "out.audit"
    sc = json.loads((audit / "sidecars" / "sub" / "c.bmp.json").read_text())
    assert sc["input_sha256"] == before["sub/c.bmp"]
    assert sc["output_sha256"] == hashlib.sha256((tmp_path / "out" / "sub" / "c.bmp").read_bytes()).hexdigest()
    assert sc["detector"]["version"] == "fake-1" and sc["pages"][0]["boxes"] == BOXES
    assert sc["pages"][0]["scores"] == [0.9, 0.9] and sc["settings"]["pad"] == "10%"
    import pandas as pd

    m = pd.read_parquet(audit / "manifest.parquet")
    assert len(m) == 5 and set(m["status"]) == {"redacted"} and (m["boxes"] == 2).all()
    assert len(pd.read_csv(audit / "manifest.csv")) == 5
    summary = json.loads((audit / "summary.json").read_text())
    assert summary["redacted"] == 5 and summary["boxes"] == 10 and summary["ignored_non_images"] == 1
    assert "redacted (2 boxes)" in (audit / "redact.log").read_text()
    assert sha_tree(src) == before                                    # the input is never modified


def test_resume_after_interruption_gives_the_same_tree_and_force_redoes(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "in")
    before = sha_tree(src)
    items, _, _ = plan(str(src), tmp_path / "ref")
    list(run_local(Redactor(FakeDetector(), RedactConfig()), items, workers=1))
    reference = sha_tree(tmp_path / "ref")

    items, audit, _ = plan(str(src), tmp_path / "out")
    interrupted = Redactor(FakeDetector(fail_on=3), RedactConfig())
    with pytest.raises(KeyboardInterrupt):
        list(run_local(interrupted, items, workers=1))
    assert 0 < len(sha_tree(tmp_path / "out")) < 5
    assert not list((tmp_path / "out").rglob("*.tmp"))                # atomic writes: no partial files
    # also an output whose sidecar was never written (killed between the two writes)
    done = sorted(sha_tree(tmp_path / "out"))
    (Path(items[[i.rel for i in items].index(done[0])].sidecar)).unlink()

    det = FakeDetector()
    results = list(run_local(Redactor(det, RedactConfig()), items, workers=2))
    assert sorted(r.status for r in results).count("skipped") == len(done) - 1
    assert det.calls == 5 - (len(done) - 1)
    assert sha_tree(tmp_path / "out") == reference                   # same output tree as an uninterrupted run

    det2 = FakeDetector()
    results = list(run_local(Redactor(det2, RedactConfig()), items, workers=2))
    assert {r.status for r in results} == {"skipped"} and det2.calls == 0
    det3 = FakeDetector()
    results = list(run_local(Redactor(det3, RedactConfig(force=True)), items, workers=2))
    assert {r.status for r in results} == {"redacted"} and det3.calls == 5
    assert sha_tree(tmp_path / "out") == reference
    # changed settings are not "done": a different pad redoes the images
    det4 = FakeDetector()
    list(run_local(Redactor(det4, RedactConfig(pad=Pad(5, 0))), items, workers=2))
    assert det4.calls == 5
    assert sha_tree(src) == before


def test_cli_resume_and_force(tmp_path, fake):
    src = make_tree(tmp_path / "in")
    assert cli(tmp_path, "redact", str(src), str(tmp_path / "out")).exit_code == 0
    first = sha_tree(tmp_path / "out")
    calls = fake.calls
    assert cli(tmp_path, "redact", str(src), str(tmp_path / "out")).exit_code == 0
    assert fake.calls == calls
    assert cli(tmp_path, "redact", str(src), str(tmp_path / "out"), "--force").exit_code == 0
    assert fake.calls == calls + 5 and sha_tree(tmp_path / "out") == first


def test_rename_names_outputs_by_a_keyed_hash_flat_and_reruns_resume(tmp_path, fake):
    """File and folder names are often the IDs the fill removes: with --rename no input name or
    folder reaches OUTPUT, the manifest maps each output back, and a rerun finds its outputs."""
    import re
    import stat

    import pandas as pd

    src = make_tree(tmp_path / "in")
    (src / "patient_Jane_Doe").mkdir()
    Image.fromarray(rgb_noise(35)).save(src / "patient_Jane_Doe" / "S-0042.png")
    out, audit = tmp_path / "out", tmp_path / "out.audit"
    r = cli(tmp_path, "redact", str(src), str(out), "--rename")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.rglob("*"))
    assert len(names) == 6 and all(p.parent == out for p in out.rglob("*"))          # flat: no folder names
    assert all(re.fullmatch(r"[0-9a-f]{20}\.(png|jpg|bmp|tif|webp)", n) for n in names), names
    m = pd.read_csv(audit / "manifest.csv")
    assert set(m["status"]) == {"redacted"} and len(m) == 6
    for rel, output in zip(m["input"], m["output"]):
        sc = json.loads((audit / "sidecars" / f"{rel}.json").read_text())
        assert Path(output).parent == out and Path(output).suffix == Path(rel).suffix
        assert hashlib.sha256(Path(output).read_bytes()).hexdigest() == sc["output_sha256"]
    key = audit / "rename.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}", key.read_text().strip())
    calls = fake.calls
    assert cli(tmp_path, "redact", str(src), str(out), "--rename").exit_code == 0
    assert fake.calls == calls and sorted(p.name for p in out.rglob("*")) == names     # same names: all skipped
    # another run (its own audit folder, so its own key) names the same inputs differently
    assert cli(tmp_path, "redact", str(src), str(tmp_path / "other"), "--rename").exit_code == 0
    assert not {p.name for p in (tmp_path / "other").iterdir()} & set(names)
    # a dry run writes nothing, not even a key
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "dry"), "--rename", "--dry-run")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "dry").exists() and not (tmp_path / "dry.audit").exists()


def test_rename_refuses_an_output_file_name_an_audit_folder_among_the_outputs_and_a_damaged_key(tmp_path, fake):
    src = tmp_path / "S-0042.png"
    Image.fromarray(rgb_noise(36)).save(src)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "clean.png"), "--rename"])
    assert r.exit_code == 2 and "--rename names the output itself" in r.output
    assert not (tmp_path / "clean.png").exists() and not (tmp_path / "clean.png.audit").exists()
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out") + "/", "--rename")    # into a folder: fine
    assert r.exit_code == 0, r.output
    [made] = (tmp_path / "out").iterdir()
    assert "0042" not in made.name and made.suffix == ".png"
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "o2") + "/", "--rename",
                                 "--audit", str(tmp_path / "o2" / "audit")])      # the key would ship with the outputs
    assert r.exit_code == 2 and "inside the output folder" in r.output and not (tmp_path / "o2").exists()
    (tmp_path / "out.audit" / "rename.key").write_text("not a key")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out") + "/", "--rename"])
    assert r.exit_code == 2 and "rename.key: not a key" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_secret_key_is_made_once_owner_only_whatever_the_umask(tmp_path):
    import stat

    from pipeline.io import secret_key

    old = os.umask(0)
    try:
        assert secret_key(tmp_path / "k", create=False) is None and not (tmp_path / "k").exists()
        key = secret_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert len(key) == 32 and stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert secret_key(tmp_path / "k") == key == secret_key(tmp_path / "k", create=False)
    assert [p.name for p in tmp_path.iterdir()] == ["k"]                           # no temp left behind


def test_corrupt_file_is_reported_the_rest_finish_and_exit_is_nonzero(tmp_path, fake):
    src = make_tree(tmp_path / "in")
    good = (src / "b.jpg").read_bytes()
    (src / "sub" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "sub" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "empty.tif").write_bytes(b"")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert summary["redacted"] == 5 and summary["failed"] == 3
    assert any("truncated.jpg: corrupt: the file ends early" in e for e in summary["errors"]), summary["errors"]
    assert any("empty.tif: empty" in e for e in summary["errors"])
    import pandas as pd

    m = pd.read_csv(tmp_path / "out.audit" / "manifest.csv").set_index("input")
    assert m.loc["sub/garbage.png", "status"] == "failed" and m.loc["sub/garbage.png", "reason"] in ("corrupt", "not_an_image")
    assert not (tmp_path / "out" / "sub" / "truncated.jpg").exists()
    # -q is "errors only": the summary table goes, the failed images stay (one line each, stderr)
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"))
    assert r.exit_code == 1 and r.stdout == ""
    failed = [line for line in r.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 3 and any("truncated.jpg" in line for line in failed), r.stderr


def test_fail_fast_stops_early(tmp_path, fake):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_bad.png").write_bytes(b"junk")
    for i in range(6):
        Image.fromarray(rgb_noise(40 + i)).save(src / f"b{i}.png")
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"), "--fail-fast", "--workers", "1")
    assert r.exit_code == 1
    assert len(list((tmp_path / "out").glob("*.png"))) < 6
    summary = json.loads((tmp_path / "out.audit" / "summary.json").read_text())
    assert summary["stopped_early"] is True
    # Ray actors finish their batches after the first failure: outputs the manifest would miss
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "o2"), "--fail-fast",
                                 "--engine", "ray"])
    assert r.exit_code == 2 and "--fail-fast works with the local engine only" in r.output
    assert not (tmp_path / "o2").exists()


def test_fail_fast_stops_at_a_listing_failure_before_redacting_anything(tmp_path, fake):
    # a dangling link or a FIFO is known before the first image runs: it is the first failure
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(rgb_noise(60 + i)).save(src / f"b{i}.png")
    (src / "a_dangling.png").symlink_to(src / "nowhere.png")
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"), "--fail-fast")
    assert r.exit_code == 1 and "a_dangling.png: dangling_symlink" in r.stderr
    assert not list((tmp_path / "out").glob("*.png"))
    summary = json.loads((tmp_path / "out.audit" / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["failed"] == 1 and summary["redacted"] == 0
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"))   # without it: the others finish
    assert r.exit_code == 1 and len(list((tmp_path / "out").glob("*.png"))) == 3


def test_a_name_that_is_not_utf8_is_redacted_and_listed_not_fatal(tmp_path, fake):
    """One file name with a byte that is not UTF-8 stopped the whole batch: the log, the manifest
    and stdout refused it (exit 2, no manifest, no summary)."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb_noise(70)).save(src / "good.png")
    bad = os.fsdecode(b"x\xff.png")
    Image.fromarray(rgb_noise(71)).save(src / bad)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["redacted"] == 2 and summary["failed"] == 0
    assert (tmp_path / "out" / bad).is_file()   # the output keeps the name's own bytes
    manifest = (tmp_path / "out.audit" / "manifest.csv").read_text(encoding="utf-8")
    assert "x\\xff.png," in manifest and "good.png," in manifest
    assert "x\\xff.png: redacted" in (tmp_path / "out.audit" / "redact.log").read_text(encoding="utf-8")


def test_dry_run_writes_nothing_and_glob_and_single_file(tmp_path, fake):
    src = make_tree(tmp_path / "in")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / "out"), "--dry-run"])
    dry = json.loads(r.stdout)
    assert r.exit_code == 0 and dry["dry_run"] == 5 and dry["would_redact"][0]["boxes"] == [BOXES]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.audit").exists()
    r = cli(tmp_path, "redact", str(src / "**" / "*.png"), str(tmp_path / "g"))
    assert r.exit_code == 0 and sorted(sha_tree(tmp_path / "g")) == ["a.png"]
    r = cli(tmp_path, "redact", str(src / "sub" / "c.bmp"), str(tmp_path / "single.bmp"))
    assert r.exit_code == 0 and (tmp_path / "single.bmp").exists() and (tmp_path / "single.audit" / "sidecars" / "c.bmp.json").exists()
    r = cli(tmp_path, "redact", str(src), str(src))
    assert r.exit_code == 2


def test_blur_warns_that_it_is_reversible(tmp_path, fake):
    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(50)).save(src)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "o.png"), "--style", "blur"])
    assert r.exit_code == 0 and "reversible" in r.stderr
    # and the audit says what it does not look at (its "0 legible strings" read as all clear)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "o2.png"), "--style",
                                 "pixelate", "--verify"])
    assert r.exit_code == 0 and "(the pixelated areas are not audited" in " ".join(r.output.split())


def test_archive_moves_originals_only_after_success(tmp_path, fake):
    src = make_tree(tmp_path / "in")
    (src / "bad.png").write_bytes(b"junk")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out"),
                                 "--archive", str(tmp_path / "arch")])
    assert r.exit_code == 1
    assert sorted(sha_tree(tmp_path / "arch")) == ["a.png", "b.jpg", "sub/c.bmp", "sub/deeper/d.tif", "sub/e.webp"]
    assert (src / "bad.png").exists() and not (src / "a.png").exists()
    row = next(line for line in r.output.splitlines() if "originals archived" in line)   # it was in JSON only
    assert row.rstrip(" │").split()[-1] == "5", row
    # the rerun, once the bad file is dealt with, has nothing left to do: exit 0, not "no images found"
    (src / "bad.png").unlink()
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out"),
                                 "--archive", str(tmp_path / "arch")])
    assert r.exit_code == 0 and "nothing to redact" in r.output, r.output
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out2"))   # no archive given: still an error
    assert r.exit_code == 2 and "no images found" in r.output


def test_a_rerun_archives_originals_an_earlier_run_finished_but_did_not_move(tmp_path, fake):
    """After an interrupted --archive run (or a move that failed for a reason since fixed) the
    rerun skipped the finished images and never moved them: "0 archived", exit 0, originals left
    in INPUT for good. A skipped original whose output checks out is archived; one whose output
    changed is redone first."""
    src = make_tree(tmp_path / "in")
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"))   # finished, nothing moved
    assert r.exit_code == 0
    (tmp_path / "out" / "sub" / "c.bmp").write_bytes(b"tampered")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / "out"),
                                 "--archive", str(tmp_path / "arch")])
    summary = json.loads(r.stdout)
    # c.bmp's output no longer matches its sidecar: redone, then archived like the others
    assert summary["skipped"] == 4 and summary["redacted"] == 1 and summary["archived"] == 5, summary
    assert sorted(sha_tree(tmp_path / "arch")) == ["a.png", "b.jpg", "sub/c.bmp", "sub/deeper/d.tif", "sub/e.webp"]
    assert not any(p.is_file() and p.suffix != ".txt" for p in src.rglob("*"))


def test_an_archive_that_overlaps_the_output_or_lies_in_the_input_is_refused(tmp_path, fake):
    """From a walkthrough: `--archive OUTPUT` moved each original over its redacted output (OCR
    read every word; the run said "redacted" and exit 0); an archive inside INPUT skipped the
    images already in that folder without a word; an original never replaces an archived one."""
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    before = sha_tree(src)
    for archive, msg in ((out, "overlaps the output folder"), (out / "orig", "overlaps the output folder"),
                         (tmp_path / "out.audit", "overlaps the audit folder"),
                         (src / "sub", "inside the input folder"), (src, "inside the input folder")):
        r = cli(tmp_path, "redact", str(src), str(out), "--archive", str(archive))
        assert r.exit_code == 2 and msg in r.output and "--archive" in r.output, (archive, r.output)
        assert sha_tree(src) == before and not out.exists()
    single = tmp_path / "one"
    single.mkdir()
    Image.fromarray(rgb_noise(3)).save(single / "a.png")
    r = cli(tmp_path, "redact", str(single / "a.png"), str(tmp_path / "o" / "a.png"), "--archive", str(tmp_path / "o"))
    assert r.exit_code == 2 and "overlaps the output folder" in r.output
    # an archived original of the same name is never overwritten: that image fails, the original stays
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "a.png").write_bytes(b"an earlier original")
    r = cli(tmp_path, "redact", str(single), str(tmp_path / "o2"), "--archive", str(tmp_path / "arch"))
    assert r.exit_code == 1 and "already in the archive" in r.output, r.output
    assert (tmp_path / "arch" / "a.png").read_bytes() == b"an earlier original" and (single / "a.png").exists()


def test_archive_keeps_what_a_symlink_points_at(tmp_path, fake):
    """A link in the input tree is archived as its target's bytes, not as a link that points nowhere
    (absolute: back into the input tree; relative: at a path that does not exist in the archive)."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(rgb_noise(40)).save(src / "target.png")
    data = (src / "target.png").read_bytes()
    (src / "abs.png").symlink_to(src / "target.png")
    (src / "z.png").symlink_to(src / "target.png")   # listed after its target
    (src / "sub" / "rel.png").symlink_to(Path("..") / "target.png")
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out"), "--archive", str(tmp_path / "arch"))
    assert r.exit_code == 0, r.output
    arch = tmp_path / "arch"
    for rel in ("target.png", "abs.png", "z.png", "sub/rel.png"):
        assert not (arch / rel).is_symlink() and (arch / rel).read_bytes() == data, rel
        assert not os.path.lexists(src / rel), rel


from pipeline.legibility import Reader as _REAL_READER   # (a test may replace the module's name)


class FakeReader:
    """An OCR reader that 'reads' fixed lines: one outside every covered box, one on a fill."""

    version, min_chars, min_score = "fake-reader", 3, 0.5

    def __init__(self, readings) -> None:
        self.readings = readings

    def read_views(self, views):
        return list(self.readings)

    def read_on(self, rgb, shapes, covered=None, view=0):
        return []

    def legible(self, readings, covered=None, inside=0.5, found=False):
        return _REAL_READER.legible(self, readings, covered, inside, found)  # the real filter


def test_verify_strict_fails_images_with_text_left(tmp_path):
    from pipeline.legibility import Reading

    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(60)).save(src)
    item = Item(str(src), "a.png", str(tmp_path / "o.png"), str(tmp_path / "a.json"))
    outside = Reading("Smith", 0.9, (0.0, 30.0, 20.0, 40.0))
    on_fill = Reading("Jonathan", 0.9, tuple(BOXES[0]))                  # read on a covered box: ignored
    weak, short = Reading("Roe", 0.2, (0.0, 30.0, 20.0, 40.0)), Reading("ab", 0.9, (0.0, 30.0, 20.0, 40.0))
    leaky = FakeReader([outside, on_fill, weak, short])
    report_only = RedactConfig(verify=True, verify_rounds=0)
    res = Redactor(FakeDetector(), report_only, leaky).process(item)
    # what OCR read is reported masked: the audit trail is shared with the outputs
    assert res.status == "redacted" and res.remaining == 1 and res.legible == ["S...h (5)"] and res.audit_covered == 0
    assert json.loads((tmp_path / "a.json").read_text())["verify"]["legible"][0]["text"] == "S...h (5)"
    res = Redactor(FakeDetector(), replace(report_only, strict=True, force=True), leaky).process(item)
    assert res.status == "failed" and res.reason == "text_remaining" and not (tmp_path / "o.png").exists()
    # the sidecar says so too (it kept the earlier run's "redacted" and the hash of the removed output)
    sc = json.loads((tmp_path / "a.json").read_text())
    assert sc["status"] == "failed" and sc["output"] is None and sc["output_sha256"] is None
    assert "S...h (5)" in res.detail and "Smith" not in res.detail
    clean = Redactor(FakeDetector(), RedactConfig(verify=True, strict=True, force=True), FakeReader([on_fill])).process(item)
    assert clean.status == "redacted" and clean.remaining == 0


def test_verify_covers_what_the_audit_reads_and_reads_again(tmp_path):
    """What OCR still reads is covered (default 2 rounds), and the output is read again: text
    revealed round after round is covered until the rounds run out, then reported."""
    from pipeline.legibility import Reading

    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(61)).save(src)
    item = Item(str(src), "a.png", str(tmp_path / "o.png"), str(tmp_path / "a.json"))
    res = Redactor(FakeDetector(), RedactConfig(verify=True, strict=True),
                   FakeReader([Reading("Smith", 0.9, (0.0, 30.0, 20.0, 40.0))])).process(item)
    assert res.status == "redacted" and res.remaining == 0 and res.audit_covered == 1
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert (out[30:40, 0:20] == 0).all()                               # the line OCR read is filled
    sc = json.loads((tmp_path / "a.json").read_text())
    assert [x["text"] for x in sc["verify"]["covered"]] == ["S...h (5)"] and sc["verify"]["rounds"] == 2
    assert sc["pages"][0]["boxes"] == BOXES and sc["n_boxes"] == len(BOXES)   # the detector's, for review/replay
    assert sc["pages"][0]["covered_px"] > covered_mask(BOXES, W, H, Pad(0, 0.1)).sum()     # + the audit's line

    # a line read beside a covered box (the detector found only part of a date stamp): the gap
    # between them is covered too, since what lies there belongs to the same line
    res = Redactor(FakeDetector(), RedactConfig(verify=True, force=True),
                   FakeReader([Reading("18:51", 0.9, (40.0, 6.0, 55.0, 14.0))])).process(item)
    assert res.audit_covered == 1
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert (out[6:14, 25:40] == 0).all()
    assert json.loads((tmp_path / "a.json").read_text())["verify"]["bridges"] == [[[25.0, 6.0, 40.0, 14.0]]]

    # OCR "reading" letters in a box of half the page (a whole receipt, once) is reported, not covered
    huge = Reading("MEHFE", 0.6, (0.0, 20.0, 64.0, 40.0))
    res = Redactor(FakeDetector(), RedactConfig(verify=True, force=True), FakeReader([huge])).process(item)
    assert res.audit_covered == 0 and res.legible == ["M...E (5)"]
    assert (np.asarray(Image.open(tmp_path / "o.png"))[32:40] != 0).any()

    class Revealing(FakeReader):
        """Reads one more line in each new output, further right (text a cover revealed)."""

        def read_views(self, views):
            self.calls = getattr(self, "calls", 0) + 1
            return [Reading(f"Line{self.calls}", 0.9, (4.0 + 12 * self.calls, 30.0, 14.0 + 12 * self.calls, 38.0))]

    res = Redactor(FakeDetector(), RedactConfig(verify=True, force=True), Revealing([])).process(item)
    assert res.audit_covered == 2 and res.remaining == 1 and res.legible == ["L...3 (5)"]


def test_verify_never_skips_an_output_it_has_not_read(tmp_path):
    """A run with --verify redoes outputs an earlier run made without the audit (a skipped image
    would pass unread), keeps audited ones, and reports what their audit read."""
    from pipeline.legibility import Reading

    import pipeline.redact.run as rr

    def RedactConfig(**kw):   # noqa: N802 -- without --verify the noise image would be audited anyway (`noisy`)
        return rr.RedactConfig(audit_noisy=False, **kw)

    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(62)).save(src)
    item = Item(str(src), "a.png", str(tmp_path / "o.png"), str(tmp_path / "a.json"))
    smith = FakeReader([Reading("Smith", 0.9, (0.0, 30.0, 20.0, 40.0))])
    assert Redactor(FakeDetector(), RedactConfig(), smith).process(item).status == "redacted"
    res = Redactor(FakeDetector(), RedactConfig(verify=True), smith).process(item)
    assert res.status == "redacted" and res.audit_covered == 1            # read and covered, not skipped
    assert Redactor(FakeDetector(), RedactConfig(verify=True), smith).process(item).status == "skipped"
    assert Redactor(FakeDetector(), RedactConfig(), smith).process(item).status == "skipped"
    left = Redactor(FakeDetector(), RedactConfig(verify=True, verify_rounds=0, force=True), smith).process(item)
    assert left.remaining == 1
    again = Redactor(FakeDetector(), RedactConfig(verify=True, verify_rounds=0), smith).process(item)
    assert again.status == "skipped" and again.legible == ["S...h (5)"]       # the summary still says so
    assert Redactor(FakeDetector(), RedactConfig(verify=True, verify_rounds=0, strict=True), smith).process(item).status == "failed"
    with pytest.raises(ValueError, match="verify-rounds"):
        RedactConfig(verify_rounds=6)


def test_a_noisy_image_is_audited_by_default_and_not_skipped_until_it_is(tmp_path):
    """Without --verify the audit reads the images too noisy for the small-text search (`noisy`);
    an output made without a reader (a library `Redactor` with none) is marked so and redone
    once one is there, while a clean image never gets read."""
    from pipeline.legibility import Reading

    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(62)).save(src)
    item = Item(str(src), "a.png", str(tmp_path / "o.png"), str(tmp_path / "a.json"))
    smith = FakeReader([Reading("Smith", 0.9, (0.0, 30.0, 20.0, 40.0))])
    first = Redactor(FakeDetector(), RedactConfig(), None).process(item)
    assert first.status == "redacted" and first.noisy and not first.audited
    assert json.loads(Path(item.sidecar).read_text())["noisy"] is True
    res = Redactor(FakeDetector(), RedactConfig(), smith).process(item)
    assert res.status == "redacted" and res.audited and res.audit_covered == 1
    sc = json.loads(Path(item.sidecar).read_text())
    assert sc["verify"]["because"] == "noisy" and sc["verify"]["covered"]
    assert Redactor(FakeDetector(), RedactConfig(), smith).process(item).status == "skipped"
    off = Redactor(FakeDetector(), RedactConfig(audit_noisy=False, force=True), smith).process(item)
    assert not off.noisy and not off.audited and "verify" not in json.loads(Path(item.sidecar).read_text())
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 48), (200, 200, 200)).save(flat)
    clean = Item(str(flat), "flat.png", str(tmp_path / "f.png"), str(tmp_path / "f.json"))
    res = Redactor(FakeDetector(), RedactConfig(), smith).process(clean)
    assert res.status == "redacted" and not res.noisy and not res.audited


# --- the real detector ----------------------------------------------------------------------------------

def test_real_ppocr_covers_rendered_text(tmp_path):
    from PIL import ImageDraw

    font = text_font(28)
    im = Image.new("RGB", (480, 200), (235, 235, 225))
    d = ImageDraw.Draw(im)
    d.text((30, 30), "SAMPLE ID 4711-B", font=font, fill=(20, 20, 20))
    d.text((60, 120), "Patient: Jane Roe", font=font, fill=(20, 20, 20))
    src = tmp_path / "in" / "label.png"
    src.parent.mkdir()
    im.save(src)
    a = np.asarray(im)
    text = (a < 128).all(axis=2)                                       # the rendered glyph pixels
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src.parent), str(tmp_path / "out"),
                                 "--detector", "ppocr"])
    assert r.exit_code == 0, r.output
    b = np.asarray(Image.open(tmp_path / "out" / "label.png"))
    assert (b[text] == 0).all()                                        # every glyph pixel is now black
    changed = (b != a).any(axis=2)
    assert changed.mean() < 0.5                                        # and the image was not blacked out


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow_exif_transpose(orientation):
    from PIL import ImageOps

    a = rgb_noise(80, 7, 5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im = Image.fromarray(a)
    im.info["exif"] = exif.tobytes()
    im.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(im))
    assert (codec.orient(a, orientation) == expected).all()


def test_tiff_orientation_tag_is_applied_and_not_written(tmp_path):
    upright = np.random.default_rng(81).integers(1, 65535, (H, W), dtype=np.uint16)
    src = tmp_path / "o.tif"
    tifffile.imwrite(src, np.ascontiguousarray(np.rot90(upright, 1)), photometric="minisblack",
                     extratags=[(274, "H", 1, 6, True)])
    det = FakeDetector()
    out = tmp_path / "out" / "o.tif"
    assert redact_one(src, out, det=det).status == "redacted" and det.shapes == [(H, W, 3)]
    with tifffile.TiffFile(out) as tf:
        assert 274 not in tf.pages[0].tags
        b = tf.pages[0].asarray()
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    assert b.shape == (H, W) and (b[cov] == 0).all() and (b[~cov] == upright[~cov]).all()


@pytest.mark.parametrize("name,make,black", [
    ("mw.tif", lambda p, a: tifffile.imwrite(p, a[..., 0], photometric="miniswhite"), [255]),
    ("cmyk.tif", lambda p, a: Image.fromarray(a).convert("CMYK").save(p), [0, 0, 0, 255]),
    ("pal.tif", lambda p, a: Image.fromarray(a).convert("P").save(p), [0, 0, 0]),
    ("lzw.tif", lambda p, a: Image.fromarray(a).save(p, compression="tiff_lzw"), [0, 0, 0]),
    ("bw.tif", lambda p, a: Image.fromarray(a).convert("1").save(p), [False]),
    ("pal.png", lambda p, a: Image.fromarray(a).convert("P").save(p), [0, 0, 0]),
    ("la.png", lambda p, a: Image.fromarray(a).convert("LA").save(p), [0, 255]),
])
def test_other_layouts_are_covered_with_the_right_value(tmp_path, name, make, black):
    src = tmp_path / name
    make(src, rgb_noise(90))
    out = tmp_path / "out" / name
    assert redact_one(src, out).status == "redacted"
    b = tifffile.imread(out) if name.endswith(".tif") else np.asarray(Image.open(out))
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    assert b.shape[:2] == (H, W)
    assert (b[cov].reshape(int(cov.sum()), -1) == np.array(black)).all()


def test_16bit_rgb_png_keeps_16_bits_and_icc(tmp_path):
    import cv2

    a = np.random.default_rng(91).integers(0, 65535, (H, W, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", a[..., ::-1])
    src = tmp_path / "c16.png"
    src.write_bytes(buf.tobytes())
    out = tmp_path / "out" / "c16.png"
    assert redact_one(src, out).status == "redacted"
    b = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    cov = covered_mask(BOXES, W, H, RedactConfig().pad)
    assert b.dtype == np.uint16 and (b[cov] == 0).all() and (b[~cov] == a[~cov]).all()
    # with an ICC profile: kept as an iCCP chunk, readable by Pillow
    im = Image.open(src)
    im.save(tmp_path / "tmp8.png", icc_profile=ICC)   # borrow Pillow's iCCP chunk for the 16-bit file
    chunk_start = (tmp_path / "tmp8.png").read_bytes().index(b"iCCP") - 4
    n = struct.unpack(">I", (tmp_path / "tmp8.png").read_bytes()[chunk_start:chunk_start + 4])[0]
    iccp = (tmp_path / "tmp8.png").read_bytes()[chunk_start:chunk_start + 12 + n]
    data = buf.tobytes()
    (tmp_path / "icc16.png").write_bytes(data[:33] + iccp + data[33:])
    assert redact_one(tmp_path / "icc16.png", tmp_path / "out" / "icc16.png").status == "redacted"
    assert Image.open(tmp_path / "out" / "icc16.png").info.get("icc_profile") == scrub_icc(ICC)
    assert cv2.imread(str(tmp_path / "out" / "icc16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_redact_tree_library_call_gives_what_the_cli_gives(tmp_path):
    """A notebook calling `redact_tree` gets the CLI's whole job: outputs, sidecars, manifest,
    summary.json, and a RedactSummary whose as_dict() is that summary.json."""
    from pipeline.redact.tree import RedactSummary, redact_tree

    src = make_tree(tmp_path / "in")
    summary = redact_tree(str(src), tmp_path / "out", RedactConfig(), detector=FakeDetector())
    assert isinstance(summary, RedactSummary) and summary.ok
    assert summary.redacted == 5 and summary.boxes == 10 and summary.ignored_non_images == 1
    audit = tmp_path / "out.audit"
    on_disk = json.loads((audit / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary.as_dict(), default=str))
    assert on_disk["manifest"]["csv"] == str(audit / "manifest.csv") and "would_redact" not in on_disk
    assert sorted(sha_tree(tmp_path / "out")) == ["a.png", "b.jpg", "sub/c.bmp", "sub/deeper/d.tif", "sub/e.webp"]
    dry = redact_tree(str(src), tmp_path / "dry", RedactConfig(dry_run=True), detector=FakeDetector())
    assert dry.dry_run == 5 and len(dry.would_redact) == 5 and not (tmp_path / "dry").exists()
    with pytest.raises(ValueError, match="no images found"):
        redact_tree(str(tmp_path / "in" / "*.txt"), tmp_path / "x", detector=FakeDetector())


def test_redact_creates_no_workspace(tmp_path, fake):
    """Only --review and --from-review need a workspace; `current` (the default) reads one's
    promoted model only if the workspace exists. So a missing input, a ppocr run and a plain
    `redact` (a user who only redacts) leave no workspace folder behind."""
    r = cli(tmp_path, "redact", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert r.exit_code == 2 and not (tmp_path / "ws").exists()
    src = make_tree(tmp_path / "in")
    r = cli(tmp_path, "redact", "--detector", "ppocr", str(src), str(tmp_path / "out"))
    assert r.exit_code == 0 and not (tmp_path / "ws").exists()
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "out2"))
    assert r.exit_code == 0 and not (tmp_path / "ws").exists()


def test_single_file_output_naming(tmp_path, fake):
    """`redact a.png clean/` puts a.png into clean/ even when clean/ does not exist yet (a Path
    argument dropped the slash and wrote a file named `clean`); an output named with another
    format's extension is refused instead of getting PNG bytes in a .jpg."""
    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(64)).save(src)
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "clean") + "/")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "clean").is_dir() and (tmp_path / "clean" / "a.png").is_file()
    r = cli(tmp_path, "redact", str(src), str(tmp_path / "o.jpg"))
    assert r.exit_code == 2 and "name it o.png" in r.output + r.stderr
    assert not (tmp_path / "o.jpg").exists() and not (tmp_path / "o.audit").exists()


def test_scales_are_range_checked_before_any_work(tmp_path):
    """A pass at scale s holds s^2 times the pixels: `--scales 100` reached 20 GB before it was
    bounded. Out-of-range scales stop with one line and exit 2, creating nothing."""
    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(65)).save(src)
    for bad in ("100", "0", "-1", "nan"):
        r = cli(tmp_path, "redact", str(src), str(tmp_path / "o.png"), "--scales", bad)
        assert r.exit_code == 2 and "scales" in r.output + r.stderr, (bad, r.output)
        assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.audit").exists()


def test_verify_rounds_is_range_checked_and_needs_verify(tmp_path, fake):
    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(63)).save(src)
    for args, msg in ((["--verify-rounds", "1"], "--verify-rounds needs --verify"),
                      (["--verify", "--verify-rounds", "6"], "--verify-rounds"),
                      (["--verify", "--verify-rounds", "-1"], "--verify-rounds")):
        r = cli(tmp_path, "redact", str(src), str(tmp_path / "o.png"), *args)
        assert r.exit_code == 2 and msg in r.output + r.stderr, args
        assert not (tmp_path / "o.png").exists()


def test_from_review_on_a_tree_never_redacted_is_refused(tmp_path, fake):
    """`--from-review` finishes images `--review` held. On an output where nothing was ever
    redacted there is nothing to finish: one line naming the output and what to run first,
    exit 2, and no output or audit folder made (it used to create them and exit 0). A rerun
    after finishing (sidecars, none held) stays a quiet no-op: test_redact_review."""
    src = tmp_path / "a.png"
    Image.fromarray(rgb_noise(66)).save(src)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "o") + "/", "--from-review"])
    assert r.exit_code == 2, r.output
    assert "no image under it was redacted with --review" in r.stderr and "redact --review" in r.stderr
    assert str(tmp_path / "o") in r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.audit").exists()


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _png16(arr: np.ndarray, colour_type: int, phys_dpi: float | None = None) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour or grey+alpha)."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    if phys_dpi:
        ppm = int(round(phys_dpi / 0.0254))
        out += _png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
    return out + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")


def test_sixteen_bit_grey_alpha_and_resolution_are_kept(tmp_path):
    """A 16-bit grey+alpha PNG came out 8-bit; a 16-bit RGB PNG and a BMP lost their dpi."""
    import cv2

    rng = np.random.default_rng(3)
    la = np.stack([rng.integers(0, 65536, (H, W)), np.full((H, W), 40000)], axis=-1).astype(np.uint16)
    (tmp_path / "la16.png").write_bytes(_png16(la, 4))
    rgb16 = rng.integers(0, 65536, (H, W, 3)).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png16(rgb16, 2, phys_dpi=300))
    Image.fromarray(rgb_noise(5)).save(tmp_path / "a.bmp", dpi=(300, 300))
    for name in ("la16.png", "rgb16.png", "a.bmp"):
        assert redact_one(tmp_path / name, tmp_path / "out" / name).status == "redacted", name
    out = cv2.imread(str(tmp_path / "out" / "la16.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (H, W, 4)
    # still grey + alpha (IHDR: 16 bits, colour type 4), not a twice-as-large RGBA
    assert (tmp_path / "out" / "la16.png").read_bytes()[24:26] == b"\x10\x04"
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    core = covered_mask(BOXES, W, H, Pad(0, 0.0))
    assert (out[..., 0][core] == 0).all() and (out[..., 3][core] == 65535).all()   # filled black, opaque
    inside = covered_mask(BOXES, W, H, Pad(1, 0.1))
    assert (out[..., 0][~inside] == la[..., 0][~inside]).all() and (out[..., 3] == 40000)[~inside].all()
    for name in ("rgb16.png", "a.bmp"):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.info.get("dpi") and round(im.info["dpi"][0]) == 300, (name, im.info)


def test_an_output_folder_holding_the_input_is_named_as_the_problem(tmp_path):
    """`redact A/sub A`: every input would be skipped as part of OUTPUT; it said "no images
    found". Now the one line names the real problem, and exit is 2 with nothing written."""
    (tmp_path / "A" / "sub").mkdir(parents=True)
    Image.fromarray(rgb_noise(1)).save(tmp_path / "A" / "sub" / "x.png")
    r = CliRunner().invoke(app, ["redact", str(tmp_path / "A" / "sub"), str(tmp_path / "A")])
    assert r.exit_code == 2 and "the input is inside the output folder" in r.output, r.output
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == ["sub"]


def test_a_sixteen_bit_grey_colour_key_stays_transparent(tmp_path):
    """tRNS on a 16-bit grey PNG: the key marks what a viewer sees through, and the output keeps
    it at full depth (the OCR test of colour keys covers 8-bit RGB, grey and 1-bit)."""
    g = np.random.default_rng(4).integers(1, 65536, (H, W)).astype(np.uint16)
    g[:, :5] = 0                                                     # the transparent key
    Image.fromarray(g).save(tmp_path / "g.png", transparency=0)
    doc = codec.decode((tmp_path / "g.png").read_bytes())
    alpha = codec.page_alpha(doc.pages[0])
    assert alpha is not None and (alpha[:, :5] == 0).all() and (alpha[:, 5:] == 255).all()
    assert redact_one(tmp_path / "g.png", tmp_path / "out" / "g.png").status == "redacted"
    with Image.open(tmp_path / "out" / "g.png") as im:
        assert im.mode == "I;16" and im.info.get("transparency") == 0
        out = np.asarray(im)
    covered = out != g
    assert covered[:, :5].any() and not covered[:, :5].all() and (out == g).mean() > 0.5
    assert (out[:, :5][~covered[:, :5]] == 0).all()       # uncovered: still see-through
    assert (out[covered] == 1).all()   # covered: the black fill one level off the key, opaque



@pytest.mark.parametrize("kw, message", [
    ({"threshold": 5}, "threshold must be a number from 0 to 1"),
    ({"threshold": float("nan")}, "threshold must be a number from 0 to 1"),
    ({"style": "smudge"}, "style must be one of"),
    ({"shape": "circle"}, "shape must be one of"),
    ({"color": (0, 0, 300)}, "color must be three integers"),
    ({"jpeg_quality": 0}, "jpeg_quality must be a whole number from 1 to 100"),
    ({"review_band": (0.5, 0.2)}, "review_band needs"),
])
def test_the_library_refuses_what_the_cli_refuses(kw, message) -> None:
    """`RedactConfig(threshold=5)` kept no box and called every image redacted, every word still
    on it: the config checks its values, so a notebook gets the CLI's checks."""
    from pipeline.redact.run import RedactConfig

    with pytest.raises(ValueError, match=message):
        RedactConfig(**kw)


def test_a_bad_style_is_one_line_without_the_reversibility_warning(tmp_path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    (tmp_path / "in").mkdir()
    r = CliRunner().invoke(app, ["redact", str(tmp_path / "in"), str(tmp_path / "out"), "--style", "smudge"])
    assert r.exit_code == 2 and "--style must be one of" in r.output and "reversible" not in r.output, r.output
    r = CliRunner().invoke(app, ["redact", str(tmp_path / "in"), str(tmp_path / "out"), "--color", "0,0,300"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output


def test_files_left_out_are_named_and_images_with_nothing_found_are_counted(tmp_path):
    """A walkthrough redacted a folder and got "5 redacted, 0 failed, exit 0" while five real
    images (`d.jfif`, `f.dat`, `noext`...) were silently not in the output: only a count in
    summary.json said so. `.jfif` is a JPEG name now; the others are named in the table's output,
    redact.log and summary.json. An image where nothing was found is counted apart (real detector)."""
    from PIL import ImageDraw
    src = tmp_path / "in"
    src.mkdir()
    im = Image.new("RGB", (360, 120), "white")
    ImageDraw.Draw(im).text((20, 40), "PATIENT 4711", font=text_font(28),
                            fill="black")
    im.save(src / "a.jfif", format="JPEG", quality=95)
    Image.new("RGB", (200, 120), (200, 210, 220)).save(src / "blank.png")
    im.save(src / "f.dat", format="PNG")
    im.save(src / "noext", format="JPEG")
    im.save(src / ".hidden.png")                    # named as an image, but hidden: left out, with its reason
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out"),
                                 "--color", "255,0,255", "--detector", "ppocr"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jfif", "blank.png"]
    out = np.asarray(Image.open(tmp_path / "out" / "a.jfif"))
    assert Image.open(tmp_path / "out" / "a.jfif").format == "JPEG"
    ink = np.asarray(im.convert("L")) < 128
    assert (np.abs(out.astype(int) - [255, 0, 255]).sum(axis=2) < 60)[ink].mean() > 0.97   # the words are covered
    text = " ".join(r.output.split())
    assert "ignored 3 entr(ies) not named as images, or hidden" in text and "f.dat" in text and "noext" in text
    assert "of which no text found" in text
    assert "not verified: nothing read the outputs back (--verify" in text   # the detector alone can miss text
    summary = json.loads((tmp_path / "out.audit" / "summary.json").read_text())
    assert summary["no_text_found"] == 1 and summary["redacted"] == 2
    assert sorted(Path(p).name for p in summary["ignored_files"]) == [".hidden.png", "f.dat", "noext"]
    log = (tmp_path / "out.audit" / "redact.log").read_text()
    assert "f.dat: ignored: not named as an image" in log and "noext: ignored" in log
    assert ".hidden.png: ignored: hidden name" in log


def test_a_full_disk_names_the_file_and_still_shows_what_happened(tmp_path, fake, monkeypatch):
    """A full output disk was `io_error: [Errno 28] No space left on device` with no path; a full
    audit disk printed one line and no table, though every output had been written."""
    import errno as errno_
    import os

    import pipeline.io as io_
    import pipeline.redact.tree as tree_

    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno_.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_.os, "fdopen", Full)
    with pytest.raises(io_.UnwritableError, match=r"cannot write .*x\.bin \(No space left on device\)"):
        io_.atomic_write_bytes(tmp_path / "x.bin", b"123")
    assert not list(tmp_path.glob(".x.bin*"))                           # no temp file left
    monkeypatch.undo()

    src = make_tree(tmp_path / "in")
    real = tree_.rr.atomic_write_text

    def audit_disk_full(path, text):
        if Path(path).name == "summary.json":
            raise OSError(errno_.ENOSPC, "No space left on device")
        return real(path, text)

    import pipeline.detectors as dets
    import pipeline.redact.run as rr_

    # monkeypatch.undo() above also undid the `fake` fixture's detector: set it again
    monkeypatch.setattr(dets, "load_detector", lambda spec="current", workspace=None, **kw: fake)
    monkeypatch.setattr(rr_, "build_ppocr", lambda **kw: fake)
    monkeypatch.setattr(tree_.rr, "atomic_write_text", audit_disk_full)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 1
    text = " ".join(r.output.split())
    assert "redacted │ 5" in text and "audit trail not written" in text and "No space left" in text


def test_a_tiff_without_pages_is_one_line_naming_it(tmp_path, caplog):
    """tifffile logged "<TiffFile 'Unnamed binary stream'> contains no pages" (which file?) beside
    the failure line; the failure names the file and nothing else is logged."""
    import logging

    bad = tmp_path / "nopages.tif"
    bad.write_bytes(b"II*\x00\x00\x00\x00\x00")                  # a header, and no first page
    item = Item(str(bad), "nopages.tif", str(tmp_path / "o.tif"), str(tmp_path / "o.json"))
    with caplog.at_level(logging.WARNING):
        res = Redactor(FakeDetector(), RedactConfig()).process(item)
    assert res.status == "failed" and "nopages" not in res.detail   # (the line around it names the file)
    assert not [r for r in caplog.records if r.name == "tifffile"], [r.getMessage() for r in caplog.records]


def test_a_bug_in_our_own_code_stops_the_run_instead_of_failing_every_image(tmp_path, fake, monkeypatch):
    """A walkthrough met a half-edited module: `evaluate` listed 9 NameErrors as failed images and
    exited 0. Errors no input can cause stop redact and predict; a bad image still only fails itself."""
    from pipeline.predict import predict_paths

    src = make_tree(tmp_path / "in")

    def broken(images):
        raise NameError("name 'quad_thickness' is not defined")

    monkeypatch.setattr(fake, "detect", broken)
    with pytest.raises(NameError):
        CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out")],
                           catch_exceptions=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))
    with pytest.raises(NameError):
        list(predict_paths(fake, sorted(src.rglob("*.png"))))
    monkeypatch.setattr(fake, "detect", lambda images: (_ for _ in ()).throw(ValueError("odd image")))
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(tmp_path / "out2")])
    assert r.exit_code == 1 and "odd image" in r.output


def test_entries_swapped_after_the_listing_are_skipped_for_the_listings_reasons(tmp_path):
    """A file swapped for a FIFO after the listing blocked a worker for ever (SIGTERM too); one
    swapped for a link out of the tree was read and redacted. Both are now met when the file is
    opened: that image fails with the reason the listing gives, and the others finish."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 48), (200, 200, 200)).save(src / f"{i}.png")
    Image.new("RGB", (64, 48), (10, 10, 10)).save(tmp_path / "victim.png")
    items, _, _ = plan(str(src), tmp_path / "out")
    (src / "1.png").unlink()
    os.mkfifo(src / "1.png")
    (src / "2.png").unlink()
    (src / "2.png").symlink_to(tmp_path / "victim.png")
    results = {r.rel: r for r in run_local(Redactor(FakeDetector(), RedactConfig()), items, workers=2)}
    assert (results["1.png"].status, results["1.png"].reason) == ("failed", "not_a_regular_file")
    assert (results["2.png"].status, results["2.png"].reason) == ("failed", "outside_tree")
    assert "outside" in results["2.png"].detail and str(tmp_path / "victim.png") in results["2.png"].detail
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "3.png"]


def test_a_failed_image_leaves_no_output_and_a_refused_audit_folder_no_output_folder(tmp_path):
    """A sidecar that could not be written (a folder in its place, a full disk) failed the image
    but left its output in OUTPUT, where a consumer took it for done; an --audit folder that
    could not be made left an empty OUTPUT folder behind."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (200, 200, 200)).save(src / f"{i}.png")
    items, audit, _ = plan(str(src), tmp_path / "out")
    Path(items[1].sidecar).mkdir(parents=True)              # where 1.png's sidecar goes
    results = {r.rel: r for r in run_local(Redactor(FakeDetector(), RedactConfig()), items, workers=1)}
    assert (results["1.png"].status, results["1.png"].reason) == ("failed", "output_unwritable")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "2.png"]
    (tmp_path / "blocker").write_text("x")
    r = CliRunner().invoke(app, ["redact", str(src), str(tmp_path / "new_out"), "--audit", str(tmp_path / "blocker" / "a")])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output, r.output
    assert not (tmp_path / "new_out").exists()
